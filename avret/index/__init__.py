"""Gallery indexes: one modality's embeddings in FAISS, saved as a self-describing directory.

An index directory holds ``manifest.json`` (:class:`IndexManifest`), ``metadata.json`` (clip
ids, labels, class names, in index row order) and ``index.faiss`` (the CPU version of the FAISS
index). Search is exact inner product by default (``IndexFlatIP``; the towers output
L2-normalised vectors, so scores are cosine similarities); any FAISS factory string may be given
instead. FAISS runs on the GPU automatically when the installed faiss sees one
(``faiss-gpu-cu12``), see :func:`resolve_device`. ``index_path_for`` finds the ``visual``/``audio``
sub-index of an index root. Details: :mod:`avret.index.store`.
"""

from avret.index.backend import resolve_device
from avret.index.manifest import (
    FORMAT_VERSION,
    INDEX_FILE,
    MANIFEST_FILE,
    METADATA_FILE,
    MODALITIES,
    IndexManifest,
)
from avret.index.store import AVIndex, SearchResult, index_path_for, read_index_manifest

__all__ = [
    "AVIndex",
    "FORMAT_VERSION",
    "INDEX_FILE",
    "IndexManifest",
    "MANIFEST_FILE",
    "METADATA_FILE",
    "MODALITIES",
    "SearchResult",
    "index_path_for",
    "read_index_manifest",
    "resolve_device",
]
