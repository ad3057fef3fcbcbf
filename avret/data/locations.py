"""Where the real data sets live by default: ``$AVRET_DATA``, else ``../shared/data`` from the working directory.

The data are never copied into the project: a checkout keeps them beside it (``../shared/data``), and an
installed avret looks there relative to the directory it runs in, or wherever ``$AVRET_DATA`` points.
Nothing is resolved relative to avret's own files, so a wheel installed in a virtual environment never
looks inside ``<venv>/lib/...``.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "AVRET_DATA"


def shared_data_dir() -> Path:
    """``$AVRET_DATA`` when set, else ``../shared/data`` relative to the current working directory."""
    env = os.environ.get(DATA_ENV)
    return Path(env) if env else Path.cwd().parent / "shared" / "data"


def where_from() -> str:
    """How :func:`shared_data_dir` was found, for error messages."""
    if os.environ.get(DATA_ENV):
        return f"${DATA_ENV}"
    return f"../shared/data from the working directory; set {DATA_ENV} to use another place"
