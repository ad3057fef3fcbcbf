"""Evaluate retrieval models on a data set's test split, the way the field reports it.

Every test clip of one modality is a query against every test clip of the other (no clip is
dropped, no epoch is chosen on the test split: models arrive already selected on ``val``).
This module knows no model class: a model is anything with ``embed(modality, features)``; loading
saved models and training them for a benchmark live in :mod:`avret.experiment`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from avret.data.dataset import AVDataset
from avret.errors import DataError
from avret.eval.retrieval import CrossModalReport, cross_modal_report

ProgressFn = Callable[[int, int], None]


class Embeds(Protocol):
    """Anything that embeds features of one modality (the metrics need nothing else of a model)."""

    def embed(self, modality: str, features: np.ndarray, batch_size: int = ...) -> np.ndarray: ...


def evaluate_model(
    model: Embeds | Any,
    dataset: AVDataset,
    split: str = "test",
    progress: ProgressFn | None = None,
    ks: tuple[int, ...] = (1, 5, 10, 50, 100),
    device: str = "auto",
) -> CrossModalReport:
    """A→V and V→A retrieval metrics of ``model`` on ``dataset``'s ``split`` (ranked on ``device``)."""
    test = dataset.subset(split)
    if len(test) == 0:
        raise DataError(f"{dataset.name}: split '{split}' is empty; nothing to evaluate")
    if (test.labels < 0).any():
        raise DataError(f"{dataset.name}: split '{split}' has unlabelled clips; mAP needs a label per clip")
    audio = model.embed("audio", test.audio)
    visual = model.embed("visual", test.visual)
    return cross_modal_report(audio, visual, test.labels, test.class_names, ks=ks, progress=progress,
                              device=device)
