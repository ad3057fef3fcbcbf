"""Options shared by several commands (data set selection)."""

from __future__ import annotations

from pathlib import Path

import typer

from avret.data import AVDataset, SynthConfig, load_dataset

DatasetOpt = typer.Option("vegas-synth", "--dataset", help="vegas-synth | vegas | ave | a path (.h5 or folder)")
DataOpt = typer.Option(None, "--data", help="Path of the community h5 file for --dataset vegas/ave")
SynthClipsOpt = typer.Option(None, "--synth-clips", help="vegas-synth: number of clips (default 6000)")
SynthSeedOpt = typer.Option(None, "--synth-seed", help="vegas-synth: generator seed (default 0)")
FramesOpt = typer.Option(None, "--frames", help="Teacher frame embeddings for the data set: .npy (N,T,D) in row "
                         "order, .npz/.h5 with teacher_frames [teacher_mask, clip_ids], or a features folder")


def open_dataset(dataset: str, data: Path | None, synth_clips: int | None, synth_seed: int | None) -> AVDataset:
    """Load the data set named on the command line."""
    synth = None
    if dataset == "vegas-synth" and (synth_clips is not None or synth_seed is not None):
        overrides = {k: v for k, v in (("n_clips", synth_clips), ("seed", synth_seed)) if v is not None}
        synth = SynthConfig(**overrides)
    return load_dataset(dataset, data, synth=synth)


def with_frames(ds: AVDataset, frames: Path | None) -> AVDataset:
    """``ds`` paired with ``--frames`` when given."""
    if frames is None:
        return ds
    from avret.data.frames import attach_teacher_frames

    return attach_teacher_frames(ds, frames)
