"""Answer a search: one tower forward pass for the query, then the index lookup.

A query is either clip ids of a data set (the one the index was built from, by default) or a
feature file (``.npy`` with one ``(D,)`` vector or ``(n, D)`` rows) of the query modality.
Media files (``.wav``, ``.mp4``, ...) are turned into features by :mod:`avret.features` when it
is installed with its model weights (see ``avret features extract``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avret.data.registry import load_dataset
from avret.errors import QueryError
from avret.index.pipeline import GALLERY_FOR, QUERY_FOR
from avret.index.store import AVIndex, SearchResult, index_path_for
from avret.io import load_model
from avret.models.base import Embedder, require_embedder

MEDIA_SUFFIXES = {".wav", ".flac", ".mp3", ".m4a", ".ogg", ".mp4", ".mkv", ".webm", ".avi", ".mov"}


@dataclass
class SearchAnswer:
    """Results of one search call, with the query names they belong to."""

    direction: str
    query_names: list[str]
    result: SearchResult
    class_names: list[str]

    def to_records(self) -> list[dict]:
        return [
            {"query": name, "results": recs}
            for name, recs in zip(self.query_names, self.result.to_records(self.class_names), strict=True)
        ]


def open_index(
    index_root: str | Path, direction: str, model: str | Path | None = None
) -> tuple[AVIndex, Embedder]:
    """Load the gallery index for ``direction`` and the model whose embeddings it holds (checked)."""
    if direction not in GALLERY_FOR:
        raise QueryError(f"direction '{direction}': expected one of {sorted(GALLERY_FOR)}")
    path = index_path_for(index_root, GALLERY_FOR[direction])
    from avret.index.store import read_manifest

    manifest = read_manifest(path)
    model_path = model if model is not None else manifest.model_path
    if model_path is None:
        raise QueryError(f"index {path} records no model path; pass --model")
    embedder = require_embedder(load_model(model_path), model_path)
    index = AVIndex.load(path, expect_modality=GALLERY_FOR[direction], expect_fingerprint=embedder.fingerprint())
    return index, embedder


def load_query_array(path: Path) -> np.ndarray:
    """Query feature rows from a ``.npy`` file: a real-valued ``(D,)`` or ``(n, D)`` array, n >= 1.

    Anything else — pickled objects, strings, complex numbers, a 0-d or 3-d array, no rows, a file
    that is not ``.npy`` at all — is a one-line :class:`QueryError`; nothing is ever unpickled.
    """
    try:
        feats = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        reason = ("holds pickled objects" if "Object arrays" in str(exc)
                  else "not a .npy file, or pickled data" if "pickle" in str(exc) else "unreadable or empty")
        raise QueryError(f"{path}: not a numeric .npy array ({reason}); expected float rows (n, D)") from None
    if not isinstance(feats, np.ndarray):
        raise QueryError(f"{path}: not a single .npy array; expected float rows (n, D)")
    if not (np.issubdtype(feats.dtype, np.floating) or np.issubdtype(feats.dtype, np.integer)):
        raise QueryError(f"{path}: dtype {feats.dtype}; expected real numbers (float rows (n, D))")
    if feats.ndim not in (1, 2):
        raise QueryError(f"{path}: shape {feats.shape}; expected (D,) or (n, D)")
    feats = feats[None, :] if feats.ndim == 1 else feats
    if len(feats) == 0:
        raise QueryError(f"{path}: shape {feats.shape} holds no query rows; expected at least one")
    return feats.astype(np.float32)


def query_features(
    query: str, direction: str, index: AVIndex, embedder: Embedder, dataset: str | None = None,
    data: str | None = None, media_config: str | Path | None = None,
) -> tuple[list[str], np.ndarray]:
    """Resolve ``query`` (clip id, ``.npy`` file or media file) to query-modality feature rows."""
    modality = QUERY_FOR[direction]
    path = Path(query)
    if path.suffix.lower() == ".npy":
        if not path.is_file():
            raise QueryError(f"{path}: query feature file not found")
        feats = load_query_array(path)
        return [f"{path.name}[{i}]" for i in range(len(feats))], feats
    if path.suffix.lower() in MEDIA_SUFFIXES:
        if not path.is_file():
            raise QueryError(f"{path}: query media file not found")
        from avret.features import embed_query_media

        if media_config is None:
            raise QueryError(
                f"{path}: a media query needs --features DIR (the features directory whose "
                "extract_config.json names the audio/visual front-end weights)"
            )
        return [path.name], embed_query_media(path, modality, media_config)[None, :]
    spec = dataset or index.manifest.dataset
    if spec is None:
        raise QueryError(f"query '{query}': clip-id queries need --dataset (index records none)")
    ids = [q.strip() for q in query.split(",") if q.strip()]
    if not ids:
        raise QueryError(f"query {query!r}: expected a clip id (or several, comma-separated), a .npy file or media")
    ds = load_dataset(spec, data)
    try:
        rows = ds.rows_of(ids)
    except Exception as exc:
        raise QueryError(str(exc)) from None
    return ids, ds.features(modality)[rows]


def search(
    index_root: str | Path, direction: str, query: str, k: int = 10, *, model: str | Path | None = None,
    dataset: str | None = None, data: str | None = None, media_config: str | Path | None = None,
) -> SearchAnswer:
    """``audio-to-video`` or ``video-to-audio`` search for ``query`` (see module docstring)."""
    index, embedder = open_index(index_root, direction, model)
    names, feats = query_features(query, direction, index, embedder, dataset, data, media_config)
    emb = embedder.embed(QUERY_FOR[direction], feats)
    return SearchAnswer(direction, names, index.search(emb, k), index.class_names)
