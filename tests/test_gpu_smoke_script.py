"""scripts/gpu_smoke.sh: the shell syntax always; the whole CPU run only when asked (AVRET_RUN_SMOKE=1)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gpu_smoke.sh"
STAGES = [
    "train",
    "distill videoadviser",
    "index build",
    "search audio-to-video",
    "search video-to-audio",
    "eval",
    "sentiment train",
]


def test_script_parses():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    res = subprocess.run([bash, "-n", str(SCRIPT)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


@pytest.mark.slow
def test_cpu_smoke_run():
    if os.environ.get("AVRET_RUN_SMOKE") != "1":
        pytest.skip("the full smoke run takes minutes: set AVRET_RUN_SMOKE=1 to run it")
    avret = Path(sys.executable).with_name("avret")
    env = {**os.environ, "DEVICE": "cpu", "SMOKE_CLIPS": "400", "SMOKE_EPOCHS": "2", "SMOKE_TEACHER_EPOCHS": "1"}
    if avret.exists():
        env["AVRET"] = str(avret)
    res = subprocess.run(["bash", str(SCRIPT)], capture_output=True, text=True, env=env, timeout=1800, cwd=REPO)
    out = res.stdout
    assert res.returncode == 0, out[-4000:] + res.stderr[-2000:]
    assert "torch.cuda.is_available()" in out and "faiss.get_num_gpus()" in out
    summary = out[out.index("=== summary") :]
    assert "stage" in summary and "device" in summary and "seconds" in summary
    for stage in STAGES:
        line = next(ln for ln in summary.splitlines() if ln.startswith(stage + " "))
        assert line.rstrip().endswith("ok"), line
    for stage in ("train", "distill videoadviser", "sentiment train"):
        line = next(ln for ln in summary.splitlines() if ln.startswith(stage + " "))
        assert line.split("|")[1].strip() == "cpu", line
    assert "device 'cpu' recorded (OK)" in out
    # the temporary folder is removed at exit
    work = next(ln for ln in out.splitlines() if "work dir:" in ln).split("work dir:")[1].strip()
    assert not Path(work).exists()


# ---------------------------------------------------------------------------------- scripts/gpu_run.sh
RUN_SCRIPT = REPO / "scripts" / "gpu_run.sh"


def _run_dry(tmp_path, **env_extra):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    out = tmp_path / "out"
    env = {**os.environ, "DEVICE": "cpu", "OUT": str(out), "PYTHON": sys.executable, "SKIP_INSTALL": "1",
           "TMPDIR": str(tmp_path), **env_extra}
    res = subprocess.run([bash, str(RUN_SCRIPT)], capture_output=True, text=True, env=env, timeout=1200, cwd=REPO)
    return res, out


@pytest.mark.parametrize("script", ["gpu_run.sh", "make_wheelhouse.sh"])
def test_device_scripts_parse(script):
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    res = subprocess.run([bash, "-n", str(REPO / "scripts" / script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_gpu_run_dry_mode_writes_its_log_json_and_benchmark(tmp_path):
    """DEVICE=cpu: the wiring of the device script (the mAP section of the quick benchmark only: fast)."""
    res, out = _run_dry(tmp_path, STAGES="bench", BENCH_SECTIONS="map")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    summary = json.loads((out / "gpu_run.json").read_text())
    assert summary == {"device": "cpu", "stages": [{"stage": "bench", "exit": 0,
                                                     "seconds": summary["stages"][0]["seconds"]}], "ok": True}
    log = (out / "gpu_run.log").read_text()
    assert "torch.cuda.is_available()" in log and "=== smoke: skipped (STAGES)" in log
    assert "avret command: avret 0.1.0" in log  # the wrapper the smoke runs avret through works
    bench = json.loads((out / "bench_gpu_quick.json").read_text())
    assert bench["gpu_used"] is False and bench["quick"] is True
    (row,) = bench["rows"]
    assert row["gpu"] == "not run" and isinstance(row["cpu"], float) and row["cpu"] > 0
    assert "not run" in (out / "bench_gpu_quick.md").read_text()
    # at most 8 files, at most 2 folders down, come back from the device
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(len(p.relative_to(out).parts) <= 3 for p in files)


def test_gpu_run_reports_a_failing_stage(tmp_path):
    res, out = _run_dry(tmp_path, STAGES="bench", BENCH_SECTIONS="nonsense")
    assert res.returncode == 1
    summary = json.loads((out / "gpu_run.json").read_text())
    assert summary["ok"] is False and summary["stages"][0]["exit"] != 0
    assert "unknown section" in (out / "gpu_run.log").read_text()


@pytest.mark.slow
def test_gpu_run_dry_mode_all_stages(tmp_path):
    if os.environ.get("AVRET_RUN_SMOKE") != "1":
        pytest.skip("the full dry run takes many minutes: set AVRET_RUN_SMOKE=1 to run it")
    res, out = _run_dry(tmp_path, STAGES="smoke,tests,bench")
    assert res.returncode == 0, res.stdout[-4000:]
    stages = json.loads((out / "gpu_run.json").read_text())["stages"]
    assert [s["stage"] for s in stages] == ["smoke", "tests", "bench"]
