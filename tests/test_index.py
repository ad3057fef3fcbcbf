"""avret.index: build -> save -> load -> search, and every refusal, through the public API."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

import avret.index.store as store_mod
from avret.errors import AvretError, IndexError_, QueryError
from avret.index import (
    AVIndex,
    IndexManifest,
    SearchResult,
    index_path_for,
    resolve_device,
)

N, D, C = 240, 16, 4
FP = "a" * 64
OTHER_FP = "b" * 64


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    rng = np.random.default_rng(0)
    emb = _unit(rng.standard_normal((N, D)))
    ids = [f"clip{i:04d}" for i in range(N)]
    labels = rng.integers(0, C, N)
    names = [f"class{c}" for c in range(C)]
    return emb, ids, labels, names


@pytest.fixture()
def built(data) -> AVIndex:
    emb, ids, labels, names = data
    return AVIndex.build(
        emb, ids, labels, names, modality="visual", model_fingerprint=FP, dataset="synthetic"
    )


@pytest.fixture()
def saved(built: AVIndex, tmp_path: Path) -> Path:
    return built.save(tmp_path / "idx")


def _brute(gallery: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    s = q @ gallery.T
    rows = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, rows, axis=1), rows


def _edit_manifest(path: Path, **changes) -> None:
    mp = path / "manifest.json"
    m = json.loads(mp.read_text())
    for key, value in changes.items():
        if "." in key:
            outer, inner = key.split(".")
            m[outer][inner] = value
        else:
            m[key] = value
    mp.write_text(json.dumps(m))


# ---------------------------------------------------------------------------- round trip
def test_round_trip_matches_numpy_brute_force(data, saved: Path) -> None:
    emb, ids, labels, names = data
    idx = AVIndex.load(saved, expect_modality="visual", expect_fingerprint=FP)
    assert (idx.count, idx.dim, idx.modality, idx.device) == (N, D, "visual", "cpu")
    assert idx.class_names == names
    q = _unit(np.random.default_rng(1).standard_normal((7, D)))
    res = idx.search(q, 10)
    ref_scores, ref_rows = _brute(emb, q, 10)
    assert isinstance(res, SearchResult) and res.scores.dtype == np.float32 and res.rows.dtype == np.int64
    np.testing.assert_array_equal(res.rows, ref_rows)
    np.testing.assert_allclose(res.scores, ref_scores, rtol=1e-5, atol=1e-5)
    assert (np.diff(res.scores, axis=1) <= 1e-6).all()
    np.testing.assert_array_equal(res.clip_ids, np.asarray(ids)[ref_rows])
    np.testing.assert_array_equal(res.labels, labels[ref_rows])
    recs = res.to_records(idx.class_names)
    assert len(recs) == 7 and [r["rank"] for r in recs[0]] == list(range(1, 11))
    first = recs[0][0]
    assert first["clip_id"] == ids[ref_rows[0, 0]] and first["class"] == names[labels[ref_rows[0, 0]]]
    json.dumps(recs)  # JSON-able


def test_manifest_contents_and_files(saved: Path) -> None:
    assert sorted(p.name for p in saved.iterdir()) == ["index.faiss", "manifest.json", "metadata.json"]
    m = json.loads((saved / "manifest.json").read_text())
    assert m["format_version"] == 1 and m["modality"] == "visual" and m["dim"] == D and m["count"] == N
    assert m["metric"] == "inner_product" and m["factory"] == "Flat" and m["model_fingerprint"] == FP
    assert m["dataset"] == "synthetic" and m["created_at"]
    assert set(m["versions"]) >= {"avret", "faiss", "numpy", "python"}
    assert IndexManifest.from_dict(m).to_dict() == m
    assert m["build"]["seconds"] >= 0 and m["build"]["seconds_per_million"] == pytest.approx(
        m["build"]["seconds"] * 1e6 / N, abs=0.0005 * 1e6 / N + 1e-3)  # seconds are rounded to 1 ms
    meta = json.loads((saved / "metadata.json").read_text())
    assert len(meta["clip_ids"]) == len(meta["labels"]) == N


def test_self_query_single_vector_and_batches(data, built: AVIndex, monkeypatch) -> None:
    emb, ids, _, _ = data
    one = built.search(emb[5], 1)  # a (d,) vector is one query
    assert one.clip_ids[0, 0] == ids[5] and one.scores[0, 0] == pytest.approx(1.0, abs=1e-5)
    monkeypatch.setattr(store_mod, "SEARCH_BATCH", 7)  # force several batches
    res = built.search(emb[:20], 3)
    np.testing.assert_array_equal(res.rows[:, 0], np.arange(20))


@pytest.mark.parametrize(
    ("factory", "opts"), [("IVF4,Flat", {"nprobe": 4}), ("HNSW16", {"ef_search": 64})]
)
def test_factory_builds_saves_and_loads(data, tmp_path: Path, factory: str, opts: dict) -> None:
    emb, ids, labels, names = data
    idx = AVIndex.build(emb, ids, labels, names, modality="audio", model_fingerprint=FP, factory=factory)
    path = idx.save(tmp_path / "approx")
    loaded = AVIndex.load(path, expect_modality="audio")
    assert loaded.manifest.factory == factory
    q = emb[:10]
    res = loaded.search(q, 5, **opts)
    _, ref_rows = _brute(emb, q, 5)
    # nprobe = nlist is exhaustive; a generous efSearch on 240 points is too.
    np.testing.assert_array_equal(res.rows, ref_rows)


def test_ivf_needs_enough_vectors(data) -> None:
    emb, ids, labels, names = data
    with pytest.raises(AvretError, match="at least 512 vectors"):
        AVIndex.build(emb, ids, labels, names, modality="visual", model_fingerprint=FP, factory="IVF512,Flat")
    with pytest.raises(AvretError, match="invalid FAISS factory string 'NotAnIndex'"):
        AVIndex.build(emb, ids, labels, names, modality="visual", model_fingerprint=FP, factory="NotAnIndex")


def test_nprobe_on_flat_index_is_an_error(built: AVIndex) -> None:
    with pytest.raises(QueryError, match="nprobe applies only to IVF"):
        built.search(np.zeros((1, D), np.float32), 1, nprobe=4)


# ---------------------------------------------------------------------------- build validation
@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda e, i: (e[0], i), "2-D"),
        (lambda e, i: (np.where(np.arange(N)[:, None] == 3, np.nan, e), i), "row 3 contains NaN"),
        (lambda e, i: (e, i[:-1]), "239 ids for 240 vectors"),
        (lambda e, i: (e, [*i[:-1], i[0]]), "duplicate clip id 'clip0000'"),
    ],
)
def test_build_validates_inputs(data, mutate, match: str) -> None:
    emb, ids, labels, names = data
    e, i = mutate(emb, ids)
    with pytest.raises(AvretError, match=match):
        AVIndex.build(e, i, labels, names, modality="visual", model_fingerprint=FP)


def test_build_rejects_bad_modality(data) -> None:
    emb, ids, labels, names = data
    with pytest.raises(AvretError, match="modality"):
        AVIndex.build(emb, ids, labels, names, modality="video", model_fingerprint=FP)


# ---------------------------------------------------------------------------- atomic save
@pytest.mark.parametrize("target", ["write_index", "write_json"])
def test_failed_save_leaves_no_directory_and_keeps_old(
    built: AVIndex, tmp_path: Path, monkeypatch, target: str
) -> None:
    def boom(*args, **kwargs):
        raise OSError("disk full")

    if target == "write_index":
        monkeypatch.setattr(faiss, "write_index", boom)
    else:
        monkeypatch.setattr(store_mod, "write_json", boom)
    with pytest.raises(OSError, match="disk full"):
        built.save(tmp_path / "new")
    assert list(tmp_path.iterdir()) == []  # no directory, no temp leftovers
    monkeypatch.undo()

    good = built.save(tmp_path / "good")
    before = {p.name: p.read_bytes() for p in good.iterdir()}
    monkeypatch.setattr(faiss, "write_index", boom)
    with pytest.raises(OSError):
        built.save(good)
    assert {p.name: p.read_bytes() for p in good.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good"]
    AVIndex.load(good)


def test_save_refuses_to_overwrite_a_non_index_directory(built: AVIndex, tmp_path: Path) -> None:
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(IndexError_, match="not an avret index directory"):
        built.save(tmp_path / "precious")
    assert (tmp_path / "precious" / "notes.txt").read_text() == "keep me"


# ---------------------------------------------------------------------------- load refusals
@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"dim": D + 1}, r"field 'dim' is 17 but index.faiss has dimension 16"),
        ({"count": N - 1}, r"metadata.json.*239"),
        ({"modality": "smell"}, r"manifest.json: field 'modality' must be one of"),
        ({"format_version": 99}, r"manifest.json: unknown format_version 99"),
        ({"versions.faiss": "0.9.0"}, r"manifest.json: index was written by faiss 0.9.0"),
        ({"metric": "l2"}, r"manifest.json: field 'metric'"),
        ({"model_fingerprint": ""}, r"manifest.json: field 'model_fingerprint'"),
        ({"build": {"seconds": -1, "seconds_per_million": 0}}, r"manifest.json: field 'build' must be null or"),
        ({"build": "fast"}, r"manifest.json: field 'build' must be null or"),
    ],
)
def test_load_refuses_tampered_manifest(saved: Path, changes: dict, match: str) -> None:
    _edit_manifest(saved, **changes)
    with pytest.raises(IndexError_, match=match) as exc:
        AVIndex.load(saved)
    assert "\n" not in str(exc.value)


def test_load_refuses_count_mismatch_with_index(saved: Path) -> None:
    meta = json.loads((saved / "metadata.json").read_text())
    meta["clip_ids"].append("extra")
    meta["labels"].append(0)
    (saved / "metadata.json").write_text(json.dumps(meta))
    _edit_manifest(saved, count=N + 1)
    with pytest.raises(IndexError_, match=r"field 'count' is 241 but index.faiss holds 240 vectors"):
        AVIndex.load(saved)


def test_load_refuses_metadata_shorter_than_manifest(saved: Path) -> None:
    meta = json.loads((saved / "metadata.json").read_text())
    meta["labels"] = meta["labels"][:-1]
    (saved / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(IndexError_, match=r"metadata.json: labels"):
        AVIndex.load(saved)


@pytest.mark.parametrize("name", ["manifest.json", "metadata.json", "index.faiss"])
def test_load_refuses_missing_file(saved: Path, name: str) -> None:
    (saved / name).unlink()
    with pytest.raises(IndexError_, match=f"missing {name}"):
        AVIndex.load(saved)


def test_load_refuses_unreadable_files(saved: Path) -> None:
    (saved / "index.faiss").write_bytes(b"not faiss at all")
    with pytest.raises(IndexError_, match=r"index.faiss: not a readable FAISS index"):
        AVIndex.load(saved)
    (saved / "manifest.json").write_text("{ nope")
    with pytest.raises(IndexError_, match=r"manifest.json: unreadable manifest"):
        AVIndex.load(saved)


def test_load_refuses_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(IndexError_, match="does not exist"):
        AVIndex.load(tmp_path / "nowhere")


def test_load_refuses_wrong_fingerprint_and_modality(saved: Path) -> None:
    with pytest.raises(IndexError_) as exc:
        AVIndex.load(saved, expect_fingerprint=OTHER_FP)
    assert str(exc.value) == (
        f"index {saved} was built by model {FP[:12]}, but the query model is {OTHER_FP[:12]}; "
        "rebuild the index with this model"
    )
    with pytest.raises(IndexError_, match=r"holds 'visual' embeddings .*expected 'audio'"):
        AVIndex.load(saved, expect_modality="audio")


# ---------------------------------------------------------------------------- search errors
def test_search_errors(built: AVIndex, saved: Path) -> None:
    idx = AVIndex.load(saved)
    q = np.zeros((2, D), np.float32)
    with pytest.raises(QueryError, match=rf"k=241 is larger than the gallery \(240 items in index {saved}\)"):
        idx.search(q, N + 1)
    with pytest.raises(QueryError, match="k must be at least 1"):
        idx.search(q, 0)
    with pytest.raises(QueryError, match=rf"query has width 15, expected 16 \(index {saved}\)"):
        idx.search(np.zeros((2, D - 1), np.float32), 1)
    bad = q.copy()
    bad[1, 3] = np.nan
    with pytest.raises(QueryError, match="query row 1 contains NaN or inf"):
        idx.search(bad, 1)
    bad[1, 3] = np.inf
    with pytest.raises(QueryError, match="NaN or inf"):
        idx.search(bad, 1)
    assert idx.search(q, N).rows.shape == (2, N)  # k == count is fine
    with pytest.raises(QueryError, match=r"index \(unsaved\)"):
        AVIndex.build(*_tiny(), modality="audio", model_fingerprint=FP).search(q[:, :4], 9)


def _tiny():
    return _unit(np.eye(4) + 0.1), ["w", "x", "y", "z"], [0, 1, 0, 1], ["p", "q"]


# ---------------------------------------------------------------------------- device + paths
def test_device_resolution_on_cpu_machine(data) -> None:
    if getattr(faiss, "get_num_gpus", lambda: 0)() > 0:
        pytest.skip("a GPU is visible")
    assert resolve_device("auto") == "cpu"
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(AvretError, match="device 'cuda' requested but the installed faiss sees no GPU"):
        resolve_device("cuda")
    with pytest.raises(AvretError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(AvretError, match="no GPU"):
        AVIndex.build(*_tiny(), modality="audio", model_fingerprint=FP, device="cuda")


def test_index_path_for(built: AVIndex, tmp_path: Path) -> None:
    root = tmp_path / "root"
    built.save(root / "visual")
    assert index_path_for(root, "visual") == root / "visual"
    with pytest.raises(IndexError_, match=r"no 'audio' index under .*audio/manifest.json"):
        index_path_for(root, "audio")
    single = built.save(tmp_path / "single")
    assert index_path_for(single, "visual") == single
    with pytest.raises(IndexError_, match=r"holds 'visual' embeddings .*expected 'audio'"):
        index_path_for(single, "audio")
    with pytest.raises(IndexError_, match="does not exist"):
        index_path_for(tmp_path / "missing", "visual")
    shutil.rmtree(single)


def test_a_forged_index_header_is_refused_before_faiss_allocates(saved: Path) -> None:
    """A small file whose header or code length claims far more than the manifest is refused up front."""
    import resource
    import struct

    ipath = saved / "index.faiss"
    good = ipath.read_bytes()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    forged_codes = good[:37] + struct.pack("<Q", 2**29) + good[45:]  # the flat codes' length prefix
    forged_count = good[:8] + struct.pack("<q", 2**36) + good[16:]  # the header's ntotal
    for forged, match in ((forged_codes, "claims 536870912 codes"), (forged_count, "holds 68719476736 vectors")):
        ipath.write_bytes(forged)
        with pytest.raises(IndexError_, match=match) as exc:
            AVIndex.load(saved)
        assert "\n" not in str(exc.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 200_000  # KiB: no 2 GiB allocation
    ipath.write_bytes(good[:-4])  # truncated: the size no longer fits count x dim
    with pytest.raises(IndexError_, match="bytes"):
        AVIndex.load(saved)
    ipath.write_bytes(good)
    assert AVIndex.load(saved).count > 0
