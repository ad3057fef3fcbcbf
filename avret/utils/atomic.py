"""Atomic output: write to a temporary sibling, rename into place only when complete.

A failed or interrupted command therefore never leaves a half-written file or directory behind
(the brief's rule for bad input), and an existing output is only replaced by a complete new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from avret.errors import AvretError

# What marks a directory as an earlier output of each kind (any one of these files).
RUN_MARKERS = ("run.json", "step1.json", "teacher/config.json", "train_state/key.json", "training.json")
INDEX_MARKERS = ("visual/manifest.json", "audio/manifest.json")


def check_output(path: str | os.PathLike[str], kind: str, markers: tuple[str, ...], *, overwrite: bool = False,
                 reads: tuple[str | os.PathLike[str] | None, ...] = ()) -> None:
    """Refuse an output location whose replacement could lose something of the user's.

    ``path`` may be new, an empty directory, or an earlier output of the same ``kind`` (it holds one
    of ``markers``); anything else — a regular file, a directory of other files, ``.`` — is refused
    with a one-line :class:`AvretError` unless ``overwrite``. ``reads`` are the command's own inputs
    (the model an index is built from): an output that is, holds or lies inside one of them is always
    refused.
    Call it before any work is done, so a refused command has spent nothing and written nothing.
    """
    path = Path(path)
    resolved = path.resolve()
    for inp in reads:
        if inp is None:
            continue
        src = Path(inp).resolve()
        if resolved == src or resolved in src.parents or src in resolved.parents:
            raise AvretError(f"--out {path}: it is, holds or lies inside {inp}, which this command reads; "
                             "choose another --out")
    if not path.exists() and not path.is_symlink():
        return
    if overwrite:
        return
    hint = "choose another --out, or pass --overwrite to replace it"
    if not path.is_dir():
        raise AvretError(f"--out {path}: exists and is not a directory; refusing to replace it ({hint})")
    if not any(path.iterdir()):
        return
    if any((path / m).is_file() for m in markers):
        return
    raise AvretError(f"--out {path}: exists and is not an earlier {kind} (it holds none of "
                     f"{', '.join(markers)}); refusing to replace it ({hint})")


def current_umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike[str], overwrite: bool = True) -> Iterator[Path]:
    """Yield a fresh temporary directory that becomes ``final`` when the block succeeds.

    On any exception the temporary directory is removed and ``final`` is untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700; outputs follow the user's umask
    try:
        yield tmp
        if final.exists():
            if not overwrite:
                raise FileExistsError(f"{final} already exists")
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, old / "x")
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike[str], mode: str = "w") -> Iterator[Any]:
    """Open a temporary sibling of ``final`` for writing; rename it into place on success."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(0o666 & ~current_umask())  # mkstemp makes 0600; outputs follow the user's umask
    try:
        with open(tmp, mode) as fh:
            yield fh
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_file(path, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False, default=_json_default)
        fh.write("\n")


def save_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Save an array as ``.npy``, atomically."""
    with atomic_file(path, "wb") as fh:
        np.save(fh, array)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
