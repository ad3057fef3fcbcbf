"""The fair comparison protocol of the distillation methods (issue 13), shared by bench_distill and bench_av_digits.

Every method gets the SAME number of hyper-parameter configurations (:data:`GRID_SIZE` = 4): its
distillation weight (two values) × one method-specific knob (two values); ``none`` has no
distillation weight, so it gets four tower learning rates instead. For each seed:

1. every configuration of every method is trained (the towers' epoch is chosen on the validation
   split carved from train, as in every avret run);
2. per method, the configuration with the highest *validation* mean mAP is chosen (ties: the first in
   grid order) — the test split plays no part in it;
3. only the chosen run is evaluated on the test split (once).

Reported per method: test mAP (A→V, V→A, mean) mean ± std over the seeds, the paired gain over
``none`` (per seed: method's chosen run − none's chosen run), and the configuration chosen in each
seed. The weight grid is centred (in log scale) on each method's default — half and twice it — so no
method starts from a value tuned on the test data or on another method's data; the knob grid holds
the method's default and one alternative.

The VideoAdviser teacher (kd, videoadviser) is trained once per seed and shared by their
configurations: none of their knobs changes the teacher. MSD and MI-KD train their own multimodal
teachers inside each run (their teacher is part of the method).

Runs are kept under ``workdir`` (one directory per seed/method/config); a re-run with the same
settings reuses finished runs (``run_distillation`` skips a complete run), so an interrupted
benchmark resumes.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

GRID_SIZE = 4
K = 10

# method row -> (distill method, fixed method-config fields, grid of (label, method-config overrides,
# TrainConfig overrides)); the fields are those of the method's typed config (avret.distill.configs)
Grid = list[tuple[str, dict[str, Any], dict[str, Any]]]


def _weight_knob(weights: tuple[float, float], knob: str, values: tuple[Any, Any]) -> Grid:
    return [(f"weight={w:g}, {knob}={v}", {"weight": w, knob: v}, {}) for w in weights for v in values]


def method_grids() -> dict[str, tuple[str, dict[str, Any], Grid]]:
    """Row name -> (``--method``, fixed options, the 4 configurations)."""
    from avret.distill.configs import VideoAdviserConfig

    lr_grid: Grid = [(f"lr={lr:g}", {}, {"lr": lr}) for lr in (5e-4, 1e-3, 2e-3, 4e-3)]
    va = VideoAdviserConfig.weight
    rows: dict[str, tuple[str, dict[str, Any], Grid]] = {
        "none": ("none", {}, lr_grid),
        "kd": ("kd", {}, _weight_knob((0.5, 2.0), "temperature", (4.0, 2.0))),
        "videoadviser": ("videoadviser", {}, _weight_knob((va / 2, va * 2), "relevance_loss", ("bce", "mse"))),
    }
    for weighting in ("uniform", "population", "instance", "learned"):
        rows[f"msd-{weighting}"] = ("msd", {"weighting": weighting},
                                    _weight_knob((0.5, 2.0), "temperature", (4.0, 2.0)))
    rows["mi-kd"] = ("mi-kd", {}, _weight_knob((0.5, 2.0), "temperature", (0.1, 0.2)))
    for name, (_, _, grid) in rows.items():
        assert len(grid) == GRID_SIZE, name
    return rows


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def run_protocol(dataset: Any, workdir: Path, rows: list[str], seeds: list[int], *, epochs: int | None = None,
                 teacher_epochs: int = 20, distill_defaults: dict[str, Any] | None = None,
                 log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train every configuration of every row for every seed, choose on val, test the chosen once."""
    from avret.distill.methods import METHODS, NEEDS_TEACHER
    from avret.distill.pipeline import DistillConfig, run_distillation
    from avret.eval.evaluate import evaluate_model
    from avret.io import load_model
    from avret.train.tower_training import TrainConfig

    grids = method_grids()
    unknown = [r for r in rows if r not in grids]
    if unknown:
        raise SystemExit(f"unknown method rows {unknown}; expected some of {list(grids)}")
    train_base = TrainConfig(device="cpu") if epochs is None else TrainConfig(device="cpu", epochs=epochs)
    configs: list[dict[str, Any]] = []
    chosen: list[dict[str, Any]] = []
    for seed in seeds:
        teacher_src: Path | None = None
        for row in rows:
            method, fixed, grid = grids[row]
            trials = []
            for i, (label, cfg_over, train_over) in enumerate(grid):
                out = workdir / f"s{seed}" / row / f"c{i}"
                cfg = DistillConfig(method=method, teacher_epochs=teacher_epochs, **(distill_defaults or {}),
                                    method_config=METHODS[method].config(**fixed, **cfg_over))
                tcfg = replace(train_base, seed=seed, **train_over)
                if method in NEEDS_TEACHER and teacher_src is not None and not (out / "teacher").exists():
                    out.mkdir(parents=True, exist_ok=True)  # share this seed's teacher (same data, seed, settings)
                    shutil.copytree(teacher_src / "teacher", out / "teacher")
                    shutil.copy2(teacher_src / "step1.json", out / "step1.json")
                t0 = time.perf_counter()
                run = run_distillation(dataset, out, cfg, tcfg)
                wall = time.perf_counter() - t0
                if method in NEEDS_TEACHER and teacher_src is None:
                    teacher_src = run
                meta = json.loads((run / "run.json").read_text())
                rec = {"seed": seed, "row": row, "config_index": i, "config": label,
                       "val_mean_map": 100 * float(meta["best_val_map"]), "best_epoch": meta["best_epoch"],
                       "train_seconds": meta.get("train_seconds"), "wall_seconds": round(wall, 2),
                       "teacher_seconds": meta.get("teacher", {}).get("teacher_seconds"), "run": str(run)}
                trials.append(rec)
                configs.append(rec)
                log(f"seed {seed} {row:16s} [{label}] val mean mAP {rec['val_mean_map']:.2f} ({wall:.0f} s)")
            best = max(trials, key=lambda r: (r["val_mean_map"], -r["config_index"]))
            report = evaluate_model(load_model(Path(best["run"])), dataset)
            a2v, v2a = report.audio_to_visual, report.visual_to_audio
            pick = {**best, "a2v": 100 * a2v.map, "v2a": 100 * v2a.map, "mean": 100 * report.mean_map,
                    "a2v_p10": 100 * a2v.precision_at[K], "v2a_p10": 100 * v2a.precision_at[K]}
            chosen.append(pick)
            log(f"seed {seed} {row:16s} chose [{best['config']}] (val {best['val_mean_map']:.2f}) -> "
                f"test mean mAP {pick['mean']:.2f}")
    return {"configs": configs, "chosen": chosen, "summary": summarise(chosen, rows),
            "grids": {r: [g[0] for g in grids[r][2]] for r in rows},
            "fixed": {r: grids[r][1] for r in rows}}


def summarise(chosen: list[dict[str, Any]], rows: list[str]) -> list[dict[str, Any]]:
    base = {r["seed"]: r["mean"] for r in chosen if r["row"] == "none"}
    out = []
    for row in rows:
        recs = sorted((r for r in chosen if r["row"] == row), key=lambda r: r["seed"])
        stats = {k: _mean_std([r[k] for r in recs]) for k in ("a2v", "v2a", "mean", "a2v_p10", "v2a_p10",
                                                              "val_mean_map")}
        paired = None
        if row != "none" and base and all(r["seed"] in base for r in recs):
            paired = _mean_std([r["mean"] - base[r["seed"]] for r in recs])
        out.append({"row": row, "n_seeds": len(recs), **{f"{k}_mean": v[0] for k, v in stats.items()},
                    **{f"{k}_std": v[1] for k, v in stats.items()}, "paired_gain_vs_none": paired,
                    "chosen": {str(r["seed"]): r["config"] for r in recs}})
    return out


def table(summary: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    headers = ["method", "seeds", "A->V mAP", "V->A mAP", "mean mAP", "vs none (paired)", "val mean",
               "chosen config per seed"]
    rows = []
    for s in summary:
        pm = [f"{s[k + '_mean']:.2f} ± {s[k + '_std']:.2f}" for k in ("a2v", "v2a", "mean")]
        gain = s["paired_gain_vs_none"]
        rows.append([s["row"], str(s["n_seeds"]), *pm, f"{gain[0]:+.2f} ± {gain[1]:.2f}" if gain else "—",
                     f"{s['val_mean_map_mean']:.2f}", "; ".join(f"s{k}: {v}" for k, v in s["chosen"].items())])
    return headers, rows


def markdown(title: str, summary: list[dict[str, Any]]) -> str:
    headers, rows = table(summary)
    lines = [title, "", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
