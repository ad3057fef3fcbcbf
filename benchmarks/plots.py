"""Plots of the benchmark results the docs quote, written next to their JSON (``results/<name>.png``).

    python benchmarks/plots.py            # every plot whose JSON exists
    python benchmarks/plots.py --results DIR

Reads only the JSON files the benchmarks wrote (no number is typed in here):

* ``bench_distill_fair.json``, ``bench_av_digits_distill.json``: test mean mAP per distillation
  method, mean ± std over the seeds (the fair, validation-tuned protocol), A→V and V→A;
* ``bench_av_digits.json``: towers vs CCA per audio/visual feature pair, mean ± std over the seeds;
* ``bench_index.json`` and ``bench_scale.json`` (its ``index`` part): recall@10 vs single-query
  latency per index family and gallery size;
* ``media_rss.json``: peak RSS of a media query vs the length of the media file.

Synthetic data is labelled SYNTHETIC in each title; a run taken above the load limit says so.
Rendered headless (matplotlib's Agg canvas), written atomically.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from avret.utils.atomic import atomic_file  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _figure(w: float, h: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    with atomic_file(path, "wb") as fh:
        fh.write(buf.getvalue())
    return path


def _synthetic(d: dict[str, Any]) -> bool:
    return bool(d.get("synthetic")) or "synthetic" in str(d.get("data", "")).lower()[:40]


def _load_note(d: dict[str, Any]) -> str:
    loads = [d.get(k) or {} for k in ("load_before", "load_after")]
    flagged = any(x.get("flagged") for x in loads if isinstance(x, dict))
    return " (taken above load 1.5)" if flagged else ""


def _tag(d: dict[str, Any]) -> str:
    return "SYNTHETIC data: " if _synthetic(d) else ""


def plot_methods(d: dict[str, Any], summary: list[dict[str, Any]], title: str, out: Path) -> Path:
    """Bars of test mAP per method (mean ± std over seeds), A→V, V→A and their mean."""
    rows = [r for r in summary if r.get("mean_mean") is not None]
    names = [r["row"] for r in rows]
    x = np.arange(len(rows))
    fig = _figure(max(6.5, 0.9 * len(rows) + 2), 4.2)
    ax = fig.subplots()
    for off, key, label, color in ((-0.27, "a2v", "A→V", "#2457c5"), (0.0, "v2a", "V→A", "#e08a1e"),
                                   (0.27, "mean", "mean", "#555")):
        means = np.array([r[f"{key}_mean"] for r in rows])
        stds = np.array([r.get(f"{key}_std") or 0.0 for r in rows])
        ax.bar(x + off, means, 0.27, yerr=stds, capsize=3, label=label, color=color)
    lo = min(r["mean_mean"] - 3 * (r.get("mean_std") or 0) for r in rows)
    ax.set_ylim(max(0.0, np.floor(lo / 5) * 5 - 5), 100)
    ax.set_xticks(x, names, rotation=30, ha="right")
    n_seeds = max(r.get("n_seeds", 0) for r in rows)
    ax.set(ylabel=f"test mAP (%), mean ± std over {n_seeds} seeds", title=_tag(d) + title + _load_note(d))
    ax.axhline(rows[0]["mean_mean"], color="#555", lw=.8, ls="--")
    ax.legend(fontsize=8, ncol=3)
    ax.grid(axis="y", alpha=.3)
    return _save(fig, out)


def plot_av_digits(d: dict[str, Any], out: Path) -> Path:
    """Towers vs CCA per feature pair: test mean mAP, mean ± std over the seeds."""
    pairs = list(d["pairs"])
    fig = _figure(max(6.0, 2.2 * len(pairs) + 2), 4.0)
    ax = fig.subplots()
    x = np.arange(len(pairs))
    for off, model, color in ((-0.2, "towers", "#2457c5"), (0.2, "cca", "#8e44ad")):
        vals = [[r["mean"] for r in d["pairs"][p].get(model, [])] for p in pairs]
        ax.bar(x + off, [np.mean(v) if v else 0 for v in vals], 0.4, yerr=[np.std(v) if v else 0 for v in vals],
               capsize=3, label=model, color=color)
    ax.set_xticks(x, pairs)
    n_seeds = len(d.get("seeds", []))
    ax.set(ylabel=f"test mean mAP (%), mean ± std over {n_seeds} seeds", ylim=(0, 100),
           title=_tag(d) + "av-digits (real FSDD audio + handwritten digits): towers vs CCA" + _load_note(d))
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=.3)
    return _save(fig, out)


def _family(method: str) -> str:
    m = method.replace("AVIndex ", "")
    for fam in ("numpy", "Flat", "IVF", "HNSW", "OPQ", "PQ"):
        if m.startswith(fam):
            return fam
    return m.split(",")[0]


def plot_index(d: dict[str, Any], scale: dict[str, Any] | None, out: Path) -> Path:
    """Recall@k vs single-query latency, one marker per (gallery size, index family)."""
    fig = _figure(10, 5.6)
    ax = fig.subplots()
    offsets = iter([(6, 6), (6, -12), (-10, 10), (6, 16), (6, -22), (-10, -16)] * 10)
    markers = {"numpy": "s", "Flat": "o", "IVF": "^", "HNSW": "D", "OPQ": "v", "PQ": "P"}
    colors = ["#2457c5", "#e08a1e", "#1a7f37", "#b42318"]
    sizes = sorted({r["gallery"] for r in d["rows"]})
    for i, n in enumerate(sizes):
        for r in (r for r in d["rows"] if r["gallery"] == n):
            fam = _family(r["method"])
            ax.scatter(r["single_ms"], r["recall_at_k"], marker=markers.get(fam, "o"), color=colors[i % 4], s=50)
            ax.annotate(r["method"].replace("AVIndex ", "").replace(" (exact)", ""),
                        (r["single_ms"], r["recall_at_k"]), fontsize=7, xytext=next(offsets),
                        textcoords="offset points", color=colors[i % 4])
        ax.scatter([], [], color=colors[i % 4], label=f"bench_index: {n:,} items, one query at a time")
    if scale is not None:
        recs = scale["parts"].get("index", {}).get("records", [])
        for r in recs:
            ax.scatter(r["query_ms"], r["recall_at_10"], marker="*", color="#444", s=90)
            ax.annotate(f"{r['factory']} ({r['n'] / 1e6:g}M, {r['shards']} shard)", (r["query_ms"], r["recall_at_10"]),
                        fontsize=7, xytext=next(offsets), textcoords="offset points", color="#444")
        if recs:
            ax.scatter([], [], marker="*", color="#444", label="bench_scale: query ms (k=10)")
    ax.set_xscale("log")
    ax.set(xlabel="single-query latency (ms, log scale)", ylabel=f"recall@{d.get('k', 10)} vs exact search",
           ylim=(0, 1.08), title=_tag(d) + "index families: recall vs latency" + _load_note(d))
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=.3)
    return _save(fig, out)


def plot_media_rss(d: dict[str, Any], out: Path) -> Path:
    """Peak RSS of one media query (and its wall time) vs the media file's length."""
    q = d["queries"]
    secs = np.array([r["seconds"] for r in q])
    fig = _figure(7, 4)
    ax = fig.subplots()
    for r in q:
        runs = r.get("rss_mb_runs", [])
        ax.scatter([r["seconds"]] * len(runs), runs, color="#9bb5e6", s=18)
    ax.plot(secs, [r["rss_mb_median"] for r in q], "o-", color="#2457c5", label="peak RSS, median (MB)")
    ax.set_xscale("log")
    ax.set(xlabel="length of the media query (s, log scale)", ylabel="peak RSS (MB)",
           ylim=(0, 1.3 * max(r["rss_mb_median"] for r in q)),
           title=_tag(d) + "media query: memory vs media length\n(generated wav files)" + _load_note(d))
    ax2 = ax.twinx()
    ax2.plot(secs, [r["wall_s_median"] for r in q], "s--", color="#e08a1e", label="wall time, median (s)")
    ax2.set(ylabel="wall time (s)", ylim=(0, 1.3 * max(r["wall_s_median"] for r in q)))
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="lower right")
    ax.grid(alpha=.3)
    return _save(fig, out)


def _read(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def make_all(results: Path = RESULTS) -> list[Path]:
    """Every plot whose JSON is in ``results``; returns the PNGs written."""
    written: list[Path] = []
    jobs: list[tuple[str, Callable[[dict[str, Any]], Path]]] = [
        ("bench_distill_fair", lambda d: plot_methods(
            d, next(iter(d["settings"].values()))["summary"],
            "distillation methods, vegas-synth (fair val-tuned protocol)", results / "bench_distill_fair.png")),
        ("bench_av_digits_distill", lambda d: plot_methods(
            d, d["summary"], f"distillation methods, av-digits ({d.get('pair', '')})",
            results / "bench_av_digits_distill.png")),
        ("bench_av_digits", lambda d: plot_av_digits(d, results / "bench_av_digits.png")),
        ("bench_index", lambda d: plot_index(d, _read(results / "bench_scale.json"), results / "bench_index.png")),
        ("media_rss", lambda d: plot_media_rss(d, results / "media_rss.png")),
    ]
    for name, job in jobs:
        d = _read(results / f"{name}.json")
        if d is not None:
            written.append(job(d))
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of the benchmark JSON files")
    args = parser.parse_args(argv)
    for path in make_all(args.results):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
