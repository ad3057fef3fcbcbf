"""MSD's saliency-weighted KD terms (Jin et al., Findings of EMNLP 2021); the method is :mod:`avret.distill.msd`.

* :func:`saliency_from_logits` — saliency of modality ``m`` for clip ``i`` (temperature 1):
  ``s_im = KL(p_teacher(full) || p_teacher(m removed))``; zero when the teacher ignores ``m``.
* :func:`modality_weights` — per-clip weights of the per-modality KD terms (``uniform``,
  ``population``, ``instance``; ``learned`` is meta-learned by the method), each row summing to 1.
* :func:`msd_kd_terms` — the MSD objective on student logits, with ``KD_T`` = :func:`avret.losses.kd.kd_loss`::

      KD_T(t_full, mean_m z_m) + Σ_m w_m · KD_T(t_only_m, z_m)      (batch mean)
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from avret.errors import AvretError
from avret.losses.kd import kd_loss

WEIGHTINGS = ("uniform", "population", "instance", "learned")


def saliency_from_logits(full_logits: torch.Tensor, without_logits: torch.Tensor) -> torch.Tensor:
    """``KL(p_full || p_without_m)`` per clip and modality: ``(N, C)`` and ``(N, M, C)`` → ``(N, M)``."""
    log_p = F.log_softmax(full_logits, dim=-1)[:, None, :]
    log_q = F.log_softmax(without_logits, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).clamp_min(0.0)


def modality_weights(scheme: str, saliency: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Per-clip weights ``(N, M)`` of the per-modality KD terms, each row summing to 1.

    ``uniform``: ``1/M``; ``population``: mean saliency over the clips, normalised over
    modalities; ``instance``: each clip's saliency normalised over modalities. Rows whose
    saliencies are all ~0 get uniform weights (``eps`` smoothing).
    """
    n, m = saliency.shape
    if scheme == "uniform":
        return saliency.new_full((n, m), 1.0 / m)
    if scheme == "population":
        s = saliency.mean(0, keepdim=True).expand(n, m)
    elif scheme == "instance":
        s = saliency
    else:
        raise AvretError(f"msd weighting '{scheme}': expected one of {list(WEIGHTINGS)}")
    s = s.clamp_min(0.0) + eps
    return (s / s.sum(1, keepdim=True)).contiguous()


def msd_kd_terms(student_only: torch.Tensor, teacher_full: torch.Tensor, teacher_only: torch.Tensor,
                 weights: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The MSD objective of a batch and its parts.

    Args:
        student_only: ``(N, M, C)`` logits of each single-modality student; the full student is their mean.
        teacher_full: ``(N, C)`` teacher logits with every modality.
        teacher_only: ``(N, M, C)`` teacher logits with modality ``m`` alone.
        weights: ``(N, M)`` per-clip weights, or ``(M,)`` one weight per modality.
        temperature: the KD temperature ``T``.

    Returns:
        ``(loss, kd_full, kd_modality)``: the scalar objective, the full-student KD term (batch mean)
        and the per-clip, per-modality KD terms ``(N, M)`` (unweighted).
    """
    kd_full = kd_loss(student_only.mean(1), teacher_full, temperature)
    kd_modality = torch.stack([kd_loss(student_only[:, j], teacher_only[:, j], temperature, reduction="none")
                               for j in range(student_only.shape[1])], dim=1)
    return kd_full + (weights * kd_modality).sum(-1).mean(), kd_full, kd_modality
