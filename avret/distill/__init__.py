"""VideoAdviser distillation (Wang et al. 2023): a CLIP-based teacher and step 1 of the paper.

Modules (import them directly; this package imports nothing heavy):

* :mod:`avret.distill.video_encoder` -- per-frame CLIP embeddings pooled over time (mean / transformer).
* :mod:`avret.distill.prompts` -- frozen CLIP text encoder on learnable, video-enhanced prompts.
* :mod:`avret.distill.teacher` -- :class:`VideoAdviserTeacher`, its config, training, save/load.
* :mod:`avret.distill.step1` -- classification logits -> regression logit (relevance, sentiment).

The frozen CLIP comes from avret's one loader, :mod:`avret.models.clip` (local weights only).
See ``docs/videoadviser.md`` for the reading of the paper these modules implement.
"""
