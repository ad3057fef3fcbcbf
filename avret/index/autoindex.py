"""``--factory auto``: choose a FAISS index for the gallery size and a memory budget, tune it, build it in shards.

How an index is chosen (:func:`choose_factory`; in the spirit of autofaiss, written down here)
------------------------------------------------------------------------------------------------
``n`` vectors of width ``d`` (float32, inner product), budget ``max_memory`` bytes (None: no limit).
What the budget bounds: the RAM the FAISS index takes once loaded for search with every inverted
list in memory — codes + ids + coarse centroids + OPQ rotation + PQ codebooks (the estimates below;
tests check them against the files written). It does not count the clip ids/labels of
``metadata.json`` (about ``4 x len(clip id) + 8`` bytes a clip), nor ``embeddings.npy`` (memory-mapped,
read only for clip-id queries). A sharded IVF index keeps its inverted lists on disk
(``index.ivfdata``, memory-mapped): there the process's own memory is the centroids and list
directory only, and the codes are page cache the OS fills as lists are probed and may evict, so
the budget is what full-speed search needs, not a floor.

Estimated bytes (``nlist`` lists, PQ with ``m`` one-byte codes on ``D`` rotated dimensions)::

    Flat                      4 n d
    IVF{nlist},Flat           n (4 d + 8) + 4 nlist d + 48 nlist
    OPQ{m}_{D},IVF{nlist},PQ{m}np n (m + 8) + 4 nlist D + 4 x 256 D + 4 d D + 48 nlist
    IVF{nlist},PQ{m}np        n (m + 8) + 4 nlist d + 4 x 256 d + 48 nlist
    IVF{nlist},SQ{b}          n (ceil(b d / 8) + 8) + 4 nlist d + 48 nlist + 8 d
    SQ{b}                     n ceil(b d / 8) + 8 d

Rules, first that applies:

1. ``n < FLAT_BELOW`` (10 000): ``Flat`` (exact; brute force over 10k vectors takes well under a
   millisecond a query). Too few vectors to train a PQ (FAISS wants 39 x 256 = 9 984), so a budget
   below Flat's size is an error.
2. ``IVF{nlist},Flat`` when it fits: the exact vectors, grouped in ``nlist`` lists of which
   ``nprobe`` are scanned — recall is limited only by ``nprobe``, tuned below; about 0.8% more
   memory than Flat at d=128 (the 8-byte ids) for a search ``nlist/nprobe`` times cheaper.
3. ``Flat`` when it fits (the budget lies between Flat and IVF-Flat).
4. Neither fits: the compressed candidates that fit are BUILT AND MEASURED (:func:`select`, issue
   21): the largest ``IVF{nlist},SQ{8,6,4}`` that fits, the largest flat ``SQ{8,6,4}`` (galleries
   under ``FLAT_SQ_BELOW`` only), and the two largest ``IVF{nlist},PQ{m}np`` (m of 32, 16, 8, 4,
   ``m <= max(4, d / 4)``), each searched with an optional exact re-rank of its top ``k x
   k_factor`` from the memory-mapped ``embeddings.npy`` (disk, not RAM: the budget counts what the
   FAISS index keeps in memory). For each candidate nprobe doubles and ``k_factor`` runs over
   ``K_FACTORS`` on the held-out gallery sample until two doublings add < 0.005 recall; per depth
   the smallest nprobe reaching the target is timed one query at a time, and the fastest candidate
   setting that reaches ``--target-recall`` is kept. Every candidate's curve, settings, build time
   and latency go into ``manifest.auto.candidates``. When none reaches the target, the build is
   refused (exit 2) naming the smallest budget that does -- found by building the candidates above
   the budget smallest first -- unless ``best_effort``. (OPQ rotations are no longer tried: with
   the re-rank they add little recall and cost most of the training time.)
5. Nothing fits: refused (exit 2, even with ``best_effort``) naming the smallest candidate and its size
   and -- measured as in rule 4, the candidates built smallest first -- the smallest budget that reaches
   the target.

``nlist`` is the largest power of two ``<= 4 sqrt(n)``, at most ``n / 39`` (FAISS wants 39 training
points a centroid) and at most 65 536. Training uses a seeded sample of
``max(40 nlist, 9 984 if PQ)`` vectors (all of them when fewer).

nprobe for a target recall (:func:`tune_nprobe`)
------------------------------------------------
A seeded sample of ``TUNE_SAMPLE`` gallery vectors, held out of the training sample, is used as
queries; their exact top-``k`` (``k`` = 10) over the whole gallery is computed by brute force. nprobe
goes 1, 2, 4, ... up to ``nlist`` until the mean recall@k (the fraction of the exact top-k found in
the approximate top-k) reaches the target (default 0.95). When even ``nprobe = nlist`` misses it
(PQ codes lose accuracy whatever is probed) the smallest nprobe whose recall is within
``PLATEAU_TOLERANCE`` (0.005) of the best measured is kept — past that plateau probing more lists
only costs time (5M vectors: nprobe 256 was 0.0004 above nprobe 16) — and ``target_met`` is false.
The chosen nprobe is stored in the index (its default for searches) and,
with the factory, the reason, the target, the measured recall and the sample, in the manifest.

Sharded build (:func:`add_in_shards`, :func:`merge_shards`)
-----------------------------------------------------------
The index is trained once (in the calling process), written empty, then the gallery's rows are
split into ``shards`` contiguous slices, each added to a copy of the trained index by one of
``workers`` threads (FAISS releases the GIL while adding; threads rather than processes so that a
caller's script needs no ``if __name__ == "__main__"`` guard, which spawned processes require) and
written as a shard file, then freed: each worker reads its slice from the memory-mapped vectors
and holds only that slice's codes. The workers also compute their slice's exact top-k for the
tuning queries. Merging: IVF shards with :func:`faiss.contrib.ondisk.merge_ondisk` into one
``index.ivfdata`` (the inverted lists on disk, memory-mapped when searched — an index larger than
RAM stays searchable); Flat shards are concatenated into one flat index, identical to the unsharded
one. Either way the result is ONE FAISS index, so the search path, the class filter and
``embeddings_of`` work unchanged, and an exact index's results equal the unsharded ones.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import mmap
import os
import re
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from avret.errors import AvretError

#: Galleries smaller than this stay Flat.
FLAT_BELOW = 10_000
#: One-byte PQ code counts tried, most accurate first.
PQ_CODE_BYTES = (64, 32, 16, 8, 4)
#: When no nprobe reaches the target recall: the smallest nprobe within this much of the best recall.
PLATEAU_TOLERANCE = 0.005
#: OPQ alternations (rotation / PQ re-training) for auto choices; FAISS's default is 50.
OPQ_NITER = 10
#: Training points FAISS wants for 256 PQ centroids (39 a centroid).
PQ_MIN_TRAIN = 39 * 256
#: Training points per IVF list.
TRAIN_PER_LIST = 40
MAX_NLIST = 65_536
#: Bytes per IVF list besides its codes (two std::vectors' headers).
LIST_OVERHEAD = 48
DEFAULT_TARGET_RECALL = 0.95
TUNE_SAMPLE = 1000
TUNE_K = 10
#: Training rows for a scalar quantiser's per-dimension ranges.
SQ_TRAIN = 65_536
#: Rows per shard when ``shards`` is not given.
SHARD_ROWS = 1_000_000

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str | int, name: str = "--max-memory") -> int:
    """Bytes in ``"4GB"``, ``"512M"``, ``"1.5GiB"``, ``"100000"``.

    Units K, M, G, T (optionally followed by B or iB, any case) are powers of 1024, as RAM is sold
    and as autofaiss reads them: ``"4GB"`` is 4 x 2^30 bytes. Raises :class:`AvretError` naming
    ``name`` for anything else or a size below 1 byte.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value: float = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text), flags=re.IGNORECASE)
        if m is None:
            raise AvretError(f"{name} {text!r}: expected a size such as 512MB, 4GB or 1.5GiB (K/M/G/T, powers of 1024)")
        value = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if value < 1:
        raise AvretError(f"{name} {text!r}: expected a size of at least 1 byte")
    return int(value)


def format_size(nbytes: float) -> str:
    """``1536 -> '1.5 KiB'`` (for messages)."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(nbytes) < 1024:
            return f"{nbytes:.0f} {unit}" if unit == "B" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.1f} TiB"


def ivf_nlist(n: int) -> int:
    """Inverted lists for ``n`` vectors: the largest power of two <= 4 sqrt(n), <= n/39, <= MAX_NLIST."""
    cap = max(1, min(4 * math.sqrt(n), n // 39, MAX_NLIST))
    return 1 << int(math.floor(math.log2(cap)))


def estimate_bytes(kind: str, n: int, d: int, nlist: int = 0, m: int = 0) -> int:
    """RAM of an index of ``kind`` (``flat``, ``ivf-flat``, ``ivf-pq``) per the table in the module docstring."""
    if kind == "flat":
        return 4 * n * d
    if kind == "ivf-flat":
        return n * (4 * d + 8) + 4 * nlist * d + LIST_OVERHEAD * nlist
    if kind == "ivf-pq":
        big_d = m * math.ceil(d / m)
        return n * (m + 8) + 4 * nlist * big_d + 4 * 256 * big_d + 4 * d * big_d + LIST_OVERHEAD * nlist
    raise ValueError(f"unknown index kind {kind!r}")


class BudgetTooSmall(AvretError):
    """Not one index avret chooses fits the budget (rule 5). The message names the smallest one; given the
    vectors, :meth:`avret.index.store.AVIndex.build` then measures the smallest budget that reaches the target
    (:func:`smallest_budget`) and refuses naming it."""

    def __init__(self, n: int, d: int, max_memory: int, smallest: Candidate) -> None:
        self.head = (f"--max-memory {format_size(max_memory)} is too small for {n} x {d} vectors: the smallest "
                     f"index avret chooses ({smallest.factory}) takes {format_size(smallest.nbytes)}")
        super().__init__(f"{self.head}; raise --max-memory")


def choose_factory(n: int, d: int, max_memory: int | None = None) -> tuple[str, str, int]:
    """``(factory, reason, estimated bytes)`` for ``n`` vectors of width ``d`` within ``max_memory`` bytes.

    The rules are in the module docstring. Raises :class:`AvretError` when nothing fits.
    """
    if n < 1 or d < 1:
        raise AvretError(f"cannot choose an index for {n} vectors of width {d}")
    budget = "no memory budget" if max_memory is None else f"budget {format_size(max_memory)}"

    def fits(nbytes: int) -> bool:
        return max_memory is None or nbytes <= max_memory

    flat = estimate_bytes("flat", n, d)
    if n < FLAT_BELOW:
        if fits(flat):
            return "Flat", f"{n} < {FLAT_BELOW} vectors: exact search is cheap ({budget})", flat
        raise AvretError(f"--max-memory {format_size(max_memory or 0)} is below the {format_size(flat)} a Flat index "
                         f"of {n} x {d} vectors takes, and {n} vectors are too few to train a compressed index "
                         f"(at least {FLAT_BELOW}); raise --max-memory")
    nlist = ivf_nlist(n)
    ivf = estimate_bytes("ivf-flat", n, d, nlist)
    if fits(ivf):
        return (f"IVF{nlist},Flat", f"{n} >= {FLAT_BELOW} vectors and IVF-Flat fits ({format_size(ivf)}, {budget}): "
                f"exact vectors, nprobe of {nlist} lists scanned", ivf)
    if fits(flat):
        return "Flat", f"IVF-Flat ({format_size(ivf)}) does not fit but Flat does ({format_size(flat)}, {budget})", flat
    short = shortlist(n, d, max_memory)
    if short:
        best = short[0]
        return (best.factory, f"Flat ({format_size(flat)}) and IVF-Flat ({format_size(ivf)}) exceed the {budget}; "
                f"compressed candidates that fit, built and measured: {', '.join(c.factory for c in short)}",
                best.nbytes)
    smallest = min((c for c in candidates(n, d) if not c.exact), key=lambda c: c.nbytes)
    raise BudgetTooSmall(n, d, max_memory or 0, smallest)



def needs_selection(factory: str) -> bool:
    """Whether an auto choice is a compressed candidate, chosen by :func:`select` on measured recall."""
    return factory != "Flat" and not factory.endswith(",Flat")


def prepare(index: Any) -> None:
    """Set the training options of an auto choice on a fresh ``index`` (``OPQ_NITER``)."""
    if isinstance(faiss.downcast_index(index), faiss.IndexPreTransform):
        chain = faiss.downcast_index(index).chain
        for i in range(chain.size()):
            transform = faiss.downcast_VectorTransform(chain.at(i))
            if isinstance(transform, faiss.OPQMatrix):
                transform.niter = OPQ_NITER


def default_shards(n: int) -> int:
    """Shards when not given: one per :data:`SHARD_ROWS` rows."""
    return max(1, math.ceil(n / SHARD_ROWS))


def training_rows(index: Any, n: int) -> int:
    """How many vectors to train ``index`` on (see the module docstring); ``n`` when fewer."""
    ivf = faiss.try_extract_index_ivf(index)
    want = TRAIN_PER_LIST * (ivf.nlist if ivf is not None else 1)
    kind = type(faiss.downcast_index(ivf if ivf is not None else index)).__name__
    if "PQ" in kind:
        want = max(want, PQ_MIN_TRAIN)
    if "ScalarQuantizer" in kind:  # the per-dimension ranges: a sample, not a handful
        want = max(want, SQ_TRAIN)
    return min(n, want)


def split_rows(n: int, queries: int, train: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded ``(query rows, training rows)``, disjoint when ``n`` allows (both sorted)."""
    perm = np.random.default_rng(seed).permutation(n)
    q = perm[: min(queries, n)]
    rest = perm[len(q):] if n - len(q) >= train else perm
    return np.sort(q), np.sort(rest[:train])


# ---------------------------------------------------------------------- exact top-k
def exact_topk(queries: np.ndarray, vectors: np.ndarray, k: int, offset: int = 0,
               chunk: int = 65_536) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force top-``k`` inner products of ``queries`` over ``vectors`` (read ``chunk`` rows at a time).

    Returns ``(scores, rows + offset)``, best first; fewer than ``k`` vectors leave ``-inf`` / ``-1``.
    """
    nq = queries.shape[0]
    best_s = np.full((nq, k), -np.inf, dtype=np.float32)
    best_i = np.full((nq, k), -1, dtype=np.int64)
    q = np.ascontiguousarray(queries, dtype=np.float32)
    for s in range(0, vectors.shape[0], chunk):
        block = np.ascontiguousarray(vectors[s : s + chunk], dtype=np.float32)
        kk = min(k, block.shape[0])
        d_, i_ = faiss.knn(q, block, kk, metric=faiss.METRIC_INNER_PRODUCT)
        best_s, best_i = merge_topk([(best_s, best_i), (d_, i_ + offset + s)], k)
    return best_s, best_i


def merge_topk(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of several ``(scores, ids)`` top-k lists of the same queries (ties: earlier part first)."""
    s = np.concatenate([p[0] for p in parts], axis=1)
    i = np.concatenate([p[1] for p in parts], axis=1)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, axis=1), np.take_along_axis(i, order, axis=1)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean over queries of |found top-k ∩ exact top-k| / k."""
    k = exact.shape[1]
    hits = [len(set(f.tolist()) & set(e.tolist())) for f, e in zip(found, exact, strict=True)]
    return float(np.mean(hits) / k) if hits else 1.0


def tune_nprobe(index: Any, queries: np.ndarray, exact_ids: np.ndarray, target: float) -> dict[str, Any]:
    """Raise the IVF ``index``'s nprobe (1, 2, 4, ..., nlist) until recall@k of ``queries`` reaches ``target``.

    Leaves the chosen nprobe set on the index and returns ``{nprobe, recall, target_met, curve}``
    (``curve``: ``[[nprobe, recall], ...]`` as measured).
    """
    ivf = faiss.extract_index_ivf(index)
    k = exact_ids.shape[1]
    curve: list[list[float]] = []
    probe = 1
    while True:
        ivf.nprobe = probe
        _, found = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        curve.append([probe, recall_at_k(found, exact_ids)])
        if curve[-1][1] >= target or probe >= ivf.nlist:
            break
        probe = min(2 * probe, ivf.nlist)
    probe, recall = choose_nprobe(curve, target)
    ivf.nprobe = probe
    return {"nprobe": probe, "recall": round(recall, 6), "target_met": bool(recall >= target),
            "curve": [[int(p), round(float(r), 6)] for p, r in curve]}


def choose_nprobe(curve: list[list[float]], target: float) -> tuple[int, float]:
    """``(nprobe, recall)`` from a measured ``[[nprobe, recall], ...]`` curve (nprobe increasing).

    The smallest nprobe that reaches ``target``; when none does, the smallest whose recall is within
    :data:`PLATEAU_TOLERANCE` of the best measured (past that point the codes, not nprobe, limit
    recall, and probing more lists only costs time).
    """
    best = max(r for _, r in curve)
    floor = target if best >= target else best - PLATEAU_TOLERANCE
    probe, recall = next((p, r) for p, r in curve if r >= floor)
    return int(probe), float(recall)


# ---------------------------------------------------------------------- sharded build
@dataclass(frozen=True)
class VectorFile:
    """Where worker processes memory-map the gallery vectors from: a float32 C-order (n, d) array in a file."""

    path: str
    offset: int
    n: int
    d: int

    def open(self) -> np.ndarray:
        return np.memmap(self.path, dtype=np.float32, mode="r", offset=self.offset, shape=(self.n, self.d))

    @classmethod
    def of(cls, x: np.ndarray, spill: Path) -> VectorFile:
        """``x`` itself when it is a memory-mapped float32 C-order file, else ``x`` written to ``spill`` (.npy)."""
        if (isinstance(x, np.memmap) and isinstance(x.base, mmap.mmap) and x.ndim == 2 and x.dtype == np.float32
                and x.flags.c_contiguous and x.filename):  # the mapping itself, not a view of it
            return cls(str(x.filename), int(x.offset), int(x.shape[0]), int(x.shape[1]))
        np.save(spill, np.ascontiguousarray(x, dtype=np.float32))
        arr = np.load(spill, mmap_mode="r")
        return cls(str(spill), int(arr.offset), int(x.shape[0]), int(x.shape[1]))


def shard_bounds(n: int, shards: int) -> list[tuple[int, int]]:
    """``shards`` contiguous ``[start, stop)`` row ranges covering ``0..n`` (sizes differ by at most one)."""
    edges = np.linspace(0, n, shards + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def add_in_shards(trained: Path, vectors: VectorFile, shards: int, workdir: Path, *, queries: np.ndarray | None,
                  k: int, workers: int | None = None,
                  progress: Callable[[str], None] | None = None) -> tuple[list[Path], tuple[np.ndarray, np.ndarray]]:
    """Add ``vectors`` to copies of the ``trained`` (empty) index, one process per shard; write the shard files.

    Returns the shard files in row order and the exact top-``k`` of ``queries`` over all vectors
    (``None`` queries: empty arrays). Raises :class:`AvretError` for a row that is not finite.
    """
    bounds = shard_bounds(vectors.n, shards)
    workers = max(1, min(workers or os.cpu_count() or 1, len(bounds)))
    paths = [workdir / f"shard-{i:04d}.faiss" for i in range(len(bounds))]
    threads_before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(max(1, threads_before // workers))
    try:
        with ThreadPoolExecutor(max_workers=workers) as pool:  # FAISS releases the GIL while adding
            futures = [pool.submit(_add_shard, str(trained), vectors, a, b, str(p), queries, k)
                       for (a, b), p in zip(bounds, paths, strict=True)]
            parts = []
            for i, fut in enumerate(futures):
                bad, top = fut.result()
                if bad is not None:
                    raise AvretError(f"embeddings: row {bad} contains NaN or inf")
                parts.append(top)
                if progress is not None:
                    progress(f"added shard {i + 1}/{len(bounds)} (rows {bounds[i][0]}..{bounds[i][1] - 1})")
    finally:
        faiss.omp_set_num_threads(threads_before)
    top = merge_topk(parts, k) if queries is not None else (np.zeros((0, k), np.float32), np.zeros((0, k), np.int64))
    return paths, top


def _add_shard(trained: str, vectors: VectorFile, start: int, stop: int, out: str, queries: np.ndarray | None,
               k: int) -> tuple[int | None, tuple[np.ndarray, np.ndarray] | None]:
    """Worker: add rows ``start:stop`` to the trained index, write it to ``out``; exact top-k of ``queries``."""
    x = vectors.open()[start:stop]
    index = faiss.read_index(trained)
    ivf = faiss.try_extract_index_ivf(index)
    step = 65_536
    for s in range(0, x.shape[0], step):
        block = np.ascontiguousarray(x[s : s + step])
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            return start + s + int(np.flatnonzero(~finite)[0]), None
        if ivf is not None:
            index.add_with_ids(block, np.arange(start + s, start + s + block.shape[0], dtype=np.int64))
        else:
            index.add(block)
    faiss.write_index(index, out)
    top = exact_topk(queries, x, k, offset=start) if queries is not None else None
    return None, top


def merge_shards(trained: Path, shard_files: list[Path], ivfdata: Path) -> Any:
    """One index holding every shard, in row order: IVF lists merged on disk into ``ivfdata``, Flat concatenated.

    The shard files are removed once merged.
    """
    index = faiss.read_index(str(trained))
    if faiss.try_extract_index_ivf(index) is not None:
        from faiss.contrib.ondisk import merge_ondisk

        with _stdout_to_stderr():  # FAISS prints "resizing <file>" from C: keep stdout for results
            merge_ondisk(index, [str(p) for p in shard_files], str(ivfdata))
    else:
        for p in shard_files:
            index.merge_from(faiss.read_index(str(p)))
    for p in shard_files:
        p.unlink(missing_ok=True)
    return index


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send what C code writes to file descriptor 1 to descriptor 2 for the duration of the block."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        ctypes.CDLL(None).fflush(None)  # C's buffered stdout, before fd 1 is the real stdout again
        os.dup2(saved, 1)
        os.close(saved)


def open_ondisk(index: Any, ivfdata: Path) -> None:
    """Point ``index``'s on-disk inverted lists (read with ``IO_FLAG_SKIP_IVF_DATA``) at ``ivfdata``, read-only."""
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
    lists.filename = str(ivfdata)
    lists.read_only = True
    lists.do_mmap()


def is_ondisk(index: Any) -> bool:
    """Whether ``index`` is an IVF index whose inverted lists live in an ``.ivfdata`` file."""
    ivf = faiss.try_extract_index_ivf(index)
    return ivf is not None and isinstance(faiss.downcast_InvertedLists(ivf.invlists), faiss.OnDiskInvertedLists)


# ====================================================================== spending the budget on recall
# (issue 21) When neither Flat nor IVF-Flat fits, the compressed candidates that fit are BUILT and
# MEASURED on the held-out sample, each with an optional exact re-rank of a short candidate list, and
# the fastest one that reaches the target recall is kept. Rules and accounting: docs/indexes.md.

#: Bits per dimension of the scalar quantisers tried (faiss ``SQ8``, ``SQ6``, ``SQ4``).
SQ_BITS = (8, 6, 4)
#: A flat (un-clustered) scalar quantiser is only a candidate below this many vectors: above it a
#: query scans too many codes for an interactive search.
FLAT_SQ_BELOW = 200_000
#: Re-rank depths tried: the index returns ``k x k_factor`` candidates, re-scored exactly.
K_FACTORS = (1, 2, 4, 8, 16, 32, 64)
#: A sweep stops once two doublings add less than this much recall.
SWEEP_GAIN = 0.005
#: Single queries timed per (candidate, setting) when comparing latencies.
LATENCY_QUERIES = 100
#: Candidates above the budget built to find the smallest budget that reaches the target.
MAX_ABOVE_BUDGET = 3


@dataclass(frozen=True)
class Candidate:
    """One index the auto factory may build: its factory string, family and RAM estimate (bytes)."""

    factory: str
    family: str  # flat | ivf-flat | ivf-sq | sq | ivf-pq
    nbytes: int

    @property
    def exact(self) -> bool:
        return self.family in ("flat", "ivf-flat")


def sq_bytes(n: int, d: int, bits: int, nlist: int = 0) -> int:
    """RAM of ``SQ{bits}`` (``nlist`` 0) or ``IVF{nlist},SQ{bits}``: codes (+ ids, centroids, lists), ranges."""
    code = math.ceil(d * bits / 8)
    if nlist == 0:
        return n * code + 8 * d
    return n * (code + 8) + 4 * nlist * d + LIST_OVERHEAD * nlist + 8 * d


def pq_bytes(n: int, d: int, m: int, nlist: int) -> int:
    """RAM of ``IVF{nlist},PQ{m}`` (no rotation): codes + ids + centroids + codebooks + lists."""
    return n * (m + 8) + 4 * nlist * d + 4 * 256 * d + LIST_OVERHEAD * nlist


def candidates(n: int, d: int) -> list[Candidate]:
    """Every index the auto factory considers for ``n`` x ``d`` vectors, smallest first (budget not applied)."""
    nlist = ivf_nlist(n)
    out = [Candidate("Flat", "flat", estimate_bytes("flat", n, d)),
           Candidate(f"IVF{nlist},Flat", "ivf-flat", estimate_bytes("ivf-flat", n, d, nlist))]
    for bits in SQ_BITS:
        out.append(Candidate(f"IVF{nlist},SQ{bits}", "ivf-sq", sq_bytes(n, d, bits, nlist)))
        if n < FLAT_SQ_BELOW:
            out.append(Candidate(f"SQ{bits}", "sq", sq_bytes(n, d, bits)))
    for m in PQ_CODE_BYTES:
        if m > max(4, d // 4):
            continue
        out.append(Candidate(f"IVF{nlist},PQ{m}np", "ivf-pq", pq_bytes(n, d, m, nlist)))
    return sorted(out, key=lambda c: (c.nbytes, c.factory))


def shortlist(n: int, d: int, budget: int | None) -> list[Candidate]:
    """The compressed candidates built and measured under ``budget`` (largest of each family first).

    The largest IVF-SQ that fits, the largest flat SQ that fits (small galleries only), and the two
    largest IVF-PQ codes that fit (the second searches faster, and with re-ranking may reach the
    target too). Empty when nothing compressed fits.
    """
    fit = [c for c in candidates(n, d) if not c.exact and (budget is None or c.nbytes <= budget)]
    fit.sort(key=lambda c: -c.nbytes)
    chosen: list[Candidate] = []
    for family, count in (("ivf-sq", 1), ("sq", 1), ("ivf-pq", 2)):
        chosen += [c for c in fit if c.family == family][:count]
    return sorted(chosen, key=lambda c: -c.nbytes)


def rerank(queries: np.ndarray, rows: np.ndarray, vectors: np.ndarray, k: int,
           chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` of each query among its candidate ``rows`` (``-1``: none), re-scored from ``vectors``.

    ``vectors`` may be memory-mapped (``embeddings.npy``): each chunk of queries reads its distinct
    candidate rows once, in increasing order. Equal scores keep the lower row first, as a flat index
    does. Returns ``(scores, rows)``; fewer than ``k`` candidates leave ``-inf`` / ``-1``.
    """
    nq, depth = rows.shape
    out_s = np.full((nq, k), -np.inf, dtype=np.float32)
    out_i = np.full((nq, k), -1, dtype=np.int64)
    for s in range(0, nq, chunk):
        r = rows[s : s + chunk]
        q = np.ascontiguousarray(queries[s : s + chunk], dtype=np.float32)
        valid = r >= 0
        uniq = np.unique(r[valid])
        if uniq.size == 0:
            continue
        emb = np.asarray(vectors[uniq], dtype=np.float32)
        pos = np.searchsorted(uniq, np.where(valid, r, uniq[0]))
        scores = np.einsum("qd,qkd->qk", q, emb[pos]).astype(np.float32)
        scores[~valid] = -np.inf
        key_rows = np.where(valid, r, np.iinfo(np.int64).max)
        order = np.lexsort((key_rows, -scores), axis=-1)[:, :k]  # score desc, then row asc
        kk = order.shape[1]
        out_s[s : s + chunk, :kk] = np.take_along_axis(scores, order, axis=1)
        out_i[s : s + chunk, :kk] = np.where(np.take_along_axis(valid, order, axis=1),
                                             np.take_along_axis(r, order, axis=1), -1)
    return out_s, out_i


def search_reranked(index: Any, queries: np.ndarray, k: int, k_factor: int, vectors: np.ndarray | None,
                    params: Any = None) -> tuple[np.ndarray, np.ndarray]:
    """``index``'s top ``k x k_factor`` re-ranked exactly from ``vectors`` to the top ``k`` (``k_factor`` 1: plain)."""
    depth = min(int(index.ntotal), k * k_factor)
    if k_factor <= 1 or vectors is None or depth <= k:
        return index.search(queries, k, params=params)
    _, rows = index.search(queries, depth, params=params)
    return rerank(queries, rows, vectors, k)


def _probes(index: Any) -> list[int | None]:
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return [None]
    out, p = [], 1
    while p < ivf.nlist:
        out.append(p)
        p *= 2
    return out + [int(ivf.nlist)]


def _plateaued(history: list[float], target: float) -> bool:
    """Target reached, or the last two doublings added less than :data:`SWEEP_GAIN`."""
    return history[-1] >= target or (len(history) >= 3 and history[-1] - history[-3] < SWEEP_GAIN)


def sweep(index: Any, queries: np.ndarray, exact_ids: np.ndarray, vectors: np.ndarray,
          target: float) -> list[list[float]]:
    """Measured recall@k over nprobe (doubling) x re-rank depth :data:`K_FACTORS`: ``[[nprobe, k_factor, recall]]``.

    One search per nprobe returns the deepest candidate list; each ``k_factor`` re-ranks a prefix of
    it (what a search with that depth returns, since the list is ordered by approximate score). nprobe
    stops rising once every depth has reached ``target`` or plateaued (two doublings add <
    :data:`SWEEP_GAIN`). ``nprobe`` is None for an index without lists.
    """
    k = exact_ids.shape[1]
    ivf = faiss.try_extract_index_ivf(index)
    depth = min(int(index.ntotal), k * K_FACTORS[-1])
    factors = [f for f in K_FACTORS if f == 1 or k * f <= depth]
    hist: dict[int, list[float]] = {f: [] for f in factors}
    curve: list[list[float]] = []
    q = np.ascontiguousarray(queries, dtype=np.float32)
    for probe in _probes(index):
        if ivf is not None:
            ivf.nprobe = probe
        _, rows = index.search(q, depth)
        for f in factors:
            found = rows[:, :k] if f == 1 else rerank(q, rows[:, : k * f], vectors, k)[1]
            r = recall_at_k(found, exact_ids)
            hist[f].append(r)
            curve.append([probe, f, round(r, 6)])
        if all(_plateaued(h, target) for h in hist.values()):
            break
    return curve


def batch1_ms(index: Any, queries: np.ndarray, k: int, nprobe: int | None, k_factor: int,
              vectors: np.ndarray | None) -> float:
    """Median milliseconds of one query at a time (the first :data:`LATENCY_QUERIES` of ``queries``)."""
    import time

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None and nprobe is not None:
        ivf.nprobe = nprobe
    times = []
    for row in np.ascontiguousarray(queries[:LATENCY_QUERIES], dtype=np.float32):
        t0 = time.perf_counter()
        search_reranked(index, row[None, :], k, k_factor, vectors)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1000)


def settings(curve: list[list[float]], target: float) -> list[tuple[int | None, int, float]]:
    """For each re-rank depth the smallest nprobe reaching ``target``: ``[(nprobe, k_factor, recall)]``.

    When no depth reaches it: the best measured setting (the smallest nprobe and depth within
    :data:`PLATEAU_TOLERANCE` of the best recall), alone.
    """
    out = []
    for f in sorted({int(c[1]) for c in curve}):
        hit = next(((p, r) for p, ff, r in curve if ff == f and r >= target), None)
        if hit is not None:
            out.append((None if hit[0] is None else int(hit[0]), f, float(hit[1])))
    if out:
        return out
    best = max(r for _, _, r in curve)
    p, f, r = next((p, f, r) for p, f, r in sorted(curve, key=lambda c: (c[1], c[0] or 0))
                   if r >= best - PLATEAU_TOLERANCE)
    return [(None if p is None else int(p), int(f), float(r))]


def train_index(factory: str, x: np.ndarray, t_rows: np.ndarray, d: int) -> Any:
    """A fresh ``factory`` index (inner product, auto options) trained on rows ``t_rows`` of ``x``."""
    index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
    prepare(index)
    if not index.is_trained:
        index.train(np.ascontiguousarray(x[t_rows], dtype=np.float32))
    return index


def add_all(index: Any, x: np.ndarray, step: int = 65_536) -> None:
    """Add every row of ``x`` (memory-mapped is fine), a block at a time."""
    for s in range(0, x.shape[0], step):
        index.add(np.ascontiguousarray(x[s : s + step], dtype=np.float32))


def evaluate(cand: Candidate, x: np.ndarray, q_rows: np.ndarray, t_rows: np.ndarray, exact_ids: np.ndarray,
             target: float, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build ``cand`` on ``x`` (trained on ``t_rows``), sweep it on queries ``x[q_rows]``, time its settings.

    Returns the manifest record ``{factory, family, estimated_bytes, build_s, curve, nprobe,
    k_factor, recall, target_met, batch1_ms, settings}``; the chosen setting is the fastest measured
    one that reaches ``target`` (else the best recall).
    """
    import time

    n, d = x.shape
    if progress is not None:
        progress(f"trying {cand.factory} ({format_size(cand.nbytes)}): train on {len(t_rows)}, add {n}")
    t0 = time.perf_counter()
    index = train_index(cand.factory, x, t_rows, d)
    add_all(index, x)
    build_s = time.perf_counter() - t0
    queries = np.ascontiguousarray(x[q_rows], dtype=np.float32)
    curve = sweep(index, queries, exact_ids, x, target)
    k = exact_ids.shape[1]
    timed = [(p, f, r, batch1_ms(index, queries, k, p, f, x)) for p, f, r in settings(curve, target)]
    met = [t for t in timed if t[2] >= target]
    p, f, r, ms = min(met, key=lambda t: t[3]) if met else max(timed, key=lambda t: t[2])
    return {"factory": cand.factory, "family": cand.family, "estimated_bytes": int(cand.nbytes),
            "build_s": round(build_s, 3), "nprobe": p, "k_factor": int(f), "recall": round(r, 6),
            "target_met": bool(r >= target), "batch1_ms": round(ms, 4),
            "settings": [[pp, ff, round(rr, 6), round(tt, 4)] for pp, ff, rr, tt in timed],
            "curve": curve, "_index": index}


@dataclass
class Selection:
    """What :func:`select` chose: the factory, its search setting and every candidate measured."""

    factory: str
    nprobe: int | None
    k_factor: int
    recall: float
    target_met: bool
    candidates: list[dict[str, Any]]
    smallest_budget: dict[str, Any] | None
    #: The chosen index, built on the whole gallery (trained on the seeded sample), ready to save.
    index: Any = None


def select(x: np.ndarray, budget: int | None, target: float, q_rows: np.ndarray, exact_ids: np.ndarray,
           seed: int = 0, progress: Callable[[str], None] | None = None) -> Selection:
    """Build and measure the :func:`shortlist` under ``budget``; keep the fastest that reaches ``target``.

    When none reaches it, ``smallest_budget`` records the smallest budget that does, measured by
    :func:`smallest_budget` (bytes, factory, measured recall, how found).
    """
    n, d = x.shape
    results = []
    for cand in shortlist(n, d, budget):
        _, t_rows = split_rows(n, len(q_rows), training_rows(faiss.index_factory(d, cand.factory), n), seed)
        results.append(evaluate(cand, x, q_rows, t_rows, exact_ids, target, progress))
    met = [r for r in results if r["target_met"]]
    best = min(met, key=lambda r: r["batch1_ms"]) if met else max(results, key=lambda r: r["recall"])
    chosen = best["_index"]
    for r in results:  # one index in memory at a time beyond the chosen one
        r.pop("_index", None)
    smallest = None if met else smallest_budget(x, budget, target, q_rows, exact_ids, seed, progress, results)
    return Selection(factory=best["factory"], nprobe=best["nprobe"], k_factor=best["k_factor"],
                     recall=best["recall"], target_met=best["target_met"], candidates=results,
                     smallest_budget=smallest, index=chosen)


def tuning_queries(x: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The seeded gallery rows every candidate is measured on and their exact top-``TUNE_K`` ids."""
    rows, _ = split_rows(len(x), TUNE_SAMPLE, 0, seed)
    return rows, exact_topk(np.ascontiguousarray(x[rows]), x, TUNE_K)[1]


def smallest_budget(x: np.ndarray, budget: int | None, target: float, q_rows: np.ndarray, exact_ids: np.ndarray,
                    seed: int = 0, progress: Callable[[str], None] | None = None,
                    measured: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The smallest budget whose index reaches ``target``, measured: the compressed candidates above
    ``budget`` built smallest first (at most :data:`MAX_ABOVE_BUDGET`), then the exact IVF-Flat, whose
    recall at full nprobe is 1 by construction. The recall given is the best the named index measured
    (not the fastest setting's, which depends on timing). Each measurement is appended to ``measured``."""
    n, d = x.shape
    above = [c for c in candidates(n, d) if budget is not None and c.nbytes > budget and not c.exact]
    for cand in above[:MAX_ABOVE_BUDGET]:
        _, t_rows = split_rows(n, len(q_rows), training_rows(faiss.index_factory(d, cand.factory), n), seed)
        res = evaluate(cand, x, q_rows, t_rows, exact_ids, target, progress)
        res.pop("_index")
        res["above_budget"] = True
        if measured is not None:
            measured.append(res)
        if res["target_met"]:  # its best measured recall: the recall of the fastest setting hangs on timing
            return {"bytes": res["estimated_bytes"], "factory": res["factory"],
                    "recall": max(r for _, _, r in res["curve"]),
                    "how": "measured: the candidates above the budget built smallest first"}
    exact = next(c for c in candidates(n, d) if c.family == "ivf-flat")
    return {"bytes": exact.nbytes, "factory": exact.factory, "recall": 1.0,
            "how": f"the exact {exact.factory} (recall 1 at full nprobe); the "
                   f"{min(len(above), MAX_ABOVE_BUDGET)} smaller candidates above the budget built missed the target"}


def describe_smallest(small: dict[str, Any]) -> str:
    """A :func:`smallest_budget` result in words: size, bytes, factory, measured recall, how found."""
    return (f"{format_size(small['bytes'])} ({small['bytes']} bytes: "
            f"{small['factory']}, recall {small['recall']:.3f}; {small['how']})")


def refusal(n: int, d: int, budget: int | None, target: float, sel: Selection) -> str:
    """The one-line refusal when no candidate within ``budget`` reaches ``target`` (see :func:`select`)."""
    best = next(c for c in sel.candidates if c["factory"] == sel.factory)
    line = (f"--target-recall {target}: no index within --max-memory {format_size(budget or 0)} reaches it for "
            f"{n} x {d} vectors (best measured: {best['factory']}, recall@{TUNE_K} {best['recall']:.3f})")
    small = sel.smallest_budget
    if small is not None:
        line += "; the smallest budget that does is " + describe_smallest(small)
    return line + "; raise --max-memory, lower --target-recall or pass --best-effort"
