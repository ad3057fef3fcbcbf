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


def holds_output(path: str | os.PathLike[str], markers: tuple[str, ...]) -> bool:
    """Whether ``path`` holds one of ``markers``, i.e. is an earlier output of that kind."""
    return any((Path(path) / m).is_file() for m in markers)


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
    if holds_output(path, markers):
        return
    raise AvretError(f"--out {path}: exists and is not an earlier {kind} (it holds none of "
                     f"{', '.join(markers)}); refusing to replace it ({hint})")


def current_umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _leftovers(final: Path, kind: str) -> list[tuple[Path, int | None]]:
    """``.NAME.<kind>-<pid>-*`` siblings of ``final`` with the pid of the process that made them."""
    out = []
    for p in final.parent.glob(f".{glob_escape(final.name)}.{kind}-*"):
        pid = p.name[len(f".{final.name}.{kind}-"):].split("-", 1)[0]
        out.append((p, int(pid) if pid.isdigit() else None))
    return out


def glob_escape(name: str) -> str:
    """``name`` with glob metacharacters escaped."""
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def recover_output(final: str | os.PathLike[str]) -> None:
    """Repair what a process killed inside :func:`atomic_dir` left around ``final``.

    The replace is two renames (old output aside, new output in). A crash between them leaves no
    ``final`` but a complete old output in ``.NAME.old-<pid>-*/x``: it is moved back. Temporaries
    of dead processes (``.NAME.tmp-<pid>-*``, ``.NAME.old-<pid>-*``) are removed; those of live
    processes are left alone. Called before every atomic write and by the readers of outputs.
    """
    final = Path(final)
    if not final.parent.is_dir():
        return
    for old, pid in _leftovers(final, "old"):
        if pid is not None and _pid_alive(pid):
            continue
        if not final.exists() and (old / "x").exists():
            os.replace(old / "x", final)
        shutil.rmtree(old, ignore_errors=True)
    for tmp, pid in _leftovers(final, "tmp"):
        if pid is not None and not _pid_alive(pid):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root`` (so a renamed output survives a power loss)."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a directory
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike[str], overwrite: bool = True) -> Iterator[Path]:
    """Yield a fresh temporary directory that becomes ``final`` when the block succeeds.

    On any exception the temporary directory is removed and ``final`` is untouched. The new output
    is fsynced before it is renamed into place; leftovers of killed writers are repaired first
    (:func:`recover_output`), so ``final`` always holds the old complete output or the new one.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_output(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
    tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700; outputs follow the user's umask
    try:
        yield tmp
        fsync_tree(tmp)
        if final.exists() or final.is_symlink():
            if not overwrite:
                raise FileExistsError(f"{final} already exists")
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-{os.getpid()}-", dir=final.parent))
            os.replace(final, old / "x")
            os.replace(tmp, final)
            fsync_dir(final.parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
            fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike[str], mode: str = "w") -> Iterator[Any]:
    """Open a temporary sibling of ``final`` for writing; rename it into place on success."""
    final = Path(final)
    if final.is_dir():
        raise AvretError(f"{final}: is a directory; expected the path of a file to write")
    final.parent.mkdir(parents=True, exist_ok=True)
    recover_output(final)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.chmod(0o666 & ~current_umask())  # mkstemp makes 0600; outputs follow the user's umask
    try:
        with open(tmp, mode) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_file(path, "w") as fh:
        json.dump(obj, fh, indent=2, sort_keys=False, default=json_default)
        fh.write("\n")


def save_npy(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Save an array as ``.npy``, atomically."""
    with atomic_file(path, "wb") as fh:
        np.save(fh, array)


def json_default(obj: Any) -> Any:
    """``json.dumps`` fallback for avret's outputs: numpy/torch scalars and arrays, paths."""
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
