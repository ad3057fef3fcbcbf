"""Distillation methods compared on vegas-synth (SYNTHETIC): mAP over seeds, plus training time.

For each setting (data-set size and noise level) and seed, one teacher is trained and shared by the
methods that need it (its time is reported apart); every method then trains the same towers with
the same seed, and each run is evaluated on the test split (selection on val only). Also reports
the deployed towers' parameter count per method and the per-query embedding cost, which must be
identical across methods (only the towers run at inference).

    python -m benchmarks.bench_distill            # full: 3 settings x 3 seeds
    python -m benchmarks.bench_distill --quick    # smoke run
    python -m benchmarks.bench_distill --settings n1500-default --mixed-fraction 0   # control
    python -m benchmarks.bench_distill --settings n1500-default --methods none --true-labels
    python -m benchmarks.bench_distill --settings n1500-default --methods videoadviser --relevance-loss mse --weight 5
    python -m benchmarks.bench_distill --fair     # THE comparison: the fair, val-tuned protocol (fair_protocol.py)

``--fair`` runs :mod:`benchmarks.fair_protocol` on ``--settings`` (default n1500-default): every method
(none, kd, videoadviser, msd with each weighting, mi-kd) gets the same four configurations' budget,
chosen on val per seed, tested once; runs are kept in ``runs/bench-distill-fair/`` so a re-run resumes.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from avret.data import SynthConfig, make_vegas_synth
from avret.distill.configs import configure
from avret.distill.methods import METHODS, NEEDS_TEACHER
from avret.distill.pipeline import DistillConfig, run_distillation
from avret.eval.evaluate import evaluate_model
from avret.io import load_model
from avret.train.tower_training import TrainConfig
from benchmarks._common import machine_info, median_time, print_table, write_results

SETTINGS = {
    "n1500-default": SynthConfig.preset("default", n_clips=1500),
    "n3000-hard": SynthConfig.preset("hard", n_clips=3000),
    "n6000-light": SynthConfig.preset("light", n_clips=6000),
}
QUICK = {"n600-default": SynthConfig.preset("default", n_clips=600)}


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--methods", default="none,kd,videoadviser,msd,mi-kd")
    parser.add_argument("--settings", default=None, help="comma-separated subset of: " + ",".join(SETTINGS))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: run settings in parallel)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--prompts", default="per-clip", help="teacher prompt conditioning")
    parser.add_argument("--weight", type=float, default=None, help="distillation weight (default: method's)")
    parser.add_argument("--relevance-loss", default="bce", help="videoadviser step-2 loss: bce | mse")
    parser.add_argument("--student-target", default="pairwise", help="videoadviser step 2: pairwise | per-clip")
    parser.add_argument("--mixed-fraction", type=float, default=None,
                        help="override vegas-synth's share of mixed clips (0: the control without them)")
    parser.add_argument("--true-labels", action="store_true",
                        help="diagnostic: train on the simulation's true labels (what no real data set offers)")
    parser.add_argument("--fair", action="store_true", help="the fair, val-tuned protocol (benchmarks.fair_protocol)")
    parser.add_argument("--rows", default=None, help="--fair: method rows (default: all)")
    parser.add_argument("--workdir", default="runs/bench-distill-fair", help="--fair: where the runs are kept")
    args = parser.parse_args()
    if args.fair:
        fair(args)
        return
    methods = args.methods.split(",")
    variant = "".join([f"-mixed{args.mixed_fraction:g}" if args.mixed_fraction is not None else "",
                       f"-{args.relevance_loss}" if args.relevance_loss != "bce" else "",
                       f"-{args.student_target}" if args.student_target != "pairwise" else "",
                       f"-w{args.weight:g}" if args.weight is not None else "",
                       "-truelabels" if args.true_labels else ""])
    torch.set_num_threads(args.threads)
    settings = QUICK if args.quick else SETTINGS
    if args.settings:
        settings = {k: SETTINGS[k] for k in args.settings.split(",")}
    if args.mixed_fraction is not None:
        settings = {k: replace(v, mixed_fraction=args.mixed_fraction) for k, v in settings.items()}
    seeds = list(range(1 if args.quick else args.seeds))
    epochs = 20 if args.quick else TrainConfig.epochs  # distilled students need more than a few epochs
    records = []
    with tempfile.TemporaryDirectory(prefix="bench-distill-") as tmp:
        for setting, synth in settings.items():
            ds = make_vegas_synth(synth)
            if args.true_labels:
                ds = replace(ds, labels=np.asarray(ds.meta["true_labels"]))
            for seed in seeds:
                teacher_dir = None
                for method in methods:
                    out = Path(tmp) / f"{setting}-{seed}-{method}"
                    if teacher_dir is not None and method in NEEDS_TEACHER:  # share this setting and seed's teacher
                        import shutil

                        shutil.copytree(teacher_dir / "teacher", out / "teacher")
                        shutil.copy2(teacher_dir / "step1.json", out / "step1.json")
                    step2 = {"relevance_loss": args.relevance_loss, "student_target": args.student_target}
                    config = configure(METHODS[method].config, weight=args.weight,
                                       **(step2 if method == "videoadviser" else {}))
                    cfg = DistillConfig(method=method, prompt_conditioning=args.prompts,
                                        teacher_epochs=5 if args.quick else 20, method_config=config)
                    start = time.perf_counter()
                    run = run_distillation(ds, out, cfg, TrainConfig(seed=seed, epochs=epochs))
                    wall = time.perf_counter() - start
                    if method in NEEDS_TEACHER and teacher_dir is None:
                        teacher_dir = out
                    import json

                    meta = json.loads((run / "run.json").read_text())
                    model = load_model(run)
                    rep = evaluate_model(model, ds)
                    n_params = sum(p.numel() for p in model.parameters())
                    q = ds.audio[:1]
                    embed_s, _ = median_time(lambda m=model, q=q: m.embed("audio", q), repeats=20)
                    rec = {"setting": setting, "seed": seed, "method": method,
                           "a2v": rep.audio_to_visual.map, "v2a": rep.visual_to_audio.map, "mean": rep.mean_map,
                           "student_seconds": meta["train_seconds"], "wall_seconds": wall,
                           "teacher_seconds": meta.get("teacher", {}).get("teacher_seconds"),
                           "teacher_val_accuracy": meta.get("teacher", {}).get("teacher_val_accuracy"),
                           "best_epoch": meta["best_epoch"], "best_val_map": meta["best_val_map"],
                           "deployed_params": n_params,
                           "query_embed_ms": 1000 * embed_s}
                    records.append(rec)
                    print(f"{setting} seed {seed} {method:12s} mean mAP {rep.mean_map:.4f} "
                          f"({wall:.0f} s)", flush=True)
    rows = []
    summary = []
    for setting in settings:
        for method in methods:
            recs = [r for r in records if r["setting"] == setting and r["method"] == method]
            stats = {k: _mean_std([r[k] for r in recs])
                     for k in ("a2v", "v2a", "mean", "best_val_map", "student_seconds")}
            params = {r["deployed_params"] for r in recs}
            base = {r["seed"]: r["mean"] for r in records if r["setting"] == setting and r["method"] == "none"}
            paired = _mean_std([r["mean"] - base[r["seed"]] for r in recs]) if base and method != "none" else None
            embed_ms = statistics.median(r["query_embed_ms"] for r in recs)
            summary.append({"setting": setting, "method": method, "n_seeds": len(recs),
                            "deployed_params": sorted(params), "query_embed_ms_median": embed_ms,
                            **{f"{k}_mean": v[0] for k, v in stats.items()},
                            **{f"{k}_std": v[1] for k, v in stats.items()},
                            "paired_gain_vs_none": paired})
            rows.append([setting, method, len(recs)] + [f"{100 * stats[k][0]:.2f} ± {100 * stats[k][1]:.2f}"
                                                         for k in ("a2v", "v2a", "mean")]
                        + ([f"{100 * paired[0]:+.2f} ± {100 * paired[1]:.2f}"] if paired else ["—"])
                        + [f"{100 * stats['best_val_map'][0]:.2f}", f"{stats['student_seconds'][0]:.0f}",
                           f"{embed_ms:.3f}", "/".join(map(str, params))])
    print(f"\nvegas-synth (SYNTHETIC data{variant}) — test mAP (%) mean ± std over seeds; selection on val only")
    print_table(["setting", "method", "seeds", "A->V", "V->A", "mean", "vs none (paired)", "val mean", "student s",
                 "query ms", "params"], rows)
    teacher_times = [r["teacher_seconds"] for r in records if r["teacher_seconds"]]
    if teacher_times:
        print(f"teacher training: median {statistics.median(teacher_times):.0f} s per setting and seed "
              f"(shared by kd and videoadviser)")
    name = "bench_distill_quick" if args.quick else "bench_distill" + (f"-{args.settings}" if args.settings else "")
    name += variant
    path = write_results(name, {
        "synthetic": True, "settings": {k: asdict(v) for k, v in settings.items()},
        "prompts": args.prompts, "relevance_loss": args.relevance_loss, "student_target": args.student_target,
        "weight": args.weight,
        "true_labels": args.true_labels, "runs": records, "summary": summary, "machine": machine_info()})
    print(f"wrote {path}")
    assert np.isfinite([r["mean"] for r in records]).all()


def fair(args: argparse.Namespace) -> None:
    from benchmarks import fair_protocol
    from benchmarks._common import RESULTS_DIR, load_check

    load = load_check(100.0, "bench_distill --fair (mAP only: the load changes no result)")
    torch.set_num_threads(args.threads)
    names = (args.settings or "n1500-default").split(",")
    rows = args.rows.split(",") if args.rows else list(fair_protocol.method_grids())
    seeds = list(range(args.seeds))
    results: dict = {"synthetic": True, "protocol": fair_protocol.__doc__, "seeds": seeds, "settings": {},
                     "load_before": load, "machine": machine_info()}
    md = []
    for name in names:
        ds = make_vegas_synth(SETTINGS[name])
        t0 = time.perf_counter()
        res = fair_protocol.run_protocol(ds, Path(args.workdir) / name, rows, seeds,
                                         epochs=20 if args.quick else None, teacher_epochs=5 if args.quick else 20)
        res["seconds"] = round(time.perf_counter() - t0, 1)
        results["settings"][name] = {"synth": asdict(SETTINGS[name]), **res}
        title = (f"vegas-synth {name} (SYNTHETIC data) — fair protocol: {fair_protocol.GRID_SIZE} configurations "
                 f"per method chosen on val mAP, test mAP (%) mean ± std over seeds {seeds}")
        print("\n" + title)
        print_table(*fair_protocol.table(res["summary"]))
        md.append(fair_protocol.markdown(title, res["summary"]))
    name = "bench_distill_fair" + ("_quick" if args.quick else "")
    path = write_results(name, results)
    (RESULTS_DIR / f"{name}.md").write_text("\n".join(md))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
