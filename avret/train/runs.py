"""``avret train``: a retrieval model without distillation, written as a run directory.

The run-directory layout and the checkpoint format are :mod:`avret.io`'s (one for every command).
Under torchrun every rank trains and only rank 0 writes the run directory
(:func:`avret.train.distributed.on_main`); ``run.json`` records ``world_size`` and the global batch.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

from avret.data.dataset import AVDataset
from avret.data.registry import dataset_ref
from avret.errors import ModelError
from avret.io import read_run, write_run
from avret.models.cca import CCAModel
from avret.models.towers import TowerConfig
from avret.train import distributed as dist
from avret.train.loop import Progress
from avret.train.tower_training import TrainConfig, TrainResult, ValMetric, mean_map, train_towers
from avret.utils.atomic import RUN_KIND, check_output

CCA_COMPONENTS = (8, 16, 32, 64, 128)
CCA_REGS = (1e-3, 1e-2, 1e-1)


def run_metadata(dataset: AVDataset, method: str, seed: int, **extra: Any) -> dict[str, Any]:
    """The common header of ``run.json`` (the rest is added by :func:`avret.io.write_run`)."""
    return {"method": method, "seed": seed, "dataset": dataset_ref(dataset), "synthetic": dataset.synthetic,
            **extra}


def towers_metadata(result: TrainResult, cfg: TrainConfig) -> dict[str, Any]:
    """What a towers run records about its training: configs, selection, device, history."""
    return {"train_config": asdict(cfg), "tower_config": asdict(result.model.config),
            "device": result.device, "precision": result.precision, "world_size": result.world_size,
            "global_batch_size": result.world_size * cfg.batch_size,
            "best_epoch": result.best_epoch, "best_val_map": result.best_val_map,
            "train_seconds": result.seconds, "history": result.history}


def recorded_dataset(path: str | Path) -> str | None:
    """The data-set reference a run (``RUN`` or ``RUN/model``) was trained on, if it records one."""
    try:
        return read_run(path).get("dataset")
    except ModelError:
        return None


def fit_cca_selected(dataset: AVDataset, seed: int = 0, val_fraction: float = 0.1,
                     val_metric: ValMetric = mean_map) -> tuple[CCAModel, dict]:
    """Fit CCA on ``train``; choose components and ridge by validation mAP (never test).

    The chosen setting is refitted on train + val, as is usual for a closed-form baseline.
    """
    ds = dataset.with_validation_split(val_fraction, seed=seed)
    train, val = ds.subset("train"), ds.subset("val")
    scores = {}
    for k in CCA_COMPONENTS:
        for reg in CCA_REGS:
            model = CCAModel.fit(train.audio, train.visual, k, reg)
            scores[(k, reg)] = val_metric(model.embed("audio", val.audio), model.embed("visual", val.visual),
                                          val.labels, list(val.class_names))
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
    progress: Progress | None = None,
    overwrite: bool = False,
) -> Path:
    """Train a retrieval model without distillation and write its run directory.

    ``out`` may only replace an earlier run directory unless ``overwrite`` (checked before training).
    Under torchrun every rank trains, rank 0 writes ``out`` and every rank returns it.
    """
    check_output(out, RUN_KIND, overwrite=overwrite)
    cfg = train_config or TrainConfig()
    dist.init_from_env(cfg.device)
    if model_type == "cca":  # closed form: every rank fits the same (cheap), rank 0 writes
        model, selection = fit_cca_selected(dataset, seed=cfg.seed, val_fraction=cfg.val_fraction)
        meta = run_metadata(dataset, "none", cfg.seed, command="train", device="cpu", selection=selection,
                            best_val_map=selection["val_map"], world_size=dist.world_size())
        return dist.on_main(lambda: write_run(out, model, meta))
    if model_type != "towers":
        raise ModelError(f"model type '{model_type}': expected 'towers' or 'cca'")
    result = train_towers(dataset, tower_config, cfg, progress=progress)
    meta = run_metadata(dataset, "none", cfg.seed, command="train", **towers_metadata(result, cfg))
    return dist.on_main(lambda: write_run(out, result.model, meta))
