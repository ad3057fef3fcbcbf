"""Benchmark avret.index.AVIndex against numpy brute force on synthetic embeddings.

Run ``python -m benchmarks.bench_index`` (about 3-6 minutes on 2 cores, < 3 GB memory) or with
``--quick`` (seconds). For each gallery size it measures, in the same run and process:

* build time of ``AVIndex.build`` (exact ``Flat``: validation + copy into FAISS),
* batched search throughput (queries/s for a batch of queries, median of >= 3 repeats) and
  single-query latency (median over single-row calls) of AVIndex vs numpy brute force
  (matmul + argpartition + sort of the top k, in query chunks to bound memory),
* one approximate factory (``IVF<nlist>,Flat`` with nprobe; plus ``HNSW32`` on the smaller
  gallery) with recall@k against the exact numpy result.

The data are SYNTHETIC: seeded, L2-normalised 128-d vectors drawn around 1,000 random cluster
centres (roughly like embeddings of a labelled data set; uniformly random vectors would be an
unrealistic worst case for approximate indexes). Numbers depend on the machine; the JSON in
``benchmarks/results/bench_index.json`` records it.
"""

from __future__ import annotations

import argparse
import gc
import math
import resource
import time
from typing import Any

import faiss
import numpy as np

from avret.index import AVIndex
from benchmarks._common import load_check, machine_info, median_time, print_table, write_results

DIM = 128
K = 10
CENTRES = 1000
NOISE = 1.5  # norm of the per-point noise relative to its (unit) centre: clusters overlap, so
# approximate indexes have a real recall/speed trade-off (cosine to own centre ~0.55)
NUMPY_CHUNK = 64  # query rows per matmul in the numpy baseline (1M gallery -> 256 MB of scores)


def synthetic(n: int, rng: np.random.Generator, centres: np.ndarray) -> np.ndarray:
    """``n`` L2-normalised vectors: a random centre plus isotropic noise, built in chunks."""
    out = np.empty((n, centres.shape[1]), dtype=np.float32)
    step = 200_000
    for s in range(0, n, step):
        m = min(step, n - s)
        x = centres[rng.integers(0, len(centres), m)]
        x += rng.standard_normal((m, centres.shape[1]), dtype=np.float32) * (NOISE / np.sqrt(DIM))
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[s : s + m] = x
    return out


def numpy_topk(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product: matmul + argpartition + sort, chunked over queries."""
    n = queries.shape[0]
    scores = np.empty((n, k), dtype=np.float32)
    rows = np.empty((n, k), dtype=np.int64)
    for s in range(0, n, NUMPY_CHUNK):
        sim = queries[s : s + NUMPY_CHUNK] @ gallery.T
        part = np.argpartition(sim, -k, axis=1)[:, -k:]
        ps = np.take_along_axis(sim, part, axis=1)
        order = np.argsort(-ps, axis=1, kind="stable")
        rows[s : s + NUMPY_CHUNK] = np.take_along_axis(part, order, axis=1)
        scores[s : s + NUMPY_CHUNK] = np.take_along_axis(ps, order, axis=1)
    return scores, rows


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of the exact top-k that ``found`` retrieves."""
    hits = sum(len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth, strict=True))
    return hits / truth.size


def single_latency(fn: Any, queries: np.ndarray) -> float:
    """Median seconds of ``fn(q)`` over single-row queries (after one warm-up call)."""
    fn(queries[:1])
    times = []
    for i in range(queries.shape[0]):
        t0 = time.perf_counter()
        fn(queries[i : i + 1])
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


def bench_size(n: int, args: argparse.Namespace, rng: np.random.Generator, centres: np.ndarray) -> list[dict]:
    """All rows for one gallery size."""
    t0 = time.perf_counter()
    gallery = synthetic(n, rng, centres)
    queries = synthetic(args.queries, rng, centres)
    singles = queries[: args.singles]
    ids = [f"clip{i:07d}" for i in range(n)]
    labels = np.zeros(n, dtype=np.int64)
    print(f"[n={n:,}] data generated in {time.perf_counter() - t0:.1f}s", flush=True)
    rows: list[dict] = []

    def row(method: str, build_s: float | None, batch_s: float, batch_all: list[float], single_s: float,
            recall: float, **extra: Any) -> dict:
        r = {
            "gallery": n,
            "method": method,
            "build_s": build_s,
            "batch_queries": int(queries.shape[0]),
            "batch_s": batch_s,
            "batch_s_all": batch_all,
            "batch_qps": queries.shape[0] / batch_s,
            "single_ms": single_s * 1e3,
            "recall_at_k": recall,
            **extra,
        }
        rows.append(r)
        print(f"[n={n:,}] {method}: {r['batch_qps']:.0f} q/s batched, {r['single_ms']:.2f} ms single, "
              f"recall@{K} {recall:.4f}", flush=True)
        return r

    # numpy brute force: the baseline and the ground truth.
    np_batch, np_all = median_time(lambda: numpy_topk(gallery, queries, K), args.repeats)
    truth_scores, truth = numpy_topk(gallery, queries, K)
    np_single = single_latency(lambda q: numpy_topk(gallery, q, K), singles)
    base = row("numpy brute force (exact)", None, np_batch, np_all, np_single, 1.0)

    # AVIndex Flat (exact).
    def build(factory: str = "Flat") -> AVIndex:
        return AVIndex.build(gallery, ids, labels, [], modality="visual", model_fingerprint="bench",
                             dataset="synthetic", factory=factory, device=args.device)

    build_s, build_all = median_time(build, args.repeats)
    idx = build()
    fl_batch, fl_all = median_time(lambda: idx.search(queries, K), args.repeats)
    res = idx.search(queries, K)
    fl_single = single_latency(lambda q: idx.search(q, K), singles)
    row("AVIndex Flat (exact)", build_s, fl_batch, fl_all, fl_single, recall_at_k(res.rows, truth),
        build_s_all=build_all, device=idx.device,
        max_abs_score_diff_vs_numpy=float(np.abs(res.scores - truth_scores).max()))
    idx = res = None  # free before the next index
    gc.collect()

    # Approximate: IVF (+ HNSW on small galleries).
    nlist = args.nlist_small if n < 100_000 else args.nlist_large
    approx = [(f"IVF{nlist},Flat", {"nprobe": args.nprobe}, f"nprobe={args.nprobe}")]
    if n <= args.hnsw_max:
        approx.append(("HNSW32", {"ef_search": args.ef_search}, f"efSearch={args.ef_search}"))
    for factory, opts, label in approx:
        t0 = time.perf_counter()
        aidx = build(factory)
        a_build = time.perf_counter() - t0
        a_batch, a_all = median_time(
            lambda aidx=aidx, opts=opts: aidx.search(queries, K, **opts), args.repeats
        )
        a_res = aidx.search(queries, K, **opts)
        a_single = single_latency(lambda q, aidx=aidx, opts=opts: aidx.search(q, K, **opts), singles)
        row(f"AVIndex {factory} {label}", a_build, a_batch, a_all, a_single, recall_at_k(a_res.rows, truth),
            device=aidx.device)
        aidx = a_res = None
        gc.collect()

    for r in rows:
        r["batch_speedup_vs_numpy"] = base["batch_s"] / r["batch_s"]
        r["single_speedup_vs_numpy"] = base["single_ms"] / r["single_ms"]
    print(f"[n={n:,}] peak RSS so far {peak_rss_gb():.2f} GB", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, runs in seconds")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--max-load", type=float, default=1.5,
                   help="refuse to run when the 1-minute load average is above this (timings under load are not "
                        "comparable); --force runs anyway and flags the result")
    p.add_argument("--force", action="store_true")
    args = p.parse_args(argv)
    load_before = load_check(args.max_load, "before")
    if load_before["flagged"] and not args.force:
        raise SystemExit(f"refused: load average {load_before['load_avg'][0]} > {args.max_load}; "
                         "wait for a quiet machine or pass --force (the result is then flagged)")
    if args.quick:
        sizes, args.queries, args.singles = [2_000, 20_000], 200, 20
        args.nlist_small, args.nlist_large, args.nprobe = 32, 32, 8
        args.hnsw_max, args.ef_search = 20_000, 64
    else:
        sizes, args.queries, args.singles = [28_103, 1_000_000], 1_000, 30
        args.nlist_small, args.nlist_large, args.nprobe = 256, 1024, 16
        args.hnsw_max, args.ef_search = 100_000, 64
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((CENTRES, DIM), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    t_start = time.perf_counter()
    rows: list[dict] = []
    for n in sizes:
        rows.extend(bench_size(n, args, rng, centres))
        gc.collect()

    headers = ["gallery", "method (synthetic 128-d)", "build s", f"batch q/s ({args.queries} q)",
               "vs numpy", "single ms", "vs numpy", f"recall@{K}"]
    table = [
        [f"{r['gallery']:,}", r["method"], "-" if r["build_s"] is None else round(r["build_s"], 3),
         round(r["batch_qps"]), f"{r['batch_speedup_vs_numpy']:.2f}x", round(r["single_ms"], 3),
         f"{r['single_speedup_vs_numpy']:.2f}x", f"{r['recall_at_k']:.4f}"]
        for r in rows
    ]
    print()
    print_table(headers, table)
    info = machine_info()
    info["faiss"] = faiss.__version__
    info["faiss_threads"] = faiss.omp_get_max_threads()
    info["faiss_gpus"] = getattr(faiss, "get_num_gpus", lambda: 0)()
    path = write_results(
        "bench_index",
        {
            "benchmark": "bench_index",
            "quick": bool(args.quick),
            "data": f"synthetic: seeded L2-normalised {DIM}-d vectors around {CENTRES} random centres, "
                    f"noise {NOISE}",
            "k": K,
            "queries": args.queries,
            "single_queries": args.singles,
            "repeats": args.repeats,
            "numpy_chunk": NUMPY_CHUNK,
            "device": args.device,
            "rows": rows,
            "peak_rss_gb": peak_rss_gb(),
            "total_s": time.perf_counter() - t_start,
            "load_before": load_before,
            "load_after": load_check(math.inf, "after (includes this benchmark's own threads)"),
            "machine": info,
        },
    )
    print(f"\nwrote {path} (total {time.perf_counter() - t_start:.0f}s, peak RSS {peak_rss_gb():.2f} GB)")


if __name__ == "__main__":
    main()
