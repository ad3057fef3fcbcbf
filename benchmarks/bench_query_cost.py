"""Query cost with and without distillation: one query, embedded by the towers and searched in FAISS.

Trains towers without distillation and with each distillation method on vegas-synth (SYNTHETIC;
short runs: only the deployed model's cost is measured here, not its quality), builds the test-split
index of each, and times the whole query path of `avret search` (embed one clip's features with the
query tower, then exact top-10 search over the other modality's gallery) in both directions. The
methods interleave within every repeat, so machine noise hits them alike; the table reports medians
and the ratio to no distillation measured in the same run.

    python -m benchmarks.bench_query_cost
    python -m benchmarks.bench_query_cost --quick
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from avret.data import SynthConfig, make_vegas_synth
from avret.distill.pipeline import DistillConfig, run_distillation
from avret.index.build import build_indexes
from avret.io import load_model
from avret.train.tower_training import TrainConfig
from benchmarks._common import machine_info, print_table, write_results

DIRECTIONS = {"audio-to-video": ("audio", "visual"), "video-to-audio": ("visual", "audio")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--methods", default="none,kd,videoadviser,msd,mi-kd")
    parser.add_argument("--queries", type=int, default=300, help="timed single queries per method and direction")
    args = parser.parse_args()
    torch.set_num_threads(1)
    methods = args.methods.split(",")
    n_queries = 30 if args.quick else args.queries
    ds = make_vegas_synth(SynthConfig(n_clips=600 if args.quick else 1500))
    test = ds.subset("test")
    models, indexes = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-query-") as tmp:
        for method in methods:
            run = run_distillation(ds, Path(tmp) / method, DistillConfig(method=method, teacher_epochs=2),
                                   TrainConfig(epochs=2, seed=0))
            models[method] = load_model(run)
            indexes[method] = build_indexes(models[method], ds, Path(tmp) / f"{method}-index", split="test",
                                            device="cpu")
        rng = np.random.default_rng(0)
        rows = rng.integers(0, len(test), n_queries)
        times: dict[tuple[str, str], list[float]] = {(m, d): [] for m in methods for d in DIRECTIONS}
        for r in rows:  # interleave methods within each query
            for direction, (q_mod, g_mod) in DIRECTIONS.items():
                feats = test.features(q_mod)[r : r + 1]
                for method in methods:
                    t0 = time.perf_counter()
                    emb = models[method].embed(q_mod, feats)
                    indexes[method][g_mod].search(emb, 10)
                    times[(method, direction)].append(time.perf_counter() - t0)
    summary, table = [], []
    for direction in DIRECTIONS:
        base = statistics.median(times[("none", direction)]) if "none" in methods else None
        for method in methods:
            med = statistics.median(times[(method, direction)])
            n_params = sum(p.numel() for p in models[method].parameters())
            dim = indexes[method][DIRECTIONS[direction][1]].dim
            ratio = med / base if base else float("nan")
            summary.append({"direction": direction, "method": method, "median_ms": 1000 * med,
                            "ratio_to_none": ratio, "deployed_params": n_params, "index_dim": dim,
                            "queries": n_queries})
            table.append([direction, method, f"{1000 * med:.3f}", f"{ratio:.2f}", str(n_params), str(dim)])
    print(f"vegas-synth (SYNTHETIC) test gallery of {len(test)} clips; {n_queries} single queries, "
          "embed + exact top-10 FAISS search, 1 thread")
    print_table(["direction", "method", "median ms", "vs none", "deployed params", "index dim"], table)
    path = write_results("bench_query_cost_quick" if args.quick else "bench_query_cost",
                         {"synthetic": True, "summary": summary, "machine": machine_info()})
    print(f"wrote {path}")
    params = {row["deployed_params"] for row in summary}
    assert len(params) == 1, f"deployed parameter counts differ across methods: {params}"


if __name__ == "__main__":
    main()
