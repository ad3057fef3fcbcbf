"""The ``avret`` command: a thin layer that parses arguments and calls the library.

Start-up imports only typer and the command modules, which import the library inside each command,
so ``avret --help`` and every command load only what they use (``avret search`` by clip id never
imports torch).
"""

from __future__ import annotations

from typing import Any

import typer
from typer.core import TyperGroup

from cli import data, distill, features, index, search, sentiment, serve, train
from cli import eval as eval_cmd
from cli.common import EXIT_USER_ERROR

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
