"""Bad query files and ids: one line, exit 2, no traceback, nothing written (reliability issue, item 5/7)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from avret_cli.main import app


@pytest.fixture(scope="module")
def index_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("q")
    runner = CliRunner()
    res = runner.invoke(app, ["train", "--out", str(root / "run"), "--synth-clips", "200", "--epochs", "1",
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["index", "build", "--model", str(root / "run"), "--out", str(root / "idx")])
    assert res.exit_code == 0, res.output
    return root / "idx"


def _write(path, kind):
    if kind == "objects":
        np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    elif kind == "random bytes":
        path.write_bytes(b"\x00\x01garbage" * 10)
    elif kind == "0-d":
        np.save(path, np.array(3.0))
    elif kind == "strings":
        np.save(path, np.array(["a", "b"]))
    elif kind == "0 bytes":
        path.write_bytes(b"")
    elif kind == "no rows":
        np.save(path, np.zeros((0, 128), np.float32))
    elif kind == "complex":
        np.save(path, np.ones((1, 128), np.complex64))
    elif kind == "3-d":
        np.save(path, np.ones((1, 2, 128), np.float32))


@pytest.mark.parametrize("kind", ["objects", "random bytes", "0-d", "strings", "0 bytes", "no rows", "complex", "3-d"])
def test_a_bad_query_file_is_one_line_exit_2(tmp_path, index_root, kind):
    q = tmp_path / "q.npy"
    _write(q, kind)
    before = sorted(p.name for p in tmp_path.iterdir())
    res = CliRunner().invoke(app, ["search", "audio-to-video", "--index", str(index_root), "--query", str(q)])
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "q.npy" in errors[0] and "Traceback" not in res.output, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.parametrize("query", ["", " , "])
def test_an_empty_clip_id_query_is_refused(index_root, query):
    res = CliRunner().invoke(app, ["search", "video-to-audio", "--index", str(index_root), "--query", query])
    assert res.exit_code == 2 and "expected a clip id" in res.output, res.output


@pytest.mark.parametrize("args, needle", [
    (["train", "--synth-clips", "-5"], "--synth-clips"),
    (["train", "--synth-clips", "1000000000"], "--synth-clips"),
    (["distill", "--method", "kd", "--synth-clips", "200", "--weight", "nan"], "--weight nan"),
])
def test_bad_numbers_are_refused_before_any_work(tmp_path, args, needle):
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and needle in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "out").exists()


def test_json_out_naming_a_directory_is_refused(tmp_path, index_root):
    run = index_root.parent / "run"
    res = CliRunner().invoke(app, ["eval", "--model", str(run), "--json-out", str(tmp_path)])
    assert res.exit_code == 2 and "is a directory" in res.output, res.output
    assert list(tmp_path.iterdir()) == []
