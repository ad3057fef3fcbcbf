"""The sentiment teacher: VideoAdviser's step 1 for MOSI/MOSEI (classification -> regression logit).

Sentiment (:class:`SentimentRegressionHead`, :class:`SentimentTeacher`)
    The teacher classifies a clip into ordered sentiment levels (default 7: -3..3, prompts
    "a {level} video"); the regression logit is an affine map of the expected level::

        score = a * sum_k p_k * level_k + b          (a = 1, b = 0 initially)

    trained on the continuous label with L1 (default) or MSE, plus optional cross-entropy on the
    rounded level (``ce_weight``). The teacher input is either video frames or, where a data set has
    no video, a text embedding as a single "frame" (``teacher_input: "text"``).

The teacher is a :class:`~avret.distill.teacher.VideoAdviserTeacher` over the sentiment levels plus
a :class:`SentimentRegressionHead`; it saves in avret's one checkpoint format
(``model_type: sentiment-teacher``) and trains through the one loop (:func:`avret.train.loop.fit`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avret.distill.teacher import (
    ArrayLike,
    FrozenClipCheckpoint,
    Progress,
    TeacherConfig,
    TeacherFit,
    VideoAdviserTeacher,
    as_teacher_inputs,
    epoch_progress,
    fit_history,
)
from avret.errors import DataError, ModelError
from avret.train.loop import fit

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
    "SentimentRegressionHead",
    "SentimentTeacher",
    "SentimentTeacherConfig",
    "sentiment_loss",
    "text_as_frames",
    "train_sentiment_teacher",
]


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


@dataclass
class SentimentTeacherConfig(TeacherConfig):
    """A :class:`TeacherConfig` plus the ordered sentiment levels (one per class name)."""

    levels: list[float] = field(default_factory=lambda: list(SENTIMENT_LEVELS))


class SentimentTeacher(FrozenClipCheckpoint, nn.Module):
    """A :class:`VideoAdviserTeacher` over sentiment levels + :class:`SentimentRegressionHead`.

    ``forward(frames, mask) -> score (B,)``; ``logits(frames, mask) -> (B, K)``. Build it with
    :meth:`create` (``teacher_input="video"`` for frame embeddings, ``"text"`` for a text embedding as
    a single frame of any width, see :func:`text_as_frames`).
    """

    model_type = "sentiment-teacher"
    config_class = SentimentTeacherConfig

    def __init__(
        self,
        config: TeacherConfig,
        levels: Sequence[float] | None = None,
        *,
        clip_model: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.path: Path | None = None
        self._fingerprint: str | None = None
        if not isinstance(config, SentimentTeacherConfig):
            config = SentimentTeacherConfig(**config.to_dict())
        if levels is not None:
            config.levels = [float(v) for v in levels]
        levels = config.levels
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
        cfg = SentimentTeacherConfig(
            clip_model=clip_model,
            clip_weights=str(clip_weights),
            class_names=list(class_names),
            template=template,
            frame_dim=frame_dim,
            teacher_input=teacher_input,
            levels=[float(v) for v in levels],
            **config,
        )
        return cls(cfg, levels, clip_model=clip)

    @property
    def config(self) -> SentimentTeacherConfig:
        return self.teacher.config  # type: ignore[return-value]

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


def train_sentiment_teacher(
    model: SentimentTeacher,
    frames: ArrayLike,
    mask: ArrayLike | None,
    scores: ArrayLike,
    *,
    val: tuple | None = None,
    loss: str = "l1",
    ce_weight: float = 0.0,
    progress: Progress | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Train prompts, video encoder and the affine head on continuous sentiment labels (step 1).

    ``val=(frames, mask, scores)`` of the validation split: early stopping on validation MAE
    (``val_mae``; history also has ``val_loss``). ``options``: :class:`TeacherFit` fields. Returns the
    history as :func:`train_teacher`.
    """
    f_t, m_t, _ = as_teacher_inputs(frames, mask, None)
    y_t = torch.as_tensor(np.asarray(scores) if not torch.is_tensor(scores) else scores).float()
    if y_t.shape != (len(f_t),) or not torch.isfinite(y_t).all():
        raise DataError(
            f"sentiment labels have shape {tuple(y_t.shape)}, expected ({len(f_t)},) finite values"
        )
    levels = model.head.levels

    def loss_fn(b: dict[str, torch.Tensor]) -> torch.Tensor:
        logits = model.logits(b["frames"], b["mask"])
        return sentiment_loss(model.head(logits), b["scores"], logits=logits, levels=model.head.levels,
                              kind=loss, ce_weight=ce_weight)

    evaluate = None
    if val is not None:
        vf, vm, _ = as_teacher_inputs(val[0], val[1], None)
        vy = torch.as_tensor(np.asarray(val[2]) if not torch.is_tensor(val[2]) else val[2]).float()

        def evaluate() -> dict[str, float]:
            logits = model.teacher.predict_logits(vf, vm).to(model.device)
            pred = model.head(logits)
            target = vy.to(model.device)
            return {
                "val_loss": float(
                    sentiment_loss(pred, target, logits=logits, levels=levels, kind=loss, ce_weight=ce_weight)
                ),
                "val_mae": float((pred - target).abs().mean()),
            }

    opts = TeacherFit.of(options)
    optimizer = opts.optimizer(model.trainable_parameters())
    result = fit(model, loss_fn, {"frames": f_t, "mask": m_t, "scores": y_t}, optimizer, opts.fit_config(),
                 evaluate=evaluate, monitor=("val_mae", "val_loss"), mode="min", state_fn=model.own_state_dict,
                 load_fn=model.load_own_state_dict,
                 progress=epoch_progress(progress))
    return fit_history(result)
