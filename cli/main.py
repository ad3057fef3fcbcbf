"""The ``avret`` command: a thin layer that parses arguments and calls the library.

Start-up imports only typer and the command modules, which import the library inside each command,
so ``avret --help`` and every command load only what they use (``avret search`` by clip id never
imports torch).
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from . import data, distill, features, index, search, sentiment, serve, train
from . import eval as eval_cmd
from .common import EXIT_USER_ERROR
from .progress import set_verbosity

# typer ships its own copy of click; its exception classes are reached through the public BadParameter.
_USAGE_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
_CLICK_EXCEPTION = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class OneLineUsageError(_CLICK_EXCEPTION):
    """A command-line usage error shown as one line, ``error: ...``, exit code 2 (as every user error)."""

    exit_code = EXIT_USER_ERROR

    def show(self, file: Any = None) -> None:
        typer.echo(f"error: {self.format_message()} (see --help)", err=True)


class OneLineErrors(TyperGroup):
    """Turns click's multi-line usage errors (unknown option, bad value, missing option) into one line."""

    def _one_line(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return call(*args, **kwargs)
        except _USAGE_ERROR as exc:
            where = f"{exc.ctx.command_path}: " if exc.ctx is not None else ""
            raise OneLineUsageError(where + " ".join(exc.format_message().split())) from None

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        return self._one_line(super().make_context, *args, **kwargs)

    def invoke(self, ctx: Any) -> Any:
        return self._one_line(super().invoke, ctx)


app = typer.Typer(
    cls=OneLineErrors,
    help="avret: audio-visual retrieval with multimodal knowledge distillation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
def _print_version(value: bool) -> None:
    if value:
        from avret import __version__

        typer.echo(f"avret {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only results and errors: no status or progress lines."),
    verbose: bool = typer.Option(False, "--verbose", "-v",
                                 help="Status lines at once (also in logs) and the library's info log."),
) -> None:
    """avret: audio-visual retrieval with multimodal knowledge distillation."""
    if quiet and verbose:
        raise OneLineUsageError("--quiet and --verbose exclude each other")
    set_verbosity(-1 if quiet else 1 if verbose else 0)


app.command("train")(train.train)
app.command("distill")(distill.distill)
app.command("eval")(eval_cmd.evaluate)
app.add_typer(index.app, name="index")
app.add_typer(search.app, name="search")
app.add_typer(features.app, name="features")
app.add_typer(sentiment.app, name="sentiment")
app.command("serve")(serve.serve)
app.add_typer(data.app, name="data")

if __name__ == "__main__":  # pragma: no cover
    app()
