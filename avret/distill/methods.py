"""The distillation methods: one flag (``--method``) picks how the towers are taught.

Every method is a *builder* and a typed config (:mod:`avret.distill.configs`): the builder
receives a :class:`~avret.distill.context.MethodContext` (the training data, the VideoAdviser
teacher's outputs for the methods in :data:`NEEDS_TEACHER`, the towers' embedding width, the seed
and the device) and its config, and returns an :class:`~avret.losses.auxiliary.AuxiliaryLoss` (or
``None``) that the tower trainer adds to the towers' retrieval objective. The list is explicit
(:data:`METHODS`); a new method is one config class, one builder and one line of that table. The
loss terms themselves live in :mod:`avret.losses`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from avret.distill.configs import KDConfig, MethodConfig, MIKDConfig, MSDConfig, NoneConfig, VideoAdviserConfig
from avret.distill.context import MethodContext
from avret.distill.mikd import build_mikd
from avret.distill.msd import build_msd
from avret.distill.step1 import bhattacharyya_relevance
from avret.errors import AvretError
from avret.losses.auxiliary import AuxiliaryLoss
from avret.losses.kd import LogitKDLoss
from avret.losses.relevance import PairwiseRelevanceLoss, PerClipRegressionLoss


class Method(NamedTuple):
    """One row of :data:`METHODS`: the method's config class and its builder."""

    config: type[Any]
    build: Callable[[MethodContext, Any], AuxiliaryLoss | None]


def build_none(ctx: MethodContext, cfg: NoneConfig) -> None:
    """No distillation: the towers' own retrieval objective only."""
    return None


def build_kd(ctx: MethodContext, cfg: KDConfig) -> LogitKDLoss:
    """Hinton logit KD through training-only classifier heads on both towers."""
    assert ctx.teacher is not None
    return LogitKDLoss(ctx.teacher.logits, ctx.embed_dim, cfg.temperature, cfg.weight)


def build_videoadviser(ctx: MethodContext, cfg: VideoAdviserConfig) -> PairwiseRelevanceLoss | PerClipRegressionLoss:
    """VideoAdviser step 2: regress the teacher's step-1 relevance (pairwise or per clip)."""
    teacher, embed_dim = ctx.teacher, ctx.embed_dim
    assert teacher is not None
    head = teacher.relevance_head.requires_grad_(False)
    if cfg.student_target == "pairwise":
        # the frozen head is held as a submodule, so it follows the loss to the towers' device
        return PairwiseRelevanceLoss(teacher.posteriors, head, cfg.weight, balanced=cfg.balanced,
                                     loss=cfg.relevance_loss)
    if cfg.student_target == "per-clip":
        post = teacher.posteriors
        with torch.no_grad():
            per_class = bhattacharyya_relevance(post, torch.eye(post.shape[1], device=post.device), head.tau)
        return PerClipRegressionLoss(per_class, embed_dim, cfg.weight)
    raise AvretError(f"--student-target '{cfg.student_target}': expected 'pairwise' or 'per-clip'")


# --method name -> (config class, builder). Explicit: importing a module registers nothing.
METHODS: dict[str, Method] = {
    "none": Method(NoneConfig, build_none),
    "kd": Method(KDConfig, build_kd),
    "videoadviser": Method(VideoAdviserConfig, build_videoadviser),
    "msd": Method(MSDConfig, build_msd),  # trains its own multimodal teacher
    "mi-kd": Method(MIKDConfig, build_mikd),  # trains its own multimodal teacher jointly with the towers
}
# The methods that need the VideoAdviser teacher (trained, with step 1, before the towers).
NEEDS_TEACHER: frozenset[str] = frozenset({"kd", "videoadviser"})


def method_entry(name: str) -> Method:
    """The row of method ``name`` (:class:`AvretError` lists the known ones)."""
    if name not in METHODS:
        raise AvretError(f"--method '{name}': expected one of {sorted(METHODS)}")
    return METHODS[name]


def build_method(name: str, ctx: MethodContext, config: MethodConfig | None = None) -> AuxiliaryLoss | None:
    """The auxiliary loss of method ``name`` with ``config`` (``None``: the method's defaults)."""
    entry = method_entry(name)
    config = entry.config() if config is None else config
    if not isinstance(config, entry.config):
        raise AvretError(f"--method '{name}' takes a {entry.config.__name__}, not a {type(config).__name__}")
    if getattr(config, "weight", None) == 0:
        return None  # weight 0 is the plain student: no auxiliary graph at all, not a term multiplied by 0
    return entry.build(ctx, config)
