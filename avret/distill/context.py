"""What a distillation method's builder receives (:class:`MethodContext`) besides its typed config.

The builders (:mod:`avret.distill.methods`, :mod:`avret.distill.msd`, :mod:`avret.distill.mikd`)
import these classes from here, so that :mod:`avret.distill.methods` can list every builder
explicitly without an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from avret.data.dataset import AVDataset

if TYPE_CHECKING:  # annotations only: msd / mi-kd need not import the VideoAdviser teacher's modules
    from avret.distill.step1 import RelevanceHead


@dataclass
class TeacherOutputs:
    """What the VideoAdviser teacher hands over for the training clips (rows of ``dataset.subset('train')``)."""

    logits: torch.Tensor  # (N_train, C) class logits
    posteriors: torch.Tensor  # (N_train, C)
    relevance_head: RelevanceHead  # step 1, fitted and frozen


@dataclass
class MethodContext:
    """Everything a method builder may use.

    Attributes:
        train: ``dataset.subset("train")`` after the validation split is carved; ``Batch.rows`` index it.
        val: the validation split (model selection of anything the method trains first).
        teacher: the VideoAdviser teacher's outputs, for the methods in ``NEEDS_TEACHER``; else ``None``.
        embed_dim: the towers' embedding width.
        seed: the run seed.
        device: where a method trains what it trains before the towers (``auto|cpu|cuda``; the
            towers' ``TrainConfig.device``). The auxiliary loss it returns is built on the CPU; the
            tower trainer moves it to the towers' device.
    """

    train: AVDataset
    val: AVDataset
    teacher: TeacherOutputs | None
    embed_dim: int
    seed: int = 0
    device: str = "cpu"
