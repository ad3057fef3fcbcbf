"""What an auxiliary (distillation) loss receives and is: :class:`Batch` and :class:`AuxiliaryLoss`.

The tower trainer (:func:`avret.train.tower_training.train_towers`) hands every auxiliary loss a
:class:`Batch` and the towers' embeddings and adds the loss it returns to the retrieval objective.
They live here, with the losses, so that a loss never imports the trainer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch


@dataclass
class Batch:
    """One mini-batch of training clips; ``rows`` index the training subset."""

    rows: torch.Tensor
    audio: torch.Tensor
    visual: torch.Tensor
    labels: torch.Tensor


class AuxiliaryLoss(Protocol):
    """A distillation term: extra loss from the batch and the towers' outputs (an ``nn.Module``)."""

    def parameters(self) -> Any: ...

    def __call__(
        self, batch: Batch, audio_emb: torch.Tensor, visual_emb: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]: ...
