"""mAP on torch (avret/eval/torch_ranking.py) equals the numpy evaluator bit for bit, ties included.

CPU tests run the torch path on the CPU (``device="torch-cpu"``); the CUDA ones skip without a GPU.
"""

from __future__ import annotations

import numpy as np
import pytest

from avret.errors import AvretError
from avret.eval.retrieval import cross_modal_report, retrieval_metrics

TORCH_DEVICES = ["torch-cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU"))]


def tie_heavy(seed: int = 0):
    """Integer-valued rows with duplicates: many exact score ties between relevant and irrelevant items."""
    rng = np.random.default_rng(seed)
    g = rng.integers(-1, 2, (400, 6)).astype(float)
    g[(g == 0).all(axis=1), 0] = 1
    g = np.concatenate([g, g[:120]])
    q = np.concatenate([g[:150], rng.integers(-1, 2, (40, 6)).astype(float)])
    q[(q == 0).all(axis=1), 1] = 1
    return q, rng.integers(0, 5, len(q)), g, rng.integers(0, 5, len(g))


def assert_same(a, b):
    np.testing.assert_array_equal(a.ap, b.ap)
    np.testing.assert_array_equal(a.ap_at_r, b.ap_at_r)
    assert a.map == b.map and a.map_at_r == b.map_at_r
    assert a.precision_at == b.precision_at and a.per_class_ap == b.per_class_ap
    assert a.n_without_relevant == b.n_without_relevant


@pytest.mark.parametrize("device", TORCH_DEVICES)
@pytest.mark.parametrize("chunk_size", [None, 7])
def test_ties_equal_the_numpy_path(device, chunk_size):
    q, ql, g, gl = tie_heavy()
    want = retrieval_metrics(q, ql, g, gl, device="cpu", ks=(1, 5, 600))
    got = retrieval_metrics(q, ql, g, gl, device=device, chunk_size=chunk_size, ks=(1, 5, 600))
    assert_same(got, want)


@pytest.mark.parametrize("device", TORCH_DEVICES)
def test_random_embeddings_both_directions_equal(device):
    rng = np.random.default_rng(4)
    a, v = rng.standard_normal((300, 16)), rng.standard_normal((300, 16))
    labels = rng.integers(0, 7, 300)
    labels[:3] = 9  # a class with few members
    want = cross_modal_report(a, v, labels, device="cpu")
    seen = []
    got = cross_modal_report(a, v, labels, device=device, chunk_size=64, progress=lambda d, t: seen.append((d, t)))
    assert_same(got.audio_to_visual, want.audio_to_visual)
    assert_same(got.visual_to_audio, want.visual_to_audio)
    assert seen[-1] == (600, 600)


def test_a_query_without_relevant_items():
    q, g = np.eye(4)[:2], np.eye(4)
    want = retrieval_metrics(q, [3, 0], g, [0, 1, 2, 0], device="cpu")
    got = retrieval_metrics(q, [3, 0], g, [0, 1, 2, 0], device="torch-cpu")
    assert_same(got, want)
    assert got.n_without_relevant == 1


def test_bad_device_is_one_line():
    q, ql, g, gl = tie_heavy()
    with pytest.raises(AvretError, match="expected one of"):
        retrieval_metrics(q, ql, g, gl, device="tpu")
    if not __import__("torch").cuda.is_available():
        with pytest.raises(AvretError, match="no CUDA GPU"):
            cross_modal_report(q[:10], q[:10], ql[:10], device="cuda")


def test_cli_eval_device_is_recorded_and_changes_nothing(tmp_path, tiny_run):
    import json

    from typer.testing import CliRunner

    from avret_cli.main import app

    runner = CliRunner()
    out = {}
    for device in ("cpu", "torch-cpu"):
        res = runner.invoke(app, ["eval", "--model", str(tiny_run), "--synth-clips", "600", "--synth-seed", "1",
                                  "--device", device, "--details", "--json-out", str(tmp_path / f"{device}.json")])
        assert res.exit_code == 0, res.output
        assert "ranked on device cpu" in res.output
        out[device] = json.loads((tmp_path / f"{device}.json").read_text())
    assert out["cpu"]["device"] == "cpu" and out["cpu"]["rows"] == out["torch-cpu"]["rows"]
    res = runner.invoke(app, ["eval", "--model", str(tiny_run), "--device", "tpu"])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and "device 'tpu'" in res.output
