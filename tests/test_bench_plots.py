"""benchmarks/plots.py draws every quoted benchmark result from its JSON, next to it."""

from __future__ import annotations

import shutil
from pathlib import Path

from benchmarks.plots import make_all

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
NAMES = ["bench_distill_fair", "bench_av_digits_distill", "bench_av_digits", "bench_index", "bench_scale", "media_rss"]


def test_plots_are_written_next_to_their_json(tmp_path):
    for name in NAMES:
        shutil.copy(RESULTS / f"{name}.json", tmp_path)
    written = make_all(tmp_path)
    assert sorted(p.name for p in written) == sorted(f"{n}.png" for n in NAMES if n != "bench_scale")
    for path in written:
        assert path.parent == tmp_path and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (tmp_path / "media_rss.json").unlink()
    (tmp_path / "media_rss.png").unlink()
    assert "media_rss.png" not in {p.name for p in make_all(tmp_path)}  # no JSON, no plot
