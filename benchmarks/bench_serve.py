"""Benchmark ``avret serve``: throughput and latency under concurrent clients vs the library itself.

Run ``python -m benchmarks.bench_serve`` (about 3 minutes on 2 cores) or ``--quick`` (seconds).

1. Builds a SYNTHETIC 100k-clip index root: vegas-synth clips (a towers model trained for a few
   epochs on them) replicated with feature jitter to ``--clips`` clips per modality, embedded by
   the model, exact ``Flat`` indexes (``avret/index/build.py::build_indexes``).
2. Starts ``avret serve`` on it in a subprocess on 127.0.0.1 (a separate process, as deployed).
3. For each concurrency N in ``--clients``: N client threads, each with one keep-alive HTTP
   connection, send ``POST /search`` clip-id queries (random clips, k=10) in a closed loop for
   ``--seconds``; requests/s, p50/p95/p99 latency, errors (non-200 or exceptions: must be 0) and,
   for every 5th answer, a check against the library's own answer (mismatches must be 0).
4. The same queries through the library directly (``Searcher.search_clip_ids`` in this process,
   one thread): the service's overhead as the ratio of p50 latencies.
5. On the demo index (``runs/demo/index`` from ``make demo``, 6,000 clips) the one-client p50 of a
   clip-id query through the service, and the CLI's start-up: ``avret --help``, ``avret search``
   by clip id (stored embeddings), by ``.npy`` file, and by clip id through ``--dataset`` (the data
   set + tower path every clip-id query took before the Searcher), 3 runs each, medians.

The client threads share the 2 cores with the server, so absolute numbers are a floor for this
machine; the machine's load average is printed first and recorded, and a run under load is flagged.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._common import load_check, machine_info, print_table, write_results

REPO = Path(__file__).resolve().parents[1]
K = 10


def build_index(root: Path, n_clips: int, seed: int = 0) -> Path:
    """A towers model (3 epochs on 3,000 vegas-synth clips) and an index of ``n_clips`` jittered copies."""
    from avret.data import SynthConfig, make_vegas_synth
    from avret.data.dataset import AVDataset
    from avret.index.build import build_indexes
    from avret.io import load_model
    from avret.train.runs import train_run
    from avret.train.tower_training import TrainConfig

    base = make_vegas_synth(SynthConfig(n_clips=3000, seed=seed))
    run = root / "run"
    train_run(base, run, "towers", TrainConfig(epochs=3, batch_size=256, seed=seed))
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, len(base), n_clips)

    def jitter(x: np.ndarray) -> np.ndarray:
        return (x[rows] + rng.standard_normal((n_clips, x.shape[1]), dtype=np.float32) * 0.05 * x.std()).astype(
            np.float32)

    big = AVDataset(name=f"vegas-synth-x{n_clips}", clip_ids=np.asarray([f"clip_{i:07d}" for i in range(n_clips)]),
                    labels=base.labels[rows], class_names=base.class_names, audio=jitter(base.audio),
                    visual=jitter(base.visual), split=np.asarray(["test"] * n_clips), source="synthetic (bench_serve)")
    index = root / "index"
    build_indexes(load_model(run), big, index, device="cpu")
    return index


class Server:
    """``avret serve --index INDEX`` on a free loopback port."""

    def __init__(self, index: Path) -> None:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "avret_cli.main", "serve", "--index", str(index), "--port", str(self.port)],
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)})
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 180:
            if self.proc.poll() is not None:
                raise RuntimeError(f"avret serve exited: {self.proc.stderr.read()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    self.startup_s = time.perf_counter() - t0
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("avret serve did not start within 180 s")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _post(conn: http.client.HTTPConnection, body: bytes) -> tuple[int, bytes]:
    conn.request("POST", "/search", body=body, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, resp.read()


def load_test(port: int, ids: list[str], n_clients: int, seconds: float, expected: Any, seed: int) -> dict[str, Any]:
    """``n_clients`` closed-loop clients for ``seconds``; latencies, errors, answer mismatches."""
    stop = threading.Event()
    lat: list[list[float]] = [[] for _ in range(n_clients)]
    errors = [0] * n_clients
    mismatches = [0] * n_clients
    checked = [0] * n_clients

    def client(c: int) -> None:
        rng = np.random.default_rng(seed * 1000 + c)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        i = 0
        while not stop.is_set():
            cid = ids[int(rng.integers(len(ids)))]
            body = json.dumps({"direction": "audio-to-video", "clip_ids": [cid], "k": K}).encode()
            t0 = time.perf_counter()
            try:
                status, data = _post(conn, body)
            except (OSError, http.client.HTTPException):
                errors[c] += 1
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                continue
            lat[c].append(time.perf_counter() - t0)
            if status != 200:
                errors[c] += 1
            elif i % 5 == 0:
                checked[c] += 1
                got = [h["clip_id"] for h in json.loads(data)["queries"][0]["results"]]
                mismatches[c] += got != expected(cid)
            i += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(c,)) for c in range(n_clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    all_lat = np.asarray([x for per in lat for x in per]) * 1000
    return {
        "clients": n_clients, "seconds": round(wall, 2), "requests": int(all_lat.size),
        "rps": all_lat.size / wall,
        "p50_ms": float(np.percentile(all_lat, 50)), "p95_ms": float(np.percentile(all_lat, 95)),
        "p99_ms": float(np.percentile(all_lat, 99)),
        "errors": int(sum(errors)), "checked": int(sum(checked)), "mismatches": int(sum(mismatches)),
    }


def library_latency(searcher: Any, ids: list[str], n: int, seed: int) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    lat = []
    for _ in range(n):
        cid = ids[int(rng.integers(len(ids)))]
        t0 = time.perf_counter()
        searcher.search_clip_ids("audio-to-video", [cid], K).to_json()
        lat.append(time.perf_counter() - t0)
    ms = np.asarray(lat) * 1000
    return {"queries": n, "p50_ms": float(np.median(ms)), "p95_ms": float(np.percentile(ms, 95)),
            "qps_one_thread": n / float(np.sum(lat))}


def cli_times(index: Path, clip_id: str, npy: Path, repeats: int) -> dict[str, float]:
    avret = [sys.executable, "-m", "avret_cli.main"]
    cmds = {
        "avret --help": [*avret, "--help"],
        "search by clip id (stored embedding)": [*avret, "search", "audio-to-video", "--index", str(index),
                                                 "--query", clip_id],
        "search by .npy file (tower pass)": [*avret, "search", "audio-to-video", "--index", str(index),
                                             "--query", str(npy)],
        "search by clip id via --dataset (pre-Searcher path)": [*avret, "search", "audio-to-video", "--index",
                                                                 str(index), "--query", clip_id, "--dataset",
                                                                 "vegas-synth"],
    }
    out = {}
    for name, cmd in cmds.items():
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env={**os.environ, "PYTHONPATH": str(REPO)})
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clips", type=int, default=100_000)
    ap.add_argument("--clients", default="1,8,32")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--demo-index", type=Path, default=REPO / "runs" / "demo" / "index")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="5,000 clips, 1 and 4 clients, 2 s each")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.quick:
        args.clips, args.clients, args.seconds, args.repeats = 5000, "1,4", 2.0, 1
    clients = [int(c) for c in args.clients.split(",")]
    load_before = load_check(label="before")

    from avret.index.searcher import Searcher

    results: dict[str, Any] = {"clips": args.clips, "k": K, "data": "SYNTHETIC (vegas-synth, jittered copies)"}
    with tempfile.TemporaryDirectory(prefix="bench_serve-") as tmp:
        t0 = time.perf_counter()
        index = build_index(Path(tmp), args.clips, args.seed)
        results["build_s"] = time.perf_counter() - t0
        searcher = Searcher(index, device="cpu")
        gallery = searcher.indexes["audio"]
        ids = [str(c) for c in gallery.clip_ids]
        cache: dict[str, list[str]] = {}
        lock = threading.Lock()

        def expected(cid: str) -> list[str]:
            with lock:
                if cid not in cache:
                    cache[cid] = searcher.search_clip_ids("audio-to-video", [cid], K).result.clip_ids[0].tolist()
                return cache[cid]

        server = Server(index)
        try:
            results["server_startup_s"] = server.startup_s
            load_test(server.port, ids, 1, 1.0, expected, args.seed)  # warm-up
            results["service"] = [load_test(server.port, ids, n, args.seconds, expected, args.seed + n)
                                  for n in clients]
        finally:
            server.stop()
        results["library"] = library_latency(searcher, ids, 2000 if not args.quick else 200, args.seed)

    rows = [[r["clients"], r["requests"], r["rps"], r["p50_ms"], r["p95_ms"], r["p99_ms"], r["errors"],
             f"{r['mismatches']}/{r['checked']}"] for r in results["service"]]
    lib = results["library"]
    rows.append(["library (in-process, 1 thread)", lib["queries"], lib["qps_one_thread"], lib["p50_ms"],
                 lib["p95_ms"], "", "", ""])
    print(f"\navret serve, {args.clips} clips per modality (SYNTHETIC), k={K}, clip-id queries, loopback")
    print_table(["clients", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors", "mismatch/checked"], rows)
    one = next((r for r in results["service"] if r["clients"] == 1), None)
    if one:
        results["overhead_ratio_p50"] = one["p50_ms"] / lib["p50_ms"]
        print(f"service overhead at 1 client: p50 {one['p50_ms']:.2f} ms vs library {lib['p50_ms']:.3f} ms "
              f"({results['overhead_ratio_p50']:.1f}x)")

    if args.demo_index.is_dir():
        demo = Searcher(args.demo_index, device="cpu")
        demo_ids = [str(c) for c in demo.indexes["audio"].clip_ids]
        npy = Path(tempfile.mkstemp(suffix=".npy")[1])
        try:
            np.save(npy, np.full((1, demo.model().audio_dim), 0.01, dtype=np.float32))
            server = Server(args.demo_index)
            try:
                d_one = load_test(server.port, demo_ids, 1, args.seconds, lambda c: demo.search_clip_ids(
                    "audio-to-video", [c], K).result.clip_ids[0].tolist(), args.seed)
            finally:
                server.stop()
            results["demo_index"] = {"path": str(args.demo_index), "clips": len(demo_ids), "service_1_client": d_one,
                                     "cli_s": cli_times(args.demo_index, demo_ids[0], npy, args.repeats)}
        finally:
            npy.unlink(missing_ok=True)
        d = results["demo_index"]
        print(f"\ndemo index ({d['clips']} clips): 1 client p50 {d_one['p50_ms']:.2f} ms, "
              f"p99 {d_one['p99_ms']:.2f} ms, {d_one['rps']:.0f} req/s, errors {d_one['errors']}")
        print_table([f"CLI command (median of {args.repeats}, wall s)", "seconds"],
                    [[k, v] for k, v in d["cli_s"].items()])
    else:
        print(f"(no demo index at {args.demo_index}: run `make demo` for the demo-index rows)")
    results["load_before"] = load_before
    results["load_after"] = load_check(math.inf, "after (includes this benchmark's own threads)")
    results["machine"] = machine_info()
    path = write_results("bench_serve_quick" if args.quick else "bench_serve", results)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
