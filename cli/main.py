"""The ``avret`` command: a thin layer that parses arguments and calls the library."""

from __future__ import annotations

import typer

from cli import eval as eval_cmd
from cli import index, search, train

app = typer.Typer(
    help="avret: audio-visual retrieval with multimodal knowledge distillation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("train")(train.train)
app.command("eval")(eval_cmd.evaluate)
app.add_typer(index.app, name="index")
app.add_typer(search.app, name="search")

if __name__ == "__main__":  # pragma: no cover
    app()
