"""A distillation run: teacher → step 1 → step 2 → deployed towers, in a resumable run directory.

::

    RUN/
      teacher/          the VideoAdviser teacher (config.json + model.safetensors; frozen CLIP by reference)
      step1.json        the fitted relevance head (temperature) and teacher validation scores
      model/            the deployed towers (identical architecture for every method)
      run.json          method and its typed settings, seed, data set, timings, selection history, versions

Each piece is written atomically as soon as it is done; re-running the same command skips the
finished pieces (a finished teacher is reused when its settings match), so an interrupted run
resumes. The test split is never used: the teacher, the relevance head and the towers are all
selected on the same validation split carved from ``train``.

Under torchrun (``torchrun --nproc-per-node N avret distill ...``) every rank reads ``out`` and trains
the teacher, step 1 and a method's own teacher (MSD) identically, in parallel, on its own device (the
same seed, the same data); only rank 0 writes (after a barrier, so that no rank is still reading what
it replaces). When the towers start, every parameter and buffer of the towers and of the auxiliary
loss (the teacher's targets, its relevance head, MI-KD's teacher) is broadcast from rank 0, so all
ranks distil from rank 0's teacher bit for bit; the towers are then trained data-parallel with the
global batch (:mod:`avret.train.tower_training`). ``out`` must be on a file system every rank sees.
``run.json`` records ``world_size``; a resume needs the same ``world_size`` (the global batch is part
of the settings).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from avret.data.dataset import AVDataset
from avret.distill.configs import MethodConfig, check_config, config_from_record
from avret.distill.context import MethodContext, TeacherOutputs
from avret.distill.methods import METHODS, NEEDS_TEACHER, build_method, method_entry
from avret.errors import AvretError, ModelError
from avret.io import FORMAT_VERSION, verify_run, write_run
from avret.models.towers import TowerConfig
from avret.train import distributed as dist
from avret.train.loop import STATE_FILE
from avret.train.runs import run_metadata, towers_metadata
from avret.train.tower_training import TrainConfig, train_towers
from avret.utils.atomic import OUTPUT_MARKER, RUN_KIND, check_output, mark_output, output_kind, write_json
from avret.utils.device import resolve_device
from avret.utils.seeding import seed_everything

Status = Callable[[str], None]


@dataclass
class DistillConfig:
    """Settings of a distillation run (recorded in ``run.json``)."""

    method: str = "videoadviser"
    clip_model: str | None = None  # None: the small synthetic CLIP (synthetic data only)
    clip_weights: str | None = None  # None: random-init (synthetic data only)
    prompt_conditioning: str = "per-clip"
    pooling: str = "mean"
    teacher_use_audio: bool = False
    teacher_epochs: int = 20
    teacher_lr: float = 2e-3
    teacher_batch_size: int = 64
    # the method's typed settings (avret.distill.configs); None: the method's defaults
    method_config: MethodConfig | None = None

    def __post_init__(self) -> None:
        if self.method_config is None and self.method in METHODS:
            self.method_config = METHODS[self.method].config()

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> DistillConfig:
        """The config recorded in ``run.json`` (``distill_config``): typed, or the untyped one of older runs.

        Raises :class:`AvretError` for an unknown method or a setting it does not have.
        """
        method = record.get("method", cls.method)
        own = {f.name for f in fields(cls)} - {"method", "method_config"}
        return cls(method=method, **{k: v for k, v in record.items() if k in own},
                   method_config=config_from_record(record, method_entry(method).config))

    def teacher_key(self) -> dict[str, Any]:
        """Settings that define the teacher (a saved teacher is reused only when these match)."""
        keys = ("clip_model", "clip_weights", "prompt_conditioning", "pooling", "teacher_use_audio",
                "teacher_epochs", "teacher_lr", "teacher_batch_size")
        return {k: getattr(self, k) for k in keys}


def _teacher_outputs(dataset: AVDataset, config: DistillConfig, out: Path, seed: int, status: Status,
                     dataset_ref: str, device: str = "auto",
                     precision: str = "fp32") -> tuple[TeacherOutputs, dict[str, Any]]:
    from avret.distill.step1 import RelevanceHead, fit_relevance_head
    from avret.distill.teacher import VideoAdviserTeacher, teacher_config_for_dataset, train_teacher_on_dataset
    from avret.models.clip import SYNTHETIC_CLIP

    clip_model = config.clip_model or SYNTHETIC_CLIP
    key = {**config.teacher_key(), "seed": seed, "dataset": dataset_ref,
           "frames": dataset.meta.get("teacher_frames_source"), "format_version": FORMAT_VERSION}
    tdir, step1_file = out / "teacher", out / "step1.json"
    saved = _read_step1(step1_file, status)
    started = time.perf_counter()
    teacher = None
    if saved is not None and saved.get("teacher_key") == key and (tdir / "config.json").is_file():
        try:
            teacher = VideoAdviserTeacher.from_pretrained(tdir, map_location=resolve_device(device))
            status(f"reusing teacher in {tdir}")
            info = saved
        except ModelError as exc:  # this run's own teacher, damaged: train it again
            status(f"{tdir} is damaged ({exc}); training the teacher again")
            saved = None
    if teacher is None:
        tcfg = teacher_config_for_dataset(
            dataset, clip_model, config.clip_weights, use_audio=config.teacher_use_audio,
            prompt_conditioning=config.prompt_conditioning, pooling=config.pooling, seed=seed,
        )
        teacher = VideoAdviserTeacher(tcfg)
        status(f"training teacher ({config.prompt_conditioning} prompts, {clip_model})")
        hist = train_teacher_on_dataset(teacher, dataset, epochs=config.teacher_epochs, lr=config.teacher_lr,
                                        batch_size=config.teacher_batch_size, seed=seed, num_threads=1,
                                        device=device, precision=precision)
        dist.barrier()  # every rank has read the earlier teacher before rank 0 replaces it
        dist.on_main(lambda: teacher.save_pretrained(tdir))
        info = {"teacher_key": key, "teacher_history": hist, "teacher_seconds": time.perf_counter() - started}
    use_audio = bool(config.teacher_use_audio)
    train, val = dataset.subset("train"), dataset.subset("val")
    logits = teacher.predict_logits(train.teacher_frames, train.teacher_mask, train.audio if use_audio else None)
    post = torch.softmax(logits, dim=-1)
    val_post = teacher.predict_proba(val.teacher_frames, val.teacher_mask, val.audio if use_audio else None)
    head = RelevanceHead()
    if "tau" in info:
        head = RelevanceHead(init_tau=float(info["tau"]))
    else:
        status("step 1: fitting the relevance head")
        fit = fit_relevance_head(head, post, train.labels, val=(val_post, val.labels), seed=seed, device=device)
        info = {**info, "tau": head.tau.item(), "step1": fit,
                "teacher_val_accuracy": float((val_post.argmax(1).numpy() == val.labels).mean())}
        dist.barrier()
        dist.on_main(lambda: write_json(step1_file, info))
    return TeacherOutputs(logits, post, head.cpu()), info


def _read_step1(path: Path, say: Status) -> dict[str, Any] | None:
    """``step1.json`` of an earlier (interrupted) run, or None when absent or unusable.

    The file is this pipeline's own output (``out`` was accepted as a run directory), so a damaged
    one (not UTF-8, not JSON, not an object, a temperature that is not a positive number) is not an
    error: the teacher and step 1 are trained again and the file is rewritten.
    """
    if not path.is_file():
        return None
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        saved = None
    tau = saved.get("tau", 1.0) if isinstance(saved, dict) else None
    if not isinstance(tau, (int, float)) or isinstance(tau, bool) or not (math.isfinite(tau) and tau > 0):
        say(f"{path} is damaged; training the teacher and step 1 again")
        return None
    return saved


def _read_done(out: Path) -> dict[str, Any] | None:
    """``run.json`` of an earlier run in ``out`` as a dict, or None when it is damaged (then: train again)."""
    try:
        done = json.loads((out / "run.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return done if isinstance(done, dict) else None


def _recorded_config(done: dict[str, Any]) -> DistillConfig | None:
    """The distillation config an earlier ``run.json`` records (typed or older), or None when unusable."""
    record = done.get("distill_config")
    if not isinstance(record, dict):
        return None
    try:
        return DistillConfig.from_record(record)
    except (AvretError, TypeError, ValueError):
        return None


def _check_options(cfg: DistillConfig) -> None:
    """Refuse bad method settings before the (long) teacher training, not after it."""
    entry = method_entry(cfg.method)
    if not isinstance(cfg.method_config, entry.config):
        raise AvretError(f"--method '{cfg.method}' takes a {entry.config.__name__}, not a "
                         f"{type(cfg.method_config).__name__}")
    check_config(cfg.method_config)
    if not isinstance(cfg.teacher_epochs, int) or cfg.teacher_epochs < 1:
        raise AvretError(f"--teacher-epochs {cfg.teacher_epochs}: expected an integer >= 1")


def _towers_state_dir(out: Path, key: dict[str, Any], say: Status) -> Path:
    """``out/train_state``, the towers' resumable training state, kept only while ``key`` matches.

    An interrupted run resumes its towers from the last finished epoch; a state left by a run with
    other settings is removed first. The final run directory does not keep it.
    """
    import shutil

    state_dir = out / "train_state"
    key_file = state_dir / "key.json"
    key = json.loads(json.dumps(key, default=str))
    if state_dir.exists():
        try:
            same = json.loads(key_file.read_text(encoding="utf-8")) == key
        except (OSError, ValueError):
            same = False
        if same and (state_dir / STATE_FILE).is_file():
            say(f"resuming towers from {state_dir}")
            return state_dir
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True)
    write_json(key_file, key)
    return state_dir


def run_distillation(
    dataset: AVDataset,
    out: str | Path,
    config: DistillConfig | None = None,
    train_config: TrainConfig | None = None,
    tower_config: TowerConfig | None = None,
    status: Status | None = None,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
    overwrite: bool = False,
) -> Path:
    """Train the teacher (unless ``none``), fit step 1, distil into the towers; write ``out``.

    ``out`` may be new, empty, or an earlier (possibly unfinished) distillation run; anything else is
    refused before any work unless ``overwrite``. A run that fails before it has written anything
    leaves no ``out`` behind.
    """
    from avret.data.registry import dataset_ref

    cfg = config or DistillConfig()
    tcfg = train_config or TrainConfig()
    say = status or (lambda _msg: None)
    _check_options(cfg)
    out = Path(out)
    check_output(out, RUN_KIND, overwrite=overwrite)
    resolve_device(tcfg.device)  # a bad --device fails here, before anything is written
    dist.init_from_env(tcfg.device)
    if overwrite and out.exists() and output_kind(out) != RUN_KIND:
        # an explicit --overwrite of something that is not a run: start from an empty directory
        dist.barrier()
        dist.on_main(lambda: _discard(out))
    if not isinstance(tcfg.epochs, int) or tcfg.epochs < 1:
        raise AvretError(f"--epochs {tcfg.epochs}: expected an integer >= 1")
    if (out / "run.json").is_file() and (out / "model" / "config.json").is_file():
        done = _read_done(out)
        same = done is not None and _recorded_config(done) == cfg and \
            done.get("train_config") == asdict(tcfg) and done.get("world_size", 1) == dist.world_size()
        damaged = verify_run(out) if same else []
        if same and not damaged:
            say(f"{out} is complete (method {cfg.method}, seed {tcfg.seed}, same settings); nothing to do")
            return out
        if done is None:
            say(f"{out / 'run.json'} is damaged (not a JSON object); training again")
        else:
            say(f"{out} holds a run with other settings; training again" if not damaged else
                f"{out} is damaged ({damaged[0]} differs from run.json); training again")
    dataset = dataset.with_validation_split(tcfg.val_fraction, seed=tcfg.seed)
    ref = dataset_ref(dataset)
    if cfg.method in NEEDS_TEACHER:
        from avret.distill.teacher import require_teacher_view

        require_teacher_view(dataset)  # before anything is written
    created = not out.exists()
    dist.barrier()  # every rank has looked at out before rank 0 creates it
    dist.on_main(lambda: _make_run_dir(out))
    try:
        return _distill_into(dataset, out, cfg, tcfg, tower_config, say, progress, ref)
    except BaseException:
        if created and dist.is_main_process() and out.is_dir() and \
                all(p.name == OUTPUT_MARKER for p in out.iterdir()):
            (out / OUTPUT_MARKER).unlink(missing_ok=True)
            out.rmdir()  # nothing was written: leave no empty --out behind
        raise


def _make_run_dir(out: Path) -> None:
    """Create ``out`` (a resumable run directory) carrying the retrieval run's output marker."""
    out.mkdir(parents=True, exist_ok=True)
    if output_kind(out) is None:
        mark_output(out, RUN_KIND)


def _discard(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _distill_into(dataset: AVDataset, out: Path, cfg: DistillConfig, tcfg: TrainConfig,
                  tower_config: TowerConfig | None, say: Status,
                  progress: Callable[[int, int, dict[str, float]], None] | None, ref: str) -> Path:
    """The body of :func:`run_distillation` once ``out`` exists."""
    teacher_out, teacher_info = None, {}
    if cfg.method in NEEDS_TEACHER:
        teacher_out, teacher_info = _teacher_outputs(dataset, cfg, out, tcfg.seed, say, ref, tcfg.device,
                                                     tcfg.precision)
    tower_cfg = tower_config or TowerConfig()
    ctx = MethodContext(dataset.subset("train"), dataset.subset("val"), teacher_out, tower_cfg.embed_dim,
                        tcfg.seed, device=tcfg.device)
    # training-only heads draw their initial weights here: seed them, so that a run which reuses a
    # saved teacher gets the same heads (and towers) as one that has just trained it
    seed_everything(tcfg.seed)
    aux = build_method(cfg.method, ctx, cfg.method_config)
    say(f"training towers (method {cfg.method})")
    key = {"distill_config": asdict(cfg), "train_config": asdict(tcfg), "tower_config": asdict(tower_cfg),
           "dataset": ref, "teacher": teacher_info.get("teacher_key"),
           **({"world_size": dist.world_size()} if dist.world_size() > 1 else {})}
    dist.barrier()
    state_dir = dist.on_main(lambda: _towers_state_dir(out, key, say))
    result = train_towers(dataset, tower_cfg, tcfg, aux_loss=aux, progress=progress, checkpoint=str(state_dir))
    meta = run_metadata(
        dataset, cfg.method, tcfg.seed, command="distill", distill_config=asdict(cfg),
        teacher={k: v for k, v in teacher_info.items() if k not in ("teacher_history", "step1")},
        **towers_metadata(result, tcfg),
    )
    return dist.on_main(lambda: _write_distill_run(out, result.model, meta))


def _write_distill_run(out: Path, model: Any, meta: dict[str, Any]) -> Path:
    """write_run replaces the directory atomically; keep the teacher pieces by writing into it."""
    keep = {p.name: p for p in out.iterdir() if p.name in ("teacher", "step1.json")}

    def copy_teacher(tmp: Path) -> None:
        import shutil

        for name, src in keep.items():
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, tmp / name)

    return write_run(out, model, meta, extra=copy_teacher)
