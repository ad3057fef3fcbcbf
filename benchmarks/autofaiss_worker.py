"""The autofaiss side of bench_ann.py, run in its own venv (scripts/make_autofaiss_venv.sh): never imported by avret.

Usage: python autofaiss_worker.py WORKDIR BUDGET_BYTES OUT.json
WORKDIR holds gallery/gallery.npy, queries.npy and truth.npy (written by bench_ann.py). Builds an
autofaiss index under the budget, then measures recall@10, batch-1 p50 and batch-1000 q/s on the
held-out queries, and recall/latency over nprobe; writes OUT.json.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import faiss
import numpy as np
from autofaiss import build_index


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(f[:k]) & set(t)) / k for f, t in zip(found.tolist(), truth.tolist(), strict=True)]))


def measure(index, q: np.ndarray, truth: np.ndarray, k: int = 10, singles: int = 200) -> dict:
    _, found = index.search(q, k)
    t0 = time.perf_counter()
    index.search(q, k)
    batch = time.perf_counter() - t0
    times = []
    for row in q[:singles]:
        t = time.perf_counter()
        index.search(row[None, :], k)
        times.append(time.perf_counter() - t)
    return {"recall": round(recall(found, truth), 4), "batch1_p50_ms": round(float(np.median(times)) * 1000, 4),
            "batch_qps": round(len(q) / batch, 1)}


def main() -> None:
    work, budget, out = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    q = np.load(work / "queries.npy")
    truth = np.load(work / "truth.npy")
    index_path = work / f"autofaiss-{budget}.index"
    infos_path = work / f"autofaiss-{budget}.json"
    t0 = time.perf_counter()
    build_index(embeddings=str(work / "gallery"), index_path=str(index_path), index_infos_path=str(infos_path),
                max_index_memory_usage=f"{budget}B", current_memory_available="6G", metric_type="ip",
                min_nearest_neighbors_to_retrieve=10, max_index_query_time_ms=10, verbose=30)
    build_s = time.perf_counter() - t0
    index = faiss.read_index(str(index_path))
    infos = json.loads(infos_path.read_text())
    res = {"tool": "autofaiss", "budget_bytes": budget, "index_string": infos.get("index_key"),
           "index_param": infos.get("index_param"), "size_bytes": os.path.getsize(index_path),
           "build_s": round(build_s, 2), "faiss": faiss.__version__, **measure(index, q, truth)}
    sweep = []
    ps = faiss.ParameterSpace()
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        chosen = ivf.nprobe
        p = 1
        while p <= ivf.nlist:
            ps.set_index_parameter(index, "nprobe", p)
            sweep.append({"nprobe": p, **measure(index, q, truth, singles=100)})
            if sweep[-1]["recall"] > 0.995 or p >= 4096:
                break
            p *= 2
        ps.set_index_parameter(index, "nprobe", chosen)
    res["sweep"] = sweep
    out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
