"""AVIndex: a FAISS index over one gallery modality, saved as a self-describing directory.

Directory layout (``format_version`` 1)::

    <dir>/manifest.json   IndexManifest: format_version, modality, dim, count, metric, factory,
                          model_fingerprint, model_path, dataset, created_at, versions{...}
    <dir>/metadata.json   {"clip_ids": [str, ...], "labels": [int, ...], "class_names": [str, ...]}
                          row i of the index is clip_ids[i] with label labels[i]
                          (-1 = unlabelled); class_names[label] is its class name
    <dir>/index.faiss     faiss.write_index of the CPU version of the index
    <dir>/embeddings.npy  only for indexes that do not keep exact vectors (IVF, PQ, HNSW, ...): the
                          (count, dim) float32 embeddings in row order, so that a clip's own
                          embedding can be a query (:meth:`AVIndex.embeddings_of`); a flat index
                          reconstructs them exactly from ``index.faiss`` instead
    <dir>/index.ivfdata   only for sharded IVF builds (manifest field ``ivfdata``): the inverted
                          lists, merged on disk (faiss.contrib.ondisk) and memory-mapped read-only
                          when loaded; ``index.faiss`` then holds the centroids and the lists' table

The metadata is JSON (not npy) so it is readable by any tool and needs no pickle; 1M ids load in
about a second. Writing is atomic (:func:`avret.utils.atomic.atomic_dir`): a failed save leaves
no directory and an existing index is only replaced by a complete new one. Loading checks every
file against the manifest and refuses a mismatch with one line (:class:`avret.errors.IndexError_`).

Scores are inner products. The towers output L2-normalised vectors, so they are cosine
similarities; avret does not re-normalise, so the caller passes normalised vectors.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct
import tempfile
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from avret.errors import AvretError, IndexError_, QueryError
from avret.index import autoindex, torch_flat
from avret.index.backend import (
    GPU_MAX_K,
    Placed,
    choose_backend,
    faiss_major,
    faiss_message,
    to_cpu,
    to_device,
)
from avret.index.manifest import (
    EMBEDDINGS_FILE,
    INDEX_FILE,
    IVFDATA_FILE,
    MANIFEST_FILE,
    METADATA_FILE,
    MODALITIES,
    IndexManifest,
)
from avret.utils.atomic import atomic_dir, recover_output, write_json

#: Queries are searched in chunks of this many rows, bounding temporary memory (GPU especially).
SEARCH_BATCH = 16384


@dataclass
class SearchResult:
    """Top-k neighbours of each query, best first.

    Approximate indexes may find fewer than k neighbours; missing slots have ``rows == -1``,
    ``clip_ids == ""``, ``labels == -1`` and ``scores == -inf``.
    """

    scores: np.ndarray  # (n, k) float32, descending
    rows: np.ndarray  # (n, k) int64 positions in the gallery
    clip_ids: np.ndarray  # (n, k) str
    labels: np.ndarray  # (n, k) int64

    def __len__(self) -> int:
        return int(self.rows.shape[0])

    def to_records(self, class_names: list[str] | None = None) -> list[list[dict[str, Any]]]:
        """JSON-able neighbours: per query, a list of ``{rank, clip_id, score, label, class}``.

        ``rank`` starts at 1; ``class`` is ``class_names[label]`` (None when unlabelled or no names
        are given). Missing slots of approximate indexes are left out.
        """
        names = list(class_names or [])
        out: list[list[dict[str, Any]]] = []
        for qi in range(self.rows.shape[0]):
            recs: list[dict[str, Any]] = []
            for j in range(self.rows.shape[1]):
                if int(self.rows[qi, j]) < 0:
                    continue
                label = int(self.labels[qi, j])
                recs.append(
                    {
                        "rank": len(recs) + 1,
                        "clip_id": str(self.clip_ids[qi, j]),
                        "score": float(self.scores[qi, j]),
                        "label": label,
                        "class": names[label] if 0 <= label < len(names) else None,
                    }
                )
            out.append(recs)
        return out


# FAISS's index header: fourcc, d (int32), ntotal (int64), two int64 fields, is_trained (bool),
# metric_type (int32). A flat index then stores its codes as a length prefix (uint64, in floats) and
# ntotal * d float32 values. An IVF index (fourcc "Iw..") then stores nlist and nprobe (uint64) and its
# coarse quantizer, itself an index with this header (a flat one for every avret factory).
_HEADER = struct.Struct("<4siqqq?i")
_FLAT_FOURCCS = (b"IxFI", b"IxF2")
_IVF_PREFIX = b"Iw"
_HNSW_PREFIX = b"IHN"
#: The most IVF lists a file may claim (FAISS's own guidance tops out near 2^18 for a billion vectors).
_MAX_NLIST = 1 << 22


def _min_bytes_per_vector(fourcc: bytes, dim: int) -> int:
    """A lower bound of the bytes each stored vector takes in an index of type ``fourcc`` (0: unknown).

    IVF lists store an 8-byte id and at least one code byte per vector (IVF-Flat: ``4 x dim`` code
    bytes); HNSW stores a 4-byte level per vector and, over a flat storage, ``4 x dim`` float bytes.
    """
    if fourcc == b"IwFl":
        return 4 * dim + 8
    if fourcc.startswith(_IVF_PREFIX):
        return 8 + 1
    if fourcc == b"IHNf":
        return 4 * dim + 4
    if fourcc.startswith(_HNSW_PREFIX):
        return 4 + 1
    return 0


def _check_ivf_quantizer(ipath: Path, head: bytes, size: int, dim: int, count: int) -> int:
    """The bytes an IVF file's header, ``nlist``/``nprobe`` and flat quantizer take (checked against its size)."""
    at = _HEADER.size + 16
    if len(head) < at + _HEADER.size + 8:
        raise IndexError_(f"{ipath}: not a readable FAISS index ({size} bytes, too short for an IVF header)")
    nlist = struct.unpack_from("<Q", head, _HEADER.size)[0]
    q_fourcc, q_d, q_ntotal, _, _, _, _ = _HEADER.unpack_from(head, at)
    if not 1 <= nlist <= _MAX_NLIST or q_ntotal != nlist or q_d != dim:
        raise IndexError_(f"{ipath}: IVF header claims {nlist} lists and a quantizer of {q_ntotal} x {q_d}; "
                          f"expected 1..{_MAX_NLIST} lists and a {dim}-d quantizer with one centroid per list")
    if q_fourcc not in _FLAT_FOURCCS:
        return at + _HEADER.size
    q_codes = struct.unpack_from("<Q", head, at + _HEADER.size)[0]
    if q_codes != nlist * dim:
        raise IndexError_(f"{ipath}: IVF quantizer claims {q_codes} codes; expected {nlist} x {dim}")
    return at + _HEADER.size + 8 + 4 * nlist * dim


def check_index_file(ipath: Path, dim: int, count: int, ivfdata: Path | None = None) -> None:
    """Check ``index.faiss``'s header against the manifest before FAISS reads (and allocates) anything.

    FAISS trusts the sizes in the file: a small forged file whose header claims 2^29 vectors makes
    it allocate gigabytes before failing. The header's dimension and vector count must equal the
    manifest's; for the exact (flat) indexes the stored code length and the file size must be
    exactly what ``count x dim`` float32 take. For IVF indexes the number of lists and the flat
    coarse quantizer's size are checked, and for IVF and HNSW indexes the file must be at least as
    large as ``count`` stored vectors take (ids, levels, codes), so a short file cannot claim many
    vectors. Other factories are checked on the header only.

    With on-disk inverted lists (``ivfdata``, the ``index.ivfdata`` beside it) the codes and ids
    live in that file instead: it must hold at least ``count`` stored vectors and at least the
    ``totsize`` bytes ``index.faiss`` says it maps (the last 8 bytes of the file, after the lists'
    table), so a short or forged file cannot make the search read past its end.
    """
    size = ipath.stat().st_size
    with open(ipath, "rb") as fh:
        head = fh.read(2 * _HEADER.size + 24)
    if len(head) < _HEADER.size:
        raise IndexError_(f"{ipath}: not a readable FAISS index ({size} bytes, too short for its header)")
    fourcc, d, ntotal, _, _, _, _ = _HEADER.unpack_from(head)
    mpath = ipath.parent / MANIFEST_FILE
    if d != dim:
        raise IndexError_(f"{mpath}: field 'dim' is {dim} but {INDEX_FILE} has dimension {d} (its header)")
    if ntotal != count:
        raise IndexError_(f"{mpath}: field 'count' is {count} but {INDEX_FILE} holds {ntotal} vectors "
                          "(its header)")
    if fourcc in _FLAT_FOURCCS:
        expected = _HEADER.size + 8 + 4 * count * dim
        n_codes = struct.unpack_from("<Q", head, _HEADER.size)[0] if len(head) >= _HEADER.size + 8 else -1
        if n_codes != count * dim or size != expected:
            raise IndexError_(f"{ipath}: a flat index of {count} x {dim} floats takes {expected} bytes with "
                              f"{count * dim} codes; this file has {size} bytes and claims {n_codes} codes")
        return
    fixed = _check_ivf_quantizer(ipath, head, size, dim, count) if fourcc.startswith(_IVF_PREFIX) else _HEADER.size
    if ivfdata is not None:
        _check_ivfdata(ipath, ivfdata, fourcc, dim, count)
        return
    least = fixed + count * _min_bytes_per_vector(fourcc, dim)
    if size < least:
        raise IndexError_(f"{ipath}: a {fourcc.decode('latin-1')!r} index of {count} x {dim} vectors takes at least "
                          f"{least} bytes; this file has {size} (truncated or forged)")
    if fourcc.startswith(_HNSW_PREFIX):
        _check_hnsw_tables(ipath, size, count)
    elif fourcc.startswith(_IVF_PREFIX):
        _check_ivf_lists(ipath, size, fixed, count)


def _check_hnsw_tables(ipath: Path, size: int, count: int) -> None:
    """The HNSW graph's tables (level probabilities, neighbours per level, levels, offsets, neighbours)
    must have plausible lengths that fit in the file: FAISS allocates each before reading it."""
    tables = (("assign_probas", 8, 0, 64), ("cum_nneighbor_per_level", 4, 0, 65), ("levels", 4, count, count),
              ("offsets", 8, count + 1, count + 1), ("neighbors", 4, 0, None))
    with open(ipath, "rb") as fh:
        pos = _HEADER.size
        fh.seek(pos)
        for name, width, low, high in tables:
            raw = fh.read(8)
            n = struct.unpack("<Q", raw)[0] if len(raw) == 8 else -1
            if n < low or (high is not None and n > high) or pos + 8 + n * width > size:
                want = f"{low}" if low == high else f"at most {high}" if high is not None else "what the file holds"
                raise IndexError_(f"{ipath}: the HNSW table '{name}' claims {n} entries; expected {want} "
                                  f"(a forged or damaged index)")
            pos += 8 + n * width
            fh.seek(pos)


_ILAR = b"ilar"


def _check_ivf_lists(ipath: Path, size: int, start: int, count: int) -> None:
    """An IVF file's inverted lists (``ilar``): as many lists as its header says, list sizes summing to
    the vectors it holds, and the file holding their codes and ids -- FAISS allocates every list before
    reading it. A layout this check does not know is left to the other checks."""
    import mmap

    with open(ipath, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        nlist = struct.unpack_from("<Q", mm, _HEADER.size)[0]
        at = mm.find(_ILAR, start)
        while at != -1 and at + 28 <= size:
            n_lists, code_size = struct.unpack_from("<QQ", mm, at + 4)
            kind = mm[at + 20:at + 24]
            if n_lists == nlist and kind in (b"full", b"sprs") and 0 < code_size < (1 << 20):
                break
            at = mm.find(_ILAR, at + 1)
        else:
            return
        pos = at + 24
        n = struct.unpack_from("<Q", mm, pos)[0] if pos + 8 <= size else -1
        if kind == b"full" and n != nlist or kind == b"sprs" and (n % 2 or n > 2 * nlist) or pos + 8 + 8 * n > size:
            raise IndexError_(f"{ipath}: the IVF list table claims {n} entries for {nlist} lists "
                              "(a forged or damaged index)")
        values = struct.unpack_from(f"<{n}Q", mm, pos + 8) if n else ()
        sizes = values if kind == b"full" else values[1::2]
        total = sum(sizes)
        data = size - (pos + 8 + 8 * n)
        if total != count or total * (code_size + 8) > data:
            raise IndexError_(f"{ipath}: the IVF lists claim {total} vectors of {code_size}-byte codes; the index "
                              f"holds {count} and the file {data} bytes of lists (a forged or damaged index)")


def _check_ivfdata(ipath: Path, ivfdata: Path, fourcc: bytes, dim: int, count: int) -> None:
    """``index.ivfdata`` must hold ``count`` stored vectors and the ``totsize`` bytes ``index.faiss`` maps."""
    size = ivfdata.stat().st_size
    least = count * (_min_bytes_per_vector(fourcc, dim) or 9)
    with open(ipath, "rb") as fh:
        fh.seek(-8, os.SEEK_END)
        totsize = struct.unpack("<Q", fh.read(8))[0]
    if size < least or totsize > size:
        raise IndexError_(f"{ivfdata}: the on-disk lists of {count} x {dim} vectors take at least {least} bytes and "
                          f"{INDEX_FILE} maps {totsize}; this file has {size} (truncated or forged)")


class AVIndex:
    """A searchable gallery of one modality's embeddings, with ids, labels and a manifest.

    Create with :meth:`build` (from embeddings) or :meth:`load` (from a directory); the
    constructor only assembles already-validated parts.
    """

    def __init__(
        self,
        index: Any,
        manifest: IndexManifest,
        clip_ids: np.ndarray,
        labels: np.ndarray,
        class_names: list[str],
        *,
        path: Path | None = None,
        device: str = "auto",
        embeddings: np.ndarray | None = None,
        ivfdata: Path | None = None,
        precision: str = "fp32",
        _placed: Placed | None = None,
    ) -> None:
        # ``_placed``: build() already put the index on its device; otherwise ``index`` is on the CPU.
        if _placed is None and autoindex.is_ondisk(index):  # lists on disk: the GPU would need them all in memory
            if device == "cuda" or device.startswith("torch-"):
                raise AvretError("an index with on-disk inverted lists (index.ivfdata) is searched on the CPU; "
                                 "use device 'cpu' or 'auto'")
            _placed = Placed(index, "cpu")
        if precision not in torch_flat.PRECISIONS:
            raise AvretError(f"precision {precision!r}: expected one of {list(torch_flat.PRECISIONS)}")
        #: Who searches ("faiss" or "torch") and in which precision the gallery is scanned.
        self.backend, self.precision = "faiss", precision
        self._torch: torch_flat.TorchFlat | None = None
        if _placed is None:
            plan = choose_backend(device, _is_flat(index))
            if plan.name == "torch":
                self.backend = "torch"
                _placed = Placed(index, "cpu")
                self._torch = torch_flat.TorchFlat(_flat_vectors(index), plan.device, precision)
            else:
                _placed = to_device(index, plan.device, requested=device)
        if self._torch is None and precision != "fp32":
            raise AvretError(f"precision {precision!r} needs the torch backend (a Flat index with device "
                             "'torch-cpu', 'torch-cuda', or 'cuda'/'auto' without faiss-gpu); use precision 'fp32'")
        self._index, self._gpu_resources, self._faiss_device = _placed.index, _placed.resources, _placed.device
        #: Where searches run: "cpu" or "cuda".
        self.device = self._torch.device if self._torch is not None else _placed.device
        self.manifest = manifest
        self.clip_ids = clip_ids
        self.labels = labels
        self.class_names = list(class_names)
        self.path = path
        # Exact embeddings in row order, kept only for indexes that cannot reconstruct them exactly.
        self._embeddings = embeddings
        # The on-disk inverted lists the index memory-maps (sharded IVF builds), copied by save().
        self._ivfdata = ivfdata
        self._rows: dict[str, int] | None = None
        self._tuning_lock = threading.Lock()

    # ------------------------------------------------------------------ properties
    @property
    def count(self) -> int:
        """Number of gallery items."""
        return int(self._index.ntotal)

    @property
    def dim(self) -> int:
        """Embedding width."""
        return int(self._index.d)

    @property
    def modality(self) -> str:
        """Gallery modality (``"audio"`` or ``"visual"``)."""
        return self.manifest.modality

    @property
    def faiss_index(self) -> Any:
        """The underlying FAISS index (on the GPU when :attr:`device` is ``"cuda"``)."""
        return self._index

    def _where(self) -> str:
        return f"index {self.path}" if self.path is not None else "index (unsaved)"

    def __repr__(self) -> str:
        m = self.manifest
        return (
            f"AVIndex(modality={m.modality!r}, count={self.count}, dim={self.dim}, factory={m.factory!r}, "
            f"backend={self.backend!r}, device={self.device!r}, path={str(self.path) if self.path else None!r})"
        )

    # ------------------------------------------------------------------ build
    @classmethod
    def build(
        cls,
        embeddings: np.ndarray,
        clip_ids: Any,
        labels: Any,
        class_names: list[str] | None,
        *,
        modality: str,
        model_fingerprint: str,
        model_path: str | os.PathLike[str] | None = None,
        dataset: str | None = None,
        factory: str = "Flat",
        device: str = "auto",
        max_memory: int | str | None = None,
        target_recall: float | None = None,
        shards: int | None = 1,
        workers: int | None = None,
        seed: int = 0,
        best_effort: bool = False,
        workdir: str | os.PathLike[str] | None = None,
        progress: Callable[[str], None] | None = None,
        precision: str = "fp32",
    ) -> AVIndex:
        """Index ``embeddings`` (n, d) of the gallery ``modality``.

        ``factory`` is a FAISS factory string with inner-product metric; the default ``"Flat"`` is
        exact search. Indexes needing training (IVF, PQ) are trained on ``embeddings`` and need
        enough of them (an IVF needs at least nlist vectors). On a GPU (``device``) training and
        adding run there; :meth:`save` always writes the CPU version.

        ``factory="auto"`` chooses the index for ``n``, ``d`` and ``max_memory`` (bytes or a size
        such as ``"4GB"``), trains it on a seeded sample and tunes nprobe to ``target_recall``
        (:mod:`avret.index.autoindex`; recorded in the manifest). ``shards`` > 1 (None: one per
        million rows) adds the vectors in that many slices in parallel processes (``workers``) and
        merges them into one index — IVF lists on disk in ``index.ivfdata`` — working in a fresh
        directory under ``workdir`` (default: the system's temporary directory; put it on the disk
        the index is saved to). ``embeddings`` may be a memory-mapped ``.npy`` (``np.load(...,
        mmap_mode="r")``), which the workers then read without a copy.

        When ``max_memory`` rules out Flat and IVF-Flat, the compressed candidates that fit are built
        and measured (:func:`avret.index.autoindex.select`), each with an optional exact re-rank of a
        short candidate list from ``embeddings.npy``; when none reaches ``target_recall`` the build is
        refused with the smallest budget that would (:class:`AvretError`) unless ``best_effort``.
        """
        if modality not in MODALITIES:
            raise AvretError(f"modality must be one of {list(MODALITIES)}, got {modality!r}")
        if not isinstance(model_fingerprint, str) or not model_fingerprint:
            raise AvretError(f"model_fingerprint must be a non-empty string, got {model_fingerprint!r}")
        if not isinstance(factory, str) or not factory.strip():
            raise AvretError(f"factory must be a non-empty FAISS factory string, got {factory!r}")
        x = _as_matrix(embeddings, "embeddings")
        n, d = x.shape
        if n == 0:
            raise AvretError("embeddings: cannot build an index of 0 vectors")
        ids = _as_ids(clip_ids, n, "clip_ids")
        labs = _as_labels(labels, n, "labels")
        names = [str(c) for c in (class_names or [])]
        if names and labs.size and int(labs.max()) >= len(names):
            raise AvretError(f"labels: label {int(labs.max())} out of range for {len(names)} class_names")

        requested = device
        choose_backend(device, True)  # an unknown device is refused before any work
        started = time.perf_counter()
        auto = None
        if factory != "auto" and (max_memory is not None or target_recall is not None):
            raise AvretError("max_memory and target_recall apply to factory 'auto' only")
        target = autoindex.DEFAULT_TARGET_RECALL if target_recall is None else target_recall
        if isinstance(target, bool) or not isinstance(target, (int, float)) or not 0 < target <= 1:
            raise AvretError(f"target_recall must be a number in (0, 1], got {target_recall!r}")
        if factory == "auto":
            budget = None if max_memory is None else autoindex.parse_size(max_memory)
            try:
                factory, reason, est = autoindex.choose_factory(n, d, budget)
            except autoindex.BudgetTooSmall as small:  # name the smallest budget that reaches the target, measured
                _check_finite(x, None)
                rows, exact = autoindex.tuning_queries(x, seed)
                found = autoindex.smallest_budget(x, budget, float(target), rows, exact, seed, progress)
                raise AvretError(f"{small.head}; the smallest budget that reaches --target-recall {float(target)} is "
                                 f"{autoindex.describe_smallest(found)}; raise --max-memory") from None
            auto = {"reason": reason, "max_memory": budget, "estimated_bytes": int(est)}
        selection = None
        if auto is not None and autoindex.needs_selection(factory):
            _check_finite(x, None)
            sel_rows, sel_exact = autoindex.tuning_queries(x, seed)
            selection = autoindex.select(x, auto["max_memory"], float(target), sel_rows, sel_exact, seed, progress)
            if not selection.target_met and not best_effort:
                raise AvretError(autoindex.refusal(n, d, auto["max_memory"], float(target), selection))
            chosen = next(c for c in selection.candidates if c["factory"] == selection.factory)
            factory = selection.factory
            if progress is not None:
                progress(f"chosen {factory}: recall@{autoindex.TUNE_K} {selection.recall:.3f}, "
                         f"nprobe {selection.nprobe}, re-rank x{selection.k_factor}")
            auto.update(reason=f"{auto['reason']}; chosen: {factory} (fastest measured that reaches the target)"
                        if selection.target_met else f"{auto['reason']}; chosen: {factory} (best measured recall, "
                        "--best-effort)", estimated_bytes=int(chosen["estimated_bytes"]),
                        candidates=[{k: v for k, v in c.items()} for c in selection.candidates],
                        smallest_budget=selection.smallest_budget)
        shards = autoindex.default_shards(n) if shards is None else shards
        if isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or not 1 <= shards <= n:
            raise AvretError(f"shards must be an integer in 1..{n} (the number of vectors), got {shards!r}")
        try:
            cpu_index = faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise AvretError(f"invalid FAISS factory string {factory!r}: {faiss_message(exc)}") from None
        if auto is not None:
            autoindex.prepare(cpu_index)
        prebuilt = selection is not None and shards == 1
        if prebuilt:  # measured by select(): trained on the same seeded sample, every row added
            cpu_index = selection.index
        ivf = _ivf_of(cpu_index)
        if ivf is not None and n < ivf.nlist:
            raise AvretError(
                f"factory {factory!r} needs at least {ivf.nlist} vectors to train its {ivf.nlist} lists, "
                f"got {n}; use fewer lists or 'Flat'"
            )
        exact = _is_flat(cpu_index)
        plan = choose_backend(requested, exact)
        if plan.name == "torch":  # a Flat index is built (added) on the CPU; searches then run on torch
            requested = "cpu"
        dev = plan.device if plan.name == "faiss" else "cpu"
        tune = auto is not None and (ivf is not None or selection is not None)
        q_rows, t_rows = autoindex.split_rows(n, autoindex.TUNE_SAMPLE if tune else 0,
                                              autoindex.training_rows(cpu_index, n) if auto else n, seed)
        # sharded builds stay on the CPU (their lists are merged on disk); the result is placed afterwards
        # All of x is checked here unless sharded: then the training rows here, each shard's rows by its worker.
        _check_finite(x, None if shards == 1 else np.union1d(q_rows, t_rows))
        # sharded builds stay on the CPU (their lists are merged on disk); the result is placed afterwards
        placed = to_device(cpu_index, dev if shards == 1 else "cpu", requested=requested if shards == 1 else "cpu")
        index = placed.index
        if not index.is_trained:
            if progress is not None:
                progress(f"training {factory} on {len(t_rows)} of {n} vectors")
            try:
                index.train(x if len(t_rows) == n else np.ascontiguousarray(x[t_rows]))
            except RuntimeError as exc:
                raise AvretError(
                    f"cannot train factory {factory!r} on {len(t_rows)} vectors: {faiss_message(exc)}"
                ) from None
        queries = np.ascontiguousarray(x[q_rows]) if tune else None
        ivfdata = work = None
        if shards == 1:
            if not prebuilt:
                index.add(x)
            if selection is not None:
                top = (None, sel_exact)  # the same held-out rows (same seed)
            else:
                top = autoindex.exact_topk(queries, x, autoindex.TUNE_K) if tune else None
            emb = None if exact else x
        else:
            work = Path(tempfile.mkdtemp(prefix=".avret-build-", dir=workdir))
            try:
                source = autoindex.VectorFile.of(x, work / EMBEDDINGS_FILE)
                trained = work / "trained.faiss"
                faiss.write_index(index, str(trained))
                shard_files, top = autoindex.add_in_shards(trained, source, int(shards), work, queries=queries,
                                                           k=autoindex.TUNE_K, workers=workers, progress=progress)
                if progress is not None:
                    progress(f"merging {len(shard_files)} shards")
                index = autoindex.merge_shards(trained, shard_files, work / IVFDATA_FILE)
                trained.unlink()
                ivfdata = work / IVFDATA_FILE if autoindex.is_ondisk(index) else None
                emb = None if exact else source.open()
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)
                raise
        tuning = None
        if selection is not None:
            if ivf is not None and selection.nprobe is not None:
                faiss.extract_index_ivf(index).nprobe = int(selection.nprobe)
            kf = int(selection.k_factor)
            found = autoindex.search_reranked(index, queries, autoindex.TUNE_K, kf, x)[1]
            recall = autoindex.recall_at_k(found, top[1])
            chosen = next(c for c in selection.candidates if c["factory"] == factory)
            tuning = {"k": autoindex.TUNE_K, "target_recall": float(target), "sample_size": int(len(q_rows)),
                      "seed": int(seed), "nprobe": selection.nprobe, "k_factor": kf, "recall": round(recall, 6),
                      "target_met": bool(recall >= target), "batch1_ms": chosen["batch1_ms"],
                      "curve": chosen["curve"]}
        elif tune:
            if progress is not None:
                progress(f"tuning nprobe for recall@{autoindex.TUNE_K} >= {target} on {len(q_rows)} held-out queries")
            tuning = {"k": autoindex.TUNE_K, "target_recall": float(target), "sample_size": int(len(q_rows)),
                      "seed": int(seed), **autoindex.tune_nprobe(index, queries, top[1], float(target))}
        manifest = IndexManifest(
            modality=modality,
            dim=d,
            count=n,
            model_fingerprint=model_fingerprint,
            factory=factory,
            model_path=str(model_path) if model_path is not None else None,
            dataset=dataset,
            shards=int(shards),
            ivfdata=IVFDATA_FILE if ivfdata is not None else None,
            auto=auto,
            tuning=tuning,
        )
        seconds = time.perf_counter() - started
        manifest.build = {"seconds": round(seconds, 3), "seconds_per_million": round(seconds * 1e6 / n, 3)}
        if plan.name == "torch":
            built = cls(index, manifest, ids, labs, names, device=device, embeddings=emb, ivfdata=ivfdata,
                        precision=precision)
        elif work is None:
            built = cls(index, manifest, ids, labs, names, embeddings=emb, precision=precision, _placed=placed)
        else:
            built = cls(index, manifest, ids, labs, names, device=requested, embeddings=emb, ivfdata=ivfdata,
                        precision=precision)
        manifest.backend = {"name": built.backend, "device": built.device, "precision": built.precision}
        if work is None:
            return built
        weakref.finalize(built, shutil.rmtree, str(work), True)  # the mapped files outlive their names
        return built

    # ------------------------------------------------------------------ save / load
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the index directory atomically and return its path.

        An existing index directory at ``path`` is replaced only once the new one is complete; an
        existing directory that is not an index (no manifest.json, not empty) is refused rather
        than overwritten.
        """
        path = Path(path)
        if path.exists():
            if not path.is_dir():
                raise IndexError_(f"cannot save index to {path}: it exists and is not a directory")
            if any(path.iterdir()) and not (path / MANIFEST_FILE).is_file():
                raise IndexError_(
                    f"refusing to overwrite {path}: it exists and is not an avret index directory "
                    f"(no {MANIFEST_FILE})"
                )
        with atomic_dir(path) as tmp:
            faiss.write_index(to_cpu(self._index, self._faiss_device), str(tmp / INDEX_FILE))
            if self._ivfdata is not None:  # the on-disk lists: a hard link when on the same disk, else a copy
                try:
                    os.link(self._ivfdata, tmp / IVFDATA_FILE)
                except OSError:
                    shutil.copyfile(self._ivfdata, tmp / IVFDATA_FILE)
            if self._embeddings is not None:
                np.save(tmp / EMBEDDINGS_FILE, np.ascontiguousarray(self._embeddings, dtype=np.float32))
            write_json(
                tmp / METADATA_FILE,
                {
                    "clip_ids": self.clip_ids.tolist(),
                    "labels": self.labels.tolist(),
                    "class_names": list(self.class_names),
                },
            )
            # The manifest last: a directory with a manifest is complete.
            write_json(tmp / MANIFEST_FILE, self.manifest.to_dict())
        self.path = path
        if self._ivfdata is not None:
            self._ivfdata = path / IVFDATA_FILE
        return path

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        expect_modality: str | None = None,
        expect_fingerprint: str | None = None,
        device: str = "auto",
        precision: str = "fp32",
    ) -> AVIndex:
        """Load and check an index directory.

        Refuses (:class:`IndexError_`, one line naming the file/field) a missing directory or file,
        an unreadable or unknown-format manifest, an index from another FAISS major version, a
        gallery modality other than ``expect_modality``, a model fingerprint other than
        ``expect_fingerprint``, and any disagreement between manifest, metadata and index
        (dim, count, metric). The cheap checks run before the index file is read.
        """
        path = Path(path)
        recover_output(path)  # a writer killed between its two renames (the root: index_path_for)
        if not path.exists():
            raise IndexError_(f"index directory {path} does not exist")
        if not path.is_dir():
            raise IndexError_(
                f"index {path} is not a directory (an index is a directory with {MANIFEST_FILE})"
            )
        manifest = read_index_manifest(path)
        mpath = path / MANIFEST_FILE

        built_major = faiss_major(manifest.versions["faiss"])
        here = str(getattr(faiss, "__version__", "unknown"))
        if built_major != faiss_major(here):
            raise IndexError_(
                f"{mpath}: index was written by faiss {manifest.versions['faiss']} (field 'versions.faiss'), "
                f"this is faiss {here}; a different major version may not read it; rebuild the index"
            )
        if expect_modality is not None:
            if expect_modality not in MODALITIES:
                raise AvretError(
                    f"expect_modality must be one of {list(MODALITIES)}, got {expect_modality!r}"
                )
            if manifest.modality != expect_modality:
                raise IndexError_(
                    f"index {path} holds {manifest.modality!r} embeddings "
                    f"({MANIFEST_FILE} field 'modality'), "
                    f"expected {expect_modality!r}; use the {expect_modality} index"
                )
        if expect_fingerprint is not None and manifest.model_fingerprint != expect_fingerprint:
            raise IndexError_(
                f"index {path} was built by model {manifest.model_fingerprint[:12]}, but the query model "
                f"is {str(expect_fingerprint)[:12]}; rebuild the index with this model"
            )

        clip_ids, labels, class_names = _read_metadata(path / METADATA_FILE, manifest.count)

        ipath = path / INDEX_FILE
        if not ipath.is_file():
            raise IndexError_(f"index {path} is missing {INDEX_FILE}")
        ivfdata = path / manifest.ivfdata if manifest.ivfdata else None
        if ivfdata is not None and not ivfdata.is_file():
            raise IndexError_(f"index {path} is missing {manifest.ivfdata} ({MANIFEST_FILE} field 'ivfdata')")
        check_index_file(ipath, manifest.dim, manifest.count, ivfdata=ivfdata)
        try:
            # on-disk lists: read without mapping the path stored in the file, then map the one beside it
            index = faiss.read_index(str(ipath), faiss.IO_FLAG_SKIP_IVF_DATA if ivfdata else 0)
            if autoindex.is_ondisk(index) != (ivfdata is not None):
                raise IndexError_(f"{mpath}: field 'ivfdata' is {manifest.ivfdata!r} but {INDEX_FILE} "
                                  f"{'keeps' if ivfdata is None else 'does not keep'} its inverted lists on disk")
            if ivfdata is not None:
                autoindex.open_ondisk(index, ivfdata)
        except RuntimeError as exc:
            raise IndexError_(f"{ipath}: not a readable FAISS index: {faiss_message(exc)}") from None
        if index.d != manifest.dim:
            raise IndexError_(
                f"{mpath}: field 'dim' is {manifest.dim} but {INDEX_FILE} has dimension {index.d}"
            )
        if index.ntotal != manifest.count:
            raise IndexError_(
                f"{mpath}: field 'count' is {manifest.count} but {INDEX_FILE} holds {index.ntotal} vectors"
            )
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise IndexError_(f"{ipath}: index metric is not inner product (metric_type {index.metric_type})")
        embeddings = _read_embeddings(path / EMBEDDINGS_FILE, manifest.count, manifest.dim)
        return cls(index, manifest, clip_ids, labels, class_names, path=path, device=device, embeddings=embeddings,
                   ivfdata=ivfdata, precision=precision)

    # ------------------------------------------------------------------ stored embeddings
    def rows_of(self, clip_ids: list[str]) -> np.ndarray:
        """Gallery rows of ``clip_ids`` (raises :class:`QueryError` naming the first unknown id)."""
        if self._rows is None:
            self._rows = {str(c): i for i, c in enumerate(self.clip_ids.tolist())}
        rows = []
        for cid in clip_ids:
            row = self._rows.get(cid)
            if row is None:
                raise QueryError(f"clip id {cid!r} is not in {self._where()} ({self.count} clips)")
            rows.append(row)
        return np.asarray(rows, dtype=np.int64)

    def embeddings_of(self, rows: np.ndarray) -> np.ndarray:
        """The stored embeddings of gallery ``rows`` ``(n, dim)`` float32, exactly as they were indexed.

        A flat index reconstructs them from its codes; other factories keep them in
        ``embeddings.npy``. An index of another kind written without that file cannot give them.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if self._embeddings is not None:
            return np.array(self._embeddings[rows], dtype=np.float32)
        if _is_flat(self._index):
            return np.asarray(self._index.reconstruct_batch(rows), dtype=np.float32)
        raise IndexError_(
            f"{self._where()} (factory {self.manifest.factory!r}) keeps no exact embeddings "
            f"({EMBEDDINGS_FILE}); rebuild it with this avret to query by clip id"
        )

    # ------------------------------------------------------------------ search
    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        nprobe: int | None = None,
        ef_search: int | None = None,
        allowed_rows: np.ndarray | None = None,
        k_factor: int | None = None,
    ) -> SearchResult:
        """Top-``k`` gallery items for each query row, by inner product (cosine), best first.

        ``queries`` is (n, d) (a single (d,) vector is taken as n=1); searched in batches of
        :data:`SEARCH_BATCH`. ``nprobe`` (IVF indexes) and ``ef_search`` (HNSW indexes) trade
        speed for recall; they apply to this call only. ``allowed_rows`` restricts the answer to
        those gallery rows (a FAISS ID selector: exact for flat indexes, CPU only); fewer than
        ``k`` of them leave missing slots. Concurrent calls from several threads are safe.

        ``k_factor`` (default: the manifest's ``tuning.k_factor``, else 1) re-ranks the index's top
        ``k x k_factor`` exactly from the stored embeddings (``embeddings.npy``, memory-mapped); an
        index without stored embeddings (a flat one: exact already) ignores it.
        """
        where = self._where()
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise QueryError(f"k must be an integer, got {k!r}")
        k = int(k)
        if k < 1:
            raise QueryError(f"k must be at least 1, got {k}")
        if k > self.count:
            raise QueryError(f"k={k} is larger than the gallery ({self.count} items in {where})")
        if self._faiss_device == "cuda" and k > GPU_MAX_K:
            raise QueryError(f"k={k} exceeds the FAISS GPU limit of {GPU_MAX_K}; use device 'cpu'")
        q = np.asarray(queries)
        if q.ndim == 1:
            q = q[None, :]
        if q.ndim != 2:
            raise QueryError(f"query must be a 2-D array (n, {self.dim}), got shape {q.shape} ({where})")
        if q.shape[1] != self.dim:
            raise QueryError(f"query has width {q.shape[1]}, expected {self.dim} ({where})")
        if not np.issubdtype(q.dtype, np.number) or np.issubdtype(q.dtype, np.complexfloating):
            raise QueryError(f"query must be real numbers, got dtype {q.dtype} ({where})")
        q = np.ascontiguousarray(q, dtype=np.float32)
        finite = np.isfinite(q).all(axis=1)
        if not finite.all():
            raise QueryError(f"query row {int(np.flatnonzero(~finite)[0])} contains NaN or inf ({where})")

        if k_factor is None:
            k_factor = int((self.manifest.tuning or {}).get("k_factor", 1))
        if isinstance(k_factor, bool) or not isinstance(k_factor, (int, np.integer)) or k_factor < 1:
            raise QueryError(f"k_factor must be an integer >= 1, got {k_factor!r}")
        tuning = _search_params(self._index, nprobe, ef_search, where, self._faiss_device)  # validates both
        if self._torch is not None:  # exact: nprobe/ef_search were refused above (a Flat has neither)
            allowed = None if allowed_rows is None else np.unique(np.asarray(allowed_rows, dtype=np.int64))
            scores, rows = np.empty((q.shape[0], k), np.float32), np.empty((q.shape[0], k), np.int64)
            for s in range(0, q.shape[0], SEARCH_BATCH):
                scores[s : s + SEARCH_BATCH], rows[s : s + SEARCH_BATCH] = self._torch.search(
                    q[s : s + SEARCH_BATCH], k, allowed)
            return self._result(scores, rows)
        params = selector = None
        if allowed_rows is not None:
            params, selector = _filter_params(self._index, allowed_rows, nprobe, ef_search, where, self._faiss_device)
        # nprobe / efSearch without a filter are set on the shared index: one such call at a time.
        guard = self._tuning_lock if tuning.targets and params is None else contextlib.nullcontext()
        with guard, (tuning if params is None else contextlib.nullcontext()):
            n = q.shape[0]
            scores = np.empty((n, k), dtype=np.float32)
            rows = np.empty((n, k), dtype=np.int64)
            for s in range(0, n, SEARCH_BATCH):
                scores[s : s + SEARCH_BATCH], rows[s : s + SEARCH_BATCH] = autoindex.search_reranked(
                    self._index, q[s : s + SEARCH_BATCH], k, int(k_factor), self._embeddings, params=params
                )
        del selector  # the params object only borrows it
        return self._result(scores, rows)

    def _result(self, scores: np.ndarray, rows: np.ndarray) -> SearchResult:
        missing = rows < 0
        safe = np.where(missing, 0, rows)
        ids = self.clip_ids[safe]
        labs = self.labels[safe]
        if missing.any():
            ids = np.where(missing, "", ids)
            labs = np.where(missing, -1, labs)
            scores = np.where(missing, -np.inf, scores).astype(np.float32)
        return SearchResult(scores=scores, rows=rows, clip_ids=ids, labels=labs.astype(np.int64))


# ---------------------------------------------------------------------- directory helpers
def read_index_manifest(path: str | os.PathLike[str]) -> IndexManifest:
    """Read and validate ``<path>/manifest.json`` (raises :class:`IndexError_`)."""
    mpath = Path(path) / MANIFEST_FILE
    if not mpath.is_file():
        raise IndexError_(f"index {path} is missing {MANIFEST_FILE} (not an avret index directory)")
    try:
        raw = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexError_(f"{mpath}: unreadable manifest: {exc}") from None
    except RecursionError:  # JSON nested thousands deep
        raise IndexError_(f"{mpath}: nested too deeply; expected the manifest object of avret index") from None
    return IndexManifest.from_dict(raw, source=str(mpath))


def index_path_for(root: str | os.PathLike[str], modality: str) -> Path:
    """The index directory to search for gallery ``modality`` under ``root``.

    ``root`` is either an index root holding ``root/visual/`` and ``root/audio/`` (as written by
    ``avret index build``) or itself a single index directory, which must then hold ``modality``.
    Raises :class:`IndexError_` when neither fits.
    """
    if modality not in MODALITIES:
        raise AvretError(f"modality must be one of {list(MODALITIES)}, got {modality!r}")
    root = Path(root)
    recover_output(root)  # a writer killed between its two renames left the old index aside
    if not root.exists():
        raise IndexError_(f"index directory {root} does not exist")
    if not root.is_dir():
        raise IndexError_(f"index {root} is not a directory")
    sub = root / modality
    if (sub / MANIFEST_FILE).is_file():
        return sub
    if (root / MANIFEST_FILE).is_file():
        found = read_index_manifest(root).modality
        if found != modality:
            raise IndexError_(
                f"index {root} holds {found!r} embeddings ({MANIFEST_FILE} field 'modality'), "
                f"expected {modality!r}, and there is no {sub}/{MANIFEST_FILE}"
            )
        return root
    raise IndexError_(
        f"no {modality!r} index under {root}: expected {sub}/{MANIFEST_FILE} or {root}/{MANIFEST_FILE}"
    )


def _read_metadata(mpath: Path, count: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    if not mpath.is_file():
        raise IndexError_(f"index {mpath.parent} is missing {METADATA_FILE}")
    try:
        raw = json.loads(mpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexError_(f"{mpath}: unreadable metadata: {exc}") from None
    except RecursionError:  # JSON nested thousands deep
        raise IndexError_(f"{mpath}: nested too deeply; expected a JSON object of clip ids, labels, classes") from None
    if not isinstance(raw, dict):
        raise IndexError_(f"{mpath}: expected a JSON object, got {type(raw).__name__}")
    for key in ("clip_ids", "labels", "class_names"):
        if not isinstance(raw.get(key), list):
            raise IndexError_(f"{mpath}: field '{key}' must be a list")
    names = raw["class_names"]
    if not all(isinstance(c, str) for c in names):
        raise IndexError_(f"{mpath}: field 'class_names' must be a list of strings")
    try:
        ids = _as_ids(raw["clip_ids"], count, "clip_ids")
        labs = _as_labels(raw["labels"], count, "labels")
    except AvretError as exc:
        raise IndexError_(f"{mpath}: {exc} ({MANIFEST_FILE} count is {count})") from None
    if names and labs.size and int(labs.max()) >= len(names):
        raise IndexError_(f"{mpath}: label {int(labs.max())} out of range for {len(names)} class_names")
    return ids, labs, names


# ---------------------------------------------------------------------- validation helpers
def _as_matrix(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 2:
        raise AvretError(f"{name}: expected a 2-D array (n, d), got shape {a.shape}")
    if a.shape[1] == 0:
        raise AvretError(f"{name}: expected a positive width, got shape {a.shape}")
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise AvretError(f"{name}: expected real numbers, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=np.float32)


def _as_ids(ids: Any, n: int, name: str) -> np.ndarray:
    lst = list(ids)
    if len(lst) != n:
        raise AvretError(f"{name}: got {len(lst)} ids for {n} vectors")
    if not all(isinstance(c, (str, np.str_)) for c in lst):
        raise AvretError(f"{name}: every clip id must be a string")
    arr = np.asarray(lst, dtype=str) if lst else np.zeros(0, dtype="<U1")
    if len(set(lst)) != n:
        uniq, counts = np.unique(arr, return_counts=True)
        raise AvretError(f"{name}: duplicate clip id {str(uniq[counts > 1][0])!r}")
    return arr


def _as_labels(labels: Any, n: int, name: str) -> np.ndarray:
    if labels is None:
        return np.full(n, -1, dtype=np.int64)
    a = np.asarray(labels)
    if a.ndim != 1 or a.shape[0] != n:
        raise AvretError(f"{name}: expected {n} labels (one per vector), got shape {a.shape}")
    if n and not np.issubdtype(a.dtype, np.integer):
        raise AvretError(f"{name}: expected integers, got dtype {a.dtype}")
    a = a.astype(np.int64)
    if n and int(a.min()) < -1:
        raise AvretError(f"{name}: labels must be >= 0 (or -1 for unlabelled), got {int(a.min())}")
    return a


def _flat_vectors(index: Any) -> np.ndarray:
    """The (ntotal, d) float32 vectors of a CPU flat index (a copy)."""
    flat = faiss.downcast_index(index)
    return faiss.vector_to_array(flat.codes).view(np.float32).reshape(flat.ntotal, flat.d)


def _is_flat(index: Any) -> bool:
    """True for a flat (exact, reconstructible) CPU or GPU index."""
    kinds = tuple(k for k in (faiss.IndexFlat, getattr(faiss, "GpuIndexFlat", None)) if k is not None)
    if isinstance(index, kinds):
        return True
    try:
        return isinstance(faiss.downcast_index(index), kinds)
    except Exception:  # GPU or wrapped indexes downcast_index does not know
        return False


def _check_finite(x: np.ndarray, rows: np.ndarray | None, chunk: int = 65_536) -> None:
    """Raise :class:`AvretError` naming the first row of ``x`` (or of its ``rows``) holding NaN or inf."""
    for s in range(0, x.shape[0] if rows is None else len(rows), chunk):
        block = x[s : s + chunk] if rows is None else x[rows[s : s + chunk]]
        finite = np.isfinite(block).all(axis=1)
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            raise AvretError(f"embeddings: row {s + i if rows is None else int(rows[s + i])} contains NaN or inf")


def _read_embeddings(path: Path, count: int, dim: int) -> np.ndarray | None:
    """The optional ``embeddings.npy`` of an index directory, memory-mapped and checked against the manifest."""
    if not path.is_file():
        return None
    try:
        emb = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise IndexError_(f"{path}: not a readable .npy array ({exc})") from None
    if emb.dtype != np.float32 or emb.shape != (count, dim):
        raise IndexError_(
            f"{path}: {emb.dtype} array of shape {emb.shape}, expected float32 ({count}, {dim}) as in {MANIFEST_FILE}"
        )
    return emb


def _filter_params(
    index: Any, rows: np.ndarray, nprobe: int | None, ef_search: int | None, where: str, device: str
) -> tuple[Any, Any]:
    """Per-call FAISS search parameters restricted to gallery ``rows`` (and the selector they borrow)."""
    if device != "cpu":
        raise QueryError(f"a class filter needs a CPU index ({where} is on {device})")
    selector = faiss.IDSelectorBatch(np.ascontiguousarray(rows, dtype=np.int64))
    idx = faiss.downcast_index(index)
    if isinstance(idx, faiss.IndexPreTransform):  # OPQ...: the selector goes to the index it wraps
        inner, selector = _filter_params(idx.index, rows, nprobe, ef_search, where, device)
        params = faiss.SearchParametersPreTransform()
        params.index_params = inner
        params.referenced_objects = [inner, selector]  # the SWIG object only borrows them
        return params, selector
    if isinstance(idx, faiss.IndexIVF):
        params = faiss.SearchParametersIVF()
        params.nprobe = int(nprobe or idx.nprobe)
    elif isinstance(idx, faiss.IndexHNSW):
        params = faiss.SearchParametersHNSW()
        params.efSearch = int(ef_search or idx.hnsw.efSearch)
    elif isinstance(idx, faiss.IndexFlat):
        params = faiss.SearchParameters()
    else:
        raise QueryError(f"a class filter is not supported by {where} ({type(idx).__name__}); use a Flat, IVF or HNSW")
    params.sel = selector
    return params, selector


def _ivf_of(index: Any) -> Any:
    """The IVF part of a (possibly wrapped) CPU index, or None."""
    fn = getattr(faiss, "try_extract_index_ivf", None)
    if fn is not None:
        return fn(index)
    try:
        return faiss.extract_index_ivf(index)
    except Exception:
        return None


class _search_params:  # noqa: N801 - used as a context manager, reads like a function
    """Set nprobe / efSearch for one search call and restore the previous values afterwards."""

    def __init__(
        self, index: Any, nprobe: int | None, ef_search: int | None, where: str, device: str
    ) -> None:
        self.saved: list[tuple[Any, str, Any]] = []
        self.targets: list[tuple[Any, str, int]] = []
        if nprobe is not None:
            if isinstance(nprobe, bool) or not isinstance(nprobe, (int, np.integer)) or nprobe < 1:
                raise QueryError(f"nprobe must be a positive integer, got {nprobe!r}")
            target = index if hasattr(index, "nprobe") else _ivf_of(index) if device == "cpu" else None
            if target is None:
                raise QueryError(f"nprobe applies only to IVF indexes ({where} is {type(index).__name__})")
            if device == "cuda" and nprobe > GPU_MAX_K:
                raise QueryError(f"nprobe={nprobe} exceeds the FAISS GPU limit of {GPU_MAX_K}")
            self.targets.append((target, "nprobe", int(nprobe)))
        if ef_search is not None:
            if isinstance(ef_search, bool) or not isinstance(ef_search, (int, np.integer)) or ef_search < 1:
                raise QueryError(f"ef_search must be a positive integer, got {ef_search!r}")
            hnsw = getattr(index, "hnsw", None)
            if hnsw is None:
                raise QueryError(
                    f"ef_search applies only to HNSW indexes ({where} is {type(index).__name__})"
                )
            self.targets.append((hnsw, "efSearch", int(ef_search)))

    def __enter__(self) -> _search_params:
        for obj, attr, value in self.targets:
            self.saved.append((obj, attr, getattr(obj, attr)))
            setattr(obj, attr, value)
        return self

    def __exit__(self, *exc: object) -> None:
        for obj, attr, value in reversed(self.saved):
            setattr(obj, attr, value)
