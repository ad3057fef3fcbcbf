"""Scale part: index build time and memory at 1M and 5M vectors, Flat vs ``--factory auto``.

The data are SYNTHETIC: seeded, L2-normalised vectors of the towers' embedding width
(:class:`avret.models.towers.TowerConfig` ``embed_dim``, 128) around 1,000 random centres, as in
``benchmarks/bench_index.py``, written to a memory-mapped ``.npy`` in chunks so the parent never
holds them. For each size, in one run:

* **build** (each in its own subprocess, peak RSS = its ``VmHWM``): ``Flat`` and
  ``auto`` with a budget of 25% of Flat's size (which forces a compressed choice), both with the
  default shards (one per million vectors) from the memory-mapped vectors; wall time, peak RSS
  and the bytes of the files written (``index.faiss`` + ``index.ivfdata``; ``embeddings.npy``,
  memory-mapped and read only for clip-id queries, is reported apart);
* **search** (each in its own subprocess): load the index, 200 fresh queries from the same
  distribution one at a time, k=10: median latency, the process's peak RSS, and recall@10
  against Flat's exact answer;
* ratios auto / Flat of build time, build RSS, index bytes, search RSS and latency.

Peak RSS counts the pages of memory-mapped files a process touched (the vectors read while
building, the on-disk lists probed while searching) as well as its own memory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
K = 10
QUERIES = 200
BUDGET_FRACTION = 0.25

# Peak RSS of this process's own image: VmHWM (ru_maxrss of a child started by fork + exec also
# counts the parent's pages at the fork).
_PEAK = """
def peak():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return {"rss_mib": int(line.split()[1]) / 1024}
    return {"rss_mib": float("nan")}
"""

_BUILD = _PEAK + """
import json, sys, time
import numpy as np
from avret.index import AVIndex
a = json.loads(sys.argv[1])
x = np.load(a["vectors"], mmap_mode="r")
ids = [f"v{i}" for i in range(x.shape[0])]
t0 = time.perf_counter()
idx = AVIndex.build(x, ids, None, None, modality="visual", model_fingerprint="bench", factory=a["factory"],
                    max_memory=a["max_memory"], shards=None, workdir=a["work"])
idx.save(a["out"])
m = idx.manifest
print(json.dumps({"build_s": time.perf_counter() - t0, "factory": m.factory, "shards": m.shards,
                  "tuning": m.tuning, "estimated_bytes": (m.auto or {}).get("estimated_bytes"), **peak()}))
"""

_SEARCH = _PEAK + """
import json, sys, time
import numpy as np
from avret.index import AVIndex
a = json.loads(sys.argv[1])
q = np.load(a["queries"])
idx = AVIndex.load(a["index"], device="cpu")
idx.search(q[:1], a["k"])
times, rows = [], []
for i in range(q.shape[0]):
    t0 = time.perf_counter()
    r = idx.search(q[i : i + 1], a["k"])
    times.append(time.perf_counter() - t0)
    rows.append(r.rows[0])
np.save(a["rows_out"], np.asarray(rows))
print(json.dumps({"query_ms": 1000 * float(np.median(times)), **peak()}))
"""


def _child(code: str, args: dict[str, Any]) -> dict[str, Any]:
    """Run ``code`` in a fresh Python; its JSON line (with its peak RSS, MiB) and wall seconds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(args)], cwd=ROOT, env=env, stdout=fo, stderr=fe)
        status = proc.wait()
        wall = time.perf_counter() - t0
        fo.seek(0)
        fe.seek(0)
        if status != 0:
            raise RuntimeError(f"benchmark child failed: {fe.read()[-2000:]}")
        out = json.loads(fo.read().strip().splitlines()[-1])
    return {**out, "wall_s": wall}


def _write_vectors(path: Path, n: int, d: int, seed: int) -> None:
    from benchmarks.bench_index import CENTRES, synthetic

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CENTRES, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    step = 200_000
    for s in range(0, n, step):
        out[s : s + min(step, n - s)] = synthetic(min(step, n - s), rng, centres)
    out.flush()
    del out
    queries = synthetic(QUERIES, np.random.default_rng(seed + 1), centres)  # same centres, fresh points
    np.save(path.with_name("queries.npy"), queries)


def _files_mib(path: Path, names: tuple[str, ...]) -> float:
    return sum((path / f).stat().st_size for f in names if (path / f).is_file()) / 2**20


def run(quick: bool = False, sizes: tuple[int, ...] = (1_000_000, 5_000_000)) -> dict[str, Any]:
    """Measure Flat vs auto at each size (``quick``: 100k only); ``{"rows", "headers", "records"}``."""
    from avret.models.towers import TowerConfig
    from benchmarks.bench_index import recall_at_k

    d = TowerConfig().embed_dim
    sizes = (100_000,) if quick else tuple(sizes)
    records: list[dict[str, Any]] = []
    rows: list[list[Any]] = []
    with tempfile.TemporaryDirectory(prefix="avret-bench-index-", dir=os.environ.get("AVRET_BENCH_TMP")) as tmp:
        for n in sizes:
            base = Path(tmp) / str(n)
            base.mkdir()
            vec = base / "vectors.npy"
            _write_vectors(vec, n, d, seed=n)
            budget = int(BUDGET_FRACTION * 4 * n * d)
            res: dict[str, dict[str, Any]] = {}
            for kind, factory, max_memory in (("flat", "Flat", None), ("auto", "auto", budget)):
                out = base / kind
                b = _child(_BUILD, {"vectors": str(vec), "factory": factory, "max_memory": max_memory,
                                    "out": str(out), "work": str(base)})
                s = _child(_SEARCH, {"queries": str(base / "queries.npy"), "index": str(out), "k": K,
                                     "rows_out": str(base / f"{kind}-rows.npy")})
                res[kind] = {"build": b, "search": s, "index_mib": _files_mib(out, ("index.faiss", "index.ivfdata")),
                             "embeddings_mib": _files_mib(out, ("embeddings.npy",))}
            exact = np.load(base / "flat-rows.npy")
            for kind in ("flat", "auto"):
                r = res[kind]
                found = np.load(base / f"{kind}-rows.npy")
                rec = {
                    "synthetic": True, "n": n, "d": d, "kind": kind, "factory": r["build"]["factory"],
                    "shards": r["build"]["shards"], "max_memory_bytes": budget if kind == "auto" else None,
                    "estimated_bytes": r["build"]["estimated_bytes"], "build_s": r["build"]["build_s"],
                    "build_wall_s": r["build"]["wall_s"], "build_rss_mib": r["build"]["rss_mib"],
                    "index_mib": r["index_mib"], "embeddings_mib": r["embeddings_mib"],
                    "search_rss_mib": r["search"]["rss_mib"], "query_ms": r["search"]["query_ms"],
                    "recall_at_10": recall_at_k(found, exact), "tuning": r["build"]["tuning"],
                }
                records.append(rec)
            f, a = records[-2], records[-1]
            for rec in (f, a):
                ratio = rec is a
                rows.append([
                    n, rec["factory"], rec["shards"], f"{rec['build_s']:.1f}",
                    f"{rec['build_rss_mib']:.0f}", f"{rec['index_mib']:.0f}", f"{rec['search_rss_mib']:.0f}",
                    f"{rec['query_ms']:.2f}", f"{rec['recall_at_10']:.3f}",
                    f"{a['build_s'] / f['build_s']:.2f}" if ratio else "1",
                    f"{a['build_rss_mib'] / f['build_rss_mib']:.2f}" if ratio else "1",
                    f"{a['index_mib'] / f['index_mib']:.3f}" if ratio else "1",
                    f"{a['search_rss_mib'] / f['search_rss_mib']:.2f}" if ratio else "1",
                    f"{a['query_ms'] / f['query_ms']:.2f}" if ratio else "1",
                ])
    headers = ["n (SYNTHETIC)", "factory", "shards", "build s", "build RSS MiB", "index MiB", "search RSS MiB",
               "query ms (k=10)", "recall@10", "build s ratio", "build RSS ratio", "index ratio", "search RSS ratio",
               "query ratio"]
    return {"rows": rows, "headers": headers, "records": records}


if __name__ == "__main__":
    import argparse

    from benchmarks._common import print_table

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k vectors only")
    result = run(quick=parser.parse_args().quick)
    print_table(result["headers"], result["rows"])
