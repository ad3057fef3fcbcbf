"""Text sentiment head (VideoAdviser step 2 on MOSI/MOSEI): a text-only student regressing sentiment.

Modules:

* :mod:`~avret.sentiment.label_files`: MMSA ``label.csv`` reading (both layouts), teacher score files.
* :mod:`~avret.sentiment.student`: :class:`SentimentStudent` (HF encoder + pooling + regression head).
* :mod:`~avret.sentiment.student_training`: fine-tuning with dev-only model selection, run directories.
* :mod:`~avret.sentiment.student_loss`: the step-2 loss ``(1-a) L1(label) + a L1|MSE(teacher)``.
* :mod:`~avret.sentiment.teacher_scores`: out-of-fold scores from the VideoAdviser teacher.
* :mod:`~avret.sentiment.probe`: frozen-encoder embeddings + ridge regression (the baseline).
* :mod:`~avret.sentiment.metrics`: MAE, Corr, Acc-2/F1 (both conventions), Acc-7, Acc-5 as MMSA.
* :mod:`~avret.sentiment.tiny`: a tiny random RoBERTa for tests and smoke runs.
"""
