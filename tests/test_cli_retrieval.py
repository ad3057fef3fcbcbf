"""The retrieval CLI end to end (train → index build → search → eval) and its bad-input errors."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from avret_cli.main import app

runner = CliRunner()
SYNTH = ["--synth-clips", "400", "--synth-seed", "2"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    res = invoke("train", "--out", root / "towers", "--epochs", "3", *SYNTH)
    assert res.exit_code == 0, res.output
    res = invoke("train", "--model-type", "cca", "--out", root / "cca", *SYNTH)
    assert res.exit_code == 0, res.output
    res = invoke("index", "build", "--model", root / "towers", "--out", root / "index", *SYNTH)
    assert res.exit_code == 0, res.output
    return root


def test_search_both_directions(built):
    res = invoke("search", "audio-to-video", "--index", built / "index", "--query", "synth_000005", "-k", "4",
                 "--json")
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    hits = out["queries"][0]["results"]
    assert len(hits) == 4 and [h["rank"] for h in hits] == [1, 2, 3, 4]
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    res = invoke("search", "video-to-audio", "--index", built / "index", "--query", "synth_000005", "-k", "3")
    assert res.exit_code == 0 and "synth_" in res.stdout


def test_search_results_equal_brute_force(built):
    from avret.data import SynthConfig, make_vegas_synth
    from avret.io import load_model

    ds = make_vegas_synth(SynthConfig(n_clips=400, seed=2))
    model = load_model(built / "towers")
    q = model.embed("audio", ds.audio[ds.rows_of(["synth_000007"])])
    g = model.embed("visual", ds.visual)
    expected = ds.clip_ids[np.argsort(-(g @ q[0]), kind="stable")[:5]].tolist()
    res = invoke("search", "audio-to-video", "--index", built / "index", "--query", "synth_000007", "-k", "5",
                 "--json")
    got = [h["clip_id"] for h in json.loads(res.stdout)["queries"][0]["results"]]
    assert got == expected


def test_search_by_feature_file(built, tmp_path):
    np.save(tmp_path / "q.npy", np.random.default_rng(0).normal(size=128).astype(np.float32))
    res = invoke("search", "audio-to-video", "--index", built / "index", "--query", tmp_path / "q.npy", "-k", "2")
    assert res.exit_code == 0, res.output


def test_eval_prints_table_and_json(built, tmp_path):
    res = invoke("eval", "--model", built / "towers", "--model", built / "cca", "--json-out", tmp_path / "e.json",
                 *SYNTH)
    assert res.exit_code == 0, res.output
    assert "SYNTHETIC" in res.stdout and "A->V" in res.stdout
    data = json.loads((tmp_path / "e.json").read_text())
    assert data["synthetic"] is True and len(data["rows"]) == 2


@pytest.mark.parametrize(
    "args, needle",
    [
        (["search", "audio-to-video", "--query", "synth_999999", "--index", "{index}"],
         "clip id 'synth_999999' is not in"),
        (["search", "audio-to-video", "--query", "synth_000001", "-k", "100000", "--index", "{index}"], "k=100000"),
        (["search", "audio-to-video", "--query", "missing.npy", "--index", "{index}"],
         "missing.npy: query feature file not found"),
        (["eval", "--dataset", "does/not/exist.h5", "--model", "{towers}"], "does/not/exist.h5"),
        (["eval", "--dataset", "vegas", "--model", "{towers}"], "needs --data"),
        # a default path that does not exist (no `make demo` in this directory): one line naming it
        (["search", "audio-to-video", "--query", "synth_000001"], "runs/demo/index: no index root here"),
        (["index", "info"], "runs/demo/index: no index root here"),
        (["eval"], "runs/demo/videoadviser: no run or model directory here"),
        (["index", "build"], "runs/demo/videoadviser: no run or model directory here"),
    ],
)
def test_bad_input_is_one_line_exit_2(built, args, needle, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = invoke(*(a.format(index=built / "index", towers=built / "towers") for a in args))
    assert res.exit_code == 2, res.output
    assert needle in res.stderr
    assert "Traceback" not in res.output
    assert len(res.stderr.strip().splitlines()) == 1


def test_wrong_width_query_file(built, tmp_path):
    np.save(tmp_path / "q.npy", np.zeros((2, 64), np.float32))
    res = invoke("search", "audio-to-video", "--index", built / "index", "--query", tmp_path / "q.npy")
    assert res.exit_code == 2 and "width 64, expected 128" in res.stderr


def test_nan_query_file(built, tmp_path):
    np.save(tmp_path / "q.npy", np.full(128, np.nan, np.float32))
    res = invoke("search", "audio-to-video", "--index", built / "index", "--query", tmp_path / "q.npy")
    assert res.exit_code == 2 and "NaN or inf" in res.stderr


def test_index_from_another_model_is_refused(built):
    res = invoke("search", "audio-to-video", "--index", built / "index", "--query", "synth_000001",
                 "--model", built / "cca")
    assert res.exit_code == 2 and "built by model" in res.stderr


def test_failed_index_build_leaves_nothing(built, tmp_path):
    out = tmp_path / "idx"
    res = invoke("index", "build", "--model", built / "towers", "--out", out, "--factory", "IVF4096,Flat", *SYNTH)
    assert res.exit_code == 2, res.output
    assert not out.exists() and not any(p.name.startswith(".idx") for p in tmp_path.iterdir())


def test_wrong_feature_width_dataset(built, tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "manifest.csv").write_text("clip_id,label,split\na,dog,test\nb,drum,test\n")
    np.save(folder / "audio.npy", np.zeros((2, 100), np.float32))
    np.save(folder / "visual.npy", np.zeros((2, 1024), np.float32))
    res = invoke("index", "build", "--model", built / "towers", "--out", tmp_path / "i", "--dataset", folder)
    assert res.exit_code == 2 and "width 100, expected 128" in res.stderr
    assert not (tmp_path / "i").exists()


def test_existing_index_survives_a_failed_rebuild(built, tmp_path):
    out = tmp_path / "keep"
    shutil.copytree(built / "index", out)
    before = sorted(p.name for p in out.rglob("*"))
    res = invoke("index", "build", "--model", built / "towers", "--out", out, "--factory", "IVF4096,Flat", *SYNTH)
    assert res.exit_code == 2
    assert sorted(p.name for p in out.rglob("*")) == before
