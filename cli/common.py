"""Shared CLI plumbing: user errors become one line on stderr and exit code 2."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer

from avret.errors import AvretError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_USER_ERROR = 2


def user_errors(fn: F) -> F:
    """Decorate a typer command: an :class:`AvretError` prints ``error: <line>`` and exits 2."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AvretError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(EXIT_USER_ERROR) from None

    return wrapper  # type: ignore[return-value]


def echo_json(obj: Any) -> None:
    """Print ``obj`` as JSON on stdout (for ``--json`` outputs)."""
    import json

    from avret.utils.atomic import json_default

    sys.stdout.write(json.dumps(obj, indent=2, default=json_default) + "\n")
