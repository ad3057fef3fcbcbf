"""The registry of distillation methods: one flag (``--method``) picks how towers are taught.

Every method is built from the same inputs — the teacher's outputs on the training clips — and
returns an :class:`~avret.models.train.AuxiliaryLoss` (or ``None``) that the tower trainer adds
to the towers' retrieval objective. A new method registers a builder here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from avret.data.dataset import AVDataset
from avret.distill.step1 import RelevanceHead, bhattacharyya_relevance
from avret.distill.step2 import LogitKDLoss, PairwiseRelevanceLoss, PerClipRegressionLoss
from avret.errors import AvretError
from avret.models.train import AuxiliaryLoss


@dataclass
class TeacherOutputs:
    """What the teacher hands over for the training clips (rows of ``dataset.subset('train')``)."""

    logits: torch.Tensor  # (N_train, C) class logits
    posteriors: torch.Tensor  # (N_train, C)
    relevance_head: RelevanceHead  # step 1, fitted and frozen


@dataclass
class MethodContext:
    """Everything a method builder may use: the training data, the VideoAdviser teacher's outputs
    (for methods registered with ``needs_teacher=True``), the towers' embedding width and options."""

    train: AVDataset  # dataset.subset("train"); Batch.rows index it
    val: AVDataset
    teacher: TeacherOutputs | None
    embed_dim: int
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)


# Default weight of the step-2 term, chosen on vegas-synth *validation* mAP (docs/videoadviser.md).
VIDEOADVISER_WEIGHT = 20.0

Builder = Callable[[MethodContext], AuxiliaryLoss | None]
METHODS: dict[str, Builder] = {}
NEEDS_TEACHER: set[str] = set()


def register(name: str, needs_teacher: bool = True) -> Callable[[Builder], Builder]:
    """Register a method builder under ``name``."""

    def deco(fn: Builder) -> Builder:
        METHODS[name] = fn
        if needs_teacher:
            NEEDS_TEACHER.add(name)
        return fn

    return deco


@register("none", needs_teacher=False)
def _none(ctx: MethodContext) -> None:
    """No distillation: the towers' own retrieval objective only."""
    return None


@register("kd")
def _kd(ctx: MethodContext) -> AuxiliaryLoss:
    """Hinton logit KD through training-only classifier heads on both towers."""
    assert ctx.teacher is not None
    opts = ctx.options
    return LogitKDLoss(ctx.teacher.logits, ctx.embed_dim, opts.get("kd_temperature", 4.0), opts.get("weight", 1.0))


@register("videoadviser")
def _videoadviser(ctx: MethodContext) -> AuxiliaryLoss:
    """VideoAdviser step 2: regress the teacher's step-1 relevance (pairwise or per clip)."""
    teacher, embed_dim = ctx.teacher, ctx.embed_dim
    assert teacher is not None
    head = teacher.relevance_head.requires_grad_(False)
    weight = ctx.options.get("weight", VIDEOADVISER_WEIGHT)
    target = ctx.options.get("student_target", "pairwise")
    if target == "pairwise":
        return PairwiseRelevanceLoss(teacher.posteriors, head.relevance_matrix, weight,
                                     balanced=ctx.options.get("balanced", True),
                                     loss=ctx.options.get("relevance_loss", "bce"))
    if target == "per-clip":
        n_cls = teacher.posteriors.shape[1]
        with torch.no_grad():
            per_class = bhattacharyya_relevance(teacher.posteriors, torch.eye(n_cls), head.tau)
        return PerClipRegressionLoss(per_class, embed_dim, weight)
    raise AvretError(f"--student-target '{target}': expected 'pairwise' or 'per-clip'")


def build_method(name: str, ctx: MethodContext) -> AuxiliaryLoss | None:
    """The auxiliary loss of method ``name`` (:class:`AvretError` lists the known ones)."""
    if name not in METHODS:
        raise AvretError(f"--method '{name}': expected one of {sorted(METHODS)}")
    return METHODS[name](ctx)


from avret.distill import mikd, msd  # noqa: E402,F401  (registers msd and mi-kd)
