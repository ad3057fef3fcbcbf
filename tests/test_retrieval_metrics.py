"""Tests of avret.eval.retrieval against a slow reference written straight from the definition."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest

from avret.errors import DataError
from avret.eval import (
    CrossModalReport,
    cross_modal_report,
    format_details,
    format_map_table,
    retrieval_metrics,
)
from avret.eval.retrieval import _ExactProduct, correctly_rounded_dots

KS = (1, 2, 5, 10, 50)


# ---------------------------------------------------------------------------------------------
# slow reference: Python loops over each ranking, from the definition


def exact_score(x, y):
    """The float64 nearest to the exact inner product of two float64 rows (rational arithmetic)."""
    return float(sum((Fraction(a) * Fraction(b) for a, b in zip(x.tolist(), y.tolist(), strict=True)), Fraction(0)))


def reference(queries, query_labels, gallery, gallery_labels, ks=KS, exact=False):
    """Per-query AP, AP@R and P@k; ranking = descending float64 cosine, ties by gallery index.

    With ``exact``, the score of a pair is the correctly rounded exact inner product of the
    normalised rows (the module's definition, to the last bit); otherwise one BLAS dot per pair.
    """
    q = np.asarray(queries, dtype=np.float64)
    g = np.asarray(gallery, dtype=np.float64)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    g = g / np.linalg.norm(g, axis=1, keepdims=True)
    ap, ap_r, prec = [], [], {k: [] for k in ks}
    score = exact_score if exact else (lambda a, b: float(np.dot(a, b)))
    for i in range(len(q)):
        scores = [score(q[i], g[j]) for j in range(len(g))]
        order = sorted(range(len(g)), key=lambda j: (-scores[j], j))
        relevant = [gallery_labels[j] == query_labels[i] for j in order]
        n_rel = sum(relevant)
        hits, total, total_r = 0, 0.0, 0.0
        for rank, is_rel in enumerate(relevant, start=1):
            if is_rel:
                hits += 1
                total += hits / rank
                if rank <= n_rel:
                    total_r += hits / rank
        ap.append(total / n_rel if n_rel else 0.0)
        ap_r.append(total_r / n_rel if n_rel else 0.0)
        for k in ks:
            prec[k].append(sum(relevant[:k]) / k)
    return np.array(ap), np.array(ap_r), {k: float(np.mean(v)) for k, v in prec.items()}


def lattice_vectors(rng, n, d=16):
    """Vectors whose cosines are exact dyadic numbers (many exact ties, no rounding at all).

    Each row has 1, 4 or 16 entries of +-1 (norm 1, 2 or 4), times a random power of two, so the
    normalised entries are multiples of 1/4 and every cosine is a multiple of 1/16.
    """
    x = np.zeros((n, d))
    for i in range(n):
        nnz = rng.choice([1, 4, 16])
        idx = rng.choice(d, size=nnz, replace=False)
        x[i, idx] = rng.choice([-1.0, 1.0], size=nnz)
    return x * 2.0 ** rng.integers(-3, 4, size=(n, 1))


def clustered(rng, labels, d, spread=2.0, centres=None):
    if centres is None:
        centres = rng.standard_normal((int(labels.max()) + 1, d))
    return centres[labels] + spread * rng.standard_normal((labels.size, d))


CASES = [
    # (name, n, m, d, classes, chunk_size, n_workers, kind)
    ("gauss-balanced", 60, 70, 8, 4, 7, 2, "gauss"),
    ("gauss-chunk1", 23, 31, 5, 3, 1, 1, "gauss"),
    ("gauss-imbalanced", 50, 80, 12, 6, 16, 3, "imbalanced"),
    ("lattice-ties", 57, 64, 16, 5, 10, 2, "lattice"),
    ("lattice-auto-chunk", 40, 45, 16, 3, None, None, "lattice"),
    ("query-only-class", 45, 38, 6, 4, 13, 2, "query_only"),
    ("gauss-duplicates", 48, 60, 24, 3, 11, 2, "duplicates"),
]


def make_case(kind, n, m, d, classes, seed):
    rng = np.random.default_rng(seed)
    if kind == "imbalanced":
        p = np.array([0.6, 0.2, 0.1, 0.05, 0.03, 0.02])[:classes]
        ql = rng.choice(classes, size=n, p=p / p.sum())
        gl = rng.choice(classes, size=m, p=p / p.sum())
    else:
        ql = rng.integers(0, classes, size=n)
        gl = rng.integers(0, classes, size=m)
    if kind == "query_only":
        ql[: n // 5] = classes  # this class never occurs in the gallery -> AP 0
    if kind == "duplicates":  # exact copies (some scaled by 2) of gallery items, other labels
        centres = rng.standard_normal((classes, d))
        q, g = clustered(rng, ql, d, centres=centres), clustered(rng, gl, d, centres=centres)
        g[m // 2 :] = g[: m - m // 2] * rng.choice([1.0, 2.0], size=(m - m // 2, 1))
        return q, ql, g, gl
    if kind == "lattice":
        q, g = lattice_vectors(rng, n, d), lattice_vectors(rng, m, d)
    else:
        centres = rng.standard_normal((classes + 1, d))
        q, g = clustered(rng, ql, d, centres=centres), clustered(rng, gl, d, centres=centres)
    return q, ql, g, gl


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_reference(case):
    name, n, m, d, classes, chunk_size, n_workers, kind = case
    q, ql, g, gl = make_case(kind, n, m, d, classes, seed=len(name))
    ap, ap_r, prec = reference(q, ql, g, gl)
    got = retrieval_metrics(q, ql, g, gl, ks=KS, chunk_size=chunk_size, n_workers=n_workers)
    assert got.n_queries == n and got.n_gallery == m
    np.testing.assert_allclose(got.ap, ap, rtol=0, atol=1e-9)
    assert got.map == pytest.approx(ap.mean(), abs=1e-9)
    assert got.map_at_r == pytest.approx(ap_r.mean(), abs=1e-9)
    for k in KS:
        assert got.precision_at[k] == pytest.approx(prec[k], abs=1e-9)
    for label in np.unique(ql):
        assert got.per_class_ap[str(label)] == pytest.approx(ap[ql == label].mean(), abs=1e-9)
    assert set(got.per_class_ap) == {str(c) for c in np.unique(ql)}
    expected_without = int(sum(1 for lab in ql if lab not in set(gl.tolist())))
    assert got.n_without_relevant == expected_without
    if kind == "query_only":
        assert expected_without > 0
        assert np.all(got.ap[ql == classes] == 0.0)
        assert got.per_class_ap[str(classes)] == 0.0


def test_chunking_does_not_change_results():
    q, ql, g, gl = make_case("gauss", 41, 37, 6, 3, seed=5)
    base = retrieval_metrics(q, ql, g, gl, chunk_size=41, n_workers=1)
    for chunk_size, workers in [(1, 1), (6, 2), (40, 2), (1000, 4)]:
        other = retrieval_metrics(q, ql, g, gl, chunk_size=chunk_size, n_workers=workers)
        np.testing.assert_array_equal(other.ap, base.ap)
        assert other.precision_at == base.precision_at
        assert other.map_at_r == base.map_at_r


# ---------------------------------------------------------------------------------------------
# exact ties: bit-for-bit independent of chunk_size and n_workers


def tie_heavy(kind, seed, n=64, m=72):
    """Integer-valued embeddings with many exactly tied (and 1-ulp-apart) scores, and their labels."""
    rng = np.random.default_rng(seed)
    ql, gl = rng.integers(0, 3, size=n), rng.integers(0, 3, size=m)
    if kind == "int-few-values":  # entries in {-1, 0, 1, 2}; about half the gallery duplicated
        q = rng.integers(-1, 3, size=(n, 8)).astype(float)
        g = rng.integers(-1, 3, size=(m, 8)).astype(float)
        g[m // 2 :] = g[rng.integers(0, m // 2, size=m - m // 2)]
    elif kind == "few-distinct-rows":  # 5 distinct integer rows (x1, x2 or x4) for everything
        pool = rng.integers(-3, 4, size=(5, 6)).astype(float)
        q = pool[rng.integers(0, 5, size=n)] * rng.choice([1.0, 2.0, 4.0], size=(n, 1))
        g = pool[rng.integers(0, 5, size=m)] * rng.choice([1.0, 2.0, 4.0], size=(m, 1))
    elif kind == "permutations":  # rows are permutations of one integer vector: symmetric queries tie
        base = np.array([3.0, 1.0, 1.0, 2.0, 0.0, 5.0, 1.0, 2.0])
        q = np.stack([rng.permutation(base) for _ in range(n)])
        q[: n // 2] = np.round(q[: n // 2] / 2.0)  # some queries with repeated entries
        g = np.stack([rng.permutation(base) for _ in range(m)])
    elif kind == "gauss-duplicates":  # real-valued rows, half the gallery exact copies (some x2)
        q, g = rng.standard_normal((n, 12)), rng.standard_normal((m, 12))
        g[m // 2 :] = g[rng.integers(0, m // 2, size=m - m // 2)] * rng.choice([1.0, 2.0], size=(m - m // 2, 1))
        q[: n // 4] = g[: n // 4]  # queries identical to gallery items
    elif kind == "wide-int":  # d = 96: more room for GEMM rounding to differ between shapes
        q = rng.integers(0, 3, size=(n, 96)).astype(float)
        g = rng.integers(0, 3, size=(m, 96)).astype(float)
        g[m // 2 :] = g[: m - m // 2]
    else:
        raise ValueError(kind)
    q[np.all(q == 0, axis=1), 0] = 1.0
    g[np.all(g == 0, axis=1), 0] = 1.0
    return q, ql, g, gl


TIE_KINDS = ["int-few-values", "few-distinct-rows", "permutations", "gauss-duplicates", "wide-int"]


@pytest.mark.parametrize("kind", TIE_KINDS)
def test_exact_ties_do_not_depend_on_chunking_or_threads(kind):
    q, ql, g, gl = tie_heavy(kind, seed=11)
    n = len(q)
    ap, ap_r, prec = reference(q, ql, g, gl, exact=True)
    for chunk_size in (1, 7, None, n + 5):
        for n_workers in (1, 2):
            got = retrieval_metrics(q, ql, g, gl, ks=KS, chunk_size=chunk_size, n_workers=n_workers)
            where = f"chunk_size={chunk_size} n_workers={n_workers}"
            assert got.map == float(ap.mean()), where
            np.testing.assert_array_equal(got.ap, ap, err_msg=where)
            np.testing.assert_array_equal(got.ap_at_r, ap_r, err_msg=where)
            assert got.map_at_r == float(ap_r.mean()), where
            assert got.precision_at == pytest.approx(prec, abs=1e-15), where
    # the same through the two-direction report, whose chunking is shared
    k = min(len(q), len(g))
    reports = [
        cross_modal_report(q[:k], g[:k], gl[:k], chunk_size=c, n_workers=w)
        for c, w in [(1, 1), (7, 2), (None, 2), (10_000, 1)]
    ]
    assert len({(r.audio_to_visual.map, r.visual_to_audio.map) for r in reports}) == 1


def test_ties_are_exact_for_duplicates_and_permutations():
    # duplicated gallery rows, and rows that are permutations of each other against a symmetric
    # query, tie exactly (ranked by gallery index) whatever the GEMM shape would round them to
    base = np.array([1.0, 2.0, 3.0, 0.0, 1.0, 2.0, 7.0])
    rng = np.random.default_rng(2)
    gallery = np.stack([np.r_[rng.permutation(base[:6]), base[6]] for _ in range(40)])
    query = np.array([[1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.3]])  # same score for every gallery row
    labels = rng.integers(0, 2, size=40)
    for chunk_size, n_workers in [(1, 1), (None, 2)]:
        got = retrieval_metrics(query, [1], gallery, labels, chunk_size=chunk_size, n_workers=n_workers)
        hits = np.flatnonzero(labels == 1) + 1.0  # every score tied: gallery order
        assert got.ap[0] == float(np.sum(np.arange(1, hits.size + 1) / hits) / hits.size)


def test_exact_row_scores_are_correctly_rounded():
    # the sliced-GEMM scores used to re-rank tied rows: rows needing 1 to 5 slices and a rest, and
    # 0/1 rows, whose scores often lie exactly halfway between two floats before rounding
    rng = np.random.default_rng(9)
    g = np.concatenate([rng.standard_normal((12, 10)), rng.integers(-2, 3, (12, 10)), rng.integers(0, 2, (16, 10))])
    g[3, 4] = 1e-25  # far below the row's maximum: not captured by the slices (a rest)
    g[5] = g[4] * 3.0
    q = np.concatenate([rng.standard_normal((6, 10)), rng.integers(-1, 2, (6, 10)), rng.integers(0, 2, (8, 10))])
    q = np.concatenate([q, g[10:14]])
    q[0, :5], q[0, 5:] = g[0, 5:], -g[0, :5]  # orthogonal to g[0]: cancellation to ~0
    q[q.sum(axis=1) == 0, 0] += 1.0
    g[np.abs(g).sum(axis=1) == 0, 0] = 1.0
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    got = _ExactProduct(g).scores(q)
    want = np.array([[exact_score(a, b) for b in g] for a in q])
    np.testing.assert_array_equal(got, want)


def test_correctly_rounded_dots_match_rational_arithmetic():
    rng = np.random.default_rng(8)
    rows = [rng.standard_normal((200, 16)), rng.integers(-2, 3, size=(200, 16)).astype(float)]
    x, y = (np.concatenate([r[i::2] for r in rows]) for i in (0, 1))
    y[:20] = -x[:20]  # exact cancellation to -1
    y[20:40, :8], y[20:40, 8:] = x[20:40, 8:], -x[20:40, :8]  # cancellation towards 0
    x[40:45, 3] = 1e-300  # products that underflow
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    got = correctly_rounded_dots(x, y)
    want = np.array([exact_score(a, b) for a, b in zip(x, y, strict=True)])
    np.testing.assert_array_equal(got, want)
    # independent of batching: scored one at a time, the same bits
    np.testing.assert_array_equal([correctly_rounded_dots(x[i : i + 1], y[i : i + 1])[0] for i in range(5)], got[:5])


# ---------------------------------------------------------------------------------------------
# hand-computed case and ties


def test_hand_computed_tiny_case():
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    gallery_labels = [0, 1, 0, 1]
    queries = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]])
    query_labels = [0, 0, 1]
    # q0: ranking g0 g2 g1 g3, relevant {g0, g2} at ranks 1, 2      -> AP = (1/1 + 2/2) / 2 = 1
    # q1: ranking g1 g2 g0 g3 (g0, g3 tie at 0: g0 first, by index),
    #     relevant {g0, g2} at ranks 3, 2                            -> AP = (1/2 + 2/3) / 2 = 7/12
    # q2: ranking g3 g0 g1 g2 (g0, g1 tie at -1/sqrt2: g0 first),
    #     relevant {g1, g3} at ranks 3, 1                            -> AP = (1/1 + 2/3) / 2 = 5/6
    expected_ap = [Fraction(1), Fraction(7, 12), Fraction(5, 6)]
    got = retrieval_metrics(queries, query_labels, gallery, gallery_labels, ks=(1, 2, 10), class_names=["dog", "cat"])
    np.testing.assert_allclose(got.ap, [float(f) for f in expected_ap], rtol=0, atol=1e-12)
    assert got.map == pytest.approx(float(Fraction(29, 36)), abs=1e-12)
    assert got.per_class_ap == pytest.approx({"dog": float(Fraction(19, 24)), "cat": float(Fraction(5, 6))})
    # P@1: 1, 0, 1; P@2: 2/2, 1/2, 1/2; P@10 = R / 10 = 2/10 for every query (k beyond the gallery).
    assert got.precision_at[1] == pytest.approx(2 / 3)
    assert got.precision_at[2] == pytest.approx(2 / 3)
    assert got.precision_at[10] == pytest.approx(0.2)
    # mAP@R (R = 2): q0 (1 + 1)/2, q1 (1/2)/2, q2 (1/1)/2 -> mean 7/12
    assert got.map_at_r == pytest.approx(float(Fraction(7, 12)), abs=1e-12)
    assert got.n_without_relevant == 0


def test_ties_are_broken_by_gallery_index():
    """Equal scores rank in gallery order, exactly like a stable sort of -score."""
    gallery = np.ones((5, 3))  # every gallery item scores the same for any query
    query = np.array([[0.3, -2.0, 1.0]])
    got = retrieval_metrics(query, [0], gallery, [1, 0, 0, 1, 0], ks=(1, 2))
    # relevant at ranks 2, 3, 5
    assert got.ap[0] == pytest.approx((1 / 2 + 2 / 3 + 3 / 5) / 3, abs=1e-15)
    assert got.precision_at == {1: 0.0, 2: 0.5}
    # Reordering the gallery reorders the tie: relevant first -> AP 1.
    got = retrieval_metrics(query, [0], gallery, [0, 0, 0, 1, 1])
    assert got.ap[0] == 1.0


def test_ties_mixed_with_distinct_scores():
    # g1 and g3 tie exactly (same direction, different norms); g0 is better, g2 worse.
    gallery = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [4.0, 4.0]])
    got = retrieval_metrics([[1.0, 0.2]], [7], gallery, [3, 3, 7, 7], ks=(1,))
    # ranking g0 (irr), g1 (irr), g3 (rel, after g1 by index), g2 (rel) -> ranks 3, 4
    assert got.ap[0] == pytest.approx((1 / 3 + 2 / 4) / 2, abs=1e-15)
    got = retrieval_metrics([[1.0, 0.2]], [7], gallery[[0, 3, 2, 1]], [3, 7, 7, 3], ks=(1,))
    # now the relevant twin comes first in the gallery -> ranks 2, 4
    assert got.ap[0] == pytest.approx((1 / 2 + 2 / 4) / 2, abs=1e-15)


# ---------------------------------------------------------------------------------------------
# cross-modal report


def test_cross_modal_report_directions():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=30)
    audio = clustered(rng, labels, 8, spread=0.5)  # audio: well clustered
    visual = rng.standard_normal((30, 8))  # visual: noise
    rep = cross_modal_report(audio, visual, labels, class_names=["a", "b", "c", "d"], chunk_size=7)
    a2v = retrieval_metrics(audio, labels, visual, labels, class_names=["a", "b", "c", "d"])
    v2a = retrieval_metrics(visual, labels, audio, labels, class_names=["a", "b", "c", "d"])
    np.testing.assert_array_equal(rep.audio_to_visual.ap, a2v.ap)
    np.testing.assert_array_equal(rep.visual_to_audio.ap, v2a.ap)
    assert not np.allclose(a2v.ap, v2a.ap)  # a swapped implementation would fail above
    assert rep.mean_map == pytest.approx((a2v.map + v2a.map) / 2)
    d = rep.to_dict()
    json.dumps(d)
    assert d["mean_map"] == pytest.approx(rep.mean_map)
    assert "ap" not in d["audio_to_visual"]
    assert len(rep.to_dict(include_ap=True)["visual_to_audio"]["ap"]) == 30
    assert set(d["audio_to_visual"]["per_class_ap"]) <= {"a", "b", "c", "d"}


def test_progress_reports_every_query():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, size=25)
    calls = []
    cross_modal_report(
        rng.standard_normal((25, 4)),
        rng.standard_normal((25, 4)),
        labels,
        chunk_size=6,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls[-1] == (50, 50)
    assert all(t == 50 for _, t in calls)
    assert [c for c, _ in calls] == sorted(c for c, _ in calls)


def test_tables_mark_synthetic_data():
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 3, size=20)
    rep = cross_modal_report(rng.standard_normal((20, 4)), rng.standard_normal((20, 4)), labels, ["x", "y", "z"])
    assert isinstance(rep, CrossModalReport)
    table = format_map_table({"random": rep}, title="Test", synthetic=True)
    assert "SYNTHETIC" in table and "random" in table and f"{100 * rep.mean_map:.2f}" in table
    assert "SYNTHETIC" not in format_map_table({"random": rep}, title="Test")
    details = format_details(rep)
    assert all(name in details for name in ["x", "y", "z", "P@1", "mAP@R"])


# ---------------------------------------------------------------------------------------------
# bad input


def _ok(n=6, m=5, d=3):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, d)), np.arange(n) % 2, rng.standard_normal((m, d)), np.arange(m) % 2


def _bad(field, **overrides):
    q, ql, g, gl = _ok()
    args = {"queries": q, "query_labels": ql, "gallery": g, "gallery_labels": gl, **overrides}
    with pytest.raises(DataError) as err:
        retrieval_metrics(**args)
    msg = str(err.value)
    assert field in msg and "\n" not in msg
    return msg


def test_bad_inputs_raise_one_line_data_errors():
    q, ql, g, gl = _ok()
    _bad("gallery", gallery=np.ones((5, 4)))  # width mismatch
    nan = q.copy()
    nan[2, 1] = np.nan
    assert "NaN" in _bad("queries", queries=nan)
    inf = g.copy()
    inf[0, 0] = np.inf
    _bad("gallery", gallery=inf)
    assert "-1" in _bad("query_labels", query_labels=np.r_[ql[:-1], -1])
    _bad("gallery_labels", gallery_labels=np.r_[-1, gl[1:]])
    _bad("query_labels", query_labels=ql[:-1])
    _bad("gallery_labels", gallery_labels=np.r_[gl, 0])
    _bad("queries", queries=np.empty((0, 3)), query_labels=np.empty(0, dtype=int))
    _bad("gallery", gallery=np.ones(5))
    _bad("queries", queries=np.r_[q[:-1], np.zeros((1, 3))])  # cosine undefined
    _bad("query_labels", query_labels=ql + 0.5)
    with pytest.raises(DataError, match="class_names"):
        retrieval_metrics(q, ql, g, gl, class_names=["only-one"])
    with pytest.raises(DataError, match="ks"):
        retrieval_metrics(q, ql, g, gl, ks=(0, 5))


def test_cross_modal_bad_inputs_name_the_field():
    rng = np.random.default_rng(1)
    a, v, y = rng.standard_normal((6, 3)), rng.standard_normal((6, 3)), np.arange(6) % 3
    for args, field in [
        ((a, v[:, :2], y), "visual_emb"),
        ((a, v[:5], y), "visual_emb"),
        ((a, v, np.r_[y[:-1], -1]), "labels"),
        ((a, v, y[:4]), "labels"),
        ((np.full((6, 3), np.nan), v, y), "audio_emb"),
    ]:
        with pytest.raises(DataError, match=field):
            cross_modal_report(*args)
