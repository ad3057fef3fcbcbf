"""Progress bars and status lines on stderr (so ``--json`` output on stdout stays clean).

On a terminal a bar is live (rich). When stderr is not a terminal (a log file, a pipe, CI, nohup),
no bar is drawn: long work logs a plain progress line at most every :data:`LOG_EVERY_SECONDS`
(``extract: 120/3000 clips, 2.4/s, ETA 20m00s``), and a bar that finishes prints one summary line
(when it moved). A command that fails on a bad input prints nothing but its one-line error
(``avret_cli.common.user_errors``). Status lines are never wrapped, so one status is one line in a log.
``avret -q`` prints neither status nor progress; ``avret -v`` writes status lines at once.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

_console = Console(stderr=True)

#: On a non-terminal stderr, a running bar logs one progress line at most this often.
LOG_EVERY_SECONDS = 10.0
#: -1 quiet (results and errors only), 0 normal, 1 verbose (``avret -q`` / ``avret -v``).
_verbosity = [0]


def set_verbosity(level: int) -> None:
    """-1: no status or progress lines; 0: the default; 1: status lines at once and the info log."""
    _verbosity[0] = level
    if level > 0:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def progress_line(description: str, done: int, total: int | None, elapsed: float, unit: str = "") -> str:
    """``extract: 120/3000 clips, 2.40/s, ETA 20m00s`` (rate and ETA once something is done)."""
    line = f"{description}: {done}" + (f"/{total}" if total is not None else "") + (f" {unit}" if unit else "")
    if done > 0 and elapsed > 0:
        rate = done / elapsed
        line += f", {rate:.2f}/s"
        if total is not None and total >= done:
            line += f", ETA {_duration((total - done) / rate)}"
    return line


@contextlib.contextmanager
def progress_bar(description: str, total: int | None = None, unit: str = "") -> Iterator[Callable[..., None]]:
    """Yield ``update(done, total=None, info="")`` that drives one bar (a log line every 10 s off a terminal)."""
    if _verbosity[0] < 0:
        yield lambda *args, **kwargs: None
        return
    if not _console.is_terminal:
        start = time.monotonic()
        last = {"done": None, "total": total, "info": "", "logged": start}

        def record(done: int, total: int | None = None, info: str = "") -> None:
            last.update(done=done, info=info, **({"total": total} if total is not None else {}))
            now = time.monotonic()
            if now - last["logged"] >= LOG_EVERY_SECONDS:
                last["logged"] = now
                flush_status()  # the work has run long enough: held status lines go out first, in order
                _write(progress_line(description, done, last["total"], now - start, unit)
                       + (f" {info}" if info else ""))

        yield record  # an exception propagates from here: nothing more is printed
        if last["done"] is None:  # no work was done (e.g. a complete run): no summary
            return
        of = f"/{last['total']}" if last["total"] is not None else ""
        status(f"{description}: {last['done']}{of}" + (f" {unit}" if unit else "")
               + (f" {last['info']}" if last["info"] else ""))
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[info]}")]
    with Progress(*columns, console=_console, transient=False) as prog:
        task = prog.add_task(description, total=total, info="")

        def update(done: int, total: int | None = None, info: str = "") -> None:
            prog.update(task, completed=done, total=total if total is not None else prog.tasks[0].total, info=info)

        yield update


#: On a non-terminal stderr, status lines are held this long before they are written, so that a
#: command refused for a bad input within that time prints its one error line and nothing else.
HOLD_SECONDS = 5.0
_held: list[str] = []
_held_since: list[float] = []


def status(message: str) -> None:
    """One line of status on stderr (never wrapped, no markup: paths may hold brackets).

    On a terminal it is printed at once. Otherwise (a log, a pipe, a test) lines are held until the
    command succeeds or has run for :data:`HOLD_SECONDS`, and dropped when it fails on a user error
    before that (``avret_cli.common.user_errors``), so a bad input gives exactly one line on stderr.
    """
    if _verbosity[0] < 0:
        return
    if _console.is_terminal or _verbosity[0] > 0:
        _write(message)
        return
    if not _held_since:
        _held_since.append(time.monotonic())
    _held.append(message)
    if time.monotonic() - _held_since[0] >= HOLD_SECONDS:
        flush_status()


def _write(line: str) -> None:
    _console.print(line, highlight=False, markup=False, soft_wrap=True)


def flush_status() -> None:
    """Write the held status lines (a command succeeded, or has run long enough)."""
    for line in _held:
        _write(line)
    _held.clear()


def result(message: str) -> None:
    """A command's result line on stdout, after every status line held so far (so a log reads in order)."""
    import typer

    flush_status()
    sys.stderr.flush()
    typer.echo(message)


def begin_command() -> None:
    """A command starts: its own status lines are held from now (nothing of an earlier command carries over)."""
    _held.clear()
    _held_since.clear()


def drop_status() -> None:
    """Forget the held status lines (the command failed on a user error before they were written)."""
    _held.clear()
    _held_since.clear()


def rank0_output() -> tuple[Callable[[str], None], Callable[..., contextlib.AbstractContextManager], bool]:
    """``(status, progress_bar, is_main)``: the real ones on rank 0 (or alone), silent ones on other ranks."""
    from avret.train.distributed import is_main_process

    if is_main_process():
        return status, progress_bar, True

    @contextlib.contextmanager
    def silent_bar(description: str, total: int | None = None) -> Iterator[Callable[..., None]]:
        yield lambda *args, **kwargs: None

    return (lambda _message: None), silent_bar, False
