"""Relevance regression (VideoAdviser): a predicted relevance in [0, 1] against a target in [0, 1].

One family, used twice:

* **Step 1** (:func:`relevance_loss` on :func:`same_class_targets`): the teacher's relevance head
  regresses the pairwise same-class indicator of training clips (see :mod:`avret.distill.step1`).
* **Step 2** — the auxiliary losses that teach the retrieval towers (``--method videoadviser``):

  - :class:`PairwiseRelevanceLoss` (default): for every (audio i, visual j) pair of a batch, the
    student's cross-modal cosine similarity, through a learnable monotone calibration
    ``sigmoid((s_ij - b) / t)``, regresses the teacher's graded relevance ``r_ij`` from step 1.
    The regression loss is binary cross-entropy against the soft target ``r_ij`` (default, ours: a
    proper scoring rule for a target in [0, 1] whose gradient does not vanish where the sigmoid
    saturates) or squared error (``loss="mse"``, the literal "regression" reading). On vegas-synth
    validation mAP, BCE was higher (see docs/videoadviser.md). The calibration maps cosine and
    relevance onto one scale; being monotone, it does not change any ranking. By default the error
    is *class-balanced* (ours): relevant-ish pairs (weight ``r_ij``) and irrelevant-ish pairs
    (weight ``1 - r_ij``) each contribute half, because ~90% of a batch's pairs are irrelevant and
    a plain mean mostly repeats what the towers' contrastive objective already enforces;
    ``balanced=False`` gives the plain mean.
  - :class:`PerClipRegressionLoss` (``--student-target per-clip``): a regression head on each tower
    predicts, per clip, the teacher's relevance of the clip to every class (``r(p_i, onehot_c)``, a
    C-vector in [0, 1]); MSE. Heads are dropped at inference.

Both step-2 losses hold the teacher's targets as buffers and their training-only parameters (the
calibration, the heads) as parameters, so they follow the towers to the training device; a distilled
model has exactly the parameters and inference cost of an undistilled one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

from avret.errors import DataError

if TYPE_CHECKING:  # annotations only
    from avret.losses.auxiliary import Batch

RELEVANCE_LOSSES = ("bce", "mse")


def check_relevance_loss(loss: str) -> None:
    """One-line :class:`DataError` unless ``loss`` is one of :data:`RELEVANCE_LOSSES`."""
    if loss not in RELEVANCE_LOSSES:
        raise DataError(f"relevance loss '{loss}': expected one of {', '.join(RELEVANCE_LOSSES)}")


def pointwise_error(pred: torch.Tensor, target: torch.Tensor, loss: str = "bce", eps: float = 1e-6) -> torch.Tensor:
    """Elementwise ``bce`` (prediction clamped to [eps, 1 - eps]) or ``mse`` of a relevance in [0, 1].

    Computed in float32 (a bf16 ``1 - eps`` would round to 1) and written out rather than with
    ``F.binary_cross_entropy``, which CUDA autocast refuses.
    """
    check_relevance_loss(loss)
    pred, target = pred.float(), target.float()
    if loss == "bce":
        r = pred.clamp(eps, 1 - eps)
        return -(target * r.log() + (1 - target) * (1 - r).log())
    return (pred - target) ** 2


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
    per = pointwise_error(relevance, targets, loss, eps)
    weight = torch.ones_like(per)
    if exclude_diagonal and per.shape[0] == per.shape[1]:
        weight = weight * (1 - torch.eye(per.shape[0], dtype=per.dtype, device=per.device))
    if balanced:
        pos = (targets > 0.5).to(per.dtype) * weight
        neg = (targets <= 0.5).to(per.dtype) * weight
        if pos.sum() > 0 and neg.sum() > 0:
            return 0.5 * (per * pos).sum() / pos.sum() + 0.5 * (per * neg).sum() / neg.sum()
    return (per * weight).sum() / weight.sum().clamp_min(1)


class PairwiseRelevanceLoss(nn.Module):
    """``weight × BCE|MSE(sigmoid((cos(a_i, v_j) - b) / t), r_ij)`` over all pairs of the batch.

    ``relevance`` maps two posterior matrices to the teacher's relevance matrix: the frozen step-1
    :class:`~avret.distill.step1.RelevanceHead` (an ``nn.Module``, then held as a submodule so that
    it follows the loss to the device) or any callable.
    """

    def __init__(self, posteriors: torch.Tensor,
                 relevance: nn.Module | Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 weight: float, balanced: bool, loss: str) -> None:
        super().__init__()
        check_relevance_loss(loss)
        self.balanced = balanced
        self.loss = loss
        self.register_buffer("posteriors", posteriors.float())  # teacher posteriors of the training clips
        self.relevance = relevance  # (Pa, Pb) -> (Na, Nb); a Module is registered as a submodule
        self.weight = weight
        self.bias = nn.Parameter(torch.tensor(0.3))
        self.log_temp = nn.Parameter(torch.tensor(-2.3))  # t = 0.1

    def student_relevance(self, audio: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """Calibrated student similarity of every (audio i, visual j) pair."""
        return torch.sigmoid((audio @ visual.T - self.bias) / self.log_temp.exp())

    def forward(self, batch: Batch, audio: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, dict]:
        with torch.no_grad():
            p = self.posteriors[batch.rows]
            target = self.relevance(p, p)
        err = pointwise_error(self.student_relevance(audio, visual), target, self.loss)
        if self.balanced:
            # relevant-ish and irrelevant-ish pairs weigh equally (most pairs of a batch are irrelevant)
            pos, neg = target, 1.0 - target
            loss = 0.5 * ((err * pos).sum() / pos.sum().clamp_min(1e-6) + (err * neg).sum() / neg.sum().clamp_min(1e-6))
        else:
            loss = err.mean()
        return self.weight * loss, {"relevance_mse": loss.item()}


class PerClipRegressionLoss(nn.Module):
    """Regression heads (training-only) on both towers regress the teacher's per-clip targets ``(N_train, C)``."""

    def __init__(self, targets: torch.Tensor, embed_dim: int, weight: float) -> None:
        super().__init__()
        self.register_buffer("targets", targets.float())  # (N_train, C)
        self.weight = weight
        self.audio_head = nn.Linear(embed_dim, targets.shape[1])
        self.visual_head = nn.Linear(embed_dim, targets.shape[1])

    def forward(self, batch: Batch, audio: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, dict]:
        t = self.targets[batch.rows]
        loss = 0.5 * (F.mse_loss(torch.sigmoid(self.audio_head(audio)), t)
                      + F.mse_loss(torch.sigmoid(self.visual_head(visual)), t))
        return self.weight * loss, {"perclip_mse": loss.item()}
