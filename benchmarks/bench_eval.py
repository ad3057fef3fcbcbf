"""Benchmark: vectorised retrieval mAP vs the per-query Python-loop reference (peer-code style).

Run ``python -m benchmarks.bench_eval`` (or ``--quick`` for a smoke run). Data are SYNTHETIC:
seeded 128-d class-structured embeddings (10 classes, class centre + Gaussian noise) for the
two modalities. For each n (queries = gallery = n) it times one direction of
:func:`avret.eval.retrieval_metrics` (median of repeats), measures its peak traced memory, and
times the loop reference: in full when that is estimated to take under 3 minutes, otherwise on a
seeded random sample of queries, extrapolated linearly and marked so. On the sampled queries the
two implementations' per-query AP must agree to 1e-9. Results go to
``benchmarks/results/bench_eval.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import tracemalloc
from typing import Any

import numpy as np

from avret.eval import retrieval_metrics
from benchmarks._common import machine_info, median_time, print_table, write_results

N_CLASSES = 10
DIM = 128
FULL_REFERENCE_LIMIT_S = 180.0


def synthetic(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Seeded SYNTHETIC audio/visual embeddings (float32, n x 128) and their class labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, N_CLASSES, size=n)
    centres = rng.standard_normal((N_CLASSES, DIM))
    audio = centres[labels] + 3.0 * rng.standard_normal((n, DIM))
    visual = centres[labels] + 3.0 * rng.standard_normal((n, DIM))
    return audio.astype(np.float32), visual.astype(np.float32), labels


def reference_ap(
    queries: np.ndarray, query_labels: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray, rows: Any
) -> np.ndarray:
    """Per-query AP the way peer evaluation code does it: argsort each row, loop over the ranking."""
    q = queries.astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g = gallery.astype(np.float64)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    out = []
    for i in rows:
        sim = g @ q[i]
        order = np.argsort(-sim, kind="stable")
        hits, total = 0, 0.0
        for rank, j in enumerate(order, start=1):
            if gallery_labels[j] == query_labels[i]:
                hits += 1
                total += hits / rank
        out.append(total / hits if hits else 0.0)
    return np.asarray(out)


DEFINITION_SAMPLE = 40


def bench_one(n: int, repeats: int, sample: int, seed: int) -> dict[str, Any]:
    audio, visual, labels = synthetic(n, seed)
    print(f"n={n}: timing retrieval_metrics ({repeats} repeats) ...", flush=True)
    result: dict[str, Any] = {}

    def ours() -> None:
        result["m"] = retrieval_metrics(audio, labels, visual, labels)

    ours_s, ours_times = median_time(ours, repeats)
    metrics = result["m"]
    tracemalloc.start()
    retrieval_metrics(audio, labels, visual, labels)
    peak_mb = tracemalloc.get_traced_memory()[1] / 1024**2
    tracemalloc.stop()

    rng = np.random.default_rng(seed + 1)
    rows = np.sort(rng.choice(n, size=min(sample, n), replace=False))
    print(f"n={n}: timing the loop reference on {rows.size} sampled queries ...", flush=True)
    t0 = time.perf_counter()
    ref_sample = reference_ap(audio, labels, visual, labels, rows)
    sample_s = time.perf_counter() - t0
    estimate_s = sample_s * n / rows.size
    max_diff = float(np.abs(ref_sample - metrics.ap[rows]).max())
    if rows.size < n and estimate_s < FULL_REFERENCE_LIMIT_S:
        print(f"n={n}: running the full loop reference (estimated {estimate_s:.0f} s) ...", flush=True)
        t0 = time.perf_counter()
        ref_full = reference_ap(audio, labels, visual, labels, range(n))
        ref_s = time.perf_counter() - t0
        max_diff = float(np.abs(ref_full - metrics.ap).max())
        ref_mode, compared = "full run", n
        map_diff = abs(float(ref_full.mean()) - metrics.map)
    else:
        ref_s = estimate_s if rows.size < n else sample_s
        ref_mode = f"extrapolated from {rows.size} sampled queries" if rows.size < n else "full run"
        compared, map_diff = rows.size, None
    # The issue's "loop reference": the slow reference written from the definition in the tests
    # (pure-Python loops per pair). Timed on a few sampled queries and extrapolated linearly.
    from tests.test_retrieval_metrics import reference as definition_reference

    def_rows = rows[: max(1, min(DEFINITION_SAMPLE, rows.size))]
    print(f"n={n}: timing the definition reference on {def_rows.size} sampled queries ...", flush=True)
    t0 = time.perf_counter()
    def_ap = definition_reference(audio[def_rows], labels[def_rows], visual, labels)[0]
    def_sample_s = time.perf_counter() - t0
    def_s = def_sample_s * n / def_rows.size
    def_diff = float(np.abs(def_ap - metrics.ap[def_rows]).max())
    return {
        "definition_reference_s": def_s,
        "definition_reference_mode": f"extrapolated from {def_rows.size} sampled queries",
        "definition_speedup": def_s / ours_s,
        "definition_ap_max_abs_diff": def_diff,
        "n_queries": n,
        "n_gallery": n,
        "dim": DIM,
        "n_classes": N_CLASSES,
        "ours_median_s": ours_s,
        "ours_times_s": ours_times,
        "ours_peak_traced_mb": peak_mb,
        "reference_s": ref_s,
        "reference_mode": ref_mode,
        "reference_sampled_queries": int(rows.size),
        "reference_sample_s": sample_s,
        "speedup": ref_s / ours_s,
        "ap_max_abs_diff": max_diff,
        "ap_compared_queries": compared,
        "map_abs_diff": map_diff,
        "agree_1e-9": max_diff <= 1e-9,
        "map": metrics.map,
        "map_at_r": metrics.map_at_r,
        "precision_at": {str(k): v for k, v in metrics.precision_at.items()},
    }


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print the table, write benchmarks/results/bench_eval.json."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small smoke run (n=2000, 1 repeat)")
    parser.add_argument("--sizes", type=int, nargs="*", default=None, help="n values (default 5621 28103)")
    parser.add_argument("--repeats", type=int, default=None, help="timing repeats (default 3)")
    parser.add_argument("--sample", type=int, default=None, help="reference queries sampled (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sizes = args.sizes or ([2000] if args.quick else [5621, 28103])
    repeats = args.repeats or (1 if args.quick else 3)
    sample = args.sample or (50 if args.quick else 200)

    load_before = os.getloadavg() if hasattr(os, "getloadavg") else None
    rows = [bench_one(n, repeats, sample, args.seed) for n in sizes]
    load_after = os.getloadavg() if hasattr(os, "getloadavg") else None

    print()
    print(f"retrieval mAP, one direction, {DIM}-d, {N_CLASSES} classes -- SYNTHETIC data (seed {args.seed})")
    print_table(
        ["n", "ours median s", "peer-style loop s", "peer ref", "speedup", "definition loop s (test ref)",
         "speedup", "peak MB (ours)", "max |dAP|", "mAP"],
        [
            [
                r["n_queries"],
                f"{r['ours_median_s']:.3f}",
                f"{r['reference_s']:.1f}",
                r["reference_mode"],
                f"{r['speedup']:.0f}x",
                f"{r['definition_reference_s']:.1f} ({r['definition_reference_mode']})",
                f"{r['definition_speedup']:.0f}x",
                f"{r['ours_peak_traced_mb']:.0f}",
                f"{r['ap_max_abs_diff']:.1e} ({r['ap_compared_queries']} q)",
                f"{r['map']:.4f}",
            ]
            for r in rows
        ],
    )
    print(f"load average before/after: {load_before} / {load_after} (shared machine)")
    path = write_results(
        "bench_eval",
        {
            "description": "avret.eval.retrieval_metrics vs two loop references (peer-code style: numpy argsort + "
            "Python loop over the ranking; definition: the tests' pure-Python reference); SYNTHETIC data",
            "synthetic": True,
            "quick": bool(args.quick),
            "seed": args.seed,
            "repeats": repeats,
            "load_average_before": load_before,
            "load_average_after": load_after,
            "results": rows,
            "machine": machine_info(),
        },
    )
    print(f"wrote {path}")
    return 0 if all(r["agree_1e-9"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
