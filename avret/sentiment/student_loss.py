"""VideoAdviser step 2: the text student regresses the teacher's regression logit and the label.

    loss = (1 - alpha) * L1(student, label) + alpha * D(student, teacher_score),   D in {L1, MSE}

``alpha = 0`` is plain fine-tuning, ``alpha = 1`` pure distillation; the default 0.5 weighs both
equally. VideoAdviser distils the multimodal teacher's *regression logit* (a score on the label
scale, not a class posterior), so the student can learn from the teacher's graded view of each
utterance, including where it disagrees with a noisy human label. Teacher scores are needed for
the train split only (they are never used for model selection or testing).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSSES = ("l1", "mse")


def regression_loss(pred: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean L1 or MSE between predictions and targets."""
    if kind == "l1":
        return F.l1_loss(pred, target)
    if kind == "mse":
        return F.mse_loss(pred, target)
    raise ValueError(f"loss is {kind!r} (expected one of {LOSSES})")


def distillation_loss(pred: torch.Tensor, label: torch.Tensor, teacher: torch.Tensor | None = None,
                      alpha: float = 0.5, label_loss: str = "l1", distill_loss: str = "l1") -> torch.Tensor:
    """``(1 - alpha) * label_loss(pred, label) + alpha * distill_loss(pred, teacher)``.

    Without teacher scores (or ``alpha == 0``) this is the plain label loss.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha is {alpha} (expected in [0, 1])")
    sup = regression_loss(pred, label, label_loss)
    if teacher is None or alpha == 0.0:
        return sup
    return (1.0 - alpha) * sup + alpha * regression_loss(pred, teacher, distill_loss)
