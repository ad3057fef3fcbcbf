"""Evaluate retrieval models on a data set's test split, the way the field reports it.

Every test clip of one modality is a query against every test clip of the other (no clip is
dropped, no epoch is chosen on the test split: models arrive already selected on ``val``).
This module knows no model class: a model is anything with ``embed(modality, features)``; loading
saved models and training them for a benchmark live in :mod:`avret.experiment`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from avret.data.dataset import AVDataset
from avret.errors import DataError
from avret.eval.retrieval import CrossModalReport, cross_modal_report

ProgressFn = Callable[[int, int], None]


class Embeds(Protocol):
    """Anything that embeds features of one modality (the metrics need nothing else of a model)."""

    def embed(self, modality: str, features: np.ndarray, batch_size: int = ...) -> np.ndarray: ...


@dataclass
class EvalEmbeddings:
    """What an evaluation ranked: the split's paired embeddings, labels, ids and (when known) media
    files, and the evaluated model's fingerprint (what ``avret eval --report`` draws its plots from)."""

    audio: np.ndarray
    visual: np.ndarray
    labels: np.ndarray
    clip_ids: np.ndarray
    class_names: list[str]
    media: np.ndarray | None = None
    fingerprint: str | None = None


def evaluate_model(
    model: Embeds | Any,
    dataset: AVDataset,
    split: str = "test",
    progress: ProgressFn | None = None,
    ks: tuple[int, ...] = (1, 5, 10, 50, 100),
    keep: list[EvalEmbeddings] | None = None,
    device: str = "auto",
) -> CrossModalReport:
    """A→V and V→A retrieval metrics of ``model`` on ``dataset``'s ``split`` (ranked on ``device``).

    ``keep``: a list the embeddings that were ranked are appended to (:class:`EvalEmbeddings`).
    """
    test = dataset.subset(split)
    if len(test) == 0:
        raise DataError(f"{dataset.name}: split '{split}' is empty; nothing to evaluate")
    if (test.labels < 0).any():
        raise DataError(f"{dataset.name}: split '{split}' has unlabelled clips; mAP needs a label per clip")
    audio = model.embed("audio", test.audio)
    visual = model.embed("visual", test.visual)
    report = cross_modal_report(audio, visual, test.labels, test.class_names, ks=ks, progress=progress,
                                device=device)
    if keep is not None:
        fingerprint = model.fingerprint() if hasattr(model, "fingerprint") else None
        keep.append(EvalEmbeddings(np.asarray(audio), np.asarray(visual), np.asarray(test.labels),
                                   np.asarray(test.clip_ids).astype(str), list(test.class_names),
                                   None if test.media is None else np.asarray(test.media).astype(str), fingerprint))
    return report
