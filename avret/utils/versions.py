"""The one recorder of software versions (run directories, index manifests, feature folders) and of time."""

from __future__ import annotations

import importlib.metadata as metadata
import platform
import sys
from datetime import datetime, timezone

#: name recorded -> (module, distributions that may provide it). A module already imported reports its
#: own ``__version__``; otherwise the installed distribution's metadata is read (nothing is imported).
_SOURCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "avret": ("avret", ("avret",)),
    "numpy": ("numpy", ("numpy",)),
    "torch": ("torch", ("torch",)),
    "torchaudio": ("torchaudio", ("torchaudio",)),
    "torchvision": ("torchvision", ("torchvision",)),
    "faiss": ("faiss", ("faiss-cpu", "faiss-gpu-cu12", "faiss-gpu-cu11", "faiss-gpu", "faiss")),
    "open_clip_torch": ("open_clip", ("open_clip_torch",)),
    "av": ("av", ("av",)),
    "transformers": ("transformers", ("transformers",)),
}

#: What each kind of output records.
RUN_LIBRARIES = ("avret", "numpy", "torch", "faiss")
INDEX_LIBRARIES = ("avret", "faiss", "numpy")
FEATURES_LIBRARIES = ("avret", "torch", "torchaudio", "torchvision", "open_clip_torch", "av", "numpy")


def _version(name: str) -> str | None:
    module, dists = _SOURCES.get(name, (name, (name,)))
    loaded = sys.modules.get(module)
    if loaded is not None and isinstance(getattr(loaded, "__version__", None), str):
        return loaded.__version__
    for dist in dists:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def library_versions(names: tuple[str, ...] = RUN_LIBRARIES) -> dict[str, str | None]:
    """``python`` and the versions of ``names`` (None for one that is not installed)."""
    return {"python": platform.python_version(), **{n: _version(n) for n in names}}


def utc_timestamp() -> str:
    """Now, ISO 8601 in UTC, seconds precision."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
