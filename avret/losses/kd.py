"""Logit knowledge distillation (Hinton et al. 2015): the one KD term of avret, and the ``kd`` method's loss.

* :func:`kd_loss` — ``T² · KL(softmax(teacher/T) || softmax(student/T))``, per clip or averaged
  over the batch. Every KD term of avret is this function: the ``kd`` baseline
  (:class:`LogitKDLoss`) and MSD's full-student and per-modality terms (:mod:`avret.losses.msd_terms`).
* :class:`LogitKDLoss` — the ``kd`` method's auxiliary loss: a linear classifier head on each tower
  (training-only) distilled from the teacher's class logits of the training clips.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:  # annotations only
    from avret.losses.auxiliary import Batch

REDUCTIONS = ("none", "batchmean")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            reduction: str = "batchmean") -> torch.Tensor:
    """``T² · KL(softmax(teacher/T) || softmax(student/T))`` of each row of ``(N, C)`` logits.

    ``reduction``: ``"none"`` → one value per row, shape ``(N,)``; ``"batchmean"`` → their mean.
    The ``T²`` factor keeps the gradient scale independent of the temperature.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"kd_loss reduction '{reduction}': expected one of {REDUCTIONS}")
    log_p_s = F.log_softmax(student_logits / temperature, dim=-1)
    p_t = F.softmax(teacher_logits / temperature, dim=-1)
    per_row = F.kl_div(log_p_s, p_t, reduction="none").sum(-1) * temperature**2
    return per_row if reduction == "none" else per_row.mean()


class LogitKDLoss(nn.Module):
    """Classic logit KD through a linear classifier head on each tower (training-only).

    ``teacher_logits`` ``(N_train, C)`` are held as a buffer (they follow the module to the device);
    the loss is the mean of the audio head's and the visual head's :func:`kd_loss`.
    """

    def __init__(self, teacher_logits: torch.Tensor, embed_dim: int, temperature: float,
                 weight: float) -> None:
        super().__init__()
        self.register_buffer("teacher_logits", teacher_logits.float())  # (N_train, C)
        self.temperature = temperature
        self.weight = weight
        self.audio_head = nn.Linear(embed_dim, teacher_logits.shape[1])
        self.visual_head = nn.Linear(embed_dim, teacher_logits.shape[1])

    def forward(self, batch: Batch, audio: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, dict]:
        t = self.teacher_logits[batch.rows]
        loss = 0.5 * (kd_loss(self.audio_head(audio), t, self.temperature)
                      + kd_loss(self.visual_head(visual), t, self.temperature))
        return self.weight * loss, {"kd_kl": loss.item()}
