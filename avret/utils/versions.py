"""Library versions recorded in run directories and index manifests."""

from __future__ import annotations

import platform
from datetime import datetime, timezone


def library_versions() -> dict[str, str]:
    """Versions of avret and the libraries whose behaviour its outputs depend on."""
    import numpy
    import torch

    import avret

    versions = {"avret": avret.__version__, "numpy": numpy.__version__, "torch": torch.__version__,
                "python": platform.python_version()}
    try:
        import faiss

        versions["faiss"] = faiss.__version__
    except ImportError:  # pragma: no cover - faiss is a hard dependency
        pass
    return versions


def utc_timestamp() -> str:
    """Now, ISO 8601 in UTC, seconds precision."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
