"""Grow and shrink an index root without a rebuild: ``avret index add`` / ``avret index remove``.

Clip ids are the stable ids: rows stay dense and in gallery order, so an index after ``add`` (rows
appended) or ``remove`` (rows dropped, the rest keeping their order) holds exactly what a fresh build
of the same gallery, trained the same way, would hold:

* flat indexes (``Flat``, ``SQ8``, ...): vectors appended, or removed with FAISS ``remove_ids``,
  which compacts the rows in order — identical to a fresh build;
* IVF indexes: new vectors are encoded with the trained quantisers and appended to their lists;
  removed entries are dropped from their lists and the ids of the rest renumbered to the dense rows
  (each list keeps its order) — identical to adding the same gallery to the same trained index. The
  centroids are not re-trained: a gallery that drifts far from its training sample wants a rebuild;
  the manifest's ``tuning`` (measured at build time) is kept and marked with ``measured_at_count``.

Indexes that keep exact vectors in ``embeddings.npy`` (everything but flat ones) get the rows
appended/removed there too. Both modalities, their class tables (``metadata.json``) and the media
table (``media.json``) are written as one new root that replaces the old one in one rename
(:func:`avret.utils.atomic.atomic_dir`): a crash leaves the old root or the new one, never a mix. A
server (``avret serve``) notices the new root and swaps to it (:mod:`avret.serve.reload`).
Indexes with their inverted lists on disk (sharded builds, ``index.ivfdata``) and HNSW indexes
are refused (one line): rebuild them.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from avret.errors import AvretError, DataError
from avret.index import autoindex
from avret.index.backend import to_cpu
from avret.index.manifest import MANIFEST_FILE, MODALITIES
from avret.index.searcher import MEDIA_FILE
from avret.index.store import AVIndex
from avret.utils.atomic import atomic_dir, recover_output, write_json


def open_root(root: str | Path) -> dict[str, AVIndex]:
    """The indexes of an index root (CPU), by modality; one-line error when there are none."""
    root = Path(root)
    recover_output(root)
    found = {m: AVIndex.load(root / m, expect_modality=m, device="cpu")
             for m in MODALITIES if (root / m / MANIFEST_FILE).is_file()}
    if not found:
        raise AvretError(f"--index {root}: no index there (expected {root}/visual/{MANIFEST_FILE} "
                         f"and/or {root}/audio/{MANIFEST_FILE}, written by avret index build)")
    for ix in found.values():
        _check_changeable(ix, root)
    return found


def _check_changeable(ix: AVIndex, root: Path) -> None:
    if autoindex.is_ondisk(ix.faiss_index):
        raise AvretError(f"--index {root}: the {ix.modality} index keeps its lists on disk (index.ivfdata, a "
                         "sharded build) and cannot change in place; rebuild it with avret index build")
    inner = faiss.downcast_index(ix.faiss_index)
    if isinstance(inner, faiss.IndexPreTransform):
        inner = faiss.downcast_index(inner.index)
    if "HNSW" in type(inner).__name__:
        raise AvretError(f"--index {root}: the {ix.modality} index ({ix.manifest.factory}) cannot remove vectors; "
                         "rebuild it with avret index build")


def _manifest(ix: AVIndex, count: int) -> Any:
    tuning = ix.manifest.tuning
    if tuning is not None:
        tuning = {**tuning, "measured_at_count": tuning.get("measured_at_count", ix.count)}
    return dataclasses.replace(ix.manifest, count=int(count), tuning=tuning)


def _stored(ix: AVIndex) -> np.ndarray | None:
    """Every stored exact embedding (None for a flat index, which holds them itself)."""
    if ix._embeddings is None:  # noqa: SLF001 -- the same package's storage
        return None
    return ix._embeddings  # noqa: SLF001


def with_added(ix: AVIndex, embeddings: np.ndarray, clip_ids: list[str], labels: np.ndarray,
               class_names: list[str]) -> AVIndex:
    """``ix`` with ``embeddings`` appended as new rows (clip ids must be new; labels index ``class_names``)."""
    x = np.ascontiguousarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] != ix.dim:
        raise DataError(f"embeddings to add have shape {x.shape}; expected (n, {ix.dim})")
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise DataError(f"clip {clip_ids[int(np.flatnonzero(bad)[0])]!r}: its embedding contains NaN or inf")
    have = set(ix.clip_ids.tolist())
    seen: set[str] = set()
    for cid in clip_ids:
        if cid in have or cid in seen:
            raise DataError(f"clip id {cid!r} is already in the index ({ix.modality}); remove it first or rename it")
        seen.add(cid)
    names = list(ix.class_names)
    mapped = np.full(len(clip_ids), -1, dtype=np.int64)
    for i, lab in enumerate(np.asarray(labels, dtype=np.int64).tolist()):
        if lab < 0:
            continue
        name = class_names[lab] if lab < len(class_names) else str(lab)
        if name not in names:
            names.append(name)
        mapped[i] = names.index(name)
    index = faiss.clone_index(to_cpu(ix.faiss_index, ix.device))
    index.add(x)
    stored = _stored(ix)
    emb = None if stored is None else np.concatenate([np.asarray(stored, dtype=np.float32), x])
    return AVIndex(index, _manifest(ix, index.ntotal), np.concatenate([ix.clip_ids, np.asarray(clip_ids)]),
                   np.concatenate([ix.labels, mapped]), names, device="cpu", embeddings=emb)


def without(ix: AVIndex, clip_ids: list[str]) -> AVIndex:
    """``ix`` without the rows of ``clip_ids`` (the rest keep their order; an unknown id is an error)."""
    rows = np.unique(ix.rows_of(clip_ids))
    if rows.size >= ix.count:
        raise DataError(f"removing {rows.size} clips would leave the {ix.modality} index empty; "
                        "an index needs at least one clip")
    index = faiss.clone_index(to_cpu(ix.faiss_index, ix.device))
    removed = index.remove_ids(faiss.IDSelectorBatch(rows.astype(np.int64)))
    if removed != rows.size:
        raise AvretError(f"{ix.manifest.factory}: removed {removed} of {rows.size} vectors; rebuild the index")
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:  # IVF ids are row numbers: renumber the rest to the dense rows
        lists = faiss.downcast_InvertedLists(ivf.invlists)
        for lst in range(ivf.nlist):
            size = lists.list_size(lst)
            if size:
                ptr = lists.get_ids(lst)
                ids = faiss.rev_swig_ptr(ptr, size)
                ids[:] = ids - np.searchsorted(rows, ids)
                lists.release_ids(lst, ptr)
    keep = np.ones(ix.count, dtype=bool)
    keep[rows] = False
    stored = _stored(ix)
    emb = None if stored is None else np.asarray(stored, dtype=np.float32)[keep]
    return AVIndex(index, _manifest(ix, index.ntotal), ix.clip_ids[keep], ix.labels[keep], ix.class_names,
                   device="cpu", embeddings=emb)


def commit_root(root: str | Path, indexes: dict[str, AVIndex], media: dict[str, Any] | None) -> None:
    """Write ``indexes`` (by modality) and the media table as the new ``root``, in one atomic replacement.

    Other files of the old root are carried over. ``media`` None: no media table.
    """
    root = Path(root)
    with atomic_dir(root) as tmp:
        for entry in root.iterdir():
            if entry.name in indexes or entry.name == MEDIA_FILE or entry.name.startswith("."):
                continue
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, tmp / entry.name)
        for modality, ix in indexes.items():
            ix.save(tmp / modality)
        if media:
            write_json(tmp / MEDIA_FILE, media)


def read_media(root: Path) -> dict[str, Any]:
    path = root / MEDIA_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def media_without(media: dict[str, Any], clip_ids: list[str]) -> dict[str, Any] | None:
    if not media:
        return None
    clips = {c: p for c, p in media.get("clips", {}).items() if c not in set(clip_ids)}
    return {**media, "clips": clips} if clips else None


def media_with(media: dict[str, Any], added: dict[str, Any]) -> dict[str, Any] | None:
    """The media table with the clips of ``added`` (a :func:`media_table`), paths re-rooted when they differ."""
    if not added:
        return media or None
    if not media:
        return added
    common = Path(_common(media["media_root"], added["media_root"]))
    clips = {}
    for table in (media, added):
        base = Path(table["media_root"])
        clips.update({c: (base / p).relative_to(common).as_posix() for c, p in table["clips"].items()})
    return {**media, "media_root": str(common), "clips": clips}


def _common(a: str, b: str) -> str:
    import os

    return os.path.commonpath([a, b])


def remove_ids(root: str | Path, clip_ids: list[str]) -> dict[str, AVIndex]:
    """Remove ``clip_ids`` from every index of ``root`` (and the media table), in one commit."""
    root = Path(root)
    current = open_root(root)
    new = {m: without(ix, clip_ids) for m, ix in current.items()}
    commit_root(root, new, media_without(read_media(root), clip_ids))
    return new


def add_clips(root: str | Path, dataset: Any, split: str = "all",
              model: str | Path | None = None) -> tuple[dict[str, AVIndex], int]:
    """Embed ``dataset``'s ``split`` with the index's model and add the clips (:func:`add_embeddings`).

    ``model`` defaults to the one recorded in the index and must be the model the index was built
    with (same fingerprint): embeddings of another model cannot share its index. Returns the new
    indexes and the number of clips added.
    """
    from avret.index.build import clip_media_paths, features_dir_of
    from avret.index.searcher import media_table
    from avret.io import load_model
    from avret.models.base import require_embedder

    current = open_root(root)
    first = next(iter(current.values())).manifest
    if model is None:
        if not first.model_path:
            raise AvretError(f"--index {root}: the index records no model path; pass --model")
        model = Path(first.model_path)
    embedder = require_embedder(load_model(model), model)
    if embedder.fingerprint() != first.model_fingerprint:
        raise AvretError(f"--model {model} is not the model {root} was built with "
                         f"({first.model_fingerprint[:12]}); embeddings of another model cannot share its index")
    clips = dataset.subset(split)
    if len(clips) == 0:
        raise DataError(f"{dataset.name}: split '{split}' has no clips to add")
    ids = [str(c) for c in clips.clip_ids]
    emb = {m: embedder.embed(m, clips.features(m)) for m in current}
    media = media_table(ids, clip_media_paths(clips), features_dir_of(dataset))
    new = add_embeddings(root, emb, ids, np.asarray(clips.labels), list(clips.class_names), media)
    return new, len(ids)


def add_embeddings(root: str | Path, embeddings: dict[str, np.ndarray], clip_ids: list[str], labels: np.ndarray,
                   class_names: list[str], media: dict[str, Any] | None = None) -> dict[str, AVIndex]:
    """Append clips to every index of ``root``; ``embeddings`` holds each modality's (n, d) rows, in one commit."""
    root = Path(root)
    current = open_root(root)
    missing = [m for m in current if m not in embeddings]
    if missing:
        raise AvretError(f"no {missing[0]} embeddings given for the {missing[0]} index of {root}")
    new = {m: with_added(ix, embeddings[m], clip_ids, labels, class_names) for m, ix in current.items()}
    commit_root(root, new, media_with(read_media(root), media or {}))
    return new
