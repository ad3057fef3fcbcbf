"""The ``manifest.json`` of an index directory: what was indexed, by which model, with which software.

The manifest is the first thing :meth:`avret.index.AVIndex.load` reads, so that an index built by
another model, for the other modality, or by an incompatible FAISS is refused with one clear line
before the (possibly large) ``index.faiss`` is read at all.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from avret.errors import IndexError_
from avret.utils.versions import INDEX_LIBRARIES, library_versions, utc_timestamp

#: Version of the on-disk layout (``manifest.json`` + ``metadata.json`` + ``index.faiss``).
#: Bump it when the layout changes; :meth:`IndexManifest.from_dict` refuses other versions.
FORMAT_VERSION = 1

#: File names inside an index directory.
MANIFEST_FILE = "manifest.json"
METADATA_FILE = "metadata.json"
INDEX_FILE = "index.faiss"
EMBEDDINGS_FILE = "embeddings.npy"
#: The on-disk inverted lists of a sharded IVF index (memory-mapped when searched).
IVFDATA_FILE = "index.ivfdata"

#: The gallery modalities an index can hold.
MODALITIES = ("audio", "visual")

#: The two search directions: the gallery modality and the query modality of each.
GALLERY_FOR = {"audio-to-video": "visual", "video-to-audio": "audio"}
QUERY_FOR = {"audio-to-video": "audio", "video-to-audio": "visual"}

#: The only metric avret uses: inner product of L2-normalised vectors, i.e. cosine similarity.
METRIC = "inner_product"

_REQUIRED_VERSIONS = ("avret", "faiss", "numpy", "python")


@dataclass
class IndexManifest:
    """Everything needed to decide whether an index directory may be used, without reading it.

    ``modality`` is the *gallery* modality: an index of ``"visual"`` embeddings answers
    audio-to-video queries, an index of ``"audio"`` embeddings answers video-to-audio queries.
    ``model_fingerprint`` is an opaque string chosen by the caller (sha256 of the model's weights
    and config); queries embedded by a model with another fingerprint live in another space and
    are refused.
    """

    modality: str
    dim: int
    count: int
    model_fingerprint: str
    factory: str = "Flat"
    metric: str = METRIC
    model_path: str | None = None
    dataset: str | None = None
    created_at: str = field(default_factory=utc_timestamp)
    versions: dict[str, str] = field(default_factory=lambda: library_versions(INDEX_LIBRARIES))
    #: Shards the index was built in (1: built in one piece); the result is always one FAISS index.
    shards: int = 1
    #: ``"index.ivfdata"`` when the inverted lists live on disk beside ``index.faiss``, else None.
    ivfdata: str | None = None
    #: ``--factory auto``: ``{"reason", "max_memory" (bytes or None), "estimated_bytes"}``.
    auto: dict[str, Any] | None = None
    #: nprobe tuning: ``{"nprobe", "k", "target_recall", "recall", "target_met", "sample_size", "seed", "curve"}``;
    #: a measured compressed choice adds ``k_factor`` (searches re-rank the top ``k x k_factor`` exactly
    #: from ``embeddings.npy``; absent: 1, no re-rank) and ``batch1_ms``, and ``nprobe`` may be null.
    tuning: dict[str, Any] | None = None
    #: What searched when the index was built: ``{"name": "faiss"|"torch", "device": "cpu"|"cuda", "precision"}``.
    backend: dict[str, Any] | None = None
    #: How long :meth:`~avret.index.store.AVIndex.build` took: ``{"seconds", "seconds_per_million"}`` (wall clock,
    #: choosing and tuning included; embedding the clips not). Kept as is by ``index add``/``remove``.
    build: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict, ``format_version`` first (the field a reader checks first)."""
        d = asdict(self)
        return {"format_version": d.pop("format_version"), **d}

    @classmethod
    def from_dict(cls, d: Any, source: str = MANIFEST_FILE) -> IndexManifest:
        """Validate a parsed ``manifest.json`` and build the manifest.

        ``source`` names the file in error messages. Raises :class:`IndexError_` with one line
        naming the file and field for anything missing, of the wrong type, or unknown.
        """
        if not isinstance(d, dict):
            raise IndexError_(f"{source}: expected a JSON object, got {type(d).__name__}")
        if "format_version" not in d:
            raise IndexError_(f"{source}: missing field 'format_version'")
        fv = d["format_version"]
        if fv != FORMAT_VERSION or isinstance(fv, bool):
            raise IndexError_(
                f"{source}: unknown format_version {fv!r}; this avret reads format_version "
                f"{FORMAT_VERSION}; rebuild the index with this avret"
            )
        missing = [
            k
            for k in ("modality", "dim", "count", "metric", "factory", "model_fingerprint",
                      "created_at", "versions")
            if k not in d
        ]
        if missing:
            raise IndexError_(f"{source}: missing field(s) {', '.join(repr(m) for m in missing)}")

        def _int(name: str, minimum: int) -> int:
            v = d[name]
            if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
                raise IndexError_(f"{source}: field '{name}' must be an integer >= {minimum}, got {v!r}")
            return v

        def _str(name: str, optional: bool = False) -> str | None:
            v = d.get(name)
            if v is None and optional:
                return None
            if not isinstance(v, str) or not v:
                raise IndexError_(f"{source}: field '{name}' must be a non-empty string, got {v!r}")
            return v

        modality = _str("modality")
        if modality not in MODALITIES:
            raise IndexError_(
                f"{source}: field 'modality' must be one of {list(MODALITIES)}, got {modality!r}"
            )
        metric = _str("metric")
        if metric != METRIC:
            raise IndexError_(f"{source}: field 'metric' must be {METRIC!r}, got {metric!r}")
        versions = d["versions"]
        if not isinstance(versions, dict) or not all(
            isinstance(versions.get(k), str) for k in _REQUIRED_VERSIONS
        ):
            raise IndexError_(
                f"{source}: field 'versions' must be an object with string entries "
                f"{list(_REQUIRED_VERSIONS)}, got {versions!r}"
            )
        shards = _int("shards", 1) if "shards" in d else 1
        ivfdata = _str("ivfdata", optional=True)
        if ivfdata is not None and ivfdata != IVFDATA_FILE:
            raise IndexError_(f"{source}: field 'ivfdata' must be {IVFDATA_FILE!r} or null, got {ivfdata!r}")
        auto, tuning = d.get("auto"), d.get("tuning")
        if auto is not None and not (isinstance(auto, dict) and isinstance(auto.get("reason"), str)):
            raise IndexError_(f"{source}: field 'auto' must be null or an object with a string 'reason', got {auto!r}")
        if tuning is not None:
            nprobe, recall, kf = ((tuning.get("nprobe", 0), tuning.get("recall"), tuning.get("k_factor", 1))
                                  if isinstance(tuning, dict) else (0, None, 0))

            def _count(v: Any) -> bool:
                return isinstance(v, int) and not isinstance(v, bool) and v >= 1

            if (not (nprobe is None or _count(nprobe)) or not _count(kf)
                    or not isinstance(recall, (int, float)) or isinstance(recall, bool) or not 0 <= recall <= 1):
                raise IndexError_(f"{source}: field 'tuning' must be null or an object with an integer 'nprobe' >= 1 "
                                  f"(null: no lists), an integer 'k_factor' >= 1 (re-rank depth) and a 'recall' "
                                  f"in [0, 1], got {tuning!r}")
        backend = d.get("backend")
        if backend is not None and not (isinstance(backend, dict) and isinstance(backend.get("name"), str)
                                        and isinstance(backend.get("device"), str)):
            raise IndexError_(f"{source}: field 'backend' must be null or an object with string 'name' and 'device', "
                              f"got {backend!r}")
        build = d.get("build")
        if build is not None and not (isinstance(build, dict) and all(
                isinstance(build.get(k), (int, float)) and not isinstance(build.get(k), bool) and build[k] >= 0
                for k in ("seconds", "seconds_per_million"))):
            raise IndexError_(f"{source}: field 'build' must be null or an object with numbers 'seconds' and "
                              f"'seconds_per_million' >= 0, got {build!r}")
        # Fields this version does not know are ignored: additions that do not change the meaning
        # of the known ones need no new format_version.
        return cls(
            format_version=fv,
            modality=modality,  # type: ignore[arg-type]
            dim=_int("dim", 1),
            count=_int("count", 1),
            metric=metric,  # type: ignore[arg-type]
            factory=_str("factory"),  # type: ignore[arg-type]
            model_fingerprint=_str("model_fingerprint"),  # type: ignore[arg-type]
            model_path=_str("model_path", optional=True),
            dataset=_str("dataset", optional=True),
            created_at=_str("created_at"),  # type: ignore[arg-type]
            versions={str(k): str(v) for k, v in versions.items()},
            shards=shards,
            ivfdata=ivfdata,
            auto=auto,
            tuning=tuning,
            backend=backend,
            build=build,
        )
