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
