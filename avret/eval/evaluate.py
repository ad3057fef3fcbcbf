"""Evaluate retrieval models on a data set's test split, the way the field reports it.

Every test clip of one modality is a query against every test clip of the other (no clip is
dropped, no epoch is chosen on the test split: models arrive already selected on ``val``).
:func:`protocol` runs the whole benchmark for a data set: train the towers and fit the CCA
baseline on ``train`` (selection on a ``val`` split carved from it), then evaluate on ``test``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from avret.data.dataset import AVDataset
from avret.errors import DataError
from avret.eval.retrieval import CrossModalReport, cross_modal_report
from avret.models.base import Embedder, load_model

ProgressFn = Callable[[int, int], None]


def evaluate_model(
    model: Embedder,
    dataset: AVDataset,
    split: str = "test",
    progress: ProgressFn | None = None,
    ks: tuple[int, ...] = (1, 5, 10, 50, 100),
) -> CrossModalReport:
    """A→V and V→A retrieval metrics of ``model`` on ``dataset``'s ``split``."""
    test = dataset.subset(split)
    if len(test) == 0:
        raise DataError(f"{dataset.name}: split '{split}' is empty; nothing to evaluate")
    if (test.labels < 0).any():
        raise DataError(f"{dataset.name}: split '{split}' has unlabelled clips; mAP needs a label per clip")
    audio = model.embed("audio", test.audio)
    visual = model.embed("visual", test.visual)
    return cross_modal_report(audio, visual, test.labels, test.class_names, ks=ks, progress=progress)


def evaluate_paths(
    paths: list[str | Path], dataset: AVDataset, split: str = "test", progress: ProgressFn | None = None
) -> dict[str, CrossModalReport]:
    """Evaluate each saved model (run directory or model directory); keys are row names."""
    import json

    rows: dict[str, CrossModalReport] = {}
    for path in paths:
        model = load_model(path)
        run_file = Path(path) / "run.json"
        method = json.loads(run_file.read_text()).get("method", "?") if run_file.is_file() else "?"
        name = f"{model.model_type} ({'distill: ' + method if method not in ('none', '?') else 'no distillation'})"
        if name in rows:
            name = f"{name} [{Path(path).name}]"
        rows[name] = evaluate_model(model, dataset, split, progress)
    return rows


def protocol(
    dataset: AVDataset,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    train_kwargs: dict[str, Any] | None = None,
) -> dict[str, CrossModalReport]:
    """Train towers and CCA on ``train`` (selection on ``val``), evaluate both on ``test``."""
    from avret.models.runs import train_run
    from avret.models.train import TrainConfig

    rows: dict[str, CrossModalReport] = {}
    with tempfile.TemporaryDirectory(prefix="avret-protocol-") as tmp:
        for model_type in ("towers", "cca"):
            if progress is not None:
                progress(f"training {model_type} on {dataset.name} train split")
            run = train_run(
                dataset, Path(tmp) / model_type, model_type, TrainConfig(seed=seed, **(train_kwargs or {}))
            )
            rows[f"{model_type} (trained here, seed {seed})"] = evaluate_model(load_model(run), dataset)
    return rows
