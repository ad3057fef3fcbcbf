"""Shared CLI plumbing: user errors become one line on stderr and exit code 2."""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from avret.errors import AvretError

from .progress import begin_command, drop_status, flush_status

F = TypeVar("F", bound=Callable[..., Any])

EXIT_USER_ERROR = 2


def user_errors(fn: F) -> F:
    """Decorate a typer command: an :class:`AvretError` prints ``error: <line>`` and exits 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        begin_command()
        try:
            out = fn(*args, **kwargs)
        except AvretError as exc:
            drop_status()  # status lines not yet written stay unwritten: the error is the one line
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except OSError as exc:
            line = path_error(exc)
            if line is None:
                flush_status()
                raise
            drop_status()
            typer.echo(f"error: {line}", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None
        except BaseException:
            flush_status()
            raise
        flush_status()
        return out

    return wrapper  # type: ignore[return-value]


def path_error(exc: OSError) -> str | None:
    """One line for an OSError that a user's path caused wherever it is opened (a name too long, a
    symlink loop), else None (not a user's error)."""
    import errno

    reasons = {errno.ENAMETOOLONG: "a path or file name too long for the file system (names: at most 255 "
                                   "bytes, paths: 4095)",
               errno.ELOOP: "a loop of symbolic links"}
    why = reasons.get(exc.errno or 0)
    if why is None:
        return None
    name = exc.filename if exc.filename is not None else "a path"
    shown = str(name)
    if len(shown) > 120:
        shown = shown[:60] + "..." + shown[-40:]
    return f"{shown}: {why}"


def require_int(value: int, option: str, minimum: int = 1) -> None:
    """One-line :class:`AvretError` (exit 2) unless ``value >= minimum``; call before any work."""
    if value < minimum:
        raise AvretError(f"{option} {value}: expected an integer >= {minimum}")


def require_number(value: float, option: str, low: float = 0.0, high: float = math.inf,
                   low_open: bool = False) -> None:
    """One-line :class:`AvretError` unless ``value`` is finite and in ``[low, high]`` (``(low, high]``)."""
    ok = math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        if math.isfinite(high):
            bound += f" and <= {high:g}"
        raise AvretError(f"{option} {value}: expected a finite number {bound}")


def echo_json(obj: Any) -> None:
    """Print ``obj`` as JSON on stdout (for ``--json`` outputs)."""
    import json

    from avret.utils.atomic import json_default

    sys.stdout.write(json.dumps(obj, indent=2, default=json_default) + "\n")
