"""Run directories: what a training (or distillation) run leaves behind.

::

    RUN/
      run.json     method, seed, data set reference, configs, selection history, timings, versions
      model/       the deployed retrieval model (config.json + model.safetensors)

:func:`avret.models.base.load_model` accepts either ``RUN`` or ``RUN/model``. Distillation runs add
their teacher and training state beside ``model/``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from avret.data.dataset import AVDataset
from avret.data.registry import dataset_ref
from avret.errors import ModelError
from avret.models.cca import CCAModel
from avret.models.towers import TowerConfig
from avret.models.train import TrainConfig, TrainResult, train_towers
from avret.utils.atomic import atomic_dir
from avret.utils.versions import library_versions, utc_timestamp

RUN_FILE = "run.json"
MODEL_DIR = "model"

CCA_COMPONENTS = (8, 16, 32, 64, 128)
CCA_REGS = (1e-3, 1e-2, 1e-1)


def run_metadata(dataset: AVDataset, method: str, model_type: str, seed: int, **extra: Any) -> dict[str, Any]:
    """The common header of ``run.json``."""
    return {
        "method": method,
        "model_type": model_type,
        "seed": seed,
        "dataset": dataset_ref(dataset),
        "synthetic": dataset.synthetic,
        "created_at": utc_timestamp(),
        "versions": library_versions(),
        **extra,
    }


def write_run(out: str | Path, model: Any, metadata: dict[str, Any],
              extra: Callable[[Path], None] | None = None) -> Path:
    """Write a run directory atomically: ``model/`` + ``run.json`` (+ whatever ``extra`` writes)."""
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp / MODEL_DIR)
        metadata = {**metadata, "model_fingerprint": model.fingerprint()}
        (tmp / RUN_FILE).write_text(json.dumps(metadata, indent=2, default=str) + "\n", encoding="utf-8")
        if extra is not None:
            extra(tmp)
    model.path = Path(out) / MODEL_DIR
    return Path(out)


def read_run(path: str | Path) -> dict[str, Any]:
    """``run.json`` of a run directory."""
    f = Path(path) / RUN_FILE
    if not f.is_file():
        raise ModelError(f"{f}: file not found; expected a run directory written by avret train/distill")
    return json.loads(f.read_text(encoding="utf-8"))


def recorded_dataset(path: str | Path) -> str | None:
    """The data-set reference a run (``RUN`` or ``RUN/model``) was trained on, if it records one."""
    path = Path(path)
    for run_dir in (path, path.parent):
        f = run_dir / RUN_FILE
        if f.is_file():
            return json.loads(f.read_text(encoding="utf-8")).get("dataset")
    return None


def fit_cca_selected(dataset: AVDataset, seed: int = 0, val_fraction: float = 0.1) -> tuple[CCAModel, dict]:
    """Fit CCA on ``train``; choose components and ridge by validation mAP (never test).

    The chosen setting is refitted on train + val, as is usual for a closed-form baseline.
    """
    from avret.eval.retrieval import cross_modal_report

    ds = dataset.with_validation_split(val_fraction, seed=seed)
    train, val = ds.subset("train"), ds.subset("val")
    scores = {}
    for k in CCA_COMPONENTS:
        for reg in CCA_REGS:
            model = CCAModel.fit(train.audio, train.visual, k, reg)
            rep = cross_modal_report(model.embed("audio", val.audio), model.embed("visual", val.visual), val.labels)
            scores[(k, reg)] = rep.mean_map
    (k, reg), best = max(scores.items(), key=lambda kv: kv[1])
    both = ds.take((ds.split == "train") | (ds.split == "val"))
    model = CCAModel.fit(both.audio, both.visual, k, reg, class_names=ds.class_names)
    return model, {"n_components": k, "reg": reg, "val_map": best,
                   "grid": [{"n_components": kk, "reg": rr, "val_map": v} for (kk, rr), v in scores.items()]}


def train_run(
    dataset: AVDataset,
    out: str | Path,
    model_type: str = "towers",
    train_config: TrainConfig | None = None,
    tower_config: TowerConfig | None = None,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
) -> Path:
    """Train a retrieval model without distillation and write its run directory."""
    cfg = train_config or TrainConfig()
    if model_type == "cca":
        model, selection = fit_cca_selected(dataset, seed=cfg.seed, val_fraction=cfg.val_fraction)
        meta = run_metadata(dataset, "none", "cca", cfg.seed, selection=selection)
        return write_run(out, model, meta)
    if model_type != "towers":
        raise ModelError(f"model type '{model_type}': expected 'towers' or 'cca'")
    result: TrainResult = train_towers(dataset, tower_config, cfg, progress=progress)
    meta = run_metadata(
        dataset, "none", "towers", cfg.seed,
        train_config=asdict(cfg), tower_config=asdict(result.model.config),
        best_epoch=result.best_epoch, best_val_map=result.best_val_map,
        train_seconds=result.seconds, history=result.history,
    )
    return write_run(out, result.model, meta)
