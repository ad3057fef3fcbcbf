"""Progress bars on stderr (so ``--json`` output on stdout stays clean)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

_console = Console(stderr=True)


@contextlib.contextmanager
def progress_bar(description: str, total: int | None = None) -> Iterator[Callable[..., None]]:
    """Yield ``update(done, total=None, info="")`` that drives one bar."""
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[info]}")]
    with Progress(*columns, console=_console, transient=False) as prog:
        task = prog.add_task(description, total=total, info="")

        def update(done: int, total: int | None = None, info: str = "") -> None:
            prog.update(task, completed=done, total=total if total is not None else prog.tasks[0].total, info=info)

        yield update


def status(message: str) -> None:
    """One line of status on stderr."""
    _console.print(message, highlight=False)
