"""``avret distill``: teacher → step 1 → step 2 into the retrieval towers (resumable run directory)."""

from __future__ import annotations

from pathlib import Path

import typer

from avret.distill.configs import MIKDConfig, MSDConfig, VideoAdviserConfig

from .common import require_int, user_errors
from .options import (
    DataOpt,
    DatasetOpt,
    DeviceOpt,
    FramesOpt,
    OverwriteOpt,
    PrecisionOpt,
    SynthClipsOpt,
    SynthSeedOpt,
    inputs,
    open_dataset,
    seed_option,
    with_frames,
)
from .progress import rank0_output, result


@user_errors
def distill(
    method: str = typer.Option("videoadviser", "--method", help="none | kd | videoadviser | msd | mi-kd"),
    out: Path = typer.Option(Path("runs/distill"), "--out", help="Run directory (resumable)"),
    dataset: str = DatasetOpt,
    data: Path | None = DataOpt,
    frames: Path | None = FramesOpt,
    synth_clips: int | None = SynthClipsOpt,
    synth_seed: int | None = SynthSeedOpt,
    clip_model: str | None = typer.Option(None, "--clip-model", help="open_clip architecture (or config .json)"),
    clip_weights: str | None = typer.Option(None, "--clip-weights", help="Local CLIP checkpoint (never downloaded)"),
    prompts: str = typer.Option("per-clip", "--prompts", help="per-clip (video-enhanced) | shared (CoOp)"),
    pooling: str = typer.Option("mean", "--pooling", help="mean | transformer"),
    teacher_audio: bool = typer.Option(False, "--teacher-audio", help="Condition prompts on audio too"),
    teacher_epochs: int = typer.Option(20, "--teacher-epochs"),
    student_target: str = typer.Option(VideoAdviserConfig.student_target, "--student-target",
                                       help="pairwise | per-clip"),
    relevance_loss: str = typer.Option(VideoAdviserConfig.relevance_loss, "--relevance-loss",
                                       help="videoadviser pairwise step 2: bce | mse against the teacher's r_ij"),
    weight: float | None = typer.Option(None, "--weight", help="Weight of the distillation term "
                                        f"(default: videoadviser {VideoAdviserConfig.weight:g}, "
                                        "others the method's config)"),
    seed: int = seed_option(),
    epochs: int | None = typer.Option(None, "--epochs", help="Student (tower) epochs at most "
                                      "(default: 80, the towers' TrainConfig)"),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Towers' clips per mini-batch per process "
                                          "(default: 256; under torchrun the global batch is N × this)"),
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    overwrite: bool = OverwriteOpt,
    msd_weighting: str = typer.Option(MSDConfig.weighting, "--msd-weighting",
                                      help="msd: uniform | population | instance | learned"),
    msd_fusion: str = typer.Option(MSDConfig.fusion, "--msd-fusion", help="msd teacher fusion: sum | concat"),
    msd_teacher_epochs: int = typer.Option(MSDConfig.teacher_epochs, "--msd-teacher-epochs"),
    mi_weights: str = typer.Option(",".join(str(x) for x in MIKDConfig.lambdas), "--mi-weights",
                                   help="mi-kd: l1,l2,l3 (InfoNCE teacher-student, InfoNCE teacher-aux, adversarial)"),
) -> None:
    """Distil a teacher into the audio/visual towers; the deployed towers are the same for every method."""
    from avret.distill.configs import configure, parse_lambdas
    from avret.distill.methods import method_entry
    from avret.distill.pipeline import DistillConfig, run_distillation
    from avret.io import read_run
    from avret.train.tower_training import TrainConfig
    from avret.utils.atomic import RUN_KIND, check_output

    check_output(out, RUN_KIND, overwrite=overwrite,  # before the data set is built
                 reads=inputs(dataset, data, frames, clip_weights, clip_model))
    epochs = TrainConfig.epochs if epochs is None else epochs
    batch_size = TrainConfig.batch_size if batch_size is None else batch_size
    for value, option in ((epochs, "--epochs"), (teacher_epochs, "--teacher-epochs"),
                          (msd_teacher_epochs, "--msd-teacher-epochs"), (batch_size, "--batch-size")):
        require_int(value, option)
    # the chosen method's typed settings from its own flags; --weight omitted keeps the method's default
    flags: dict = {"weight": weight}
    if method == "videoadviser":
        flags.update(student_target=student_target, relevance_loss=relevance_loss)
    elif method == "msd":
        flags.update(weighting=msd_weighting, fusion=msd_fusion, teacher_epochs=msd_teacher_epochs)
    elif method == "mi-kd":
        flags.update(lambdas=parse_lambdas(mi_weights))
    method_config = configure(method_entry(method).config, **flags)
    say, bar, main = rank0_output()
    ds = with_frames(open_dataset(dataset, data, synth_clips, synth_seed), frames)
    say(ds.describe())
    cfg = DistillConfig(method=method, clip_model=clip_model, clip_weights=clip_weights,
                        prompt_conditioning=prompts, pooling=pooling, teacher_use_audio=teacher_audio,
                        teacher_epochs=teacher_epochs, method_config=method_config)
    before = _mtime(out / "run.json")
    with bar(f"distill ({method}) towers", total=epochs) as update:
        tcfg = TrainConfig(seed=seed, epochs=epochs, batch_size=batch_size, device=device, precision=precision)
        run = run_distillation(ds, out, cfg, tcfg, status=say, overwrite=overwrite,
                               progress=lambda e, n, r: update(e, n, f"val mAP {r['val_map']:.4f}"))
    if main:
        if before is not None and _mtime(run / "run.json") == before:
            result(f"{run}: already complete, nothing to do")
        else:
            result(f"wrote {run} (device {read_run(run).get('device', 'cpu')})")
    from avret.train.distributed import shutdown

    shutdown(synchronize=True)  # under torchrun: every rank leaves the process group together


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None
