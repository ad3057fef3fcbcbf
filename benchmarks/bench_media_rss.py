"""Peak RSS of a media query vs the media's length, and how fast `features extract` refuses a long audio-only file.

Builds, in a temporary directory, a small index from real CLI runs with **tiny random-weight models**
(12 generated 1-s clips -> ``avret features extract`` -> ``avret train`` -> ``avret index build``),
writes silent 16 kHz mono wavs of 13 s, 1 min, 10 min and 1 h, and runs

    avret search audio-to-video --index IDX --query FILE.wav --features FEATS -k 3 --json

as a child process for each, ``--repeats`` times (interleaved), reading the child's peak RSS from
``os.wait4`` (``ru_maxrss``). The table gives the median per length and its ratio to the 13-s query
(issue 11 item 4: within 1.5x at 1 h). The query uses the first ``QUERY_MAX_SECONDS`` (60 s) of a file
by default and streams the audio, so the ratio should stay near 1. Then ``avret features extract``
on the 1-h audio-only wav (CLIP visual features need a video track): its wall time, peak RSS,
``decode_seconds`` and failure reason (the track is checked before any decoding).

    python -m benchmarks.bench_media_rss [--repeats 3] [--lengths 13,60,600,3600] [--src DIR]

``--src`` runs the CLI from another source tree (e.g. an older checkout) for a before/after
comparison; results go to ``benchmarks/results/media_rss.json`` and ``media_rss.md`` (default tree
only). Prints the load average first and flags the run when the 1-minute load exceeds 1.5 (RSS does
not depend on load; the wall times do).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._common import RESULTS_DIR, format_table, load_check, machine_info, write_results

ROOT = Path(__file__).resolve().parents[1]
TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


def run_child(args: list[str], src: Path) -> dict[str, Any]:
    """Run ``python -m cli.main ARGS`` from ``src``; return wall seconds, peak RSS (MB), rc, output."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "avret_cli.main", *args], cwd=src, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    return {"rc": proc.returncode, "wall_s": wall, "stdout": out, "stderr": err}


def run_measured(args: list[str], src: Path) -> dict[str, Any]:
    """As :func:`run_child`, measuring the child's own peak RSS with ``os.wait4``."""
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "avret_cli.main", *args], cwd=src, env=env, stdout=fo, stderr=fe)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        return {"rc": proc.returncode, "wall_s": wall, "rss_mb": usage.ru_maxrss / 1024, "stdout": fo.read(),
                "stderr": fe.read()}


def build_index(tmp: Path) -> dict[str, Path]:
    """Tiny models, 12 clips, features extract -> train -> index build (through the CLI, default tree)."""
    import torch

    from avret.features.synthetic_media import write_labelled_media
    from avret.features.vggish import VGGish
    from avret.models.clip import load_clip

    torch.manual_seed(0)
    torch.save(VGGish((4, 4, 8, 8, 8, 8), (16, 16, 128)).state_dict(), tmp / "vggish.pth")
    cfg = tmp / "avret-bench-tiny-clip.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    torch.save(load_clip(str(cfg), None, allow_random=True).state_dict(), tmp / "clip.pt")
    media, _ = write_labelled_media(tmp, 12)
    paths = {"feats": tmp / "feats", "run": tmp / "run", "index": tmp / "index", "vggish": tmp / "vggish.pth",
             "clip_cfg": cfg, "clip": tmp / "clip.pt"}
    steps = [
        ["features", "extract", "--media", media, "--out", paths["feats"], "--vggish", paths["vggish"],
         "--clip-model", cfg, "--clip-weights", paths["clip"], "--fps", "1", "--max-frames", "2",
         "--device", "cpu", "--no-progress", "--labels", tmp / "labels.csv"],
        ["train", "--dataset", paths["feats"], "--out", paths["run"], "--epochs", "2", "--device", "cpu"],
        ["index", "build", "--dataset", paths["feats"], "--model", paths["run"], "--out", paths["index"],
         "--device", "cpu"],
    ]
    for step in steps:
        res = run_child([str(a) for a in step], ROOT)
        if res["rc"] != 0:
            raise SystemExit(f"setup step failed: avret {' '.join(map(str, step[:2]))}: {res['stderr'][-2000:]}")
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lengths", default="13,60,600,3600", help="wav lengths in seconds, comma-separated")
    parser.add_argument("--src", type=Path, default=ROOT, help="source tree whose CLI answers the queries")
    args = parser.parse_args()
    lengths = [float(x) for x in args.lengths.split(",")]
    from avret.features.synthetic_media import write_wav

    load_before = load_check(label="before")
    src = args.src.resolve()
    with tempfile.TemporaryDirectory(prefix="bench_media_rss-") as tmp_name:
        tmp = Path(tmp_name)
        t0 = time.perf_counter()
        paths = build_index(tmp)
        print(f"index built in {time.perf_counter() - t0:.1f} s (tiny random-weight models)", flush=True)
        wavs = {s: write_wav(tmp / f"silent_{int(s)}s.wav", s) for s in lengths}
        runs: dict[float, list[dict[str, Any]]] = {s: [] for s in lengths}
        for r in range(args.repeats):
            for s in lengths:  # interleaved, so machine noise hits every length alike
                res = run_measured(["search", "audio-to-video", "--index", str(paths["index"]), "--query",
                                    str(wavs[s]), "--features", str(paths["feats"]), "-k", "3", "--json"], src)
                if res["rc"] != 0:
                    raise SystemExit(f"query of {s:g} s failed (rc {res['rc']}): {res['stderr'][-2000:]}")
                hits = json.loads(res["stdout"])["queries"][0]["results"]
                runs[s].append({"rss_mb": res["rss_mb"], "wall_s": res["wall_s"], "n_hits": len(hits)})
                print(f"  repeat {r + 1}: {s:>6g} s wav -> peak RSS {res['rss_mb']:.0f} MB, "
                      f"{res['wall_s']:.2f} s", flush=True)
        base = statistics.median(x["rss_mb"] for x in runs[lengths[0]])
        rows = []
        for s in lengths:
            rss = statistics.median(x["rss_mb"] for x in runs[s])
            rows.append({"seconds": s, "wav_mb": round(wavs[s].stat().st_size / 2**20, 1),
                         "rss_mb_median": round(rss, 1), "rss_mb_runs": [round(x["rss_mb"], 1) for x in runs[s]],
                         "ratio_vs_first": round(rss / base, 3),
                         "wall_s_median": round(statistics.median(x["wall_s"] for x in runs[s]), 2)})

        # features extract of the longest file, audio-only: needs a video track for CLIP features.
        longest = wavs[max(lengths)]
        res = run_measured(["features", "extract", "--media", str(longest), "--out", str(tmp / "feats_long"),
                            "--vggish", str(paths["vggish"]), "--clip-model", str(paths["clip_cfg"]),
                            "--clip-weights", str(paths["clip"]), "--device", "cpu", "--json"], src)
        extract: dict[str, Any] = {"seconds": max(lengths), "rc": res["rc"], "wall_s": round(res["wall_s"], 2),
                                   "rss_mb": round(res["rss_mb"], 1)}
        try:
            rep = json.loads(res["stdout"])
            extract.update({"decode_seconds": round(rep["decode_seconds"], 4),
                            "failures": [f["error"] for f in rep["failures"]]})
        except (json.JSONDecodeError, KeyError):
            extract["stderr_tail"] = res["stderr"][-500:]
    load_after = load_check(label="after")

    headers = ["wav length", "wav MB", "peak RSS MB (median)", "runs", "vs first", "query wall s"]
    table_rows = [[f"{r['seconds']:g} s", r["wav_mb"], r["rss_mb_median"], " / ".join(map(str, r["rss_mb_runs"])),
                   f"{r['ratio_vs_first']:.2f}x", r["wall_s_median"]] for r in rows]
    print(format_table(headers, table_rows))
    print(f"features extract, {extract['seconds']:g}-s audio-only wav: rc {extract['rc']}, wall "
          f"{extract['wall_s']} s, peak RSS {extract['rss_mb']} MB, decode {extract.get('decode_seconds')} s, "
          f"failures {extract.get('failures')}")
    flagged = bool(load_before.get("flagged") or load_after.get("flagged"))
    payload = {"lengths_s": lengths, "repeats": args.repeats, "src": str(src), "queries": rows,
               "extract_audio_only": extract, "load_before": load_before, "load_after": load_after,
               "flagged": flagged, "machine": machine_info()}
    if src != ROOT:
        print(f"(--src {src}: results not written)")
        return
    write_results("media_rss", payload)
    md = ["| wav length | wav MB | peak RSS MB (median) | runs | vs first | query wall s |",
          "|---|---|---|---|---|---|"]
    md += ["| " + " | ".join(str(c) for c in row) + " |" for row in table_rows]
    md.append("")
    md.append(f"`features extract` of the {extract['seconds']:g}-s audio-only wav: exit {extract['rc']}, "
              f"{extract['wall_s']} s wall (process start and model loading included), decode "
              f"{extract.get('decode_seconds')} s, peak RSS {extract['rss_mb']} MB, failure: "
              f"{'; '.join(extract.get('failures') or [])}")
    md.append(f"\nload average before {load_before.get('load_avg')}, after {load_after.get('load_avg')}"
              + (" (FLAGGED: above 1.5; wall times not comparable)" if flagged else ""))
    (RESULTS_DIR / "media_rss.md").write_text("\n".join(md) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
