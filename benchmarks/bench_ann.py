"""ANN under a memory budget: avret ``--factory auto`` vs autofaiss vs faiss Flat, in one run (issue 21).

Data (SYNTHETIC, generated, seeded): ``--n`` x ``--d`` L2-normalised vectors that look like embeddings
-- ``--clusters`` Gaussian clusters, each spread over a random ``--intrinsic``-dimensional subspace
plus a little isotropic noise -- and ``--queries`` held-out queries from the same distribution (never
in the gallery; avret tunes on its own held-out sample of the GALLERY, never on these). Truth: exact
top-10 by brute force.

For each budget (25% and 50% of Flat's 4nd bytes, and ``--small`` bytes, meant to be too small for
recall 0.95): avret auto (refusal recorded when it refuses, then built with best_effort), and
autofaiss (its own venv, a separate process: benchmarks/autofaiss_worker.py). Reported: index string,
RAM size (avret: its estimate of what search keeps in memory; the embeddings.npy it re-ranks from is
on disk and listed apart), build time, recall@10, batch-1 p50, batch-1000 q/s, and both tools'
recall/latency over nprobe (equal-recall comparison).

Run: nice -n 10 python benchmarks/bench_ann.py --n 1000000   (autofaiss venv: scripts/make_autofaiss_venv.sh)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from avret.errors import AvretError  # noqa: E402
from avret.index import AVIndex  # noqa: E402
from benchmarks._common import RESULTS_DIR, format_table, load_check, machine_info, write_results  # noqa: E402

K = 10
FP = "b" * 64


def make_data(n: int, d: int, nq: int, clusters: int, intrinsic: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n + nq`` clustered unit vectors (see the module docstring), split into gallery and queries."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = rng.standard_normal((clusters, d, intrinsic)).astype(np.float32) / np.sqrt(d)
    total = n + nq
    out = np.empty((total, d), dtype=np.float32)
    step = 100_000
    for s in range(0, total, step):
        m = min(step, total - s)
        c = rng.integers(0, clusters, m)
        z = rng.standard_normal((m, intrinsic)).astype(np.float32) * 0.6
        x = centres[c] + np.einsum("mdi,mi->md", bases[c], z) + 0.02 * rng.standard_normal((m, d)).astype(np.float32)
        out[s : s + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out[:n], out[n:]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:K]) & set(t)) / K for f, t in zip(found.tolist(), truth.tolist(), strict=True)]))


def measure(search, q: np.ndarray, truth: np.ndarray, singles: int = 200) -> dict:
    found = search(q)
    t0 = time.perf_counter()
    search(q)
    batch = time.perf_counter() - t0
    times = []
    for row in q[:singles]:
        t = time.perf_counter()
        search(row[None, :])
        times.append(time.perf_counter() - t)
    return {"recall": round(recall(found, truth), 4), "batch1_p50_ms": round(float(np.median(times)) * 1000, 4),
            "batch_qps": round(len(q) / batch, 1)}


def run_avret(x: np.ndarray, q: np.ndarray, truth: np.ndarray, budget: int, work: Path) -> dict:
    n = len(x)
    ids = np.char.add("c", np.arange(n).astype(str))
    res: dict = {"tool": "avret auto", "budget_bytes": budget, "load_before": load_check(label="avret build")}
    def progress(s: str) -> None:
        print("  avret:", s, flush=True)

    refused = refused_s = None
    t0 = time.perf_counter()
    try:
        idx = AVIndex.build(x, ids, None, None, modality="visual", model_fingerprint=FP, factory="auto",
                            max_memory=budget, progress=progress)
    except AvretError as exc:  # what `avret index build` prints before exiting 2; then the --best-effort build
        refused, refused_s = str(exc), round(time.perf_counter() - t0, 2)
        print(f"avret refused: {refused}", flush=True)
        t0 = time.perf_counter()
        try:
            idx = AVIndex.build(x, ids, None, None, modality="visual", model_fingerprint=FP, factory="auto",
                                max_memory=budget, best_effort=True, progress=progress)
        except AvretError as again:  # not even the smallest candidate fits: nothing to build
            res.update(refused=refused, refused_after_s=refused_s, exit_code=2, best_effort_refused=str(again))
            return res
    build_s = time.perf_counter() - t0
    path = idx.save(work / f"avret-{budget}")
    del idx
    loaded = AVIndex.load(path, device="cpu")  # embeddings.npy memory-mapped, as a server has it
    m = loaded.manifest
    t = m.tuning
    res.update(refused=refused, refused_after_s=refused_s, exit_code=2 if refused else 0,
               index_string=m.factory, nprobe=t["nprobe"],
               k_factor=t.get("k_factor", 1), size_bytes=m.auto["estimated_bytes"],
               index_file_bytes=(path / "index.faiss").stat().st_size,
               disk_embeddings_bytes=(path / "embeddings.npy").stat().st_size if (path / "embeddings.npy").exists()
               else 0, build_s=round(build_s, 2), tuned_recall_on_gallery_sample=t["recall"],
               target_met=t["target_met"], smallest_budget=m.auto.get("smallest_budget"),
               candidates=[{k: v for k, v in c.items() if k != "curve"} for c in m.auto.get("candidates", [])])
    res.update(measure(lambda qq: loaded.search(qq, K).rows, q, truth))
    sweep = []
    if t["nprobe"] is not None:
        p = 1
        nlist = faiss.extract_index_ivf(loaded.faiss_index).nlist
        while p <= nlist:
            sweep.append({"nprobe": p, "k_factor": res["k_factor"],
                          **measure(lambda qq, p=p: loaded.search(qq, K, nprobe=p).rows, q, truth, singles=100)})
            if sweep[-1]["recall"] > 0.995 or p >= 1024:
                break
            p *= 2
    res["sweep"] = sweep
    res["load_after"] = load_check(label="avret measured")
    return res


def run_autofaiss(python: str, work: Path, budget: int) -> dict:
    out = work / f"autofaiss-{budget}.out.json"
    load = load_check(label="autofaiss build")
    worker = Path(__file__).resolve().parent / "autofaiss_worker.py"
    proc = subprocess.run([python, str(worker), str(work), str(budget), str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        return {"tool": "autofaiss", "budget_bytes": budget, "error": proc.stderr.strip().splitlines()[-3:],
                "load_before": load}
    res = json.loads(out.read_text())
    res.update(load_before=load, load_after=load_check(label="autofaiss measured"))
    return res


def at_recall(rows: list[dict], level: float) -> dict | None:
    """The fastest batch-1 setting of a sweep that reaches ``level``."""
    ok = [r for r in rows if r["recall"] >= level]
    return min(ok, key=lambda r: r["batch1_p50_ms"]) if ok else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=128)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("--clusters", type=int, default=1000)
    ap.add_argument("--intrinsic", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--small", type=int, default=None, help="bytes of the too-small budget (default 1.4%% of Flat)")
    ap.add_argument("--budgets", default="25%,50%,small",
                    help="comma list: N%% of Flat's bytes, 'small' (--small), or bytes")
    ap.add_argument("--autofaiss-python", default="/work/venvs/autofaiss/bin/python")
    ap.add_argument("--name", default="bench_ann")
    args = ap.parse_args()
    faiss.omp_set_num_threads(os.cpu_count() or 1)
    flat_bytes = 4 * args.n * args.d
    small = args.small or int(flat_bytes * 0.014)
    budgets = [small if b == "small" else flat_bytes * int(b[:-1]) // 100 if b.endswith("%") else int(b)
               for b in args.budgets.split(",")]
    payload: dict = {"data": "SYNTHETIC clustered unit vectors", "n": args.n, "d": args.d, "queries": args.queries,
                     "clusters": args.clusters, "intrinsic_dim": args.intrinsic, "seed": args.seed, "k": K,
                     "budgets_bytes": budgets, "faiss_avret": faiss.__version__, "machine": machine_info(),
                     "results": []}
    work = Path(tempfile.mkdtemp(prefix="bench_ann-", dir=os.environ.get("BENCH_TMP")))
    try:
        x, q = make_data(args.n, args.d, args.queries, args.clusters, args.intrinsic, args.seed)
        (work / "gallery").mkdir()
        np.save(work / "gallery" / "gallery.npy", x)
        np.save(work / "queries.npy", q)
        x = np.load(work / "gallery" / "gallery.npy", mmap_mode="r")
        flat = faiss.IndexFlatIP(args.d)
        t0 = time.perf_counter()
        flat.add(np.ascontiguousarray(x))
        flat_build = time.perf_counter() - t0
        _, truth = flat.search(q, K)
        np.save(work / "truth.npy", truth)
        res = {"tool": "faiss Flat", "index_string": "Flat", "size_bytes": flat_bytes, "build_s": round(flat_build, 2),
               "load_before": load_check(label="flat")}
        res.update(measure(lambda qq: flat.search(qq, K)[1], q, truth, singles=50))
        payload["results"].append(res)
        flat.reset()
        for budget in budgets:
            payload["results"].append(run_avret(x, q, truth, budget, work))
            write_results(args.name, payload)
            write_markdown(args.name, payload)
            if Path(args.autofaiss_python).exists():
                payload["results"].append(run_autofaiss(args.autofaiss_python, work, budget))
            write_results(args.name, payload)
            write_markdown(args.name, payload)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def write_markdown(name: str, payload: dict) -> None:
    rows = []
    for r in payload["results"]:
        if "error" in r or "best_effort_refused" in r:
            what = "error" if "error" in r else "refused (exit 2)"
            rows.append([r["tool"], r.get("budget_bytes", "-"), what, "-", "-", "-", "-", "-", "-"])
            continue
        setting = f"nprobe {r.get('nprobe')}" + (f", re-rank x{r['k_factor']}" if r.get("k_factor", 1) > 1 else "") \
            if r["tool"] == "avret auto" else (r.get("index_param") or "")
        rows.append([r["tool"], r.get("budget_bytes", "-"), r["index_string"], setting,
                     f"{r['size_bytes'] / 2**20:.1f} MiB", r["build_s"], r["recall"], r["batch1_p50_ms"],
                     r["batch_qps"]])
    lines = [f"# bench_ann: {payload['n']:,} x {payload['d']} SYNTHETIC clustered vectors, "
             f"{payload['queries']} held-out queries, recall@{K}", "",
             f"Machine: {payload['machine'].get('cpu_count')} cores; load averages are recorded per row in "
             "bench_ann.json (this machine was shared and loaded: latencies are not quiet-machine figures).", "",
             "```", format_table(["tool", "budget B", "index", "setting", "RAM size", "build s", "recall@10",
                                  "batch-1 p50 ms", "batch q/s"], rows), "```", ""]
    for r in payload["results"]:
        if r["tool"] == "avret auto" and r.get("refused"):
            lines += [f"- budget {r['budget_bytes']} B: avret exits 2 without --best-effort: `{r['refused']}`"]
    lines += ["", "Equal recall (the fastest batch-1 setting of each tool's nprobe sweep reaching the level):", ""]
    eq = []
    for budget in payload["budgets_bytes"]:
        pair = {r["tool"]: r for r in payload["results"] if r.get("budget_bytes") == budget and "error" not in r}
        if not pair:
            continue
        for level in (0.9, 0.95):
            cells = []
            for tool in ("avret auto", "autofaiss"):
                best = at_recall(pair[tool]["sweep"], level) if tool in pair and pair[tool].get("sweep") else None
                cells.append("-" if best is None else f"{best['batch1_p50_ms']} ms (nprobe {best['nprobe']}, "
                                                      f"recall {best['recall']})")
            eq.append([budget, level, *cells])
    lines += ["```", format_table(["budget B", "recall >=", "avret auto", "autofaiss"], eq), "```", ""]
    (RESULTS_DIR / f"{name}.md").write_text("\n".join(lines))
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
