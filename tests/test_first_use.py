"""What a new user meets first: --version, -q/-v, defaults that agree with `make demo`, index info,
evaluating (never training) with `avret eval`, progress lines in a log, result lines after status lines."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import avret
from avret_cli.main import app

SYNTH = ["--synth-clips", "300", "--synth-seed", "3"]


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """A directory laid out as `make demo` leaves it (runs/demo/videoadviser, runs/demo/index), small."""
    root = tmp_path_factory.mktemp("demo")
    res = invoke("train", "--out", root / "runs/demo/videoadviser", "--epochs", "2", *SYNTH)
    assert res.exit_code == 0, res.output
    return root


def test_version():
    res = invoke("--version")
    assert res.exit_code == 0 and res.stdout.strip() == f"avret {avret.__version__}"


def test_defaults_are_the_demo_outputs(demo_dir, monkeypatch):
    """index build, index info, search and eval with no paths use what `make demo` writes."""
    monkeypatch.chdir(demo_dir)
    res = invoke("index", "build")
    assert res.exit_code == 0, res.output
    assert (demo_dir / "runs/demo/index/visual/manifest.json").is_file()
    res = invoke("index", "info", "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.stdout)
    assert info["indexes"]["audio"]["count"] == 300 and info["indexes"]["visual"]["dim"] == 128
    assert info["synthetic"] is True and len(info["classes"]) == 10
    assert sum(info["class_counts"].values()) == 300
    assert info["clip_ids"] == [f"synth_{i:06d}" for i in range(10)]
    res = invoke("search", "audio-to-video", "--query", "synth_000004", "-k", "3")
    assert res.exit_code == 0, res.output
    assert re.search(r"^P@3 [01]\.\d\d \(\d of 3 results share the query's class\)$", res.stdout, re.M)
    res = invoke("eval")
    assert res.exit_code == 0, res.output
    assert "towers" in res.stdout and "training" not in res.output  # evaluated, never trained


def test_missing_default_names_the_outputs_that_exist(demo_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").symlink_to(demo_dir / "runs" / "demo")  # outputs exist, but not at runs/demo/...
    res = invoke("eval")
    assert res.exit_code == 2
    line = res.stderr.strip()
    assert len(line.splitlines()) == 1
    assert "runs/demo/videoadviser: no run or model directory here" in line and "existing: runs/videoadviser" in line


def test_index_info_text(demo_dir):
    res = invoke("index", "info", demo_dir / "runs/demo/index", "--sample", "3")
    assert res.exit_code == 0, res.output
    assert "SYNTHETIC" in res.stdout and "clip ids: synth_000000, synth_000001, synth_000002 ..." in res.stdout


def test_quiet_prints_no_status_and_verbose_prints_at_once(tmp_path):
    quiet = invoke("-q", "train", "--out", tmp_path / "q", "--epochs", "1", *SYNTH)
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == "" and quiet.stdout.startswith("wrote ")
    loud = invoke("-v", "train", "--out", tmp_path / "v", "--epochs", "1", *SYNTH)
    assert loud.exit_code == 0, loud.output
    assert "vegas-synth [SYNTHETIC]" in loud.stderr
    assert invoke("-q", "-v", "--version").exit_code in (0, 2)


def test_a_complete_rerun_says_so_after_its_status_lines(tmp_path):
    """In a log (stdout and stderr into one file), the result line comes after the status lines."""
    out = tmp_path / "run"
    args = [sys.executable, "-m", "avret_cli.main", "distill", "--method", "none", "--epochs", "1", *SYNTH,
            "--out", str(out)]
    first = subprocess.run(args, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    again = subprocess.run(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert again.returncode == 0, again.stdout
    lines = again.stdout.strip().splitlines()
    assert lines[-1] == f"{out}: already complete, nothing to do", lines
    assert not any(line.startswith("wrote") for line in lines)


def test_progress_lines_in_a_log(monkeypatch):
    """Off a terminal a running bar logs done/total, rate and ETA at a bounded rate (here: every update)."""
    from avret_cli import progress

    lines = []
    monkeypatch.setattr(progress, "LOG_EVERY_SECONDS", 0.0)
    monkeypatch.setattr(progress, "_write", lines.append)
    with progress.progress_bar("extract", unit="clips") as update:
        update(1, 4)
        update(3, 4)
    assert re.fullmatch(r"extract: 1/4 clips, [\d.]+/s, ETA \d+s", lines[0]), lines
    assert lines[1].startswith("extract: 3/4 clips, ")
    monkeypatch.setattr(progress, "LOG_EVERY_SECONDS", 3600.0)
    lines.clear()
    with progress.progress_bar("extract", unit="clips") as update:
        for i in range(100):
            update(i, 100)
    assert not any("ETA" in line for line in lines)  # bounded: nothing before the interval has passed


def test_import_avret_is_light():
    code = ("import avret, sys; avret.Searcher; assert 'torch' not in sys.modules; print(sorted(avret.__all__)); "
            "import avret.train.tower_training, avret.distill.pipeline; assert callable(avret.train_model) and "
            "callable(avret.distill_model)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    for name in ("train_model", "distill_model", "build_index", "open_index", "evaluate", "extract_features",
                 "load_model", "load_dataset", "Searcher", "embed_media"):
        assert name in res.stdout


def test_features_extract_logs_progress_lines_and_search_by_wav_needs_no_features_dir(tmp_path, monkeypatch):
    """A non-terminal log of `features extract` shows done/total lines while it runs; a media query then
    uses the features directory the index recorded (no --features)."""
    from avret.features.synthetic_media import write_labelled_media, write_wav
    from avret_cli import progress
    from tests.fixtures_media import make_tiny_extractors

    monkeypatch.setattr(progress, "LOG_EVERY_SECONDS", 0.0)
    models = make_tiny_extractors(tmp_path / "models")
    media, _ = write_labelled_media(tmp_path, 12)
    feats = tmp_path / "feats"
    res = invoke("features", "extract", "--media", media, "--out", feats, "--audio-encoder", "logmel",
                 "--clip-model", models["clip_cfg"], "--clip-weights", models["clip"], "--fps", "1",
                 "--max-frames", "2", "--device", "cpu", "--labels", tmp_path / "labels.csv")
    assert res.exit_code == 0, res.output
    logged = [line for line in res.stderr.splitlines() if re.match(r"extract: \d+/12 clips, [\d.]+/s, ETA", line)]
    assert logged, res.stderr
    assert res.stdout.startswith("12 extracted")
    assert invoke("train", "--dataset", feats, "--out", tmp_path / "run", "--epochs", "1").exit_code == 0
    assert invoke("index", "build", "--dataset", feats, "--model", tmp_path / "run",
                  "--out", tmp_path / "index").exit_code == 0
    query = write_wav(tmp_path / "q.wav", 1.0, 300.0)
    res = invoke("search", "audio-to-video", "--index", tmp_path / "index", "--query", query, "-k", "2", "--json")
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)["queries"][0]["results"]) == 2
