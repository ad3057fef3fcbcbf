"""What the CLI imports at start-up, and the one-line contract for errors that come after work began."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from avret_cli.main import app

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "faiss", "fastapi", "h5py", "av", "transformers", "open_clip", "ray")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))"],
                         cwd=REPO, capture_output=True, text=True, check=True).stdout.split("\n")[-2]
    return set(out.split())


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["distill", "--help"], ["eval", "--help"],
                                  ["index", "build", "--help"], ["search", "audio-to-video", "--help"],
                                  ["serve", "--help"], ["features", "extract", "--help"],
                                  ["sentiment", "train", "--help"], ["data", "make-av-digits", "--help"]])
def test_help_imports_nothing_heavy(argv):
    code = ("from typer.testing import CliRunner\nfrom avret_cli.main import app\n"
            f"r = CliRunner().invoke(app, {argv!r})\nassert r.exit_code == 0, r.output")
    loaded = _modules_after(code)
    assert not [m for m in HEAVY if m in loaded], f"avret {' '.join(argv)} imported {[m for m in HEAVY if m in loaded]}"


def test_a_clip_id_search_never_imports_torch(tmp_path, tiny_run, tiny_synth):
    from avret.index.build import build_indexes
    from avret.io import load_model

    index = tmp_path / "index"
    build_indexes(load_model(tiny_run), tiny_synth, index, device="cpu")
    code = ("from typer.testing import CliRunner\nfrom avret_cli.main import app\n"
            f"r = CliRunner().invoke(app, ['search', 'audio-to-video', '--index', {str(index)!r}, '--query', "
            "'synth_000001', '-k', '3'])\nassert r.exit_code == 0, r.output\nassert 'synth_' in r.stdout")
    loaded = _modules_after(code)
    assert "torch" not in loaded and "faiss" in loaded


@pytest.mark.parametrize("argv", [["train", "--bogus"], ["train", "--epochs", "abc"], ["search", "audio-to-video"],
                                  ["nosuch"], ["index", "build", "--factory"]])
def test_usage_errors_are_one_line_exit_2(argv):
    res = CliRunner().invoke(app, argv)
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr


def test_an_error_after_status_lines_is_still_one_line(tmp_path, tiny_run):
    """Weights that overflow: found while embedding (after status lines), reported as the model's fault."""
    import shutil

    from safetensors.numpy import load_file, save_file

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    weights = run / "model" / "model.safetensors"
    save_file({k: np.full_like(v, 1e38) if v.dtype.kind == "f" else v for k, v in load_file(weights).items()}, weights)
    res = CliRunner().invoke(app, ["index", "build", "--model", str(run), "--out", str(tmp_path / "index"),
                                   "--synth-clips", "300"])
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(run / "model") in lines[0] and "NaN or inf" in lines[0], res.stderr
    assert not (tmp_path / "index").exists()
