"""VideoAdviser step 1: the teacher's classification logits -> a regression logit.

The paper's teacher is a classifier (class logits over prompts), but what is distilled into the
student (step 2) is a *regression* logit. Step 1 turns the first into the second *inside the teacher*,
with a small learned calibration trained on the training split.

Retrieval (:class:`RelevanceHead`)
    The regression target of a pair of clips is their relevance. From the teacher's class posteriors
    ``p_i, p_j`` we use the Bhattacharyya coefficient of temperature-sharpened posteriors::

        p~ = softmax(log p / tau)            (= p^(1/tau), renormalised)
        r_ij = sum_c sqrt(p~_ic * p~_jc)     in [0, 1];  r_ii = 1

    ``tau`` (learnable, ``log tau`` parametrised) calibrates the agreement: ``tau -> 0`` makes ``r`` the
    indicator "same arg-max class", ``tau -> inf`` makes every pair 1. It is fitted by
    :func:`fit_relevance_head` on the pairwise same-class target ``y_ij = [label_i == label_j]`` of
    training clips (i != j), with binary cross-entropy (default; positives and negatives weighted
    equally, ``balanced=True``, since only ~1/C pairs are positive) or MSE. BC is well behaved: bounded,
    symmetric, smooth in both posteriors, no saturation of a sigmoid to tune.

Sentiment (:class:`SentimentRegressionHead`, :class:`SentimentTeacher`)
    The teacher classifies a clip into ordered sentiment levels (default 7: -3..3, prompts
    "a {level} video"); the regression logit is an affine map of the expected level::

        score = a * sum_k p_k * level_k + b          (a = 1, b = 0 initially)

    trained on the continuous label with L1 (default) or MSE, plus optional cross-entropy on the
    rounded level (``ce_weight``). The teacher input is either video frames or, where a data set has
    no video, a text embedding as a single "frame" (``teacher_input: "text"``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avret.distill.teacher import (
    ArrayLike,
    Progress,
    TeacherConfig,
    VideoAdviserTeacher,
    _as_inputs,
    _batch,
    _load_exact,
    fit_loop,
    read_checkpoint,
    write_checkpoint,
)
from avret.errors import DataError, ModelError

SENTIMENT_LEVELS = (-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0)
SENTIMENT_CLASS_NAMES = (
    "very negative",
    "negative",
    "weakly negative",
    "neutral",
    "weakly positive",
    "positive",
    "very positive",
)
SENTIMENT_TEMPLATE = "a {} video."

__all__ = [
    "SENTIMENT_CLASS_NAMES",
    "SENTIMENT_LEVELS",
    "SENTIMENT_TEMPLATE",
    "RelevanceHead",
    "SentimentRegressionHead",
    "SentimentTeacher",
    "bhattacharyya_relevance",
    "fit_relevance_head",
    "relevance_loss",
    "same_class_targets",
    "sentiment_loss",
    "text_as_frames",
    "train_sentiment_teacher",
]


# ====================================================================== retrieval relevance
def bhattacharyya_relevance(
    posteriors_a: torch.Tensor,
    posteriors_b: torch.Tensor,
    tau: float | torch.Tensor = 1.0,
    eps: float = 1e-12,
) -> torch.Tensor:
    """``r[i, j] = BC(p~_a[i], p~_b[j])`` with ``p~ = p^(1/tau)`` renormalised; ``(Na, Nb)`` in [0, 1]."""
    if posteriors_a.ndim != 2 or posteriors_b.ndim != 2 or posteriors_a.shape[1] != posteriors_b.shape[1]:
        raise DataError(
            f"posteriors have shapes {tuple(posteriors_a.shape)} and {tuple(posteriors_b.shape)}, "
            "expected (Na, C) and (Nb, C)"
        )
    tau_t = torch.as_tensor(tau, dtype=posteriors_a.dtype, device=posteriors_a.device)
    half_a = 0.5 * torch.log_softmax(posteriors_a.clamp_min(eps).log() / tau_t, dim=-1)
    half_b = 0.5 * torch.log_softmax(posteriors_b.clamp_min(eps).log() / tau_t, dim=-1)
    return (half_a.exp() @ half_b.exp().t()).clamp(0.0, 1.0)


class RelevanceHead(nn.Module):
    """Step-1 head for retrieval: class posteriors of two clips -> relevance (regression logit) in [0, 1]."""

    def __init__(self, init_tau: float = 1.0) -> None:
        super().__init__()
        if not init_tau > 0:
            raise ModelError(f"relevance head init_tau {init_tau}: expected > 0")
        self.log_tau = nn.Parameter(torch.tensor(float(np.log(init_tau)), dtype=torch.float32))

    @property
    def tau(self) -> torch.Tensor:
        return self.log_tau.exp()

    def relevance_matrix(self, posteriors_a: torch.Tensor, posteriors_b: torch.Tensor) -> torch.Tensor:
        """Relevance ``(Na, Nb)`` in [0, 1] of every clip of ``a`` to every clip of ``b``."""
        return bhattacharyya_relevance(posteriors_a, posteriors_b, self.tau)

    def forward(self, posteriors_a: torch.Tensor, posteriors_b: torch.Tensor) -> torch.Tensor:
        return self.relevance_matrix(posteriors_a, posteriors_b)

    def pair_relevance(self, posteriors_a: torch.Tensor, posteriors_b: torch.Tensor) -> torch.Tensor:
        """Row-wise relevance ``(N,)`` of pairs ``(a[k], b[k])``."""
        half_a = 0.5 * torch.log_softmax(posteriors_a.clamp_min(1e-12).log() / self.tau, dim=-1)
        half_b = 0.5 * torch.log_softmax(posteriors_b.clamp_min(1e-12).log() / self.tau, dim=-1)
        return (half_a + half_b).exp().sum(-1).clamp(0.0, 1.0)


def same_class_targets(labels_a: torch.Tensor, labels_b: torch.Tensor) -> torch.Tensor:
    """``y[i, j] = 1.0`` where ``labels_a[i] == labels_b[j]`` else ``0.0``."""
    return (labels_a[:, None] == labels_b[None, :]).float()


def relevance_loss(
    relevance: torch.Tensor,
    targets: torch.Tensor,
    *,
    loss: str = "bce",
    balanced: bool = True,
    exclude_diagonal: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Regression loss of a relevance matrix against pairwise targets (both ``(N, N)``, in [0, 1]).

    ``loss``: ``bce`` (binary cross-entropy, relevance clamped to [eps, 1 - eps]) or ``mse``.
    ``balanced``: positives (target > 0.5) and negatives contribute half of the loss each (when both exist).
    ``exclude_diagonal``: drop the pairs (i, i) of a square matrix (``r_ii = 1`` always).
    """
    if relevance.shape != targets.shape:
        raise DataError(
            f"relevance {tuple(relevance.shape)} and targets {tuple(targets.shape)} differ in shape"
        )
    if loss == "bce":
        r = relevance.clamp(eps, 1 - eps)
        per = -(targets * r.log() + (1 - targets) * (1 - r).log())
    elif loss == "mse":
        per = (relevance - targets) ** 2
    else:
        raise DataError(f"relevance loss '{loss}': expected 'bce' or 'mse'")
    weight = torch.ones_like(per)
    if exclude_diagonal and per.shape[0] == per.shape[1]:
        weight = weight * (1 - torch.eye(per.shape[0], dtype=per.dtype, device=per.device))
    if balanced:
        pos = (targets > 0.5).to(per.dtype) * weight
        neg = (targets <= 0.5).to(per.dtype) * weight
        if pos.sum() > 0 and neg.sum() > 0:
            return 0.5 * (per * pos).sum() / pos.sum() + 0.5 * (per * neg).sum() / neg.sum()
    return (per * weight).sum() / weight.sum().clamp_min(1)


def fit_relevance_head(
    head: RelevanceHead,
    posteriors: ArrayLike,
    labels: ArrayLike,
    *,
    val: tuple[ArrayLike, ArrayLike] | None = None,
    loss: str = "bce",
    balanced: bool = True,
    epochs: int = 50,
    lr: float = 0.05,
    batch_size: int = 256,
    seed: int = 0,
    patience: int = 10,
    progress: Progress | None = None,
    num_threads: int | None = None,
) -> dict[str, Any]:
    """Fit the head's temperature on train clips' posteriors ``(N, C)`` and labels ``(N,)`` (step 1).

    Each mini-batch of clips gives all its pairs (i != j) with target ``[label_i == label_j]``.
    ``val=(posteriors, labels)`` of the validation split enables early stopping on its pair loss.
    Returns a history (per-epoch ``train_loss``/``val_loss``, ``best_epoch``, final ``tau``).
    """
    p = torch.as_tensor(np.asarray(posteriors) if not torch.is_tensor(posteriors) else posteriors).float()
    y = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels).long()
    keep = y >= 0
    p, y = p[keep], y[keep]
    if len(p) < 2:
        raise DataError("fit_relevance_head needs at least 2 labelled training clips")
    device = head.log_tau.device
    p, y = p.to(device), y.to(device)

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        if len(idx) < 2:
            return head.log_tau * 0.0
        pb, yb = p[idx.to(device)], y[idx.to(device)]
        return relevance_loss(head(pb, pb), same_class_targets(yb, yb), loss=loss, balanced=balanced)

    evaluate = None
    if val is not None:
        pv = torch.as_tensor(np.asarray(val[0]) if not torch.is_tensor(val[0]) else val[0]).float().to(device)
        yv = torch.as_tensor(np.asarray(val[1]) if not torch.is_tensor(val[1]) else val[1]).long().to(device)
        pv, yv = pv[yv >= 0], yv[yv >= 0]
        if len(pv) > 2048:  # bound the (Nv x Nv) matrix
            pick = torch.randperm(len(pv), generator=torch.Generator().manual_seed(seed))[:2048].to(device)
            pv, yv = pv[pick], yv[pick]

        def evaluate() -> dict[str, float]:
            return {
                "val_loss": float(
                    relevance_loss(head(pv, pv), same_class_targets(yv, yv), loss=loss, balanced=balanced)
                )
            }

    history = fit_loop(
        head,
        [head.log_tau],
        len(p),
        loss_fn,
        evaluate,
        lambda new, best: new["val_loss"] < best["val_loss"],
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        patience=patience,
        weight_decay=0.0,
        state_fn=head.state_dict,
        load_fn=head.load_state_dict,
        progress=progress,
        num_threads=num_threads,
    )
    history["tau"] = float(head.tau.detach())
    return history


# ====================================================================== sentiment regression
def sentiment_level_index(scores: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Index of the level nearest to each score (the "rounded level" class)."""
    return (scores[:, None] - levels[None, :]).abs().argmin(dim=1)


class SentimentRegressionHead(nn.Module):
    """Posterior over ordered levels -> expected level -> ``a * E + b`` (the regression logit)."""

    def __init__(self, levels: Sequence[float] = SENTIMENT_LEVELS) -> None:
        super().__init__()
        if len(levels) < 2 or any(b <= a for a, b in zip(levels, levels[1:], strict=False)):
            raise ModelError(f"sentiment levels {list(levels)}: expected at least 2 increasing values")
        self.register_buffer("levels", torch.tensor([float(v) for v in levels], dtype=torch.float32))
        self.scale = nn.Parameter(torch.tensor(1.0))
        self.bias = nn.Parameter(torch.tensor(0.0))

    def expected_level(self, logits: torch.Tensor) -> torch.Tensor:
        """``E[level] = sum_k softmax(logits)_k * level_k``, shape ``(B,)``."""
        if logits.shape[-1] != len(self.levels):
            raise DataError(f"sentiment logits have {logits.shape[-1]} classes, expected {len(self.levels)}")
        return logits.softmax(dim=-1) @ self.levels

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return self.scale * self.expected_level(logits) + self.bias


def sentiment_loss(
    score: torch.Tensor,
    target: torch.Tensor,
    *,
    logits: torch.Tensor | None = None,
    levels: torch.Tensor | None = None,
    kind: str = "l1",
    ce_weight: float = 0.0,
) -> torch.Tensor:
    """L1 (``kind="l1"``) or MSE of ``score`` vs ``target``, + ``ce_weight`` x CE on the rounded level."""
    target = target.to(score.dtype)
    if kind == "l1":
        out = F.l1_loss(score, target)
    elif kind == "mse":
        out = F.mse_loss(score, target)
    else:
        raise DataError(f"sentiment loss '{kind}': expected 'l1' or 'mse'")
    if ce_weight:
        if logits is None or levels is None:
            raise DataError("sentiment_loss with ce_weight > 0 needs the class logits and the levels")
        out = out + ce_weight * F.cross_entropy(
            logits, sentiment_level_index(target, levels.to(target.device))
        )
    return out


def text_as_frames(embeddings: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """A text embedding per clip ``(N, D)`` as a one-frame video: ``frames (N, 1, D)``, ``mask (N, 1)``."""
    emb = np.asarray(
        embeddings.detach().cpu() if torch.is_tensor(embeddings) else embeddings, dtype=np.float32
    )
    if emb.ndim != 2:
        raise DataError(f"text embeddings have shape {emb.shape}, expected (N, D)")
    return emb[:, None, :], np.ones((len(emb), 1), dtype=bool)


class SentimentTeacher(nn.Module):
    """A :class:`VideoAdviserTeacher` over sentiment levels + :class:`SentimentRegressionHead`.

    ``forward(frames, mask) -> score (B,)``; ``logits(frames, mask) -> (B, K)``. Build it with
    :meth:`create` (``teacher_input="video"`` for frame embeddings, ``"text"`` for a text embedding as
    a single frame of any width, see :func:`text_as_frames`).
    """

    def __init__(
        self,
        config: TeacherConfig,
        levels: Sequence[float] = SENTIMENT_LEVELS,
        *,
        clip_model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if len(config.class_names) != len(levels):
            raise ModelError(
                f"sentiment teacher has {len(config.class_names)} class names but {len(levels)} levels"
            )
        self.teacher = VideoAdviserTeacher(config, clip_model=clip_model)
        self.head = SentimentRegressionHead(levels)

    @classmethod
    def create(
        cls,
        clip_model: str,
        clip_weights: str,
        *,
        frame_dim: int | None,
        teacher_input: str = "video",
        levels: Sequence[float] = SENTIMENT_LEVELS,
        class_names: Sequence[str] = SENTIMENT_CLASS_NAMES,
        template: str = SENTIMENT_TEMPLATE,
        clip: nn.Module | None = None,
        **config: Any,
    ) -> SentimentTeacher:
        """A sentiment teacher; ``config`` goes to :class:`TeacherConfig` (n_ctx, pooling, ...)."""
        cfg = TeacherConfig(
            clip_model=clip_model,
            clip_weights=str(clip_weights),
            class_names=list(class_names),
            template=template,
            frame_dim=frame_dim,
            teacher_input=teacher_input,
            **config,
        )
        return cls(cfg, levels, clip_model=clip)

    @property
    def config(self) -> TeacherConfig:
        return self.teacher.config

    @property
    def device(self) -> torch.device:
        return self.teacher.device

    def logits(
        self, frames: torch.Tensor, mask: torch.Tensor | None = None, audio: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.teacher(frames, mask, audio)

    def forward(
        self, frames: torch.Tensor, mask: torch.Tensor | None = None, audio: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The regression logit (sentiment score) ``(B,)``."""
        return self.head(self.teacher(frames, mask, audio))

    @torch.no_grad()
    def predict(
        self,
        frames: ArrayLike,
        mask: ArrayLike | None = None,
        audio: ArrayLike | None = None,
        batch_size: int = 256,
    ) -> torch.Tensor:
        """Scores ``(N,)`` on the CPU, in batches, eval mode."""
        logits = self.teacher.predict_logits(frames, mask, audio, batch_size)
        return self.head(logits.to(self.device)).cpu()

    def trainable_parameters(self) -> list[nn.Parameter]:
        return self.teacher.trainable_parameters() + list(self.head.parameters())

    def own_state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"teacher.{k}": v for k, v in self.teacher.own_state_dict().items()}
        out.update({f"head.{k}": v for k, v in self.head.state_dict().items()})
        return out

    def load_own_state_dict(self, state: dict[str, torch.Tensor], where: str = "state dict") -> None:
        _load_exact(self, self.own_state_dict(), state, where)

    def metadata(self) -> dict[str, Any]:
        meta = self.teacher.metadata()
        meta.update(
            {
                "teacher": "videoadviser-sentiment",
                "levels": self.head.levels.tolist(),
                "score_scale": float(self.head.scale.detach()),
                "score_bias": float(self.head.bias.detach()),
            }
        )
        return meta

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """``config.json`` (teacher config, levels) + ``model.safetensors`` (own weights only)."""
        return write_checkpoint(
            directory,
            "sentiment-teacher",
            {"teacher": self.config.to_dict(), "levels": self.head.levels.tolist()},
            self.own_state_dict(),
            self.metadata(),
        )

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike[str],
        *,
        clip_weights: str | None = None,
        clip_model: nn.Module | None = None,
        map_location: str | torch.device = "cpu",
    ) -> SentimentTeacher:
        cfg, tensors, where = read_checkpoint(directory, "sentiment-teacher")
        config = TeacherConfig.from_dict(dict(cfg.get("teacher", {})), where)
        if clip_weights is not None:
            config.clip_weights = str(clip_weights)
        model = cls(config, cfg.get("levels", SENTIMENT_LEVELS), clip_model=clip_model)
        model.load_own_state_dict(tensors, where)
        return model.to(map_location)


def train_sentiment_teacher(
    model: SentimentTeacher,
    frames: ArrayLike,
    mask: ArrayLike | None,
    scores: ArrayLike,
    *,
    val: tuple | None = None,
    loss: str = "l1",
    ce_weight: float = 0.0,
    epochs: int = 20,
    lr: float = 2e-3,
    batch_size: int = 64,
    seed: int = 0,
    patience: int = 5,
    weight_decay: float = 0.0,
    progress: Progress | None = None,
    num_threads: int | None = None,
) -> dict[str, Any]:
    """Train prompts, video encoder and the affine head on continuous sentiment labels (step 1).

    ``val=(frames, mask, scores)`` of the validation split: early stopping on validation MAE
    (``val_mae``; history also has ``val_loss``). Returns the history as :func:`train_teacher`.
    """
    f_t, m_t, _ = _as_inputs(frames, mask, None)
    y_t = torch.as_tensor(np.asarray(scores) if not torch.is_tensor(scores) else scores).float()
    if y_t.shape != (len(f_t),) or not torch.isfinite(y_t).all():
        raise DataError(
            f"sentiment labels have shape {tuple(y_t.shape)}, expected ({len(f_t)},) finite values"
        )
    device = model.device
    levels = model.head.levels

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        f, m, _ = _batch(f_t, m_t, None, idx, device)
        logits = model.logits(f, m)
        return sentiment_loss(
            model.head(logits),
            y_t[idx].to(device),
            logits=logits,
            levels=levels,
            kind=loss,
            ce_weight=ce_weight,
        )

    evaluate = None
    if val is not None:
        vf, vm, _ = _as_inputs(val[0], val[1], None)
        vy = torch.as_tensor(np.asarray(val[2]) if not torch.is_tensor(val[2]) else val[2]).float()

        def evaluate() -> dict[str, float]:
            logits = model.teacher.predict_logits(vf, vm).to(device)
            pred = model.head(logits)
            target = vy.to(device)
            return {
                "val_loss": float(
                    sentiment_loss(pred, target, logits=logits, levels=levels, kind=loss, ce_weight=ce_weight)
                ),
                "val_mae": float((pred - target).abs().mean()),
            }

    return fit_loop(
        model,
        model.trainable_parameters(),
        len(f_t),
        loss_fn,
        evaluate,
        lambda new, best: (new["val_mae"], new["val_loss"]) < (best["val_mae"], best["val_loss"]),
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        patience=patience,
        weight_decay=weight_decay,
        state_fn=model.own_state_dict,
        load_fn=model.load_own_state_dict,
        progress=progress,
        num_threads=num_threads,
    )
