"""Indexes past one process's memory: ``--factory auto`` (choice, nprobe tuning) and sharded builds.

A sharded exact index must answer exactly like the unsharded one (library and CLI); ``--factory
auto`` must meet the recall it records, recomputed here by brute force; bad options are one line,
exit 2, nothing written.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from avret.errors import AvretError, IndexError_
from avret.index import AVIndex, autoindex
from avret.index.autoindex import choose_factory, choose_nprobe, estimate_bytes, parse_size
from avret.utils.atomic import OUTPUT_MARKER
from avret_cli.main import app

FP = "f" * 64
MIB = 1 << 20
runner = CliRunner()


def _clustered(n: int, d: int, seed: int = 0, centres: int = 200, noise: float = 0.35) -> np.ndarray:
    """Unit vectors around ``centres`` random centres (a gallery with structure an IVF can exploit)."""
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + noise * rng.standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _ids(n: int) -> list[str]:
    return [f"clip{i:06d}" for i in range(n)]


def _exact_rows(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    s = q @ x.T
    return np.argsort(-s, axis=1, kind="stable")[:, :k]


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / exact.shape[1]
                          for f, e in zip(found.tolist(), exact.tolist(), strict=True)]))


# ---------------------------------------------------------------------- choice rules
@pytest.mark.parametrize(
    ("n", "d", "budget", "expected"),
    [
        (5_000, 128, None, "Flat"),  # tiny: exact
        (5_000, 128, 3 * MIB, "Flat"),
        (100_000, 128, None, "IVF1024,Flat"),  # nlist: largest power of 2 <= 4 sqrt(n)
        (1_000_000, 128, 600_000_000, "IVF2048,Flat"),
        (1_000_000, 128, 515_000_000, "Flat"),  # between Flat (512e6) and IVF-Flat (~521e6)
        # a budget below Flat: the largest compressed candidate that fits comes first (all are then
        # built and measured: tests/test_index_auto.py)
        (1_000_000, 128, 128 * MIB, "IVF2048,SQ6"),
        (1_000_000, 128, 30_000_000, "IVF2048,PQ16np"),
        (5_000_000, 128, 0.25 * 4 * 5_000_000 * 128, "IVF8192,SQ6"),
        (50_000, 12, 1 * MIB, "IVF512,SQ6"),
    ],
)
def test_choose_factory_rules(n, d, budget, expected) -> None:
    factory, reason, est = choose_factory(n, d, None if budget is None else int(budget))
    assert factory == expected, reason
    assert budget is None or est <= budget
    assert reason


@pytest.mark.parametrize(
    ("curve", "target", "expected"),
    [
        ([[1, 0.80], [2, 0.93], [4, 0.96], [8, 0.99]], 0.95, (4, 0.96)),  # first that reaches the target
        ([[1, 0.5304], [2, 0.5944], [4, 0.6031], [8, 0.6030], [16, 0.6029]], 0.95, (4, 0.6031)),
        # a plateau below the target: the smallest within 0.005 of the best, not the best's own nprobe
        ([[1, 0.3139], [2, 0.4195], [4, 0.509], [8, 0.5499], [16, 0.552], [256, 0.5524]], 0.95, (8, 0.5499)),
        ([[1, 0.40], [2, 0.50], [4, 0.60]], 0.95, (4, 0.60)),  # still rising: the last
    ],
)
def test_choose_nprobe_rule(curve, target, expected) -> None:
    assert choose_nprobe(curve, target) == expected


@pytest.mark.parametrize(("n", "d", "budget"), [(5_000, 128, 1 * MIB), (1_000_000, 128, 5 * MIB), (20_000, 2, 1000)])
def test_choose_factory_refuses_a_budget_too_small(n, d, budget) -> None:
    with pytest.raises(AvretError, match="--max-memory .* raise --max-memory"):
        choose_factory(n, d, budget)


@pytest.mark.parametrize(
    ("text", "value"), [("4GB", 4 << 30), ("512m", 512 << 20), ("1.5GiB", int(1.5 * (1 << 30))), ("100000", 100000),
                        ("64 KB", 64 << 10), ("2T", 2 << 40)])
def test_parse_size(text, value) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["4XB", "", "-1GB", "0", "GB", "1e9", "4 G B"])
def test_parse_size_refuses(text) -> None:
    with pytest.raises(AvretError, match="--max-memory"):
        parse_size(text)


# ---------------------------------------------------------------------- sharded exact == unsharded
@pytest.mark.parametrize("shards", [2, 3, 7])
def test_sharded_flat_equals_unsharded(tmp_path: Path, shards: int) -> None:
    n, d = 2_000, 24
    x = _clustered(n, d, seed=1)
    x[100] = x[7]  # exact ties: the order between equal scores must survive sharding too
    labels = np.arange(n) % 5
    names = [f"c{i}" for i in range(5)]
    one = AVIndex.build(x, _ids(n), labels, names, modality="audio", model_fingerprint=FP)
    many = AVIndex.build(x, _ids(n), labels, names, modality="audio", model_fingerprint=FP, shards=shards,
                         workers=2, workdir=tmp_path)
    loaded = AVIndex.load(many.save(tmp_path / "sharded"))
    assert loaded.manifest.shards == shards and loaded.manifest.ivfdata is None
    q = x[::97]
    a = one.search(q, 15)
    allowed = np.flatnonzero(labels == 3)
    for idx in (many, loaded):
        b = idx.search(q, 15)
        assert np.array_equal(a.rows, b.rows) and np.array_equal(a.scores, b.scores)
        assert np.array_equal(a.clip_ids, b.clip_ids)
        fa, fb = one.search(q, 5, allowed_rows=allowed), idx.search(q, 5, allowed_rows=allowed)
        assert np.array_equal(fa.rows, fb.rows) and np.array_equal(fa.scores, fb.scores)
        assert np.array_equal(idx.embeddings_of(np.array([0, 999, n - 1])), x[[0, 999, n - 1]])


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_cli_sharded_index_searches_exactly_like_the_unsharded_one(tiny_run, tmp_path: Path) -> None:
    plain, sharded = tmp_path / "plain", tmp_path / "sharded"
    res = invoke("index", "build", "--model", tiny_run, "--out", plain)
    assert res.exit_code == 0, res.output
    res = invoke("index", "build", "--model", tiny_run, "--out", sharded, "--shards", "3")
    assert res.exit_code == 0, res.output
    assert "in 3 shards" in res.stdout
    for mod in ("visual", "audio"):
        m = json.loads((sharded / mod / "manifest.json").read_text())
        assert m["shards"] == 3 and m["factory"] == "Flat"
        # no work files left behind: only the output's kind marker is hidden
        assert [p.name for p in sharded.iterdir() if p.name.startswith(".")] == [OUTPUT_MARKER]
    names = json.loads((plain / "visual" / "metadata.json").read_text())["class_names"]
    queries = ",".join(json.loads((plain / "audio" / "metadata.json").read_text())["clip_ids"][::50])
    cases = (("audio-to-video", []), ("video-to-audio", []), ("audio-to-video", ["--classes", names[1]]))
    for direction, extra in cases:
        outs = []
        for root in (plain, sharded):
            res = invoke("search", direction, "--index", root, "--query", queries, "-k", "20", "--json", *extra)
            assert res.exit_code == 0, res.output
            outs.append(json.loads(res.stdout))
        assert outs[0] == outs[1]
        assert sum(len(b["results"]) for b in outs[0]["queries"]) > 0


# ---------------------------------------------------------------------- auto meets its recorded recall
@pytest.fixture(scope="module")
def gallery() -> np.ndarray:
    return _clustered(30_000, 64, seed=3, noise=0.45)


@pytest.fixture(scope="module")
def auto_sharded(gallery: np.ndarray, tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("auto")
    idx = AVIndex.build(gallery, _ids(len(gallery)), None, None, modality="visual", model_fingerprint=FP,
                        factory="auto", shards=3, workdir=tmp)
    return idx.save(tmp / "index")


def test_auto_meets_its_recorded_recall(gallery: np.ndarray, auto_sharded: Path) -> None:
    idx = AVIndex.load(auto_sharded)
    m = idx.manifest
    assert m.factory.startswith("IVF") and m.factory.endswith(",Flat") and m.ivfdata == "index.ivfdata"
    assert m.auto["reason"] and m.auto["max_memory"] is None
    t = m.tuning
    assert t["target_recall"] == 0.95 and t["k"] == 10 and t["sample_size"] == 1000 and t["target_met"]
    # the held-out queries: the first sample_size rows of the seeded permutation (module docstring)
    rows = np.sort(np.random.default_rng(t["seed"]).permutation(len(gallery))[: t["sample_size"]])
    exact = _exact_rows(gallery, gallery[rows], t["k"])
    found = idx.search(gallery[rows], t["k"]).rows  # the stored nprobe is the default
    measured = _recall(found, exact)
    assert measured >= t["target_recall"]
    assert abs(measured - t["recall"]) <= 0.002
    if t["nprobe"] > 1:  # and the smallest power of two that meets it
        fewer = _recall(idx.search(gallery[rows], t["k"], nprobe=t["nprobe"] // 2).rows, exact)
        assert fewer < t["target_recall"]
    # on unseen queries near the gallery, recall is close to the target too
    fresh = _clustered(300, 64, seed=3, noise=0.45)  # same centres, new points
    assert _recall(idx.search(fresh, 10).rows, _exact_rows(gallery, fresh, 10)) >= t["target_recall"] - 0.05


def test_sharded_ivf_equals_unsharded_ivf(gallery: np.ndarray, auto_sharded: Path) -> None:
    """Trained once on the same seeded sample, the shards' lists merged on disk answer like one in-memory IVF."""
    one = AVIndex.build(gallery, _ids(len(gallery)), None, None, modality="visual", model_fingerprint=FP,
                        factory="auto", shards=1)
    many = AVIndex.load(auto_sharded)
    assert one.manifest.factory == many.manifest.factory and one.manifest.tuning == many.manifest.tuning
    q = gallery[:300]
    a, b = one.search(q, 10), many.search(q, 10)
    assert np.array_equal(a.rows, b.rows) and np.array_equal(a.scores, b.scores)
    allowed = np.arange(0, len(gallery), 3)
    assert np.array_equal(one.search(q, 5, allowed_rows=allowed).rows, many.search(q, 5, allowed_rows=allowed).rows)
    assert set(many.search(q, 5, allowed_rows=allowed).rows.ravel().tolist()) <= set(allowed.tolist())
    assert np.array_equal(many.embeddings_of(np.array([3, 29_999])), gallery[[3, 29_999]])


@pytest.fixture(scope="module")
def pq_built(tmp_path_factory) -> tuple[np.ndarray, np.ndarray, Path]:
    """12k x 32 vectors under a 250 KiB budget (Flat takes 1.5 MB): IVF-PQ4 and SQ4 are built and measured."""
    tmp = tmp_path_factory.mktemp("pq")
    n, d = 12_000, 32
    x = _clustered(n, d, seed=5)
    labels = np.arange(n) % 3
    idx = AVIndex.build(x, _ids(n), labels, ["a", "b", "c"], modality="audio", model_fingerprint=FP,
                        factory="auto", max_memory="250KB", shards=2, workdir=tmp, best_effort=True)
    return x, labels, idx.save(tmp / "pq")


def test_pq_under_a_tight_budget(pq_built) -> None:
    x, labels, path = pq_built
    loaded = AVIndex.load(path)
    m = loaded.manifest
    assert {c["factory"] for c in m.auto["candidates"]} == {"IVF256,PQ4np", "SQ4"}
    assert m.factory in ("IVF256,PQ4np", "SQ4") and m.auto["estimated_bytes"] <= 250 << 10
    assert m.auto["max_memory"] == 250 << 10 and m.ivfdata == ("index.ivfdata" if m.factory.startswith("IVF") else None)
    rows = np.sort(np.random.default_rng(0).permutation(len(x))[:1000])
    measured = _recall(loaded.search(x[rows], 10).rows, _exact_rows(x, x[rows], 10))
    assert abs(measured - m.tuning["recall"]) <= 0.002
    assert m.tuning["target_met"] == (m.tuning["recall"] >= 0.95)
    hits = loaded.search(x[:4], 5, allowed_rows=np.flatnonzero(labels == 2)).rows  # filter through OPQ
    assert (labels[hits] == 2).all()
    assert np.array_equal(loaded.embeddings_of(np.array([11_999])), x[[11_999]])


def test_estimates_match_the_files_written(pq_built, auto_sharded: Path) -> None:
    """The budget is only meaningful if the estimates are: compare them with what FAISS writes."""
    chosen = AVIndex.load(pq_built[2]).manifest.factory
    pq_est = (autoindex.pq_bytes(12_000, 32, 4, 256) if chosen.startswith("IVF")
              else autoindex.sq_bytes(12_000, 32, 4))
    for path, est_expected in ((pq_built[2], pq_est), (auto_sharded, estimate_bytes("ivf-flat", 30_000, 64, 512))):
        written = sum((path / f).stat().st_size for f in ("index.faiss", "index.ivfdata") if (path / f).exists())
        est = AVIndex.load(path).manifest.auto["estimated_bytes"]
        assert est == est_expected
        assert 0.85 * written <= est <= 1.25 * written, (path, est, written)


# ---------------------------------------------------------------------- load checks for the new layout
def test_ondisk_layout_is_checked_on_load(auto_sharded: Path, tmp_path: Path) -> None:
    import shutil

    def copy(name: str) -> Path:
        return Path(shutil.copytree(auto_sharded, tmp_path / name))

    short = copy("short")
    with open(short / "index.ivfdata", "r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(IndexError_, match="index.ivfdata: the on-disk lists .*truncated or forged"):
        AVIndex.load(short)
    gone = copy("gone")
    (gone / "index.ivfdata").unlink()
    with pytest.raises(IndexError_, match="missing index.ivfdata"):
        AVIndex.load(gone)
    lying = copy("lying")
    m = json.loads((lying / "manifest.json").read_text())
    m["ivfdata"] = None
    (lying / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(IndexError_, match="index.faiss: a 'IwFl' index of 30000 x 64 vectors takes at least"):
        AVIndex.load(lying)  # without its on-disk lists, index.faiss is far too short for its vectors


def test_manifest_without_the_new_fields_still_loads(tmp_path: Path) -> None:
    x = _clustered(50, 8)
    path = AVIndex.build(x, _ids(50), None, None, modality="visual", model_fingerprint=FP).save(tmp_path / "old")
    m = json.loads((path / "manifest.json").read_text())
    for key in ("shards", "ivfdata", "auto", "tuning", "build"):
        del m[key]
    (path / "manifest.json").write_text(json.dumps(m))
    loaded = AVIndex.load(path)
    assert loaded.manifest.shards == 1 and loaded.manifest.tuning is None and loaded.count == 50
    assert loaded.manifest.build is None


# ---------------------------------------------------------------------- bad options: one line, exit 2, nothing written
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--factory", "auto", "--max-memory", "4XB"], "--max-memory '4XB': expected a size"),
        (["--factory", "auto", "--max-memory", "1KB"], "--max-memory 1.0 KiB is below"),
        (["--factory", "auto", "--shards", "0"], "--shards 0: expected at least 1"),
        (["--max-memory", "1GB"], "need --factory auto"),
        (["--factory", "auto", "--target-recall", "1.5"], "--target-recall 1.5: expected a recall in (0, 1]"),
        (["--workers", "0"], "--workers 0: expected at least 1"),
    ],
)
def test_bad_build_options(tiny_run, tmp_path: Path, args: list[str], needle: str) -> None:
    out = tmp_path / "idx"
    res = invoke("index", "build", "--model", tiny_run, "--out", out, *args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], res.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_nan_rows_are_refused_by_the_shard_that_holds_them(tmp_path: Path) -> None:
    x = _clustered(900, 8)
    x[700, 3] = np.nan
    with pytest.raises(AvretError, match="embeddings: row 700 contains NaN"):
        AVIndex.build(x, _ids(900), None, None, modality="visual", model_fingerprint=FP, shards=3, workdir=tmp_path)
    assert list(tmp_path.iterdir()) == []  # the work directory is removed
    assert math.isnan(x[700, 3])
