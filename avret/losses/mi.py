"""Mutual-information terms of MI cross-modal KD (after Chen et al., CVPR 2023).

The method (teacher, predictors, discriminators and their phases) is :mod:`avret.distill.mikd`.

* :func:`info_nce` / :class:`InfoNCECritic` — the InfoNCE lower bound ``I(X;Y) ≥ log B − L`` with a
  learnable bilinear critic ``f(x, y) = <ĝ(x), ĥ(y)> / τ`` (linear projections, L2-normalised,
  learnable temperature clamped to [0.01, 1]); ``L`` is the symmetric cross-entropy of the
  ``B × B`` critic matrix with the matching row as the positive.
* :func:`discriminator_loss` / :func:`generator_loss` — the adversarial conditional-entropy term
  (minimises ``H(T | S)``): a discriminator ``D`` on ``[t; s]`` tells real pairs ``(t, s)`` from
  student-predicted pairs ``(t̂, s)``. The discriminator minimises
  ``BCE(D(t, s), 1) + BCE(D(t̂, s), 0)``; the generator side (students, predictors, teacher) the
  flipped, non-saturating ``½ [BCE(D(t̂, s), 1) + BCE(D(t, s), 0)]``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def info_nce(x: torch.Tensor, y: torch.Tensor, temperature: torch.Tensor | float) -> torch.Tensor:
    """Symmetric InfoNCE loss of paired rows: mean of CE(x·yᵀ/τ, diag) and CE(y·xᵀ/τ, diag).

    ``x``, ``y`` are ``(B, D)`` (normalised by the caller); ``log B − loss`` lower-bounds the MI.
    """
    logits = x @ y.T / temperature
    target = torch.arange(len(x), device=x.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


class InfoNCECritic(nn.Module):
    """Learnable bilinear critic ``<ĝ(x), ĥ(y)>/τ`` (normalised projections, learnable τ)."""

    def __init__(self, dim_x: int, dim_y: int, proj_dim: int, temperature: float) -> None:
        super().__init__()
        self.proj_x = nn.Linear(dim_x, proj_dim)
        self.proj_y = nn.Linear(dim_y, proj_dim)
        self.log_temp = nn.Parameter(torch.tensor(math.log(temperature)))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The InfoNCE loss of the pairs ``(x_i, y_i)``."""
        tau = self.log_temp.exp().clamp(0.01, 1.0)
        return info_nce(F.normalize(self.proj_x(x), dim=-1), F.normalize(self.proj_y(y), dim=-1), tau)


def real_fake_bce(discriminator: nn.Module, t: torch.Tensor, t_hat: torch.Tensor, s: torch.Tensor,
                  real_target: float) -> torch.Tensor:
    """``BCE(D([t; s]), real_target) + BCE(D([t̂; s]), 1 − real_target)`` (``D`` returns logits)."""
    real = discriminator(torch.cat([t, s], -1))
    fake = discriminator(torch.cat([t_hat, s], -1))
    return (F.binary_cross_entropy_with_logits(real, torch.full_like(real, real_target))
            + F.binary_cross_entropy_with_logits(fake, torch.full_like(fake, 1.0 - real_target)))


def discriminator_loss(discriminator: nn.Module, t: torch.Tensor, t_hat: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The discriminator's loss: real pairs ``(t, s)`` → 1, predicted pairs ``(t̂, s)`` → 0."""
    return real_fake_bce(discriminator, t, t_hat, s, 1.0)


def generator_loss(discriminator: nn.Module, t: torch.Tensor, t_hat: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """The generator side's adversarial loss: flipped labels, halved (non-saturating)."""
    return 0.5 * real_fake_bce(discriminator, t, t_hat, s, 0.0)
