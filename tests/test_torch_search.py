"""The torch exact-search backend (avret/index/torch_flat.py) gives what faiss IndexFlatIP gives.

Tie-heavy galleries (values on a coarse grid, every row three times) make every inner product
exact in float32, so faiss and torch compute bit-identical scores and the ids must match exactly,
ties included: that checks faiss's tie rule, which was found empirically (module doc). CPU tests
use ``torch-cpu``; the CUDA ones skip without a GPU.
"""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
from typer.testing import CliRunner

from avret.errors import AvretError
from avret.index.store import AVIndex
from avret.index.torch_flat import TorchFlat
from avret_cli.main import app

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU"))]


def tied_gallery(n_unique: int, d: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(-2, 3, (n_unique, d)).astype(np.float32) / 2
    x = np.concatenate([base, base, base])
    return x[rng.permutation(len(x))]


def grid_queries(n: int, d: int = 6, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(-2, 3, (n, d)).astype(np.float32) / 2


def faiss_flat(x: np.ndarray) -> faiss.Index:
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    return index


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("nq", [1, 30])  # faiss: one-by-one scan below 20 queries, BLAS blocks above
def test_ties_are_broken_as_faiss_breaks_them(device, precision, nq):
    x = tied_gallery(400)
    q = grid_queries(nq)
    ref = faiss_flat(x)
    # a small margin forces the low-precision modes through their exact fallback too
    ours = TorchFlat(x, device, precision, margin=4)
    for k in (1, 2, 7, 40, 99):
        d_ref, i_ref = ref.search(q, k)
        d, i = ours.search(q, k)
        np.testing.assert_array_equal(i, i_ref, err_msg=f"k={k}")
        np.testing.assert_allclose(d, d_ref, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_class_filter_equals_faiss_selector(device):
    x = tied_gallery(300)
    q = grid_queries(25)
    allowed = np.sort(np.random.default_rng(3).choice(len(x), 200, replace=False)).astype(np.int64)
    params = faiss.SearchParameters()
    params.sel = faiss.IDSelectorBatch(allowed)
    ours = TorchFlat(x, device)
    for k in (1, 9, 60):
        _, i_ref = faiss_flat(x).search(q, k, params=params)
        _, i = ours.search(q, k, allowed)
        np.testing.assert_array_equal(i, i_ref, err_msg=f"k={k}")
    # fewer allowed rows than k: missing slots, as faiss leaves them
    d, i = ours.search(q[:1], 5, np.array([3, 7]))
    assert i[0].tolist()[2:] == [-1, -1, -1] and np.isneginf(d[0, 2:]).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_random_unit_vectors_equal_faiss(device, precision):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((5000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = rng.standard_normal((64, 32)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    d_ref, i_ref = faiss_flat(x).search(q, 10)
    d, i = TorchFlat(x, device, precision).search(q, 10)
    np.testing.assert_array_equal(i, i_ref)
    np.testing.assert_allclose(d, d_ref, atol=1e-5)


def test_large_k_keeps_scores_and_everything_above_the_cut():
    """k >= 100: faiss uses a reservoir there; the scores and every item above the k-th score still agree."""
    x = tied_gallery(1000)
    q = grid_queries(5)
    d_ref, i_ref = faiss_flat(x).search(q, 150)
    d, i = TorchFlat(x, "cpu").search(q, 150)
    np.testing.assert_array_equal(d, d_ref)
    for r in range(len(q)):
        above = d_ref[r] > d_ref[r, -1]
        assert set(i[r][above]) == set(i_ref[r][above])


def test_avindex_torch_backend_sharded_filtered_and_saved(tmp_path):
    x = tied_gallery(200, d=8, seed=4)
    ids = [f"c{i}" for i in range(len(x))]
    labels = np.arange(len(x)) % 3
    q = grid_queries(12, d=8)
    common = dict(modality="visual", model_fingerprint="f")
    ref = AVIndex.build(x, ids, labels, ["a", "b", "c"], device="cpu", **common)
    allowed = np.flatnonzero(labels == 1)
    for shards in (1, 3):
        ours = AVIndex.build(x, ids, labels, ["a", "b", "c"], device="torch-cpu", shards=shards,
                             precision="bf16", **common)
        assert (ours.backend, ours.device) == ("torch", "cpu")
        assert ours.manifest.backend == {"name": "torch", "device": "cpu", "precision": "bf16"}
        for k in (1, 10):
            np.testing.assert_array_equal(ours.search(q, k).rows, ref.search(q, k).rows)
            np.testing.assert_array_equal(ours.search(q, k, allowed_rows=allowed).clip_ids,
                                          ref.search(q, k, allowed_rows=allowed).clip_ids)
    ours.save(tmp_path / "ix")
    saved = json.loads((tmp_path / "ix" / "manifest.json").read_text())
    assert saved["backend"] == {"name": "torch", "device": "cpu", "precision": "bf16"}
    loaded = AVIndex.load(tmp_path / "ix", device="torch-cpu")
    assert loaded.backend == "torch" and loaded.precision == "fp32"
    np.testing.assert_array_equal(loaded.search(q, 5).rows, ref.search(q, 5).rows)
    assert AVIndex.load(tmp_path / "ix", device="cpu").backend == "faiss"


def test_torch_backend_refusals():
    x = tied_gallery(100, d=8)
    ids = [f"c{i}" for i in range(len(x))]
    common = dict(modality="visual", model_fingerprint="f")
    with pytest.raises(AvretError, match="Flat indexes only"):
        AVIndex.build(x, ids, None, None, factory="IVF4,Flat", device="torch-cpu", **common)
    with pytest.raises(AvretError, match="needs the torch backend"):
        AVIndex.build(x, ids, None, None, device="cpu", precision="bf16", **common)
    with pytest.raises(AvretError, match="unknown device"):
        AVIndex.build(x, ids, None, None, device="tpu", **common)
    if not __import__("torch").cuda.is_available():
        with pytest.raises(AvretError, match="torch sees no CUDA GPU"):
            AVIndex.build(x, ids, None, None, device="torch-cuda", **common)


def test_cli_search_and_build_with_the_torch_backend(tmp_path):
    runner = CliRunner()
    synth = ["--synth-clips", "300", "--synth-seed", "3"]

    def invoke(*args):
        return runner.invoke(app, [str(a) for a in args])

    res = invoke("train", "--out", tmp_path / "towers", "--epochs", "1", *synth)
    assert res.exit_code == 0, res.output
    res = invoke("index", "build", "--model", tmp_path / "towers", "--out", tmp_path / "index", "--device",
                 "torch-cpu", "--precision", "bf16", *synth)
    assert res.exit_code == 0, res.output
    assert "backend torch bf16" in res.output
    manifest = json.loads((tmp_path / "index" / "visual" / "manifest.json").read_text())
    assert manifest["backend"] == {"name": "torch", "device": "cpu", "precision": "bf16"}
    answers = {}
    for device in ("cpu", "torch-cpu"):
        res = invoke("search", "audio-to-video", "--index", tmp_path / "index", "--query",
                     "synth_000001,synth_000002", "-k", "7", "--device", device, "--json")
        assert res.exit_code == 0, res.output
        answers[device] = json.loads(res.stdout)
        backend = "torch" if device == "torch-cpu" else "faiss"
        assert f"searched on device cpu ({backend}, fp32)" in res.stderr  # what ran, for the smoke's log
    got = [[h["clip_id"] for h in b["results"]] for b in answers["torch-cpu"]["queries"]]
    want = [[h["clip_id"] for h in b["results"]] for b in answers["cpu"]["queries"]]
    assert got == want
    res = invoke("search", "audio-to-video", "--index", tmp_path / "index", "--query", "synth_000001",
                 "--device", "cpu", "--precision", "bf16")
    assert res.exit_code == 2 and "needs the torch backend" in res.output
    assert len(res.output.strip().splitlines()) == 1


@pytest.mark.parametrize(("gpus", "torch_gpu", "device", "flat", "want"), [
    (1, True, "cuda", True, ("faiss", "cuda")),     # faiss-gpu stays the first choice
    (1, True, "auto", False, ("faiss", "cuda")),
    (1, True, "torch-cuda", True, ("torch", "cuda")),  # unless torch is asked for by name
    (0, True, "cuda", True, ("torch", "cuda")),     # no faiss-gpu: a Flat index is searched by torch
    (0, True, "auto", True, ("torch", "cuda")),
    (0, True, "auto", False, ("faiss", "cpu")),     # ... other factories stay on the CPU under auto
    (0, False, "auto", True, ("faiss", "cpu")),
    (0, False, "torch-cpu", True, ("torch", "cpu")),
    (1, True, "cpu", True, ("faiss", "cpu")),
])
def test_backend_choice(monkeypatch, gpus, torch_gpu, device, flat, want):
    from avret.index import backend, torch_flat

    monkeypatch.setattr(backend, "num_gpus", lambda: gpus)
    monkeypatch.setattr(torch_flat, "cuda_visible", lambda: torch_gpu)
    got = backend.choose_backend(device, flat)
    assert (got.name, got.device) == want


def test_backend_choice_refuses_cuda_nothing_can_serve(monkeypatch):
    from avret.index import backend, torch_flat

    monkeypatch.setattr(backend, "num_gpus", lambda: 0)
    monkeypatch.setattr(torch_flat, "cuda_visible", lambda: True)
    with pytest.raises(AvretError, match="installed faiss sees no GPU"):
        backend.choose_backend("cuda", False)  # an IVF index without faiss-gpu
