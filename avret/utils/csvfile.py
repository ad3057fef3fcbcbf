"""One place that turns a malformed or non-UTF-8 CSV into one :class:`DataError` line."""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Callable, Iterator
from pathlib import Path

from avret.errors import DataError


@contextlib.contextmanager
def csv_errors(path: str | Path, expected: str, line: Callable[[], int | None] = lambda: None) -> Iterator[None]:
    """Reading ``path`` inside this block: a ``csv.Error`` or a ``UnicodeDecodeError`` becomes one line
    naming the file, the line when ``line()`` knows it, and what was ``expected``."""
    try:
        yield
    except csv.Error as exc:
        where = f"line {line()}: " if line() else ""
        raise DataError(f"{path}: {where}malformed CSV ({exc}); expected {expected}") from None
    except UnicodeDecodeError as exc:
        after = f" after line {line()}" if line() else ""
        raise DataError(f"{path}: not UTF-8 text ({exc.reason}{after}); expected {expected}") from None


def require_regular_file(path: str | Path, expected: str) -> Path:
    """``path`` when it is a regular file (a symlink to one counts); a missing path, a directory, a FIFO
    or a device is one :class:`DataError` line (a FIFO would block the reader forever)."""
    import os
    import stat

    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise DataError(f"{path}: no such file; expected {expected}") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc}); expected {expected}") from None
    if not stat.S_ISREG(mode):
        raise DataError(f"{path}: not a regular file (a directory, FIFO, socket or device); expected {expected}")
    return path
