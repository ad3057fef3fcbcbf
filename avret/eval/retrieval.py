"""Cross-modal retrieval metrics: the field's mAP, per-class AP, precision@k and mAP@R.

Definition (matches the reference evaluation code of the audio-visual retrieval literature):

* every query is ranked against the *whole* gallery by cosine similarity (both sides are
  L2-normalised, then the inner product is taken);
* a gallery item is relevant to a query when it has the same class label;
* AP of one query = (sum of precision@rank over the ranks of its relevant items) / (number of
  relevant items R), over the full ranking; mAP = mean AP over all queries;
* a query with no relevant gallery item gets AP = 0 (as the reference code does) and is counted in
  ``n_without_relevant``; no query is ever dropped (the last partial chunk is evaluated too).

Ranking and ties: items are sorted by *descending* float64 cosine similarity; items with exactly
equal scores are ranked by ascending gallery index (what a stable sort of ``-score`` gives). The
score of a pair is defined independently of how it is computed: it is the float64 nearest to the
exact inner product of the two L2-normalised float64 rows (correct rounding). So exact ties are
ties whatever the batch shape: duplicated rows, or rows whose entries are a permutation of each
other's against a symmetric query, always tie, and the result is bit-for-bit the same for every
``chunk_size`` and ``n_workers`` (a float64 GEMM, whose rounding depends on the shape of the
product and on the BLAS kernel, only gives approximate scores).

Speed: queries are processed in vectorised chunks sized from a memory budget (~256 MB, so
28,103 x 28,103 runs in bounded memory, every query including the last partial chunk). Each
chunk is one float64 GEMM, then its rows are split over a few threads (numpy's sort and
element-wise loops release the GIL). A row is ranked by one non-stable int64 sort of keys that
hold an order-preserving image of the GEMM score with "relevant to this query" in the lowest bit,
so the relevance of the ranking is read straight off the sorted keys. A GEMM score is within
``gamma_d = d u / (1 - d u)`` (u = 2**-53) of the exact inner product whatever the summation
order, so the GEMM ranking can only differ from the exact one among items whose scores are within
:func:`tie_tolerance` of each other, and that only changes the AP when such a near-tie group holds
both relevant and irrelevant items. The rare rows with a relevant item next to an irrelevant one
within that tolerance are ranked again from their correctly rounded scores, ties by gallery index
(a stable sort): both sides are split into slices whose products are exact GEMMs (Ozaki's
scheme), the exact partial products are added with error-free transformations, and the few
results whose rounding cannot be certified that way are summed exactly
(:func:`correctly_rounded_dots`). Tie-heavy data (integer-valued or duplicated embeddings) thus
costs a few extra GEMMs per redone row; generic embeddings almost never redo a row.

Device: ``device="auto"`` (the default) computes the score matrix and the ranking on a CUDA GPU
when torch sees one (:mod:`avret.eval.torch_ranking`: the same keys and tie rules, and the rows
whose order a different GEMM rounding could change ranked again exactly), else with numpy on the
CPU; ``"cpu"`` forces numpy, ``"cuda"`` the GPU, ``"torch-cpu"`` the torch path on the CPU (for
tests). Every device gives the same metrics, bit for bit.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np

from avret.errors import AvretError, DataError
from avret.utils.cuda import cuda_visible

__all__ = [
    "DEFAULT_KS",
    "CrossModalReport",
    "RetrievalMetrics",
    "cross_modal_report",
    "retrieval_metrics",
]

DEFAULT_KS: tuple[int, ...] = (1, 5, 10, 50, 100)

#: ``device`` values of :func:`retrieval_metrics` and :func:`cross_modal_report`.
EVAL_DEVICES = ("auto", "cpu", "cuda", "torch-cpu")

#: Total working memory the chunked evaluation aims for, across all worker threads.
MEMORY_BUDGET_BYTES = 256 * 1024**2
#: Working bytes per (query, gallery) pair of a chunk: float64 scores reused in place as int64
#: sort keys, the uint8 relevance of the ranking, and headroom for the sort's temporaries.
_BYTES_PER_PAIR = 16

ClassNames = Sequence[str] | Mapping[int, str]
Progress = Callable[[int, int], Any]


@dataclass
class RetrievalMetrics:
    """Retrieval quality of one direction (queries of one modality vs the other's gallery).

    ``ap`` holds the per-query AP in query order; ``per_class_ap`` the mean AP of the queries of
    each class (only classes that occur among the queries); ``precision_at[k]`` the mean over
    queries of (relevant items in the top k) / k; ``map_at_r`` the mean of
    (1/R) * sum of precision@i over relevant items at ranks i <= R (Musgrave et al., 2020).
    """

    map: float
    ap: np.ndarray
    per_class_ap: dict[str, float]
    precision_at: dict[int, float]
    map_at_r: float
    n_queries: int
    n_gallery: int
    n_without_relevant: int
    ap_at_r: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self, include_ap: bool = False) -> dict[str, Any]:
        """JSON-able summary; the per-query AP list only when ``include_ap`` is true."""
        out: dict[str, Any] = {
            "map": float(self.map),
            "map_at_r": float(self.map_at_r),
            "precision_at": {str(k): float(v) for k, v in self.precision_at.items()},
            "per_class_ap": {str(c): float(v) for c, v in self.per_class_ap.items()},
            "n_queries": int(self.n_queries),
            "n_gallery": int(self.n_gallery),
            "n_without_relevant": int(self.n_without_relevant),
        }
        if include_ap:
            out["ap"] = [float(v) for v in self.ap]
        return out


@dataclass
class CrossModalReport:
    """Both retrieval directions of a paired audio/visual test set."""

    audio_to_visual: RetrievalMetrics
    visual_to_audio: RetrievalMetrics

    @property
    def mean_map(self) -> float:
        """Average of the audio->visual and visual->audio mAP (the field's headline number)."""
        return (self.audio_to_visual.map + self.visual_to_audio.map) / 2.0

    def to_dict(self, include_ap: bool = False) -> dict[str, Any]:
        """JSON-able summary of both directions plus their mean mAP."""
        return {
            "audio_to_visual": self.audio_to_visual.to_dict(include_ap),
            "visual_to_audio": self.visual_to_audio.to_dict(include_ap),
            "mean_map": float(self.mean_map),
        }


# --------------------------------------------------------------------------------------------
# validation


def _embeddings(x: Any, name: str) -> np.ndarray:
    """Return ``x`` as a finite (n, d) float64 array of unit rows, or raise a one-line DataError."""
    try:
        arr = np.asarray(x)
    except Exception as exc:  # ragged lists and the like
        raise DataError(f"{name} must be a numeric (n, d) array ({exc})") from None
    if arr.ndim != 2:
        raise DataError(f"{name} must be a 2-D (n, d) array, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{name} must be non-empty, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise DataError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    arr = arr.astype(np.float64, copy=True)
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise DataError(
            f"{name} contains NaN or inf in {rows.size} row(s) (first: row {rows[0]}); expected finite values"
        )
    norms = np.linalg.norm(arr, axis=1)
    zero = np.flatnonzero(norms == 0)
    if zero.size:
        raise DataError(
            f"{name} has {zero.size} all-zero row(s) (first: row {zero[0]}); cosine similarity is undefined"
        )
    arr /= norms[:, None]
    return arr


def _labels(y: Any, n: int, name: str, rows_name: str) -> np.ndarray:
    """Return ``y`` as an int64 label vector of length ``n`` with no -1, or raise a DataError."""
    arr = np.asarray(y)
    if arr.ndim != 1:
        raise DataError(f"{name} must be a 1-D array of class ids, got shape {arr.shape}")
    if arr.shape[0] != n:
        raise DataError(
            f"{name} has {arr.shape[0]} entries but {rows_name} has {n} rows; expected one label per row"
        )
    if not np.issubdtype(arr.dtype, np.integer):
        if arr.dtype == object or not np.issubdtype(arr.dtype, np.number) or not np.all(arr == np.round(arr)):
            raise DataError(f"{name} must be integer class ids, got dtype {arr.dtype}")
    arr = arr.astype(np.int64)
    n_unlabelled = int(np.count_nonzero(arr == -1))
    if n_unlabelled:
        raise DataError(
            f"{name} has {n_unlabelled} unlabelled entries (-1); expected a class id >= 0 for every item"
        )
    if arr.size and arr.min() < 0:
        raise DataError(f"{name} must be class ids >= 0, found {int(arr.min())}")
    return arr


def _class_name(class_names: ClassNames | None, label: int) -> str:
    if class_names is None:
        return str(label)
    try:
        return str(class_names[label])
    except (IndexError, KeyError):
        raise DataError(f"class_names has no entry for class id {label}") from None


def _check_ks(ks: Sequence[int]) -> tuple[int, ...]:
    out = tuple(int(k) for k in ks)
    if any(k < 1 for k in out) or any(int(k) != k for k in ks):
        raise DataError(f"ks must be positive integers, got {tuple(ks)}")
    return out


# --------------------------------------------------------------------------------------------
# core


def auto_chunk_size(n_gallery: int, budget_bytes: int = MEMORY_BUDGET_BYTES) -> int:
    """Queries per chunk so that one chunk's working buffers stay within ``budget_bytes``."""
    return max(1, int(budget_bytes // (max(1, n_gallery) * _BYTES_PER_PAIR)))


def _n_workers() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(4, cpus))


def _stats_from_hits(
    rows: np.ndarray, ranks0: np.ndarray, n_rows: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row AP, AP@R and R from the 0-based ranks of relevant items.

    ``rows``/``ranks0`` list every relevant item, sorted by row then rank. Precision at the i-th
    relevant hit is i / rank, computed from integers in float64; AP = sum / R (0 when R = 0).
    """
    n_rel = np.bincount(rows, minlength=n_rows)
    starts = np.cumsum(n_rel) - n_rel
    ordinal = np.arange(1, rows.size + 1, dtype=np.int64) - starts[rows]
    prec = ordinal / (ranks0 + 1.0)
    denom = np.maximum(n_rel, 1).astype(np.float64)
    ap = np.bincount(rows, weights=prec, minlength=n_rows) / denom
    within_r = ranks0 < n_rel[rows]
    ap_r = np.bincount(rows[within_r], weights=prec[within_r], minlength=n_rows) / denom
    return ap, ap_r, n_rel


def _hits_at(rel: np.ndarray, ks: tuple[int, ...]) -> np.ndarray:
    """(rows, len(ks)) number of relevant items among the first k of each ranked row."""
    return np.stack([np.count_nonzero(rel[:, :k], axis=1) for k in ks], axis=1).reshape(rel.shape[0], len(ks))


_LOW_BYTE = 0 if sys.byteorder == "little" else 7
_U = 2.0**-53  # unit roundoff of float64
_VELTKAMP = 134217729.0  # 2**27 + 1: splits a float64 into two halves whose products are exact
#: Rows with a non-zero entry below this magnitude may have products that underflow, where the
#: error-free product is no longer exact; their pairs are scored with exact rational arithmetic.
_TINY = 2.0**-480
#: Row pairs scored per vectorised batch by :func:`correctly_rounded_dots` (bounds its memory).
_PAIR_BATCH = 4096
#: :class:`_ExactProduct`: memory for the slice products of one GEMM, and scores per element-wise
#: block (its ~10 arrays of them stay in the CPU caches).
_EXACT_BYTES = 64 * 1024**2
_BLOCK_ELEMENTS = 1 << 16


def tie_tolerance(d: int) -> float:
    """GEMM score gap within which two items of one query may rank differently by exact scores.

    A float64 inner product of two unit rows of width ``d``, summed in any order (GEMM or GEMV,
    blocked, with or without FMA), is within ``gamma_d = d u / (1 - d u)`` of the exact value. Two
    items whose computed scores differ by more than twice that, plus the rounding of the sort keys
    and one ulp, have correctly rounded scores in the same strict order. Returns twice that bound.
    """
    gamma = d * _U / (1.0 - d * _U)
    return 4.0 * gamma + 32.0 * _U


def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knuth's TwoSum: s = fl(a + b) and the exact error, a + b = s + e."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _split(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Veltkamp split a = hi + lo, each half with at most 26 significant bits."""
    c = _VELTKAMP * a
    hi = c - (c - a)
    return hi, a - hi


def _exact_dot(x: np.ndarray, y: np.ndarray) -> float:
    """Correctly rounded x . y by exact rational arithmetic (slow; for the rare underflow cases)."""
    return float(sum((Fraction(a) * Fraction(b) for a, b in zip(x.tolist(), y.tolist(), strict=True)), Fraction(0)))


def _dots_batch(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    n, d = x.shape
    p = x * y
    xh, xl = _split(x)
    yh, yl = _split(y)
    e = ((xh * yh - p) + xh * yl + xl * yh) + xl * yl  # Dekker: x*y = p + e exactly
    pt = np.ascontiguousarray(p.T)
    et = np.ascontiguousarray(e.T)
    s, c = pt[0].copy(), et[0].copy()
    for k in range(1, d):  # Dot2 (Ogita, Rump, Oishi 2005): cascaded error-free sum
        s, t = _two_sum(s, pt[k])
        c += t + et[k]
    r, t = _two_sum(s, c)
    # s + c is within 2 gamma_{d+1}^2 sum|p| of the exact value (a factor 2 of margin); r is its
    # correct rounding unless that error can carry the exact value across r's rounding boundary.
    mag = np.abs(p).sum(axis=1)
    g = (d + 1) * _U / (1.0 - (d + 1) * _U)
    err = 4.0 * g * g * mag + np.where(mag > 0, 2.0**-1070, 0.0)
    half = 0.5 * np.minimum(np.nextafter(r, np.inf) - r, r - np.nextafter(r, -np.inf))
    ok = (np.abs(t) + err < half) | (mag == 0)
    r = np.where(mag == 0, 0.0, r)
    for i in np.flatnonzero(~ok):  # near a rounding boundary, or cancellation near 0
        r[i] = math.fsum(np.concatenate([p[i], e[i]]).tolist())  # exact terms, correctly rounded
    tiny = ((x != 0) & (np.abs(x) < _TINY)).any(axis=1) | ((y != 0) & (np.abs(y) < _TINY)).any(axis=1)
    for i in np.flatnonzero(tiny):
        r[i] = _exact_dot(x[i], y[i])
    return r + 0.0  # -0.0 -> 0.0


def correctly_rounded_dots(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise ``fl(x[i] . y[i])``: the float64 nearest to the exact inner product of each pair.

    ``x`` and ``y`` are (P, d) float64 arrays of unit rows. Error-free products (Dekker) and a
    cascaded error-free sum (Dot2) give a double-double within ~1e-27 of the exact value; its
    rounding is kept where that error provably cannot change it, the rest are summed exactly
    (``math.fsum`` of the error-free terms, correctly rounded; exact rationals where products may
    underflow). The result depends on the two rows only, not on any batch shape or BLAS.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    out = np.empty(x.shape[0], dtype=np.float64)
    for a in range(0, x.shape[0], _PAIR_BATCH):
        out[a : a + _PAIR_BATCH] = _dots_batch(x[a : a + _PAIR_BATCH], y[a : a + _PAIR_BATCH])
    return out


def _slices(x: np.ndarray, beta: int, max_slices: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Split rows ``x = sum(slices) + rest`` exactly (Ozaki's error-free splitting).

    Row i of slice s holds integer multiples of ``rho_i * 2**(-beta s)`` of magnitude at most
    ``2**beta`` (rho_i a power of two), so the product of two slices is an exact GEMM when
    ``d * 2**(2 beta)`` is at most 2**53 (every partial sum is an integer multiple of one unit
    below 2**53, whatever the summation order). Stops once nothing is left; returns the slices
    and max |rest| of every row.
    """
    _, e = np.frexp(np.abs(x).max(axis=1))  # max |x_i| < 2**e
    rho = np.ldexp(1.0, e - beta)
    rest, out = x.copy(), []
    for _ in range(max_slices):
        if not rest.any():
            break
        sigma = (1.5 * 2.0**52 * rho)[:, None]  # rest + sigma rounds rest to a multiple of rho
        part = (rest + sigma) - sigma
        out.append(part)
        rest -= part  # exact
        rho = np.ldexp(rho, -beta)
    return out, np.abs(rest).max(axis=1)


class _ExactProduct:
    """Correctly rounded ``a . b`` for whole rows against a fixed gallery, at the cost of a few GEMMs.

    Both sides are split into slices (:func:`_slices`) with ``beta`` small enough that all slice
    products of one level (i + j = L, one common unit) add up exactly, even as separate GEMMs. The
    exact level sums are then added with error-free transformations (TwoSum); the rounding of the
    result is kept where its error bound provably cannot change it (always when the sum was exact,
    e.g. an exactly zero score), and the few others are scored by :func:`correctly_rounded_dots`.
    """

    def __init__(self, gallery: np.ndarray):
        self.gallery = gallery
        d = gallery.shape[1]
        self.max_slices = 4
        # d * max_slices * 2**(2 beta) <= 2**53: a level's products and their sum are exact.
        self.beta = (53 - (d * self.max_slices - 1).bit_length()) // 2
        slices, self.g_rest = _slices(gallery, self.beta, self.max_slices)
        self.n_g = len(slices)
        # every gallery slice side by side, (d, n_g * m): one GEMM gives all slice products
        self.g_stack = np.ascontiguousarray(np.concatenate([sl.T for sl in slices], axis=1))
        self.g_l1 = np.abs(gallery).sum(axis=1)

    def scores(self, a: np.ndarray) -> np.ndarray:
        """(len(a), m) correctly rounded scores of the rows ``a`` against the gallery."""
        m = self.gallery.shape[0]
        out = np.empty((a.shape[0], m), dtype=np.float64)
        sub = max(1, _BLOCK_ELEMENTS // max(1, m))
        # rows per GEMM: all slice products of a block stay within _EXACT_BYTES
        rows = max(sub, _EXACT_BYTES // (8 * self.max_slices * self.n_g * max(1, m)))
        for i in range(0, a.shape[0], rows):
            block = a[i : i + rows]
            r = block.shape[0]
            a_slices, a_rest = _slices(block, self.beta, self.max_slices)
            a_l1 = np.abs(block).sum(axis=1)
            # One GEMM for all slice pairs (each product exact): few, large BLAS calls.
            prods = np.concatenate(a_slices, axis=0) @ self.g_stack
            pairs = [(x, y) for x in range(len(a_slices)) for y in range(self.n_g)]
            n_levels = len(a_slices) + self.n_g - 1
            for j in range(0, r, sub):
                lo, hi = j, min(j + sub, r)
                levels = []
                for level in range(n_levels):
                    term = None
                    for x, y in pairs:
                        if x + y == level:
                            prod = prods[x * r + lo : x * r + hi, y * m : (y + 1) * m]
                            if term is None:
                                term = prod.copy()
                            else:
                                term += prod  # exact: same unit, sum below 2**53 units
                    levels.append(term)
                out[i + lo : i + hi] = self._round(levels, block[lo:hi], a_rest[lo:hi], a_l1[lo:hi])
        return out

    def _round(self, levels: list[np.ndarray], a: np.ndarray, a_rest: np.ndarray, a_l1: np.ndarray) -> np.ndarray:
        """Correct rounding of the sum of the exact level terms (plus the rests' share)."""
        acc, carry, size = levels[0], np.zeros_like(levels[0]), np.zeros_like(levels[0])
        for term in levels[1:]:
            acc, t = _two_sum(acc, term)  # acc + t == old acc + term, exactly
            carry += t  # exact value = acc + sum(t), and carry = sum(t) up to rounding
            size += np.abs(t, out=t)
        r, t = _two_sum(acc, carry)
        # exact value = r + t + (carry's rounding error) + (the rests' share), where the float sum
        # of k terms errs by at most gamma_k sum|t| (x2 margin), 0 when all t are 0; the rests add
        # at most |a|_1 max|rest_b| + max|rest_a| |b|_1 + d max|rest_a| max|rest_b|.
        k = len(levels)
        err = size * (2.0 * k * _U / (1.0 - k * _U))
        if a_rest.any() or self.g_rest.any():
            ra, rg = a_rest[:, None], self.g_rest[None, :]
            err += 2.0 * (ra * self.g_l1[None, :] + a_l1[:, None] * rg + a.shape[1] * ra * rg)
        # err == 0: the exact value is r + t, so r is its correct rounding. Otherwise r is kept
        # when the exact value r + t (+- err) stays within half the gap from r to its neighbour on
        # that side (quick test first: a quarter ulp is at most half of either gap).
        rows, cols = np.nonzero((err > 0) & (np.abs(t) + err >= 0.25 * np.spacing(np.abs(r))))
        if rows.size:
            r_, t_, e_ = r[rows, cols], t[rows, cols], err[rows, cols]
            away = np.spacing(np.abs(r_))  # gap to the neighbour farther from 0
            toward = np.where(np.abs(np.frexp(r_)[0]) == 0.5, 0.5 * away, away)
            gap = np.where((t_ != 0) & ((t_ > 0) == (r_ > 0)), away, toward)
            keep = np.abs(t_) + e_ < 0.5 * gap
            rows, cols = rows[~keep], cols[~keep]
        if rows.size:
            # Near a rounding boundary (often exactly on it): sum these few again, the carries
            # with TwoSum too; if nothing is dropped there, the sum is exact and so its rounding.
            vals = [lv[rows, cols] for lv in levels]
            acc, carry, lost = vals[0], np.zeros(rows.size), np.zeros(rows.size)
            for term in vals[1:]:
                acc, t = _two_sum(acc, term)
                carry, e = _two_sum(carry, t)
                lost += np.abs(e)
            exact = (lost == 0) & (a_rest[rows] == 0) & (self.g_rest[cols] == 0)
            r[rows[exact], cols[exact]] = (acc + carry)[exact]
            rows, cols = rows[~exact], cols[~exact]
        if rows.size:
            r[rows, cols] = correctly_rounded_dots(a[rows], self.gallery[cols])
        return r + 0.0  # -0.0 -> 0.0


class _Ranker:
    """Ranks rows of queries against a fixed gallery; holds the gallery and reusable buffers.

    Per chunk of queries: one float64 GEMM (BLAS uses all cores) into a reused buffer, then the
    rows are split among threads. Each thread maps its scores s to 2 - s (positive, so its IEEE
    bits read as int64 grow as s falls; the rounding is monotone, it may merge scores closer than
    ~4e-16 but never swaps two), replaces the lowest bit by "relevant to this query" and sorts the
    int64 keys: relevant items then sit where they rank, marked by their low bit. A relevant item
    whose neighbour in that order is irrelevant and within :func:`tie_tolerance` may rank the
    other way round by exact scores: such rare rows are ranked again by :meth:`exact_relevance`.
    """

    def __init__(self, queries: np.ndarray, gallery: np.ndarray, gallery_labels: np.ndarray, chunk: int):
        self.queries = queries
        self.gallery = gallery
        self.m = gallery.shape[0]
        self.gallery_t = np.ascontiguousarray(gallery.T)
        self.gallery_labels = gallery_labels
        self.tol = tie_tolerance(gallery.shape[1])
        self.scores = np.empty((chunk, self.m), dtype=np.float64)
        self.rel = np.empty((chunk, self.m), dtype=np.uint8)
        self._bits: dict[int, np.ndarray] = {}
        self._exact: _ExactProduct | None = None
        self._lock = threading.Lock()

    def relevance_bits(self, label: int) -> np.ndarray:
        """int64 (m,): 1 where the gallery item has class ``label``, else 0."""
        bits = self._bits.get(label)
        if bits is None:
            bits = self._bits[label] = (self.gallery_labels == label).astype(np.int64)
        return bits

    def prepare(self, labels: np.ndarray) -> None:
        """Build the relevance bit vectors of these query labels (before any threading)."""
        for label in np.unique(labels):
            self.relevance_bits(int(label))

    def exact_relevance(self, query_rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """(rows, m) bool: relevance of the gallery ranked by correctly rounded scores, ties by index."""
        with self._lock:
            if self._exact is None:
                self._exact = _ExactProduct(self.gallery)
        scores = self._exact.scores(self.queries[query_rows])
        ranked = np.argsort(-scores, axis=1, kind="stable")
        return self.gallery_labels[ranked] == labels[:, None]

    def rows(
        self, labels: np.ndarray, lo: int, hi: int, ks: tuple[int, ...]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """AP, AP@R, hits@k and R of chunk rows ``lo:hi``, and which of them (0-based in ``lo:hi``)
        must be ranked again by :meth:`exact_stats` (their first four results are then invalid)."""
        m = self.m
        x = self.scores[lo:hi]
        np.subtract(2.0, x, out=x)
        keys = x.view(np.int64)
        keys &= ~np.int64(1)
        # Queries are grouped by class, so each run of equal labels is one broadcast OR.
        bounds = np.flatnonzero(np.diff(labels)) + 1
        for a, b in zip(np.r_[0, bounds], np.r_[bounds, hi - lo], strict=True):
            keys[a:b] |= self.relevance_bits(int(labels[a]))
        keys.sort(axis=1)
        np.bitwise_and(keys.view(np.uint8)[:, _LOW_BYTE::8], 1, out=self.rel[lo:hi])
        rel = self.rel[lo:hi].view(bool)  # 0/1 bytes; bool gets numpy's fast nonzero paths
        flat = np.flatnonzero(rel)
        rows, ranks0 = np.divmod(flat, m)
        ap, ap_r, n_rel = _stats_from_hits(rows, ranks0, hi - lo)
        hits = _hits_at(rel, ks)

        # The sorted keys read as floats are 2 - score (ascending; the low bit moves them by one
        # ulp). A relevant item next to an irrelevant one within the tie tolerance may swap places
        # by exact scores: those rows are ranked again exactly.
        vals, rel_flat = x.reshape(-1), rel.reshape(-1)
        prev = flat[ranks0 > 0]
        prev = prev[~rel_flat[prev - 1] & (vals[prev] - vals[prev - 1] <= self.tol)]
        nxt = flat[ranks0 < m - 1]
        nxt = nxt[~rel_flat[nxt + 1] & (vals[nxt + 1] - vals[nxt] <= self.tol)]
        redo = np.unique(np.concatenate([prev, nxt]) // m)
        return ap, ap_r, hits, n_rel, redo

    def exact_stats(
        self, query_rows: np.ndarray, labels: np.ndarray, ks: tuple[int, ...]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """AP, AP@R, hits@k and R of some query rows, ranked by correctly rounded scores."""
        rel = self.exact_relevance(query_rows, labels)
        rows, ranks0 = np.divmod(np.flatnonzero(rel), self.m)
        ap, ap_r, n_rel = _stats_from_hits(rows, ranks0, len(query_rows))
        return ap, ap_r, _hits_at(rel, ks), n_rel


def torch_device(device: str | None) -> str | None:
    """The torch device the ranking runs on for ``device`` (:data:`EVAL_DEVICES`), or None for numpy."""
    device = device or "auto"
    if device not in EVAL_DEVICES:
        raise AvretError(f"device {device!r}: expected one of {list(EVAL_DEVICES)}")
    if device == "torch-cpu":
        return "cpu"
    if device == "cuda":
        if not cuda_visible():
            raise AvretError("device 'cuda': torch sees no CUDA GPU; use device 'cpu' or 'auto'")
        return "cuda"
    return "cuda" if device == "auto" and cuda_visible() else None


def _retrieval_metrics(
    q: np.ndarray,
    ql: np.ndarray,
    g: np.ndarray,
    gl: np.ndarray,
    class_names: ClassNames | None,
    ks: tuple[int, ...],
    chunk_size: int | None,
    progress: Progress | None,
    n_workers: int | None,
    device: str | None = None,
) -> RetrievalMetrics:
    n, m = q.shape[0], g.shape[0]
    if device is not None:
        return _finish(q, ql, class_names, ks, *_torch_stats(q, ql, g, gl, ks, chunk_size, progress, device), m)
    workers = _n_workers() if n_workers is None else max(1, int(n_workers))
    chunk = auto_chunk_size(m) if chunk_size is None else int(chunk_size)
    chunk = max(1, min(chunk, n))

    # Evaluate queries grouped by class (stable), scatter the results back to query order.
    perm = np.argsort(ql, kind="stable")
    q_sorted = q[perm]
    ql_sorted = ql[perm]
    ranker = _Ranker(q_sorted, g, gl, chunk)
    ranker.prepare(ql_sorted)

    ap = np.empty(n, dtype=np.float64)
    ap_r = np.empty(n, dtype=np.float64)
    hits = np.empty((n, len(ks)), dtype=np.int64)
    n_rel = np.empty(n, dtype=np.int64)
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="avret-eval") if workers > 1 else None
    try:
        if progress is not None:
            progress(0, n)
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            cl = ql_sorted[start:stop]
            np.matmul(q_sorted[start:stop], ranker.gallery_t, out=ranker.scores[: stop - start])
            edges = np.linspace(0, stop - start, min(workers, stop - start) + 1).astype(int)
            parts = list(zip(edges[:-1], edges[1:], strict=True))

            def run(part: tuple[int, int], cl: np.ndarray = cl) -> Any:
                lo, hi = part
                return ranker.rows(cl[lo:hi], lo, hi, ks)

            results = list(pool.map(run, parts)) if pool is not None and len(parts) > 1 else map(run, parts)
            redo = []
            for (lo, hi), (a, b, h, r, again) in zip(parts, results, strict=True):
                sl = slice(start + lo, start + hi)
                ap[sl], ap_r[sl], hits[sl], n_rel[sl] = a, b, h, r
                redo.append(start + lo + again)
            # Rows to rank again, here in the calling thread: a few GEMMs each, which use every core.
            redo_rows = np.concatenate(redo)
            step = max(1, chunk // 4)  # bounded extra memory even if every row must be redone
            for i in range(0, redo_rows.size, step):
                part = redo_rows[i : i + step]
                ap[part], ap_r[part], hits[part], n_rel[part] = ranker.exact_stats(part, ql_sorted[part], ks)
            if progress is not None:
                progress(stop, n)
    finally:
        if pool is not None:
            pool.shutdown(wait=True)

    inv = np.empty(n, dtype=np.int64)
    inv[perm] = np.arange(n)
    return _finish(q, ql, class_names, ks, ap[inv], ap_r[inv], hits[inv], n_rel[inv], m)


def _torch_stats(
    q: np.ndarray, ql: np.ndarray, g: np.ndarray, gl: np.ndarray, ks: tuple[int, ...], chunk_size: int | None,
    progress: Progress | None, device: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-query AP, AP@R, hits@k and R (query order) with the scores and ranking on torch ``device``."""
    from avret.eval.torch_ranking import TorchRanker

    n = q.shape[0]
    perm = np.argsort(ql, kind="stable")
    q_sorted, ql_sorted = q[perm], ql[perm]
    exact = _Ranker(q_sorted, g, gl, 1)  # the CPU's exact ranking, for the rows flagged for it
    ranker = TorchRanker(g, gl, device, tie_tolerance(g.shape[1]))
    chunk = max(1, min(ranker.chunk_size() if chunk_size is None else int(chunk_size), n))
    ap, ap_r = np.empty(n, dtype=np.float64), np.empty(n, dtype=np.float64)
    hits, n_rel = np.empty((n, len(ks)), dtype=np.int64), np.empty(n, dtype=np.int64)
    if progress is not None:
        progress(0, n)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        rows, ranks0, h, again = ranker.rank(q_sorted[start:stop], ql_sorted[start:stop], ks)
        ap[start:stop], ap_r[start:stop], n_rel[start:stop] = _stats_from_hits(rows, ranks0, stop - start)
        hits[start:stop] = h
        redo = start + again
        step = max(1, chunk // 4)
        for i in range(0, redo.size, step):
            part = redo[i : i + step]
            ap[part], ap_r[part], hits[part], n_rel[part] = exact.exact_stats(part, ql_sorted[part], ks)
        if progress is not None:
            progress(stop, n)
    inv = np.empty(n, dtype=np.int64)
    inv[perm] = np.arange(n)
    return ap[inv], ap_r[inv], hits[inv], n_rel[inv]


def _finish(
    q: np.ndarray, ql: np.ndarray, class_names: ClassNames | None, ks: tuple[int, ...], ap: np.ndarray,
    ap_r: np.ndarray, hits: np.ndarray, n_rel: np.ndarray, m: int,
) -> RetrievalMetrics:
    n = q.shape[0]
    per_class: dict[str, float] = {}
    for label in np.unique(ql):
        per_class[_class_name(class_names, int(label))] = float(ap[ql == label].mean())
    precision_at = {k: float((hits[:, j] / k).mean()) for j, k in enumerate(ks)}
    return RetrievalMetrics(
        map=float(ap.mean()),
        ap=ap,
        per_class_ap=per_class,
        precision_at=precision_at,
        map_at_r=float(ap_r.mean()),
        n_queries=n,
        n_gallery=m,
        n_without_relevant=int(np.count_nonzero(n_rel == 0)),
        ap_at_r=ap_r,
    )


def retrieval_metrics(
    queries: Any,
    query_labels: Any,
    gallery: Any,
    gallery_labels: Any,
    *,
    class_names: ClassNames | None = None,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int | None = None,
    progress: Progress | None = None,
    n_workers: int | None = None,
    device: str | None = "auto",
) -> RetrievalMetrics:
    """Rank the whole gallery for every query by cosine similarity and score it (see module doc).

    ``queries`` (n, d) and ``gallery`` (m, d) are real arrays; labels are integer class ids (-1,
    unlabelled, is rejected). ``class_names[label]`` names the classes in ``per_class_ap``
    (default: the id as a string). ``chunk_size`` queries are ranked at a time (default: from a
    ~256 MB memory budget); ``progress(n_done, n_total)`` is called after each chunk.
    ``n_workers`` threads evaluate chunks concurrently (default: the usable CPUs, at most 4).
    ``device`` (:data:`EVAL_DEVICES`): where the scores and ranking are computed (module doc); the
    metrics are the same on every device.
    Precision@k divides by k even when k exceeds the gallery size.
    Raises :class:`~avret.errors.DataError` on empty, non-finite, all-zero-row or mismatched inputs.
    """
    q = _embeddings(queries, "queries")
    g = _embeddings(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise DataError(
            f"queries have dimension {q.shape[1]} but gallery has {g.shape[1]}; expected the same width"
        )
    ql = _labels(query_labels, q.shape[0], "query_labels", "queries")
    gl = _labels(gallery_labels, g.shape[0], "gallery_labels", "gallery")
    if chunk_size is not None and int(chunk_size) < 1:
        raise DataError(f"chunk_size must be >= 1, got {chunk_size}")
    dev = torch_device(device)
    return _retrieval_metrics(q, ql, g, gl, class_names, _check_ks(ks), chunk_size, progress, n_workers, dev)


def cross_modal_report(
    audio_emb: Any,
    visual_emb: Any,
    labels: Any,
    class_names: ClassNames | None = None,
    *,
    ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int | None = None,
    progress: Progress | None = None,
    n_workers: int | None = None,
    device: str | None = "auto",
) -> CrossModalReport:
    """Audio->visual and visual->audio retrieval metrics of a paired test set.

    ``audio_emb[i]`` and ``visual_emb[i]`` embed the same clip, whose class is ``labels[i]``.
    Audio->visual uses every audio embedding as a query against all visual embeddings, and
    visual->audio the reverse. ``progress(n_done, n_total)`` counts the queries of both
    directions together (n_total = 2 n).
    """
    a = _embeddings(audio_emb, "audio_emb")
    v = _embeddings(visual_emb, "visual_emb")
    if a.shape[1] != v.shape[1]:
        raise DataError(
            f"audio_emb has dimension {a.shape[1]} but visual_emb has {v.shape[1]}; expected the same width"
        )
    if a.shape[0] != v.shape[0]:
        raise DataError(
            f"audio_emb has {a.shape[0]} rows but visual_emb has {v.shape[0]}; expected one pair per clip"
        )
    y = _labels(labels, a.shape[0], "labels", "audio_emb")
    if chunk_size is not None and int(chunk_size) < 1:
        raise DataError(f"chunk_size must be >= 1, got {chunk_size}")
    ks_t = _check_ks(ks)
    dev = torch_device(device)
    n = a.shape[0]

    def shifted(offset: int) -> Progress | None:
        if progress is None:
            return None
        return lambda done, _total: progress(offset + done, 2 * n)

    a2v = _retrieval_metrics(a, y, v, y, class_names, ks_t, chunk_size, shifted(0), n_workers, dev)
    v2a = _retrieval_metrics(v, y, a, y, class_names, ks_t, chunk_size, shifted(n), n_workers, dev)
    return CrossModalReport(audio_to_visual=a2v, visual_to_audio=v2a)

