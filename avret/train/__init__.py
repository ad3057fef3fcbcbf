"""Training: the one fit loop (:mod:`avret.train.loop`) and what is trained with it."""
