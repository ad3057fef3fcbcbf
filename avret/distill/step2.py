"""Step 2 of VideoAdviser and the classic KD baseline: losses that teach the retrieval towers.

All terms are :class:`~avret.models.train.AuxiliaryLoss` modules: the tower trainer adds them to
the towers' own retrieval objective. Their parameters (a calibration, a classifier or regression
head) are training-only and never part of the deployed towers, so a distilled model has exactly
the parameters and inference cost of an undistilled one.

* :class:`PairwiseRelevanceLoss` (VideoAdviser, default): for every (audio i, visual j) pair of a
  batch, the student's cross-modal cosine similarity, through a learnable monotone calibration
  ``sigmoid((s_ij - b) / t)``, regresses the teacher's graded relevance ``r_ij`` from step 1.
  The regression loss is binary cross-entropy against the soft target ``r_ij`` (default, ours: a
  proper scoring rule for a target in [0, 1] whose gradient does not vanish where the sigmoid
  saturates) or squared error (``loss="mse"``, the literal "regression" reading). On vegas-synth
  validation mAP, BCE was higher (see docs/videoadviser.md). The calibration maps cosine and
  relevance onto one scale; being monotone, it does not change any ranking. By default the error
  is *class-balanced* (ours): relevant-ish pairs
  (weight ``r_ij``) and irrelevant-ish pairs (weight ``1 - r_ij``) each contribute half, because
  ~90% of a batch's pairs are irrelevant and a plain mean mostly repeats what the towers'
  contrastive objective already enforces; ``balanced=False`` gives the plain mean.
* :class:`PerClipRegressionLoss` (VideoAdviser ``--student-target per-clip``): a regression head on
  each tower predicts, per clip, the teacher's relevance of the clip to every class
  (``r(p_i, onehot_c)``, a C-vector in [0, 1]); MSE. Heads are dropped at inference.
* :class:`LogitKDLoss` (Hinton et al. 2015): a linear classifier head on each tower; KL divergence
  between temperature-softened teacher and student class posteriors, times ``T^2``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from avret.errors import AvretError
from avret.models.train import Batch

RELEVANCE_LOSSES = ("bce", "mse")


class PairwiseRelevanceLoss(nn.Module):
    """``weight × BCE|MSE(sigmoid((cos(a_i, v_j) - b) / t), r_ij)`` over all pairs of the batch."""

    def __init__(self, posteriors: torch.Tensor, relevance: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                 weight: float = 1.0, balanced: bool = True, loss: str = "bce") -> None:
        super().__init__()
        if loss not in RELEVANCE_LOSSES:
            raise AvretError(f"relevance loss '{loss}': expected one of {', '.join(RELEVANCE_LOSSES)}")
        self.balanced = balanced
        self.loss = loss
        self.register_buffer("posteriors", posteriors.float())  # teacher posteriors of the training clips
        self.relevance = relevance  # the step-1 relevance head (frozen): (Pa, Pb) -> (Na, Nb)
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
        pred = self.student_relevance(audio, visual)
        if self.loss == "bce":
            err = F.binary_cross_entropy(pred.clamp(1e-6, 1 - 1e-6), target, reduction="none")
        else:
            err = (pred - target) ** 2
        if self.balanced:
            # relevant-ish and irrelevant-ish pairs weigh equally (most pairs of a batch are irrelevant)
            pos, neg = target, 1.0 - target
            loss = 0.5 * ((err * pos).sum() / pos.sum().clamp_min(1e-6) + (err * neg).sum() / neg.sum().clamp_min(1e-6))
        else:
            loss = err.mean()
        return self.weight * loss, {"relevance_mse": loss.item()}


class PerClipRegressionLoss(nn.Module):
    """Regression heads (training-only) on both towers regress the teacher's per-clip targets."""

    def __init__(self, targets: torch.Tensor, embed_dim: int, weight: float = 1.0) -> None:
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


def kd_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton's KD term: ``T^2 · KL(softmax(teacher/T) || softmax(student/T))``, batch mean."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    p_t = F.softmax(teacher_logits / temperature, dim=-1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * temperature**2


class LogitKDLoss(nn.Module):
    """Classic logit KD through a linear classifier head on each tower (training-only)."""

    def __init__(self, teacher_logits: torch.Tensor, embed_dim: int, temperature: float = 4.0,
                 weight: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("teacher_logits", teacher_logits.float())  # (N_train, C)
        self.temperature = temperature
        self.weight = weight
        self.audio_head = nn.Linear(embed_dim, teacher_logits.shape[1])
        self.visual_head = nn.Linear(embed_dim, teacher_logits.shape[1])

    def forward(self, batch: Batch, audio: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, dict]:
        t = self.teacher_logits[batch.rows]
        loss = 0.5 * (kd_kl(self.audio_head(audio), t, self.temperature)
                      + kd_kl(self.visual_head(visual), t, self.temperature))
        return self.weight * loss, {"kd_kl": loss.item()}
