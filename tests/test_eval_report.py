"""``avret eval --report DIR``: plots exist, the page's numbers are ``--json-out``'s, nothing external loads."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from avret.data.folder import load_folder
from avret.eval.evaluate import evaluate_model
from avret.index.build import build_indexes
from avret.index.searcher import Searcher
from avret.io import load_model
from avret.serve.page import find_report
from avret.train.runs import train_run
from avret.train.tower_training import TrainConfig
from avret_cli.main import app
from tests.fixtures_media import build_media_index

SYNTH = ["--dataset", "vegas-synth", "--synth-clips", "600", "--synth-seed", "1"]  # = tiny_synth


def _cli(*args: object):  # noqa: ANN202 - click's Result
    return CliRunner().invoke(app, [str(a) for a in args])


def _numbers(page: str) -> dict[str, tuple[float, str]]:
    """data-key -> (exact value, text shown) of every number on the page."""
    out = {}
    for key, value, shown in re.findall(r'data-key="([^"]+)" data-value="([^"]+)">([^<]*)<', page):
        out[key.replace("&amp;", "&")] = (float(value), shown)
    return out


@pytest.fixture(scope="module")
def cca_run(tmp_path_factory, tiny_synth) -> Path:
    return train_run(tiny_synth, tmp_path_factory.mktemp("cca") / "cca", "cca", TrainConfig(seed=0))


def test_report_numbers_equal_json_out_plots_exist_and_nothing_external(tmp_path, tiny_run, cca_run, tiny_synth):
    out, js = tmp_path / "report", tmp_path / "metrics.json"
    res = _cli("eval", "--compare", cca_run, tiny_run, *SYNTH, "--report", out, "--json-out", js)
    assert res.exit_code == 0, res.output
    metrics = json.loads(js.read_text())
    meta = json.loads((out / "report.json").read_text())
    assert meta["rows"] == metrics["rows"] and meta["synthetic"] is True
    assert [m["fingerprint"] for m in meta["models"]] == [load_model(cca_run).fingerprint(),
                                                           load_model(tiny_run).fingerprint()]
    page = (out / "index.html").read_text()
    nums = _numbers(page)
    # every number --json-out has is on the page, exactly, and shown rounded from it
    want = {}
    for name, row in metrics["rows"].items():
        want[f"{name}/mean_map"] = row["mean_map"]
        for d in ("audio_to_visual", "visual_to_audio"):
            for m in ("map", "map_at_r"):
                want[f"{name}/{d}/{m}"] = row[d][m]
            for k, v in row[d]["precision_at"].items():
                want[f"{name}/{d}/precision_at/{k}"] = v
            for c, v in row[d]["per_class_ap"].items():
                want[f"{name}/{d}/per_class_ap/{c}"] = v
    assert len(want) > 40
    for key, value in want.items():
        assert key in nums, key
        assert nums[key][0] == value and nums[key][1] == f"{100 * value:.2f}", key
    # the per-query AP of the best/worst examples is the evaluator's own
    per_query = {name: evaluate_model(load_model(p), tiny_synth)
                 for name, p in zip(metrics["rows"], [cca_run, tiny_run], strict=True)}
    ap_keys = [k for k in nums if "/ap/" in k]
    assert len(ap_keys) >= 2 * 2 * len(tiny_synth.class_names)  # best + worst, both directions, each class
    for key in ap_keys:
        name, direction, _, q = key.rsplit("/", 3)
        assert nums[key][0] == float(getattr(per_query[name], direction).ap[int(q)]), key
    # the plots exist as PNG files and are embedded in the page
    assert len(meta["plots"]) == 2 * 4 + 2 and "compare_gain.png" in meta["plots"]
    for name in meta["plots"]:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert base64.b64encode(data).decode() in page
    # nothing is loaded from anywhere: every src/href/url() is a data URI or an anchor
    refs = re.findall(r'(?:src|href)\s*=\s*["\']([^"\']*)', page) + re.findall(r"url\(([^)]*)\)", page)
    assert refs and all(r.startswith(("data:", "#")) for r in refs), [r[:40] for r in refs if not r.startswith("data:")]
    assert "http://" not in page and "https://" not in page and "@import" not in page
    assert "SYNTHETIC" in page


def test_report_never_replaces_a_user_directory_but_replaces_an_earlier_report(tmp_path, tiny_run):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    res = _cli("eval", "--model", tiny_run, *SYNTH, "--report", mine)
    assert res.exit_code == 2 and "refusing to replace it" in res.output
    assert [p.name for p in mine.iterdir()] == ["notes.txt"]
    out = tmp_path / "rep"
    assert _cli("eval", "--model", tiny_run, *SYNTH, "--report", out).exit_code == 0
    (out / "index.html").write_text("old")
    assert _cli("eval", "--model", tiny_run, *SYNTH, "--report", out).exit_code == 0
    assert (out / "index.html").read_text().startswith("<!doctype html>")
    res = _cli("eval", "--model", tiny_run, "--compare", tiny_run, tiny_run, *SYNTH)
    assert res.exit_code == 2 and "not both" in res.output


def test_serve_finds_the_report_beside_the_model_and_media_gives_posters(tmp_path):
    paths = build_media_index(tmp_path / "m")
    run = tmp_path / "run"
    shutil.copytree(paths["run"], run)
    res = _cli("eval", "--model", run, "--dataset", paths["feats"], "--report", run / "report")
    assert res.exit_code == 0, res.output
    page = (run / "report" / "index.html").read_text()
    assert re.search(r'class="poster p1_\d+"', page) and ".p1_" in page  # posters of the clips' frames
    index = tmp_path / "index"
    build_indexes(load_model(run / "model"), load_folder(paths["feats"]), index, device="cpu")
    assert find_report(Searcher(index, device="cpu")) == (run / "report").resolve()
