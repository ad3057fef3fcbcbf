"""``--factory auto`` under a memory budget (issue 21): compressed candidates are built and measured,
an exact re-rank of a short list may lift their recall, and a target no candidate reaches is refused
with the smallest budget that would (unless ``--best-effort``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from avret.errors import AvretError
from avret.index import AVIndex, autoindex
from avret.index.autoindex import choose_factory, rerank, settings, shortlist
from avret_cli.main import app

FP = "f" * 64
MIB = 1 << 20
runner = CliRunner()


def _clustered(n: int, d: int, seed: int = 0, centres: int = 50, noise: float = 0.35) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centres, d)).astype(np.float32)
    x = c[rng.integers(0, centres, n)] + noise * rng.standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _ids(n: int) -> list[str]:
    return [f"clip{i:06d}" for i in range(n)]


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(e)) / exact.shape[1]
                          for f, e in zip(found.tolist(), exact.tolist(), strict=True)]))


# ---------------------------------------------------------------------- the choice, as a table
@pytest.mark.parametrize(
    ("n", "d", "budget", "expected"),
    [
        # 1M x 128 at 128e6 bytes: SQ8 (128 B a vector + 8 B id) does not fit; SQ6 and the two largest PQ do
        (1_000_000, 128, 128_000_000, ["IVF2048,SQ6", "IVF2048,PQ32np", "IVF2048,PQ16np"]),
        (1_000_000, 128, 30_000_000, ["IVF2048,PQ16np", "IVF2048,PQ8np"]),
        (1_000_000, 128, 14_000_000, ["IVF2048,PQ4np"]),
        # small galleries also try a flat (un-clustered) scalar quantiser
        (100_000, 128, 20 * MIB, ["IVF1024,SQ8", "SQ8", "IVF1024,PQ32np", "IVF1024,PQ16np"]),
        (30_000, 64, 1 * MIB, ["SQ4", "IVF512,PQ16np", "IVF512,PQ8np"]),
        (50_000, 12, 1 * MIB, ["IVF512,SQ6", "IVF512,PQ4np", "SQ8"]),  # PQ: m <= max(4, d / 4)
        (1_000_000, 128, 10_000_000, []),  # nothing compressed fits
        (1_000_000, 128, None, ["IVF2048,SQ8", "IVF2048,PQ32np", "IVF2048,PQ16np"]),
    ],
)
def test_shortlist(n, d, budget, expected) -> None:
    short = shortlist(n, d, budget)
    assert [c.factory for c in short] == expected
    assert all(budget is None or c.nbytes <= budget for c in short)


def test_nothing_fits_names_the_smallest_candidate() -> None:
    with pytest.raises(AvretError, match=r"smallest index avret chooses \(IVF2048,PQ4np\) takes 12.7 MiB"):
        choose_factory(1_000_000, 128, 10_000_000)


@pytest.mark.parametrize(
    ("curve", "target", "expected"),
    [
        # per re-rank depth, the smallest nprobe that reaches the target (latency then decides)
        ([[1, 1, 0.7], [1, 4, 0.9], [2, 1, 0.8], [2, 4, 0.96], [4, 1, 0.9], [4, 4, 0.99], [8, 1, 0.951]], 0.95,
         [(8, 1, 0.951), (2, 4, 0.96)]),
        # none reaches it: the smallest depth, then nprobe, within 0.005 of the best
        ([[1, 1, 0.5], [1, 8, 0.80], [2, 1, 0.6], [2, 8, 0.897], [4, 1, 0.6], [4, 8, 0.9]], 0.95, [(2, 8, 0.897)]),
        ([[None, 1, 0.9], [None, 2, 0.97], [None, 4, 1.0]], 0.95, [(None, 2, 0.97), (None, 4, 1.0)]),  # no lists
    ],
)
def test_settings(curve, target, expected) -> None:
    assert settings(curve, target) == expected


# ---------------------------------------------------------------------- re-rank at full depth == exact
def test_rerank_at_full_depth_equals_exact() -> None:
    n, d, k = 3_000, 16, 10
    x = _clustered(n, d, seed=2)
    x[17] = x[2900]  # an exact tie: the lower row first, as Flat orders it
    q = x[::61]
    flat = AVIndex.build(x, _ids(n), None, None, modality="visual", model_fingerprint=FP)
    pq = AVIndex.build(x, _ids(n), None, None, modality="visual", model_fingerprint=FP, factory="IVF16,PQ4np")
    exact = flat.search(q, k)
    full = pq.search(q, k, nprobe=16, k_factor=n // k)  # every vector a candidate, re-scored exactly
    assert np.array_equal(full.rows, exact.rows)
    np.testing.assert_allclose(full.scores, exact.scores, rtol=0, atol=1e-5)
    plain = pq.search(q, k, nprobe=16, k_factor=1)  # the codes alone are not exact
    assert not np.array_equal(plain.rows, exact.rows)
    # missing candidates (-1) stay missing; the row order breaks ties
    s, r = rerank(q[:2], np.array([[5, -1, 2900, 17], [-1, -1, -1, -1]]), x, 3)  # the later row listed first
    assert r[1].tolist() == [-1, -1, -1] and np.isneginf(s[1]).all()
    assert set(r[0].tolist()) == {5, 17, 2900} and r[0].tolist().index(17) < r[0].tolist().index(2900)


# ---------------------------------------------------------------------- measured choice, recorded honestly
@pytest.fixture(scope="module")
def gallery() -> np.ndarray:
    return _clustered(12_000, 32, seed=5, centres=100, noise=0.5)


def test_auto_under_a_budget_meets_its_recorded_recall(gallery: np.ndarray, tmp_path: Path) -> None:
    n = len(gallery)
    idx = AVIndex.build(gallery, _ids(n), None, None, modality="audio", model_fingerprint=FP,
                        factory="auto", max_memory="300KB")
    m = AVIndex.load(idx.save(tmp_path / "ix")).manifest
    loaded = AVIndex.load(tmp_path / "ix")
    assert m.auto["estimated_bytes"] <= 300 << 10
    names = [c["factory"] for c in m.auto["candidates"]]
    assert names == [c.factory for c in shortlist(n, 32, 300 << 10)] and m.factory in names
    for c in m.auto["candidates"]:
        assert c["curve"] and c["settings"] and c["batch1_ms"] > 0
    met = [c for c in m.auto["candidates"] if c["target_met"]]
    assert met and m.factory == min(met, key=lambda c: c["batch1_ms"])["factory"]  # fastest that reaches it
    t = m.tuning
    assert t["target_met"] and t["recall"] >= 0.95 and t["k"] == 10
    rows = np.sort(np.random.default_rng(t["seed"]).permutation(n)[: t["sample_size"]])
    exact = np.argsort(-(gallery[rows] @ gallery.T), axis=1, kind="stable")[:, :10]
    measured = _recall(loaded.search(gallery[rows], 10).rows, exact)  # stored nprobe and k_factor by default
    assert abs(measured - t["recall"]) <= 0.002
    # the build time, choosing and tuning included, per million vectors too
    b = m.build
    rounding = 0.0005 * 1e6 / n + 1e-3  # seconds are rounded to 1 ms
    assert b["seconds"] > 0 and b["seconds_per_million"] == pytest.approx(b["seconds"] * 1e6 / n, abs=rounding)
    assert b["seconds"] >= sum(c["build_s"] for c in m.auto["candidates"]) * 0.99


def test_unreachable_target_is_refused_with_the_smallest_budget(gallery: np.ndarray, monkeypatch) -> None:
    monkeypatch.setattr(autoindex, "K_FACTORS", (1,))  # no re-rank: compressed codes alone miss 0.999
    n = len(gallery)
    with pytest.raises(AvretError) as err:
        AVIndex.build(gallery, _ids(n), None, None, modality="audio", model_fingerprint=FP, factory="auto",
                      max_memory="200KB", target_recall=0.999)
    msg = str(err.value)
    assert "\n" not in msg and "--target-recall 0.999: no index within --max-memory 200.0 KiB" in msg
    assert "the smallest budget that does is" in msg and "--best-effort" in msg
    best = AVIndex.build(gallery, _ids(n), None, None, modality="audio", model_fingerprint=FP, factory="auto",
                         max_memory="200KB", target_recall=0.999, best_effort=True)
    t = best.manifest.tuning
    assert not t["target_met"] and t["recall"] < 0.999 and t["target_recall"] == 0.999
    small = best.manifest.auto["smallest_budget"]
    assert small["bytes"] > 200 << 10 and str(small["bytes"]) in msg


def test_a_budget_nothing_fits_is_refused_with_the_measured_smallest_budget(gallery: np.ndarray) -> None:
    n, d = gallery.shape
    smallest = min((c for c in autoindex.candidates(n, d) if not c.exact), key=lambda c: c.nbytes)
    msgs = []
    for best_effort in (False, True):  # nothing fits: there is nothing to build, best effort or not
        with pytest.raises(AvretError) as err:
            AVIndex.build(gallery, _ids(n), None, None, modality="audio", model_fingerprint=FP, factory="auto",
                          max_memory=smallest.nbytes - 1, best_effort=best_effort)
        msgs.append(str(err.value))
    msg = msgs[0]
    assert msgs[1] == msg and "\n" not in msg and f"smallest index avret chooses ({smallest.factory})" in msg
    # measured: the candidates above the budget built smallest first; the first that reaches the target is named
    found = re.search(r"the smallest budget that reaches --target-recall 0.95 is .*?\((\d+) bytes: (\S+), recall "
                      r"([01]\.\d+); measured", msg)
    assert found, msg
    named, factory, recall = int(found[1]), found[2], float(found[3])
    assert named >= smallest.nbytes and recall >= 0.95
    ix = AVIndex.build(gallery, _ids(n), None, None, modality="audio", model_fingerprint=FP, factory="auto",
                       max_memory=named)  # and that budget is enough
    assert ix.manifest.tuning["target_met"] and ix.manifest.auto["estimated_bytes"] <= named
    assert factory in [c["factory"] for c in ix.manifest.auto["candidates"]]


# ---------------------------------------------------------------------- CLI: refusal, best effort, info
def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_cli_refuses_then_builds_with_best_effort(tiny_run, tmp_path: Path, monkeypatch) -> None:
    # the tiny gallery (600 clips) is normally Flat: lower the threshold so that the budget forces compression
    monkeypatch.setattr(autoindex, "FLAT_BELOW", 100)
    monkeypatch.setattr(autoindex, "K_FACTORS", (1,))
    out = tmp_path / "idx"
    args = ("index", "build", "--model", tiny_run, "--out", out, "--modality", "audio", "--factory", "auto",
            "--max-memory", "40KB", "--target-recall", "0.999")
    res = invoke(*args)
    assert res.exit_code == 2, res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "the smallest budget that does is" in lines[0], res.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []
    res = invoke(*args, "--best-effort")
    assert res.exit_code == 0, res.output
    tuning = json.loads((out / "audio" / "manifest.json").read_text())["tuning"]
    assert tuning["target_met"] is False and tuning["target_recall"] == 0.999
    info = invoke("index", "info", out)
    assert info.exit_code == 0 and f"recall@10 {tuning['recall']:.3f} (target 0.999, not met)" in info.stdout
    build = json.loads((out / "audio" / "manifest.json").read_text())["build"]
    assert f"built in {build['seconds']:.1f} s ({build['seconds_per_million']:.1f} s per million)" in info.stdout


def test_best_effort_needs_auto(tiny_run, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    res = invoke("index", "build", "--model", tiny_run, "--out", out, "--best-effort")
    assert res.exit_code == 2 and "need --factory auto" in res.stderr
    assert list(tmp_path.iterdir()) == []
