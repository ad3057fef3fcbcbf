"""Experiments: load or train retrieval models and evaluate them on a data set's test split.

The library side of ``avret eval``: :func:`evaluate_paths` evaluates saved runs, :func:`protocol`
runs the whole benchmark for a data set (train the towers and fit the CCA baseline on ``train``,
selection on a ``val`` split carved from it, then evaluate on ``test`` once). The metrics
themselves are :mod:`avret.eval`, which knows nothing of models.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from avret.data.dataset import AVDataset
from avret.eval.evaluate import EvalEmbeddings, ProgressFn, evaluate_model
from avret.eval.retrieval import CrossModalReport
from avret.io import load_model, read_run


def evaluate_paths(
    paths: list[str | Path], dataset: AVDataset, split: str = "test", progress: ProgressFn | None = None,
    keep: list[EvalEmbeddings] | None = None,
) -> dict[str, CrossModalReport]:
    """Evaluate each saved model (run directory or model directory); keys are row names.

    ``keep``: a list each model's ranked embeddings are appended to, in row order (for reports).
    """
    rows: dict[str, CrossModalReport] = {}
    for path in paths:
        model = load_model(path)
        run_file = Path(path) / "run.json"
        method = read_run(path).get("method", "?") if run_file.is_file() else "?"
        name = f"{model.model_type} ({'distill: ' + method if method not in ('none', '?') else 'no distillation'})"
        if name in rows:
            name = f"{name} [{Path(path).name}]"
        rows[name] = evaluate_model(model, dataset, split, progress, keep=keep)
    return rows


def protocol(
    dataset: AVDataset,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
    train_kwargs: dict[str, Any] | None = None,
    keep: list[EvalEmbeddings] | None = None,
) -> dict[str, CrossModalReport]:
    """Train towers and CCA on ``train`` (selection on ``val``), evaluate both on ``test``."""
    from avret.train.runs import train_run
    from avret.train.towers import TrainConfig

    rows: dict[str, CrossModalReport] = {}
    with tempfile.TemporaryDirectory(prefix="avret-protocol-") as tmp:
        for model_type in ("towers", "cca"):
            if progress is not None:
                progress(f"training {model_type} on {dataset.name} train split")
            run = train_run(
                dataset, Path(tmp) / model_type, model_type, TrainConfig(seed=seed, **(train_kwargs or {}))
            )
            rows[f"{model_type} (trained here, seed {seed})"] = evaluate_model(load_model(run), dataset, keep=keep)
    return rows
