"""``avret search audio-to-video | video-to-audio``: which videos sound like this, and vice versa.

Imports only typer at start-up; a clip-id query then opens the index and nothing else (no model,
no data set, no torch), see :class:`avret.index.searcher.Searcher`.
"""

from __future__ import annotations

from pathlib import Path

import typer

from .common import echo_json, user_errors
from .options import DEMO_INDEX, default_path
from .progress import status

app = typer.Typer(help="Cross-modal search over a built index.", no_args_is_help=True)


def _print(answer, as_json: bool) -> None:  # noqa: ANN001 - avret.index.searcher.SearchAnswer (imported lazily)
    if as_json:
        echo_json(answer.to_json())
        return
    for block in answer.to_records():
        qcls = f", class {block['query_class']}" if block["query_class"] is not None else ""
        typer.echo(f"query {block['query']} ({answer.direction}{qcls})")
        typer.echo(f"{'rank':>4}  {'clip_id':<24} {'score':>7}  class")
        for rec in block["results"]:
            mark = "" if rec["match"] is None else (" (match)" if rec["match"] else "")
            typer.echo(f"{rec['rank']:>4}  {rec['clip_id']:<24} {rec['score']:>7.4f}  {rec['class'] or ''}{mark}")
        marks = [rec["match"] for rec in block["results"]]
        if marks and None not in marks:  # the query's class is known: its own precision at k
            typer.echo(f"P@{len(marks)} {sum(marks) / len(marks):.2f} ({sum(marks)} of {len(marks)} results "
                       f"share the query's class)")


def _command(direction: str):
    @user_errors
    def run(
        query: str = typer.Option(..., "--query", "-q",
                                  help="Clip id(s, comma-separated), a .npy feature file, or a media file"),
        index: Path | None = typer.Option(None, "--index", help="Index root (from avret index build) "
                                          "[default: runs/demo/index, written by `make demo`]"),
        k: int = typer.Option(10, "-k", "--k", help="Number of results"),
        classes: str | None = typer.Option(None, "--classes", help="Only results of these classes (comma-separated)"),
        model: Path | None = typer.Option(None, "--model", help="Model (default: the one recorded in the index)"),
        dataset: str | None = typer.Option(None, "--dataset", help="Take clip-id queries from this data set "
                                           "(features + tower) instead of the index's stored embeddings"),
        data: Path | None = typer.Option(None, "--data", help="Community h5 path for --dataset vegas/ave"),
        features: Path | None = typer.Option(None, "--features", help="Features dir for media queries "
                                             "(default: the one recorded in the index)"),
        max_seconds: float = typer.Option(60.0, "--max-seconds", help="Media queries: use at most this many "
                                          "seconds of the file (the rest is not decoded)"),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | torch-cpu | torch-cuda "
                                   "(docs/gpu.md)"),
        precision: str = typer.Option("fp32", "--precision", help="Torch backend's gallery scan: fp32 | bf16 | fp16"),
        as_json: bool = typer.Option(False, "--json", help="Print JSON"),
    ) -> None:
        from avret.errors import QueryError
        from avret.index.searcher import Searcher

        if not max_seconds > 0:
            raise QueryError(f"--max-seconds {max_seconds}: expected a positive number of seconds")
        searcher = Searcher(default_path(index, DEMO_INDEX, "index"), model=model, features=features,
                            max_query_seconds=max_seconds, device=device, precision=precision)
        wanted = [c.strip() for c in classes.split(",") if c.strip()] if classes is not None else None
        answer = searcher.search(direction, query, k, classes=wanted, dataset=dataset,
                                 data=str(data) if data else None)
        gallery = searcher.gallery(direction)
        status(f"searched on device {gallery.device} ({gallery.backend}, {gallery.precision})")
        _print(answer, as_json)

    run.__doc__ = {"audio-to-video": "Which videos sound like this? Query audio, gallery visual.",
                   "video-to-audio": "Which sounds fit this video? Query visual, gallery audio."}[direction]
    return run


app.command("audio-to-video")(_command("audio-to-video"))
app.command("video-to-audio")(_command("video-to-audio"))
