"""``avret search audio-to-video | video-to-audio``: which videos sound like this, and vice versa."""

from __future__ import annotations

from pathlib import Path

import typer

from avret.index.query import SearchAnswer, search
from cli.common import echo_json, user_errors

app = typer.Typer(help="Cross-modal search over a built index.", no_args_is_help=True)


def _print(answer: SearchAnswer, as_json: bool) -> None:
    if as_json:
        echo_json({"direction": answer.direction, "queries": answer.to_records()})
        return
    for block in answer.to_records():
        typer.echo(f"query {block['query']} ({answer.direction})")
        typer.echo(f"{'rank':>4}  {'clip_id':<24} {'score':>7}  class")
        for rec in block["results"]:
            typer.echo(f"{rec['rank']:>4}  {rec['clip_id']:<24} {rec['score']:>7.4f}  {rec.get('class', '')}")


def _command(direction: str):
    @user_errors
    def run(
        query: str = typer.Option(..., "--query", "-q",
                                  help="Clip id(s, comma-separated), a .npy feature file, or a media file"),
        index: Path = typer.Option(Path("runs/index"), "--index", help="Index root (from avret index build)"),
        k: int = typer.Option(10, "-k", "--k", help="Number of results"),
        model: Path | None = typer.Option(None, "--model", help="Model (default: the one recorded in the index)"),
        dataset: str | None = typer.Option(None, "--dataset", help="Data set of clip-id queries (default: index's)"),
        data: Path | None = typer.Option(None, "--data", help="Community h5 path for --dataset vegas/ave"),
        features: Path | None = typer.Option(None, "--features", help="Features dir for media queries"),
        as_json: bool = typer.Option(False, "--json", help="Print JSON"),
    ) -> None:
        answer = search(index, direction, query, k, model=model, dataset=dataset,
                        data=str(data) if data else None, media_config=features)
        _print(answer, as_json)

    run.__doc__ = {"audio-to-video": "Which videos sound like this? Query audio, gallery visual.",
                   "video-to-audio": "Which sounds fit this video? Query visual, gallery audio."}[direction]
    return run


app.command("audio-to-video")(_command("audio-to-video"))
app.command("video-to-audio")(_command("video-to-audio"))
