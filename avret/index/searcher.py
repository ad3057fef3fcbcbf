"""The search engine: an index root opened once, answering many searches.

:class:`Searcher` opens what ``avret index build`` wrote — both modalities' indexes (their manifests
must name the same model), the clips' metadata and, when the clips came from media files, the
clip → media table (``media.json``) — and answers::

    searcher = Searcher("runs/demo/index")
    answer = searcher.search_clip_ids("audio-to-video", ["clip_00042"], k=10)
    answer = searcher.search_features("video-to-audio", visual_features, k=10)     # one tower pass
    answer = searcher.search_media("audio-to-video", "dog_bark.wav", k=10)          # front end + encoder + tower

A clip-id query uses the clip's own stored embedding of the query modality (taken from the other
modality's index: reconstructed from a flat index, or read from its ``embeddings.npy``), so it needs
neither the data set nor the model: the model is loaded, and its fingerprint checked against the
manifests, only when the first feature or media query arrives (``load_model=True`` loads it at once,
as ``avret serve`` does). Every method is safe to call from many threads at once; media decoding
does not hold any lock that searches wait on.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avret.data.registry import is_synthetic_ref
from avret.errors import IndexError_, QueryError, UnknownClipError
from avret.index.manifest import EMBEDDINGS_FILE, GALLERY_FOR, MANIFEST_FILE, MODALITIES, QUERY_FOR
from avret.index.query import MEDIA_SUFFIXES, load_query_array, parse_clip_ids
from avret.index.store import AVIndex, SearchResult
from avret.utils.atomic import recover_output

#: The clip → media table of an index root built from media (see :func:`media_table`).
MEDIA_FILE = "media.json"
MEDIA_FORMAT_VERSION = 1

#: Longest media query used, in seconds (the rest of a longer file is not decoded); the same
#: default as :data:`avret.features.extract.QUERY_MAX_SECONDS`.
DEFAULT_MAX_QUERY_SECONDS = 60.0


@dataclass
class SearchAnswer:
    """Results of one search call: per query its name, its class when known, and the ranked hits."""

    direction: str
    query_names: list[str]
    result: SearchResult
    class_names: list[str]
    query_classes: list[str | None] = field(default_factory=list)

    def to_records(self, media_url: Any = None) -> list[dict[str, Any]]:
        """JSON-ready blocks ``{"query", "query_class", "results": [{rank, clip_id, score, label, class, match}]}``.

        ``match`` says whether a hit's class is the query's (None when either is unknown);
        ``media_url(clip_id)`` (optional) adds a ``media_url`` to every hit that has media.
        """
        classes = self.query_classes or [None] * len(self.query_names)
        blocks = []
        for name, qcls, recs in zip(self.query_names, classes, self.result.to_records(self.class_names), strict=True):
            for rec in recs:
                rec["match"] = None if qcls is None or rec["class"] is None else rec["class"] == qcls
                if media_url is not None:
                    url = media_url(rec["clip_id"])
                    if url is not None:
                        rec["media_url"] = url
            blocks.append({"query": name, "query_class": qcls, "results": recs})
        return blocks

    def to_json(self, media_url: Any = None) -> dict[str, Any]:
        """The answer as ``avret search --json`` prints it and ``POST /search`` returns it."""
        return {"direction": self.direction, "queries": self.to_records(media_url)}


def media_table(clip_ids: list[str], paths: list[str | None], features: str | Path | None) -> dict[str, Any]:
    """The ``media.json`` content for clips with known media files (paths relative to their common root)."""
    known = {cid: Path(p).resolve() for cid, p in zip(clip_ids, paths, strict=True) if p}
    if not known:
        return {}
    root = Path(os.path.commonpath([str(p.parent) for p in known.values()]))
    return {
        "format_version": MEDIA_FORMAT_VERSION,
        "media_root": str(root),
        "features": str(Path(features).resolve()) if features else None,
        "clips": {cid: p.relative_to(root).as_posix() for cid, p in known.items()},
    }


class Searcher:
    """An index root opened once; thread-safe searches by clip id, feature rows or media file.

    ``model`` overrides the model recorded in the manifests; ``features`` is the features directory
    (``extract_config.json``) whose front ends and encoders turn a media query into features
    (default: the one recorded at build time); ``media_root`` is the only directory media files are
    served from (default: the one recorded at build time).
    """

    def __init__(
        self,
        root: str | Path,
        *,
        model: str | Path | None = None,
        device: str = "auto",
        precision: str = "fp32",
        features: str | Path | None = None,
        media_root: str | Path | None = None,
        load_model: bool = False,
        max_query_seconds: float = DEFAULT_MAX_QUERY_SECONDS,
    ) -> None:
        self.root = Path(root)
        recover_output(self.root)
        if not self.root.is_dir():
            raise IndexError_(f"index root {self.root} does not exist or is not a directory")
        self.device = device
        self.indexes: dict[str, AVIndex] = {}
        for modality in MODALITIES:
            sub = self.root / modality
            if (sub / MANIFEST_FILE).is_file():
                self.indexes[modality] = AVIndex.load(sub, expect_modality=modality, device=device,
                                                      precision=precision)
        if not self.indexes:
            raise IndexError_(
                f"no index under {self.root}: expected {self.root}/visual/{MANIFEST_FILE} and/or "
                f"{self.root}/audio/{MANIFEST_FILE} (written by avret index build)"
            )
        prints = {m: ix.manifest.model_fingerprint for m, ix in self.indexes.items()}
        if len(set(prints.values())) != 1:
            raise IndexError_(f"{self.root}: the audio and visual indexes were built by different models ({prints})")
        self.fingerprint = next(iter(prints.values()))
        for ix in self.indexes.values():
            _check_finite(ix)  # NaN/inf stored embeddings would be served as scores: refused at open
        first = next(iter(self.indexes.values())).manifest
        self.model_path = Path(model) if model is not None else (Path(first.model_path) if first.model_path else None)
        self.dataset = first.dataset
        self.max_query_seconds = float(max_query_seconds)
        self._model: Any = None
        self._model_lock = threading.Lock()
        media = _read_media(self.root / MEDIA_FILE)
        self._media_clips: dict[str, str] = media.get("clips", {})
        recorded_root = media.get("media_root")
        root = media_root or recorded_root
        self.media_root = Path(root).resolve() if root else None
        recorded_features = media.get("features")
        self.features = Path(features) if features else (Path(recorded_features) if recorded_features else None)
        if load_model or model is not None:  # a model named by the caller is checked at once
            self.model()

    # ------------------------------------------------------------------ what is open
    @property
    def directions(self) -> list[str]:
        """The directions this root can answer (its gallery modality is indexed)."""
        return [d for d, g in GALLERY_FOR.items() if g in self.indexes]

    def gallery(self, direction: str) -> AVIndex:
        """The gallery index of ``direction`` (one-line error for an unknown or unindexed direction)."""
        if direction not in GALLERY_FOR:
            raise QueryError(f"direction {direction!r}: expected one of {sorted(GALLERY_FOR)}")
        modality = GALLERY_FOR[direction]
        if modality not in self.indexes:
            raise IndexError_(f"{self.root} has no {modality} index, so it cannot answer {direction}")
        return self.indexes[modality]

    @property
    def class_names(self) -> list[str]:
        return next(iter(self.indexes.values())).class_names

    def info(self) -> dict[str, Any]:
        """What is served: model, data set, per-modality count/dim/factory/device, media, versions."""
        first = next(iter(self.indexes.values())).manifest
        return {
            "index": str(self.root),
            "model": {"path": str(self.model_path) if self.model_path else None, "fingerprint": self.fingerprint,
                      "loaded": self._model is not None},
            "dataset": self.dataset,
            "synthetic": is_synthetic_ref(self.dataset),
            "directions": self.directions,
            "classes": self.class_names,
            "indexes": {m: {"count": ix.count, "dim": ix.dim, "factory": ix.manifest.factory, "device": ix.device,
                            "backend": ix.backend, "precision": ix.precision,
                            "created_at": ix.manifest.created_at} for m, ix in self.indexes.items()},
            "media": {"clips": len(self._media_clips), "queries": self.features is not None,
                      "max_query_seconds": self.max_query_seconds},
            "versions": first.versions,
        }

    def model(self) -> Any:
        """The recorded model (loaded once, on first use; its fingerprint must match the indexes')."""
        if self._model is None:
            with self._model_lock:
                if self._model is None:
                    self._model = self._load_model()
        return self._model

    def _load_model(self) -> Any:
        from avret.io import load_model
        from avret.models.base import require_embedder

        if self.model_path is None:
            raise QueryError(f"index {self.root} records no model path; pass --model")
        embedder = require_embedder(load_model(self.model_path), self.model_path)
        if embedder.fingerprint() != self.fingerprint:
            raise IndexError_(
                f"index {self.root} was built by model {self.fingerprint[:12]}, but {self.model_path} is "
                f"{embedder.fingerprint()[:12]}; rebuild the index with this model"
            )
        return embedder

    # ------------------------------------------------------------------ clips
    def media_path(self, clip_id: str) -> Path | None:
        """The media file of ``clip_id`` from the index's own table, only if it lies under ``media_root``."""
        rel = self._media_clips.get(clip_id)
        if rel is None or self.media_root is None:
            return None
        path = (self.media_root / rel).resolve()
        if not path.is_relative_to(self.media_root) or not path.is_file():
            return None
        return path

    # ------------------------------------------------------------------ searches
    def search_clip_ids(
        self, direction: str, clip_ids: list[str], k: int = 10, *, classes: list[str] | None = None
    ) -> SearchAnswer:
        """Search with the stored query-modality embeddings of indexed clips (no model, no data set)."""
        gallery = self.gallery(direction)
        if not clip_ids:
            raise QueryError("no clip ids given; expected at least one")
        qmod = QUERY_FOR[direction]
        source = self.indexes.get(qmod)
        if source is None:
            raise IndexError_(
                f"{self.root} has no {qmod} index, which clip-id queries for {direction} read their "
                f"embeddings from; build the index with --modality both, or query by features"
            )
        try:
            rows = source.rows_of([str(c) for c in clip_ids])
        except QueryError as exc:
            raise UnknownClipError(str(exc)) from None
        emb = source.embeddings_of(rows)
        qcls = [source.class_names[int(lab)] if 0 <= int(lab) < len(source.class_names) else None
                for lab in source.labels[rows]]
        return self._answer(direction, gallery, list(map(str, clip_ids)), qcls, emb, k, classes)

    def search_features(
        self, direction: str, features: np.ndarray, k: int = 10, *, classes: list[str] | None = None,
        names: list[str] | None = None,
    ) -> SearchAnswer:
        """Search with query-modality feature rows ``(n, D)`` (one tower pass)."""
        gallery = self.gallery(direction)
        feats = np.asarray(features)
        if feats.ndim == 1:
            feats = feats[None, :]
        if feats.ndim != 2 or feats.shape[0] == 0:
            raise QueryError(f"query features of shape {feats.shape}; expected (n, D) with n >= 1")
        if not (np.issubdtype(feats.dtype, np.floating) or np.issubdtype(feats.dtype, np.integer)):
            raise QueryError(f"query features of dtype {feats.dtype}; expected real numbers")
        emb = self.model().embed(QUERY_FOR[direction], feats.astype(np.float32))
        names = names or [f"vector[{i}]" for i in range(len(feats))]
        return self._answer(direction, gallery, names, [None] * len(names), emb, k, classes)

    def search_media(
        self, direction: str, path: str | Path, k: int = 10, *, classes: list[str] | None = None,
        name: str | None = None,
    ) -> SearchAnswer:
        """Search with a media file: decode (at most ``max_query_seconds``), encode, one tower pass."""
        from avret.features import embed_query_media

        path = Path(path)
        self.gallery(direction)
        if not path.is_file():
            raise QueryError(f"{path}: query media file not found")
        if self.features is None:
            raise QueryError(
                f"{path}: a media query needs --features DIR (the features directory whose "
                "extract_config.json names the audio/visual front-end weights)"
            )
        feats = embed_query_media(path, QUERY_FOR[direction], self.features, max_seconds=self.max_query_seconds)
        return self.search_features(direction, feats[None, :], k, classes=classes, names=[name or path.name])

    def search(
        self, direction: str, query: str, k: int = 10, *, classes: list[str] | None = None,
        dataset: str | None = None, data: str | None = None,
    ) -> SearchAnswer:
        """The CLI's query string: a ``.npy`` feature file, a media file, or comma-separated clip ids.

        Clip ids are looked up in the index; with ``dataset`` they are taken from that data set
        instead (features + one tower pass), so clips outside the gallery can be queries too.
        """
        path = Path(query)
        if path.suffix.lower() == ".npy":
            if not path.is_file():
                raise QueryError(f"{path}: query feature file not found")
            feats = load_query_array(path)
            return self.search_features(direction, feats, k, classes=classes,
                                        names=[f"{path.name}[{i}]" for i in range(len(feats))])
        if path.suffix.lower() in MEDIA_SUFFIXES:
            return self.search_media(direction, path, k, classes=classes)
        ids = parse_clip_ids(query)
        if dataset is None:
            return self.search_clip_ids(direction, ids, k, classes=classes)
        from avret.data.registry import load_dataset

        ds = load_dataset(dataset, data)
        try:
            rows = ds.rows_of(ids)
        except Exception as exc:
            raise UnknownClipError(str(exc)) from None
        answer = self.search_features(direction, ds.features(QUERY_FOR[direction])[rows], k, classes=classes,
                                      names=ids)
        answer.query_classes = [ds.class_names[int(lab)] if int(lab) >= 0 else None for lab in ds.labels[rows]]
        return answer

    def _answer(
        self, direction: str, gallery: AVIndex, names: list[str], qcls: list[str | None], emb: np.ndarray,
        k: int, classes: list[str] | None,
    ) -> SearchAnswer:
        allowed = None
        if classes is not None:
            allowed = self._rows_of_classes(gallery, classes)
        result = gallery.search(emb, k, allowed_rows=allowed)
        return SearchAnswer(direction, names, result, gallery.class_names, qcls)

    @staticmethod
    def _rows_of_classes(gallery: AVIndex, classes: list[str]) -> np.ndarray:
        if not classes:
            raise QueryError("classes: an empty class filter; give at least one class name or no filter")
        ids = []
        for name in classes:
            if name not in gallery.class_names:
                raise QueryError(f"classes: unknown class {name!r}; expected one of {gallery.class_names}")
            ids.append(gallery.class_names.index(name))
        return np.flatnonzero(np.isin(gallery.labels, ids)).astype(np.int64)


def _check_finite(ix: AVIndex, batch: int = 65536) -> None:
    """Refuse an index whose stored embeddings hold NaN or infinity (checked in batches, bounded memory)."""
    for start in range(0, ix.count, batch):
        rows = np.arange(start, min(start + batch, ix.count))
        try:
            emb = ix.embeddings_of(rows)
        except IndexError_:
            return  # a factory that keeps no exact vectors: its scores are checked per search
        bad = ~np.isfinite(emb).all(axis=1)
        if bad.any():
            row = int(rows[np.flatnonzero(bad)[0]])
            raise IndexError_(f"{ix.path or 'index'}: the stored embedding of clip {str(ix.clip_ids[row])!r} "
                              "holds NaN or infinity; rebuild the index (avret index build)")


def _read_media(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexError_(f"{path}: unreadable media table ({exc})") from None
    ok = (isinstance(raw, dict) and raw.get("format_version") == MEDIA_FORMAT_VERSION
          and isinstance(raw.get("media_root"), str) and isinstance(raw.get("clips"), dict)
          and all(isinstance(k, str) and isinstance(v, str) for k, v in raw["clips"].items()))
    if not ok:
        raise IndexError_(
            f"{path}: expected {{format_version: {MEDIA_FORMAT_VERSION}, media_root: str, clips: {{clip_id: path}}}}"
        )
    return raw


__all__ = ["DEFAULT_MAX_QUERY_SECONDS", "EMBEDDINGS_FILE", "GALLERY_FOR", "MEDIA_FILE", "QUERY_FOR", "SearchAnswer",
           "Searcher", "media_table"]
