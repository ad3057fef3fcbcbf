"""Experiments: evaluate saved retrieval models on a data set's split.

The library side of ``avret eval``: :func:`evaluate_paths` evaluates saved runs (evaluating never
trains: ``avret train`` / ``avret distill`` do). The metrics themselves are :mod:`avret.eval`, which
knows nothing of models.
"""

from __future__ import annotations

from pathlib import Path

from avret.data.dataset import AVDataset
from avret.eval.evaluate import EvalEmbeddings, ProgressFn, evaluate_model
from avret.eval.retrieval import CrossModalReport
from avret.io import load_model, read_run


def evaluate_paths(
    paths: list[str | Path], dataset: AVDataset, split: str = "test", progress: ProgressFn | None = None,
    keep: list[EvalEmbeddings] | None = None,
    device: str = "auto",
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
        rows[name] = evaluate_model(model, dataset, split, progress, keep=keep, device=device)
    return rows
