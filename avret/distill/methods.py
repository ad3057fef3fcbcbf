"""The distillation methods: one flag (``--method``) picks how the towers are taught.

Every method is a *builder*: it receives a :class:`~avret.distill.context.MethodContext` (the
training data, the VideoAdviser teacher's outputs for the methods in :data:`NEEDS_TEACHER`, the
towers' embedding width, the options and the device) and returns an
:class:`~avret.train.tower_training.AuxiliaryLoss` (or ``None``) that the tower trainer adds to the
towers' retrieval objective. The list is explicit (:data:`METHODS`); a new method is one builder
and one line of that table. The loss terms themselves live in :mod:`avret.losses`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from avret.distill.context import MethodContext
from avret.distill.mikd import build_mikd
from avret.distill.msd import build_msd
from avret.distill.step1 import bhattacharyya_relevance
from avret.errors import AvretError
from avret.losses.kd import LogitKDLoss
from avret.losses.relevance import PairwiseRelevanceLoss, PerClipRegressionLoss
from avret.train.tower_training import AuxiliaryLoss

# Default weight of the step-2 term, chosen on vegas-synth *validation* mAP (docs/videoadviser.md).
VIDEOADVISER_WEIGHT = 20.0

Builder = Callable[[MethodContext], AuxiliaryLoss | None]


def build_none(ctx: MethodContext) -> None:
    """No distillation: the towers' own retrieval objective only."""
    return None


def build_kd(ctx: MethodContext) -> LogitKDLoss:
    """Hinton logit KD through training-only classifier heads on both towers."""
    assert ctx.teacher is not None
    opts = ctx.options
    return LogitKDLoss(ctx.teacher.logits, ctx.embed_dim, opts.get("kd_temperature", 4.0), opts.get("weight", 1.0))


def build_videoadviser(ctx: MethodContext) -> PairwiseRelevanceLoss | PerClipRegressionLoss:
    """VideoAdviser step 2: regress the teacher's step-1 relevance (pairwise or per clip)."""
    teacher, embed_dim = ctx.teacher, ctx.embed_dim
    assert teacher is not None
    head = teacher.relevance_head.requires_grad_(False)
    weight = ctx.options.get("weight", VIDEOADVISER_WEIGHT)
    target = ctx.options.get("student_target", "pairwise")
    if target == "pairwise":
        # the frozen head is held as a submodule, so it follows the loss to the towers' device
        return PairwiseRelevanceLoss(teacher.posteriors, head, weight,
                                     balanced=ctx.options.get("balanced", True),
                                     loss=ctx.options.get("relevance_loss", "bce"))
    if target == "per-clip":
        post = teacher.posteriors
        with torch.no_grad():
            per_class = bhattacharyya_relevance(post, torch.eye(post.shape[1], device=post.device), head.tau)
        return PerClipRegressionLoss(per_class, embed_dim, weight)
    raise AvretError(f"--student-target '{target}': expected 'pairwise' or 'per-clip'")


# --method name -> builder. Explicit: importing a module registers nothing.
METHODS: dict[str, Builder] = {
    "none": build_none,
    "kd": build_kd,
    "videoadviser": build_videoadviser,
    "msd": build_msd,  # trains its own multimodal teacher
    "mi-kd": build_mikd,  # trains its own multimodal teacher jointly with the towers
}
# The methods that need the VideoAdviser teacher (trained, with step 1, before the towers).
NEEDS_TEACHER: frozenset[str] = frozenset({"kd", "videoadviser"})


def build_method(name: str, ctx: MethodContext) -> AuxiliaryLoss | None:
    """The auxiliary loss of method ``name`` (:class:`AvretError` lists the known ones)."""
    if name not in METHODS:
        raise AvretError(f"--method '{name}': expected one of {sorted(METHODS)}")
    if ctx.options.get("weight") == 0:
        return None  # weight 0 is the plain student: no auxiliary graph at all, not a term multiplied by 0
    return METHODS[name](ctx)
