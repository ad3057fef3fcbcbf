"""Options shared by several commands (data set selection)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:  # imported in the functions: the CLI starts without loading avret.data
    from avret.data import AVDataset

DatasetOpt = typer.Option("vegas-synth", "--dataset", help="vegas-synth | vegas | ave | a path (.h5 or folder)")
ModelDatasetOpt = typer.Option(None, "--dataset", help="vegas-synth | vegas | ave | a path (.h5 or folder); "
                               "default: the data set the --model run was trained on")
DataOpt = typer.Option(None, "--data", help="Path of the community h5 file for --dataset vegas/ave")
#: Seeds are unsigned 32-bit integers (numpy's and torch's generators take them): one range for every seed.
MAX_SEED = 2**32 - 1
#: Clips a synthetic data set may have (its features are held in memory).
MAX_SYNTH_CLIPS = 2_000_000


def seed_option(default: int | None = 0, name: str = "--seed", help: str = "Random seed (0 .. 2^32-1)") -> typer.Option:
    """The one validator of seeds: an integer in 0 .. 2^32-1 (else one line, exit 2)."""
    return typer.Option(default, name, help=help, min=0, max=MAX_SEED)


SynthClipsOpt = typer.Option(None, "--synth-clips", help="vegas-synth: number of clips (default 6000)", min=2,
                             max=MAX_SYNTH_CLIPS)
SynthSeedOpt = seed_option(None, "--synth-seed", "vegas-synth: generator seed (default 0; 0 .. 2^32-1)")
OverwriteOpt = typer.Option(False, "--overwrite", help="Replace --out even if it is not an earlier output of "
                            "this command (by default only an earlier output of the same kind is replaced)")
DeviceOpt = typer.Option("auto", "--device", help="auto | cpu | cuda (auto: CUDA when torch sees a GPU)")
PrecisionOpt = typer.Option("fp32", "--precision", help="fp32 | bf16 (bf16 autocast, CUDA only)")
FramesOpt = typer.Option(None, "--frames", help="Teacher frame embeddings for the data set: .npy (N,T,D) in row "
                         "order, .npz/.h5 with teacher_frames [teacher_mask, clip_ids], or a features folder")


def inputs(*values: str | Path | None) -> tuple[Path, ...]:
    """The command-line values that name existing files or folders (the inputs an output may not touch:
    :func:`avret.utils.atomic.check_output`'s ``reads``)."""
    out = []
    for v in values:
        if v is None or str(v) == "" or "\0" in str(v):
            continue
        try:
            if Path(v).exists() or Path(v).is_symlink():
                out.append(Path(v))
        except (OSError, ValueError):
            continue
    return tuple(out)


def open_dataset(dataset: str, data: Path | None, synth_clips: int | None, synth_seed: int | None) -> AVDataset:
    """Load the data set named on the command line."""
    from avret.data import SynthConfig, load_dataset

    synth = None
    if dataset == "vegas-synth" and (synth_clips is not None or synth_seed is not None):
        overrides = {k: v for k, v in (("n_clips", synth_clips), ("seed", synth_seed)) if v is not None}
        synth = SynthConfig(**overrides)
    return load_dataset(dataset, data, synth=synth)


def dataset_of_models(dataset: str | None, models: list[Path], synth_clips: int | None,
                      synth_seed: int | None) -> str:
    """``--dataset`` when given, else the data set the first ``--model`` run records, else vegas-synth."""
    if dataset is not None:
        return dataset
    if models and synth_clips is None and synth_seed is None:
        from avret.errors import ModelError
        from avret.io import RUN_FILE, model_dir, read_run

        model = model_dir(models[0])  # also repairs a run left aside by a writer killed mid-replace
        if any((d / RUN_FILE).is_file() for d in (models[0], models[0].parent)):
            recorded = read_run(models[0]).get("dataset")  # a damaged run.json is a one-line error
            if recorded is not None and not isinstance(recorded, str):
                raise ModelError(f"{model.parent / RUN_FILE}: field 'dataset' is {recorded!r}; "
                                 "expected a data-set reference")
            if recorded:
                return recorded
    return "vegas-synth"


def with_frames(ds: AVDataset, frames: Path | None) -> AVDataset:
    """``ds`` paired with ``--frames`` when given."""
    if frames is None:
        return ds
    from avret.data.frames import attach_teacher_frames

    return attach_teacher_frames(ds, frames)


# --------------------------------------------------------------------------- default paths
#: Where ``make demo`` (scripts/demo.sh) writes; the defaults of the commands that read an earlier
#: output point here, so the commands of the README work as printed after ``make demo``.
DEMO_DIR = Path("runs/demo")
DEMO_MODEL = DEMO_DIR / "videoadviser"
DEMO_INDEX = DEMO_DIR / "index"
_KINDS = {"model": ("run or model directory", "--model"), "index": ("index root", "--index")}


def existing_outputs(kind: str, under: Path = Path("runs"), depth: int = 3) -> list[Path]:
    """Earlier outputs of ``kind`` (``model``: run/model directories, ``index``: index roots) below ``under``."""
    from avret.utils.atomic import INDEX_MARKERS

    def holds(d: Path) -> bool:
        if kind == "index":
            return any((d / m).is_file() for m in INDEX_MARKERS)
        return (d / "run.json").is_file() or (d / "model" / "config.json").is_file()

    found: list[Path] = []
    level = [under] if under.is_dir() else []
    for _ in range(depth):
        nxt: list[Path] = []
        for d in level:
            try:
                children = sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))
            except OSError:
                continue
            for c in children:
                (found if holds(c) else nxt).append(c)
        level = nxt
    return found


def default_path(given: Path | None, default: Path, kind: str) -> Path:
    """``given``, or ``default`` when it exists; else a one-line error naming the outputs that do exist."""
    if given is not None:
        return given
    if default.exists():
        return default
    from avret.errors import AvretError

    what, option = _KINDS[kind]
    found = existing_outputs(kind)
    hint = (f"existing: {', '.join(str(p) for p in found[:5])}{' ...' if len(found) > 5 else ''}; pass one with "
            f"{option}") if found else f"run `make demo` first, or pass {option}"
    raise AvretError(f"{default}: no {what} here (the default, written by `make demo`); {hint}")
