"""Atomic output: write to a temporary sibling, rename into place only when complete.

A failed or interrupted command therefore never leaves a half-written file or directory behind
(the brief's rule for bad input), and an existing output is only replaced by a complete new one.
A location that cannot be written is refused before any work (:func:`check_writable`, called by
:func:`check_output`), and a write that fails on a full, read-only or forbidden disk becomes one
:class:`OutputError` line naming the output (:func:`disk_errors`, used by :func:`atomic_dir` and
:func:`atomic_file`).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
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
    A location that cannot be written (read-only, forbidden) is refused too (:func:`check_writable`).
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
    if (path.exists() or path.is_symlink()) and not overwrite:
        hint = "choose another --out, or pass --overwrite to replace it"
        if not path.is_dir():
            raise AvretError(f"--out {path}: exists and is not a directory; refusing to replace it ({hint})")
        if not is_vacant(path) and not holds_output(path, markers):
            raise AvretError(f"--out {path}: exists and is not an earlier {kind} (it holds none of "
                             f"{', '.join(markers)}); refusing to replace it ({hint})")
    check_writable(path)


class OutputError(AvretError):
    """An output could not be written: its location is full, read-only or forbidden (one line, exit 2)."""

    def __init__(self, final: str | os.PathLike[str], reason: str) -> None:
        super().__init__(f"{final}: cannot write ({reason}); the previous content, if any, is unchanged")
        self.final, self.reason = Path(final), reason


# errno values that mean "this location cannot be written" (a user's problem, reported in one line)
DISK_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
               errno.EPERM: "operation not permitted"}


def check_writable(path: str | os.PathLike[str]) -> None:
    """Refuse, before any work, an output ``path`` whose parent (or ``path``, an existing directory
    that a resumable command writes into) cannot be written: a probe file is created and removed.

    The parent may not exist yet: its nearest existing ancestor is probed. Raises a one-line
    :class:`AvretError` ("--out PATH: cannot write in DIR (read-only file system)").
    """
    path = Path(path)
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    where = [parent] + ([path] if path.is_dir() and not path.is_symlink() else [])
    for d in where:
        for dead in d.glob(f".{glob_escape(path.name)}.tmp-*-probe-*"):  # probes of killed processes
            pid = temp_owner(dead.name)
            if pid is not None and not pid_alive(pid):
                dead.unlink(missing_ok=True)
        try:
            fd, probe = tempfile.mkstemp(prefix=f".{path.name}.tmp-{os.getpid()}-probe-", dir=d)
            os.close(fd)
            os.unlink(probe)
        except OSError as exc:
            reason = DISK_ERRNOS.get(exc.errno or 0, exc.strerror or str(exc))
            raise AvretError(f"--out {path}: cannot write in {d} ({reason}); choose another --out") from None


def disk_error(exc: BaseException, final: str | os.PathLike[str]) -> OutputError | None:
    """The one-line :class:`OutputError` for a write of ``final`` that failed on a full, read-only or
    forbidden location, else None (a bug, to be raised as it is).

    Libraries that write from C (torch.save, safetensors, faiss) raise their own exception types on a
    full disk; those count when they say so or when the file system holding ``final`` is (nearly)
    full (call this before removing the temporary).
    """
    final = Path(final)
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return OutputError(final, DISK_ERRNOS[exc.errno])
    if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
        # a forbidden *input* read inside the block is not this output's problem
        where = Path(os.path.abspath(os.fsdecode(exc.filename))) if exc.filename else None
        if where is None or where == final.absolute().parent or final.absolute().parent in where.parents:
            return OutputError(final, DISK_ERRNOS[exc.errno])
        return None
    if isinstance(exc, Exception) and not isinstance(exc, AvretError) and (
            "No space left on device" in str(exc) or disk_full(final.parent)):
        return OutputError(final, DISK_ERRNOS[errno.ENOSPC])
    return None


def disk_full(directory: str | os.PathLike[str], margin: int = 1 << 20) -> bool:
    """Whether the file system holding ``directory`` has less than ``margin`` bytes left for users."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < margin


def is_vacant(path: str | os.PathLike[str]) -> bool:
    """Whether directory ``path`` holds nothing of anybody's: only (empty) directories and temporaries
    of dead avret writers (``.NAME.tmp-<pid>-*`` / ``.NAME.old-<pid>-*``).

    A command killed right after creating its output directory (a resumable ``distill``) leaves such a
    directory; it may be written again like an empty one.
    """
    def dead_temp(name: str) -> bool:
        pid = temp_owner(name)
        return pid is not None and not pid_alive(pid)

    for dirpath, dirs, files in os.walk(path):
        links = [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]
        if not all(dead_temp(name) for name in files + links):
            return False
        dirs[:] = [d for d in dirs if d not in links and not dead_temp(d)]  # a dead writer's temporary: garbage
    return True


def temp_owner(name: str) -> int | None:
    """The pid in an avret temporary's name (``.NAME.tmp-<pid>...`` / ``.NAME.old-<pid>...``), else None."""
    if not name.startswith("."):
        return None
    for kind in (".tmp-", ".old-"):
        head, sep, tail = name.rpartition(kind)
        if sep and head:
            pid = tail.split("-", 1)[0]
            return int(pid) if pid.isdigit() else None
    return None


def current_umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def pid_alive(pid: int | None) -> bool:
    """Whether process ``pid`` is alive (this process counts, None does not): a live writer's temporaries stay."""
    if pid is None:
        return False
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
        if pid is not None and pid_alive(pid):
            continue
        if not final.exists() and (old / "x").exists():
            os.replace(old / "x", final)
        shutil.rmtree(old, ignore_errors=True)
    for tmp, pid in _leftovers(final, "tmp"):
        if pid is not None and not pid_alive(pid):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)


def sweep_temporaries(directory: str | os.PathLike[str]) -> None:
    """Remove the temporaries of dead processes (``.NAME.tmp-<pid>-*``, ``.NAME.old-<pid>-*``) in
    ``directory``, whatever NAME is.

    :func:`recover_output` repairs one output's name; a writer of uniquely named files (the shards of
    ``features extract``) calls this instead, so that a file it was writing when it was killed does
    not stay forever. An ``.old-`` temporary is removed only when its output is back in place.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return
    finals = {}
    for p in directory.glob(".*"):
        pid = temp_owner(p.name)
        if pid is None or pid_alive(pid):
            continue
        final = p.name[1:].rpartition(".old-" if ".old-" in p.name else ".tmp-")[0]
        finals[final] = None
    for final in finals:
        recover_output(directory / final)


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
    A full, read-only or forbidden location raises a one-line :class:`OutputError` naming ``final``.
    """
    final = Path(final)
    with disk_errors(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        recover_output(final)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent))
        with disk_errors(final, cleanup=lambda: shutil.rmtree(tmp, ignore_errors=True)):
            tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700; outputs follow the user's umask
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


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike[str], mode: str = "w") -> Iterator[Any]:
    """Open a temporary sibling of ``final`` for writing; rename it into place on success.

    A full, read-only or forbidden location raises a one-line :class:`OutputError` naming ``final``.
    """
    final = Path(final)
    if final.is_dir():
        raise AvretError(f"{final}: is a directory; expected the path of a file to write")
    with disk_errors(final):
        final.parent.mkdir(parents=True, exist_ok=True)
        recover_output(final)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.tmp-{os.getpid()}-", dir=final.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        with disk_errors(final, cleanup=lambda: tmp.unlink(missing_ok=True)):
            tmp.chmod(0o666 & ~current_umask())  # mkstemp makes 0600; outputs follow the user's umask
            with open(tmp, mode) as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)


@contextlib.contextmanager
def disk_errors(final: str | os.PathLike[str], cleanup: Callable[[], Any] | None = None) -> Iterator[None]:
    """Turn a failure to write ``final`` on a full, read-only or forbidden location into one
    :class:`OutputError` line naming ``final`` (an inner output's error is re-worded for the outer one).
    Other exceptions pass unchanged. On any exception ``cleanup()`` (e.g. removing a temporary) runs
    first -- after the disk has been looked at, since the cleanup frees space.
    """
    try:
        yield
    except BaseException as exc:
        err = OutputError(final, exc.reason) if isinstance(exc, OutputError) else disk_error(exc, final)
        if cleanup is not None:
            cleanup()
        if err is None:
            raise
        raise err from None


#: Name prefixes of :func:`commit_files`' staging and committed directories, and its plan file.
COMMIT_STAGE_PREFIX = ".final-tmp-"
COMMIT_PREFIX = ".final-commit-"
COMMIT_PLAN = "plan.json"


@contextlib.contextmanager
def commit_files(out_dir: str | os.PathLike[str], *, last: str, remove: tuple[str, ...] = ()) -> Iterator[Path]:
    """Write several files into ``out_dir`` as one unit: yields a staging directory to write them in.

    On a clean exit every staged file is fsynced, the staging directory ``.final-tmp-<pid>-*`` is
    renamed to ``.final-commit-<pid>-*`` with a ``plan.json`` (the commit point), and the files are
    moved to their final names: ``last`` (e.g. the manifest that says the set is complete) is removed
    first and installed last; ``remove`` names files of an older set that the new one does not have.
    A process killed at any point leaves the old complete set, the new complete set, or no ``last``
    -- never a ``last`` that disagrees with the other files; :func:`recover_commits` (called by the
    next writer and by readers) finishes a dead writer's commit. Files follow the user's umask.
    """
    out_dir = Path(out_dir)
    with disk_errors(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        recover_commits(out_dir)
        stage = Path(tempfile.mkdtemp(prefix=f"{COMMIT_STAGE_PREFIX}{os.getpid()}-", dir=out_dir))
        with disk_errors(out_dir, cleanup=lambda: shutil.rmtree(stage, ignore_errors=True)):
            stage.chmod(0o777 & ~current_umask())
            yield stage
            install = sorted(f.name for f in stage.iterdir())
            if last not in install:
                raise AvretError(f"{out_dir}: commit without its '{last}'")
            mode = 0o666 & ~current_umask()
            for f in stage.iterdir():
                f.chmod(mode)
            plan = {"install": install, "remove": [n for n in remove if n not in install], "last": last}
            (stage / COMMIT_PLAN).write_text(json.dumps(plan), encoding="utf-8")
            fsync_tree(stage)
            commit = out_dir / f"{COMMIT_PREFIX}{stage.name[len(COMMIT_STAGE_PREFIX):]}"
            os.rename(stage, commit)  # the commit point
            fsync_dir(out_dir)
        _apply_commit(out_dir, commit)


def _apply_commit(out_dir: Path, commit: Path) -> None:
    """Move a committed set into place (idempotent: a re-run after a crash finishes the rest)."""
    plan = json.loads((commit / COMMIT_PLAN).read_text(encoding="utf-8"))
    last = plan["last"]
    if (commit / last).exists():  # not installed yet: take the old ``last`` away first
        (out_dir / last).unlink(missing_ok=True)
        fsync_dir(out_dir)
    for name in plan["install"]:
        if name != last and (commit / name).exists():
            os.replace(commit / name, out_dir / name)
    for name in plan["remove"]:
        (out_dir / name).unlink(missing_ok=True)
    fsync_dir(out_dir)
    if (commit / last).exists():
        os.replace(commit / last, out_dir / last)
        fsync_dir(out_dir)
    shutil.rmtree(commit, ignore_errors=True)


def recover_commits(out_dir: str | os.PathLike[str]) -> None:
    """Finish what a killed :func:`commit_files` left in ``out_dir``.

    A committed set (``.final-commit-<pid>-*`` with its ``plan.json``) of a dead process is moved
    into place; an uncommitted staging directory of a dead process is removed (the old set is still
    complete). Those of live processes are left alone.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return
    for prefix in (COMMIT_PREFIX, COMMIT_STAGE_PREFIX):
        for d in sorted(out_dir.glob(f"{prefix}*"), key=lambda p: p.stat().st_mtime):
            pid = d.name[len(prefix):].split("-", 1)[0]
            if pid_alive(int(pid) if pid.isdigit() else None):
                continue
            if prefix == COMMIT_PREFIX and (d / COMMIT_PLAN).is_file():
                _apply_commit(out_dir, d)
            else:
                shutil.rmtree(d, ignore_errors=True)


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
