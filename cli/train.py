"""``avret train``: train retrieval towers (or fit the CCA baseline) without distillation.

``torchrun --nproc-per-node N .venv/bin/avret train ...`` trains with N processes (the library
detects torchrun's environment; :mod:`avret.train.distributed`); status lines, the progress bar and
the final line come from rank 0 only.
"""

from __future__ import annotations

from pathlib import Path

import typer

from .common import require_int, user_errors
from .options import (
    DataOpt,
    DatasetOpt,
    DeviceOpt,
    OverwriteOpt,
    PrecisionOpt,
    SynthClipsOpt,
    SynthSeedOpt,
    inputs,
    open_dataset,
    seed_option,
)
from .progress import rank0_output, result


@user_errors
def train(
    out: Path = typer.Option(Path("runs/towers"), "--out", help="Run directory to write"),
    model_type: str = typer.Option("towers", "--model-type", help="towers | cca"),
    dataset: str = DatasetOpt,
    data: Path | None = DataOpt,
    synth_clips: int | None = SynthClipsOpt,
    synth_seed: int | None = SynthSeedOpt,
    seed: int = seed_option(),
    epochs: int | None = typer.Option(None, "--epochs", help="Epochs at most (default: 80, the towers' TrainConfig)"),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Clips per mini-batch per process "
                                          "(default: 256; under torchrun the global batch is N × this)"),
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    overwrite: bool = OverwriteOpt,
) -> None:
    """Train a retrieval model on the train split (model selection on a val split carved from it)."""
    from avret.io import read_run
    from avret.train.runs import train_run
    from avret.train.tower_training import TrainConfig
    from avret.utils.atomic import RUN_KIND, check_output

    check_output(out, RUN_KIND, overwrite=overwrite, reads=inputs(dataset, data))  # before the data set is built
    epochs = TrainConfig.epochs if epochs is None else epochs
    batch_size = TrainConfig.batch_size if batch_size is None else batch_size
    require_int(epochs, "--epochs")
    require_int(batch_size, "--batch-size")
    say, bar, main = rank0_output()
    ds = open_dataset(dataset, data, synth_clips, synth_seed)
    say(ds.describe())
    cfg = TrainConfig(seed=seed, epochs=epochs, batch_size=batch_size, device=device, precision=precision)
    with bar(f"train {model_type}", total=epochs) as update:
        run = train_run(ds, out, model_type, cfg, overwrite=overwrite,
                        progress=lambda e, n, r: update(e, n, f"val mAP {r['val_map']:.4f}"))
    if main:
        meta = read_run(run)
        world = meta.get("world_size", 1)
        result(f"wrote {run} (device {meta.get('device', 'cpu')}" + (f", {world} processes)" if world > 1 else ")"))
    from avret.train.distributed import shutdown

    shutdown(synchronize=True)  # under torchrun: every rank leaves the process group together
