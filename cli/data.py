"""``avret data``: build data sets from real material (``make-av-digits``)."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import user_errors
from .options import seed_option

app = typer.Typer(help="Data sets from real recordings and images (av-digits).", no_args_is_help=True)


@app.callback()
def _data() -> None:
    """Data set commands (a group, so that ``make-av-digits`` stays a sub-command)."""


@app.command("make-av-digits")
@user_errors
def make_av_digits_cmd(
    out: Path = typer.Option(..., "--out", help="Folder to write (media/*.mp4, manifest.csv, av_digits.json)."),
    fsdd: Path | None = typer.Option(
        None, "--fsdd", help="FSDD recordings folder (or its parent). Default: $AVRET_FSDD, else "
        "../shared/data/fsdd/recordings beside the repository."
    ),
    seed: int = seed_option(0, "--seed", "Image split and image choice seed (0 .. 2^32-1)."),
    limit_per_class: int | None = typer.Option(
        None, "--limit-per-class", help="Keep N recordings per digit in each split (a small subset).", min=1
    ),
    frames: int = typer.Option(4, "--frames", help="Video frames per clip (spread over the recording).",
                               min=1, max=1000),
    size: int = typer.Option(64, "--size", help="Picture width and height in pixels (even, 16 .. 1024).",
                             min=16, max=1024),
    workers: int | None = typer.Option(None, "--workers", help="Rendering processes (default: CPU count, max 8; "
                                       "0 or 1 renders in this process).", min=0, max=64),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out even if it is not an earlier "
                                   "av-digits output."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
) -> None:
    """Render one mp4 per FSDD recording (the recording + a same-digit handwritten image) and the manifest.

    Audio and picture are paired by digit class (as in AV-MNIST), not by recording. Train/test follow
    FSDD's official split (takes 0-4 test); train and test images are disjoint. Feed the result to
    `avret features extract --media OUT/media --labels OUT/manifest.csv`.
    """
    from avret.data.av_digits import make_av_digits

    from .progress import progress_bar

    if progress:
        with progress_bar("av-digits") as update:
            report = make_av_digits(fsdd, out, seed=seed, frames=frames, size=size, limit_per_class=limit_per_class,
                                    workers=workers, overwrite=overwrite, progress=lambda d, t: update(d, t))
    else:
        report = make_av_digits(fsdd, out, seed=seed, frames=frames, size=size, limit_per_class=limit_per_class,
                                workers=workers, overwrite=overwrite)
    typer.echo(f"wrote {report.n_clips} clips ({report.counts['train']} train, {report.counts['test']} test) "
               f"to {out} in {report.seconds:.1f} s ({report.workers} workers)")
