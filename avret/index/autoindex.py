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

Rules, first that applies:

1. ``n < FLAT_BELOW`` (10 000): ``Flat`` (exact; brute force over 10k vectors takes well under a
   millisecond a query). Too few vectors to train a PQ (FAISS wants 39 x 256 = 9 984), so a budget
   below Flat's size is an error.
2. ``IVF{nlist},Flat`` when it fits: the exact vectors, grouped in ``nlist`` lists of which
   ``nprobe`` are scanned — recall is limited only by ``nprobe``, tuned below; about 0.8% more
   memory than Flat at d=128 (the 8-byte ids) for a search ``nlist/nprobe`` times cheaper.
3. ``Flat`` when it fits (the budget lies between Flat and IVF-Flat).
4. ``OPQ{m}_{D},IVF{nlist},PQ{m}np`` with the largest ``m`` of ``PQ_CODE_BYTES`` (64, 32, 16, 8,
   4; ``m <= max(4, d / 4)``) that fits: more code bytes, better recall; OPQ rotates the space so the ``m``
   sub-vectors carry balanced variance (``D`` = ``d`` rounded up to a multiple of ``m``). ``np``:
   no polysemous training (a slow annealing of code ids only Hamming pre-filtering uses, which
   avret does not), and OPQ runs ``OPQ_NITER`` (10) alternations instead of FAISS's 50 — both
   measured here to dominate build time (10k x 64 vectors: 49 s with polysemous training, 3.6 s
   without; OPQ's 50 alternations another 43 s). ``m <= max(4, d / 4)`` (sub-vectors of at least 4
   dimensions once d >= 16): 2-dimensional sub-vectors (PQ64 on d=128) took 234 s to train on 12k vectors,
   while OPQ32 + IVF1024 + PQ32 trains on 64k x 128 in 31 s (2 cores).
5. Nothing fits: an error naming the smallest choice and its size.

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
    smallest = None
    for m in PQ_CODE_BYTES:
        if m > max(4, d // 4):  # sub-vectors of >= 4 dimensions (see the module docstring)
            continue
        est = estimate_bytes("ivf-pq", n, d, nlist, m)
        factory = f"OPQ{m}_{m * math.ceil(d / m)},IVF{nlist},PQ{m}np"
        smallest = (factory, est)
        if fits(est):
            return (factory, f"Flat ({format_size(flat)}) and IVF-Flat ({format_size(ivf)}) exceed the {budget}; "
                    f"the largest PQ code that fits is {m} bytes ({format_size(est)})", est)
    name, est = smallest if smallest is not None else ("Flat", flat)
    raise AvretError(f"--max-memory {format_size(max_memory or 0)} is too small for {n} x {d} vectors: the smallest "
                     f"index avret chooses ({name}) takes {format_size(est)}; raise --max-memory")


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
    if "PQ" in type(faiss.downcast_index(ivf if ivf is not None else index)).__name__:
        want = max(want, PQ_MIN_TRAIN)
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
