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

# Files that an earlier output of each kind holds (kept for readers that look for outputs; the
# same-kind check of :func:`check_output` uses :func:`output_kind`, which reads what the files say).
RUN_MARKERS = ("run.json", "step1.json", "teacher/config.json", "train_state/key.json", "training.json")
INDEX_MARKERS = ("visual/manifest.json", "audio/manifest.json")

#: The marker file at the root of every output directory avret writes: ``{"kind": ..., "format": 1}``.
OUTPUT_MARKER = ".avret-output.json"
OUTPUT_FORMAT = 1
#: The kinds of output (the ``kind`` of :data:`OUTPUT_MARKER`, and of an eval report's JSON).
RUN_KIND = "avret.retrieval-run"
SENTIMENT_RUN_KIND = "avret.sentiment-run"
INDEX_KIND = "avret.index"
FEATURES_KIND = "avret.features"
REPORT_KIND = "avret.eval-report"
KIND_NAMES = {RUN_KIND: "retrieval run directory", SENTIMENT_RUN_KIND: "sentiment run directory",
              INDEX_KIND: "index root", FEATURES_KIND: "features folder", REPORT_KIND: "eval report"}
#: The marker file inside every temporary directory avret makes; crash recovery removes only those.
TEMP_MARKER = ".avret-temporary"


def holds_output(path: str | os.PathLike[str], markers: tuple[str, ...]) -> bool:
    """Whether ``path`` holds one of ``markers`` (file names)."""
    return any((Path(path) / m).is_file() for m in markers)


def read_json_object(path: Path) -> dict[str, Any] | None:
    """The JSON object in regular file ``path`` (at most 16 MiB), else None (absent, not JSON, not an object)."""
    try:
        if not path.is_file() or path.is_symlink() or path.stat().st_size > 16 << 20:
            return None
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def mark_output(directory: str | os.PathLike[str], kind: str) -> None:
    """Write the :data:`OUTPUT_MARKER` of an output directory of ``kind``."""
    (Path(directory) / OUTPUT_MARKER).write_text(json.dumps({"kind": kind, "format": OUTPUT_FORMAT}) + "\n",
                                                 encoding="utf-8")


def output_kind(path: str | os.PathLike[str]) -> str | None:
    """The kind of avret output directory ``path`` is, else None (not an output of avret's).

    The rule: the ``kind`` in its :data:`OUTPUT_MARKER` (index roots, features folders, a distill run
    being written) or in its ``run.json`` (runs); for outputs of earlier versions (neither), what their
    own record says: a ``run.json`` (or, when that is damaged, a ``model/config.json``) object with a
    ``model_type`` (``sentiment-*``: a sentiment run, else a retrieval run), the resumable state of
    ``distill`` (``step1.json``, ``teacher/config.json``, ``train_state/key.json``: a retrieval run),
    an index manifest object with a ``format_version`` (``visual|audio/manifest.json``), an
    ``extract_config.json`` object with a
    ``config`` or a ``shards/settings.json`` object (a features folder). File names alone never count.
    """
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return None
    marker = read_json_object(path / OUTPUT_MARKER)
    if marker is not None and isinstance(marker.get("kind"), str):
        return marker["kind"]
    run = read_json_object(path / "run.json")
    if run is not None and run.get("kind") in (RUN_KIND, SENTIMENT_RUN_KIND):
        return run["kind"]
    model = read_json_object(path / "model" / "config.json")  # a run whose run.json is damaged: its model says
    for record in (run, model):
        if record is not None and isinstance(record.get("model_type"), str):
            return SENTIMENT_RUN_KIND if record["model_type"].startswith("sentiment") else RUN_KIND
    if any(read_json_object(path / m) is not None for m in ("step1.json", "teacher/config.json",
                                                             "train_state/key.json")):
        return RUN_KIND
    if any("format_version" in (read_json_object(path / m) or {}) for m in INDEX_MARKERS):
        return INDEX_KIND
    if "config" in (read_json_object(path / "extract_config.json") or {}) or \
            read_json_object(path / "shards" / "settings.json") is not None:
        return FEATURES_KIND
    return None


def is_report(path: str | os.PathLike[str]) -> bool:
    """Whether file ``path`` is an earlier eval report (``avret eval`` / ``avret sentiment eval`` --json-out):
    a JSON object with ``"kind": "avret.eval-report"``, or, from earlier versions, one with the keys of
    a retrieval report (``dataset``, ``split``, ``rows``) or of a sentiment report (``model``, ``split``,
    ``metrics``)."""
    doc = read_json_object(Path(path))
    if doc is None:
        return False
    if "kind" in doc:
        return doc["kind"] == REPORT_KIND
    return {"dataset", "split", "rows"} <= doc.keys() or {"model", "split", "metrics"} <= doc.keys()


def check_inputs(path: Path, option: str, reads: tuple[str | os.PathLike[str] | None, ...]) -> None:
    """Refuse an output ``path`` that is, holds or lies inside one of ``reads`` (the command's inputs)."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):
        raise AvretError(f"{option} {path}: cannot resolve the path (a symlink loop?); "
                         f"choose another {option}") from None
    for inp in reads:
        if inp is None or str(inp) == "":
            continue
        try:
            src = Path(inp).resolve()
        except (OSError, RuntimeError):
            continue
        if resolved == src or resolved in src.parents or src in resolved.parents:
            raise AvretError(f"{option} {path}: it is, holds or lies inside {inp}, which this command reads; "
                             f"choose another {option}")


def check_path_name(path: Path, option: str) -> None:
    """Refuse a path the file system cannot hold (a name over 255 bytes, a path over 4095 bytes, a NUL)."""
    raw = os.fsencode(str(path))
    if b"\0" in raw:
        raise AvretError(f"{option}: the path contains a NUL byte; expected a file system path")
    if len(os.fsencode(str(path.absolute()))) > 4095:
        raise AvretError(f"{option}: the path is {len(raw)} bytes long; expected at most 4095 bytes")
    for part in path.parts:
        if len(os.fsencode(part)) > 255:
            raise AvretError(f"{option}: a path component is {len(os.fsencode(part))} bytes long "
                             "(expected at most 255); choose a shorter name")


def check_output(path: str | os.PathLike[str], kind: str, markers: tuple[str, ...] = (), *, overwrite: bool = False,
                 reads: tuple[str | os.PathLike[str] | None, ...] = (), option: str = "--out") -> None:
    """Refuse an output location whose replacement could lose something of the user's.

    ``path`` may be new, an empty directory, or an earlier output of the same ``kind`` (one of the
    ``*_KIND`` constants: :func:`output_kind` says so; or, for a kind without one, it holds one of
    ``markers``); anything else — a regular file, a directory of other files or of another kind — is
    refused with a one-line :class:`AvretError` unless ``overwrite``. ``.``, ``..``, ``/`` and the
    current directory's ancestors are refused even with ``overwrite``. ``reads`` are the command's own
    inputs (a model, a data set, a frames file, a labels CSV): an output that is, holds or lies inside
    one of them is always refused. A location that cannot be written (read-only, forbidden) is refused
    too (:func:`check_writable`). Call it before any work is done, so a refused command has spent
    nothing and written nothing.
    """
    path = Path(path)
    check_path_name(path, option)
    check_inputs(path, option, reads)
    resolved = path.resolve()
    if path.name in ("", ".", "..") or resolved == Path(resolved.anchor) or resolved == Path.cwd().resolve() \
            or resolved in Path.cwd().resolve().parents:
        raise AvretError(f"{option} {path}: is the current directory, one of its parents or the root; "
                         f"choose a new directory for {option}")
    name = KIND_NAMES.get(kind, kind)
    if (path.exists() or path.is_symlink()) and not overwrite:
        hint = f"choose another {option}, or pass --overwrite to replace it"
        if not path.is_dir() or path.is_symlink():
            raise AvretError(f"{option} {path}: exists and is not a directory; refusing to replace it ({hint})")
        same = output_kind(path) == kind if kind in KIND_NAMES else holds_output(path, markers)
        if not is_vacant(path) and not same:
            found = output_kind(path)
            what = f"it is a {KIND_NAMES.get(found, found)}" if found else "it carries no avret output marker"
            raise AvretError(f"{option} {path}: exists and is not an earlier {name} ({what}); "
                             f"refusing to replace it ({hint})")
    check_writable(path)


def check_report_out(path: str | os.PathLike[str], *, overwrite: bool = False,
                     reads: tuple[str | os.PathLike[str] | None, ...] = (), option: str = "--json-out") -> None:
    """The output policy of a JSON report (``--json-out``): ``path`` may be new or an earlier eval report
    (:func:`is_report`); another regular file only with ``overwrite``. Never: a symlink (it is not
    followed out), a directory, a FIFO or device, a path inside one of ``reads`` (the model it
    evaluates). Refused in one line before any work."""
    path = Path(path)
    check_path_name(path, option)
    check_inputs(path, option, reads)
    if path.is_symlink():
        raise AvretError(f"{option} {path}: is a symbolic link; refusing to write through it (give the path "
                         "of a regular file)")
    if path.exists():
        if not path.is_file():
            kind = "is a directory" if path.is_dir() else "exists and is not a regular file (a FIFO or device)"
            raise AvretError(f"{option} {path}: {kind}; expected the path of a JSON report to write")
        if not overwrite and not is_report(path):
            raise AvretError(f"{option} {path}: exists and is not an earlier eval report; refusing to replace "
                             f"it (choose another {option}, or pass --overwrite)")
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
            if pid is not None and not pid_alive(pid) and own_temporary(dead):
                remove_temporary(dead)
        try:
            probe = make_temp_dir(d, f".{path.name}.tmp-{os.getpid()}-probe-")
            remove_temporary(probe)
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


def make_temp_dir(parent: str | os.PathLike[str], prefix: str) -> Path:
    """A new temporary directory ``PREFIX<random>`` in ``parent`` carrying avret's :data:`TEMP_MARKER`
    (what crash recovery looks for: a look-alike name without it is never removed)."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        (tmp / TEMP_MARKER).write_text(f"avret temporary of process {os.getpid()}\n", encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return tmp


def own_temporary(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a temporary directory avret made: it carries :data:`TEMP_MARKER`, or it is
    an empty directory (what :func:`remove_temporary` killed after the marker leaves; nothing to lose)."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        return False
    if (path / TEMP_MARKER).is_file():
        return True
    try:
        return not any(path.iterdir())
    except OSError:
        return False


def remove_temporary(path: str | os.PathLike[str]) -> None:
    """Remove an avret temporary directory, its :data:`TEMP_MARKER` last (a removal killed half-way
    leaves a directory that is still recognised as avret's)."""
    path = Path(path)
    try:
        children = list(path.iterdir())
    except OSError:
        return
    for child in children:
        if child.name == TEMP_MARKER:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                child.unlink()
    with contextlib.suppress(OSError):
        (path / TEMP_MARKER).unlink()
    with contextlib.suppress(OSError):
        path.rmdir()


def is_vacant(path: str | os.PathLike[str]) -> bool:
    """Whether directory ``path`` holds nothing of anybody's: only (empty) directories and temporaries
    of dead avret writers (``.NAME.tmp-<pid>-*`` / ``.NAME.old-<pid>-*`` directories carrying avret's
    :data:`TEMP_MARKER`; a look-alike name alone is somebody's file).

    A command killed right after creating its output directory (a resumable ``distill``) leaves such a
    directory; it may be written again like an empty one.
    """
    def dead_temp(dirpath: str, name: str) -> bool:
        pid = temp_owner(name)
        return pid is not None and not pid_alive(pid) and own_temporary(os.path.join(dirpath, name))

    for dirpath, dirs, files in os.walk(path):
        links = [d for d in dirs if os.path.islink(os.path.join(dirpath, d))]
        if files or links:
            return False
        dirs[:] = [d for d in dirs if not dead_temp(dirpath, d)]  # a dead writer's temporary: garbage
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
    """``.NAME.<kind>-<pid>-*`` sibling directories of ``final`` that carry avret's :data:`TEMP_MARKER`,
    with the pid of the process that made them (a look-alike without the marker is not ours)."""
    out = []
    for p in final.parent.glob(f".{glob_escape(final.name)}.{kind}-*"):
        pid = p.name[len(f".{final.name}.{kind}-"):].split("-", 1)[0]
        if pid.isdigit() and own_temporary(p):
            out.append((p, int(pid)))
    return out


def glob_escape(name: str) -> str:
    """``name`` with glob metacharacters escaped."""
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def recover_output(final: str | os.PathLike[str]) -> None:
    """Repair what a process killed inside :func:`atomic_dir` left around ``final``.

    The replace is two renames (old output aside, new output in). A crash between them leaves no
    ``final`` but a complete old output in ``.NAME.old-<pid>-*/x``: it is moved back. Temporaries
    of dead processes (``.NAME.tmp-<pid>-*``, ``.NAME.old-<pid>-*`` directories that carry avret's
    :data:`TEMP_MARKER`) are removed; those of live processes, and anything without the marker
    (a user's ``.idx.old-notes/``), are left alone. Called before every atomic write and by readers.
    """
    final = Path(final)
    if not final.parent.is_dir():
        return
    for old, pid in _leftovers(final, "old"):
        if pid is not None and pid_alive(pid):
            continue
        if not final.exists() and (old / "x").exists():
            os.replace(old / "x", final)
        remove_temporary(old)
    for tmp, pid in _leftovers(final, "tmp"):
        if not pid_alive(pid):
            remove_temporary(tmp)
    if final.is_dir() and not final.is_symlink() and (final / TEMP_MARKER).is_file():
        (final / TEMP_MARKER).unlink()  # renamed into place, killed before its marker was removed


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
        if pid is None or pid_alive(pid) or not own_temporary(p):
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
        tmp = make_temp_dir(final.parent, f".{final.name}.tmp-{os.getpid()}-")
        with disk_errors(final, cleanup=lambda: remove_temporary(tmp)):
            tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes 0700; outputs follow the user's umask
            yield tmp  # the block writes beside the marker (readers of the tree skip TEMP_MARKER)
            fsync_tree(tmp)
            if final.exists() or final.is_symlink():
                if not overwrite:
                    raise FileExistsError(f"{final} already exists")
                old = make_temp_dir(final.parent, f".{final.name}.old-{os.getpid()}-")
                os.replace(final, old / "x")
                os.replace(tmp, final)
                fsync_dir(final.parent)
                remove_temporary(old)
            else:
                os.replace(tmp, final)
                fsync_dir(final.parent)
            (final / TEMP_MARKER).unlink()  # the output carries no marker (recover_output removes a stray one)


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
        tmp_dir = make_temp_dir(final.parent, f".{final.name}.tmp-{os.getpid()}-")
        tmp = tmp_dir / "x"
        with disk_errors(final, cleanup=lambda: remove_temporary(tmp_dir)):
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~current_umask())
            with open(fd, mode) as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, final)
            remove_temporary(tmp_dir)


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
        stage = make_temp_dir(out_dir, f"{COMMIT_STAGE_PREFIX}{os.getpid()}-")
        with disk_errors(out_dir, cleanup=lambda: remove_temporary(stage)):
            stage.chmod(0o777 & ~current_umask())
            yield stage
            install = sorted(f.name for f in stage.iterdir() if f.name != TEMP_MARKER)
            if last not in install:
                raise AvretError(f"{out_dir}: commit without its '{last}'")
            mode = 0o666 & ~current_umask()
            for f in stage.iterdir():
                if f.name != TEMP_MARKER:
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
    remove_temporary(commit)


def recover_commits(out_dir: str | os.PathLike[str]) -> None:
    """Finish what a killed :func:`commit_files` left in ``out_dir``.

    A committed set (``.final-commit-<pid>-*`` with its ``plan.json``) of a dead process is moved
    into place; an uncommitted staging directory of a dead process is removed (the old set is still
    complete). Those of live processes, and look-alikes without avret's :data:`TEMP_MARKER`, are
    left alone.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return
    for prefix in (COMMIT_PREFIX, COMMIT_STAGE_PREFIX):
        for d in sorted(out_dir.glob(f"{prefix}*"), key=lambda p: p.stat().st_mtime):
            pid = d.name[len(prefix):].split("-", 1)[0]
            if not pid.isdigit() or pid_alive(int(pid)) or not own_temporary(d):
                continue
            if prefix == COMMIT_PREFIX and (d / COMMIT_PLAN).is_file():
                _apply_commit(out_dir, d)
            else:
                remove_temporary(d)


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
