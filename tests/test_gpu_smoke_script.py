"""scripts/gpu_smoke.sh: the shell syntax always; the whole CPU run only when asked (AVRET_RUN_SMOKE=1)."""

from __future__ import annotations

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
