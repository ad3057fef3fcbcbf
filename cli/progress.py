"""Progress bars and status lines on stderr (so ``--json`` output on stdout stays clean).

On a terminal a bar is live (rich). When stderr is not a terminal (a log file, a pipe, a test),
no bar is drawn while the work runs: a bar that finishes prints one plain summary line (when it
moved), and a
command that fails prints nothing but its one-line error (``cli.common.user_errors``). Status lines
are never wrapped, so one status is one line in a log.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

_console = Console(stderr=True)


@contextlib.contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator[Callable[..., None]]:
    """Yield ``update(done, total=None, info="")`` that drives one bar."""
    if not _console.is_terminal:
        last = {"done": None, "total": total, "info": ""}

        def record(done: int, total: int | None = None, info: str = "") -> None:
            last.update(done=done, info=info, **({"total": total} if total is not None else {}))

        yield record  # an exception propagates from here: nothing is printed
        if last["done"] is None:  # no work was done (e.g. a complete run): no summary
            return
        of = f"/{last['total']}" if last["total"] is not None else ""
        status(f"{description}: {last['done']}{of}" + (f" {last['info']}" if last["info"] else ""))
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
    before that (``cli.common.user_errors``), so a bad input gives exactly one line on stderr.
    """
    if _console.is_terminal:
        _console.print(message, highlight=False, markup=False, soft_wrap=True)
        return
    if not _held_since:
        _held_since.append(time.monotonic())
    _held.append(message)
    if time.monotonic() - _held_since[0] >= HOLD_SECONDS:
        flush_status()


def flush_status() -> None:
    """Write the held status lines (a command succeeded, or has run long enough)."""
    for line in _held:
        _console.print(line, highlight=False, markup=False, soft_wrap=True)
    _held.clear()


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
