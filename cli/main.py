"""The ``avret`` command: a thin layer that parses arguments and calls the library."""

from __future__ import annotations

import typer

from cli import distill, features, index, search, sentiment, train
from cli import eval as eval_cmd

app = typer.Typer(
    help="avret: audio-visual retrieval with multimodal knowledge distillation.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.command("train")(train.train)
app.command("distill")(distill.distill)
app.command("eval")(eval_cmd.evaluate)
app.add_typer(index.app, name="index")
app.add_typer(search.app, name="search")
app.add_typer(features.app, name="features")
app.add_typer(sentiment.app, name="sentiment")

if __name__ == "__main__":  # pragma: no cover
    app()
