"""``avret train``: train retrieval towers (or fit the CCA baseline) without distillation."""

from __future__ import annotations

from pathlib import Path

import typer

from cli.common import require_int, user_errors
from cli.options import (
    DataOpt,
    DatasetOpt,
    DeviceOpt,
    OverwriteOpt,
    PrecisionOpt,
    SynthClipsOpt,
    SynthSeedOpt,
    open_dataset,
)
from cli.progress import progress_bar, status


@user_errors
def train(
    out: Path = typer.Option(Path("runs/towers"), "--out", help="Run directory to write"),
    model_type: str = typer.Option("towers", "--model-type", help="towers | cca"),
    dataset: str = DatasetOpt,
    data: Path | None = DataOpt,
    synth_clips: int | None = SynthClipsOpt,
    synth_seed: int | None = SynthSeedOpt,
    seed: int = typer.Option(0, "--seed"),
    epochs: int | None = typer.Option(None, "--epochs", help="Epochs at most (default: 80, the towers' TrainConfig)"),
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    overwrite: bool = OverwriteOpt,
) -> None:
    """Train a retrieval model on the train split (model selection on a val split carved from it)."""
    from avret.io import read_run
    from avret.train.runs import train_run
    from avret.train.towers import TrainConfig
    from avret.utils.atomic import RUN_MARKERS, check_output

    check_output(out, "run directory", RUN_MARKERS, overwrite=overwrite)  # before the data set is built
    epochs = TrainConfig.epochs if epochs is None else epochs
    require_int(epochs, "--epochs")
    ds = open_dataset(dataset, data, synth_clips, synth_seed)
    status(ds.describe())
    cfg = TrainConfig(seed=seed, epochs=epochs, device=device, precision=precision)
    with progress_bar(f"train {model_type}", total=epochs) as update:
        run = train_run(ds, out, model_type, cfg, overwrite=overwrite,
                        progress=lambda e, n, r: update(e, n, f"val mAP {r['val_map']:.4f}"))
    typer.echo(f"wrote {run} (device {read_run(run).get('device', 'cpu')})")
