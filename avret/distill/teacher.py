"""The VideoAdviser teacher: CLIP video embedding x video-enhanced prompts -> class logits.

``VideoAdviserTeacher(config)`` combines

* the frozen text tower of an open_clip model (:class:`~avret.distill.prompts.ClipTextEncoder`),
  loaded from a local weights file (:func:`~avret.models.clip.load_clip`),
* a :class:`~avret.distill.video_encoder.VideoEncoder` over precomputed per-frame embeddings,
* a :class:`~avret.distill.prompts.PromptLearner` (learnable context, CoCoOp-style meta-net),
* a learnable logit scale,

so that ``forward(frames, mask, audio=None)`` returns class logits ``(B, C)`` =
``scale * cos(video embedding, prompt embedding of each class)``.

Checkpoints use avret's one format (:mod:`avret.io`, ``model_type: videoadviser-teacher``): they
hold only the teacher's own weights (``model.safetensors``) plus ``config.json`` (the
:class:`TeacherConfig`); the frozen CLIP is referenced by architecture name, weights path and a
sha256 fingerprint of its text tower, which ``from_pretrained`` checks against the weights it loads.
Training goes through the one loop, :func:`avret.train.loop.fit`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avret.distill.prompts import CONDITIONINGS, ClipTextEncoder, PromptLearner, normalize_template
from avret.distill.video_encoder import POOLINGS, VideoEncoder
from avret.errors import DataError, ModelError
from avret.io import PretrainedMixin, check_state
from avret.models.clip import RANDOM_INIT, clip_embed_dim, load_clip, load_clip_tokenizer, tensor_fingerprint
from avret.train.loop import FitConfig, FitResult, OptimSettings, fit

if TYPE_CHECKING:
    from avret.data.dataset import AVDataset

TEACHER_INPUTS = ("video", "text")

__all__ = [
    "TeacherConfig",
    "VideoAdviserTeacher",
    "teacher_config_for_dataset",
    "train_teacher",
    "train_teacher_on_dataset",
]

ArrayLike = Any  # np.ndarray | torch.Tensor
Progress = Callable[[int, dict[str, float]], None]


@dataclass
class TeacherConfig:
    """Everything needed to rebuild a :class:`VideoAdviserTeacher` (stored in ``config.json``).

    Attributes:
        clip_model: open_clip architecture name (``ViT-B-32``) or path to an open_clip model-config json.
        clip_weights: local checkpoint path, or ``"random-init"`` (synthetic data / tests only).
        class_names: class names, index = label; they fill the prompt template.
        template: prompt template with one ``{}`` (or ``{class}``) placeholder.
        n_ctx: number of learnable context vectors before the template tokens.
        pooling: temporal pooling of frame embeddings, ``mean`` or ``transformer``.
        frame_dim: width of the input frame embeddings; ``None`` = CLIP's embedding width (no projection).
        audio_dim: width of audio features that also condition the prompts (``per-clip`` only), or None.
        prompt_conditioning: ``per-clip`` (video-enhanced, B x C text passes) or ``shared`` (CoOp, C passes).
        temporal_layers: layers of the temporal transformer (``pooling="transformer"``).
        max_frames: most frames the temporal transformer's positional embedding allows.
        init_logit_scale: initial logit scale (a multiplier, e.g. 100); None = CLIP's own (capped at 100).
        learn_logit_scale: whether the logit scale is trained.
        meta_hidden: hidden width of the prompt meta-net; None = max(16, D // 16) as in CoCoOp.
        teacher_input: ``video`` (frame embeddings) or ``text`` (a text embedding as a single frame).
        seed: seed of the teacher's own initial weights.
        clip_seed: seed of random CLIP weights (``clip_weights == "random-init"`` only).
        clip_fingerprint: sha256 of the frozen CLIP text tower; filled when built, checked on load.
    """

    clip_model: str
    clip_weights: str
    class_names: list[str]
    template: str = "a video of {}."
    n_ctx: int = 4
    pooling: str = "mean"
    frame_dim: int | None = None
    audio_dim: int | None = None
    prompt_conditioning: str = "per-clip"
    temporal_layers: int = 1
    max_frames: int = 64
    init_logit_scale: float | None = None
    learn_logit_scale: bool = True
    meta_hidden: int | None = None
    teacher_input: str = "video"
    seed: int = 0
    clip_seed: int = 0
    clip_fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Raise :class:`ModelError` naming the field that is out of range."""
        if not self.class_names or len(set(self.class_names)) != len(self.class_names):
            raise ModelError("teacher config field 'class_names': expected a non-empty list of unique names")
        normalize_template(self.template)
        if self.pooling not in POOLINGS:
            raise ModelError(
                f"teacher config field 'pooling' is '{self.pooling}', expected one of {list(POOLINGS)}"
            )
        if self.prompt_conditioning not in CONDITIONINGS:
            raise ModelError(
                f"teacher config field 'prompt_conditioning' is '{self.prompt_conditioning}', "
                f"expected one of {list(CONDITIONINGS)}"
            )
        if self.teacher_input not in TEACHER_INPUTS:
            raise ModelError(
                f"teacher config field 'teacher_input' is '{self.teacher_input}', "
                f"expected one of {list(TEACHER_INPUTS)}"
            )
        if self.n_ctx < 1:
            raise ModelError(f"teacher config field 'n_ctx' is {self.n_ctx}, expected >= 1")
        if self.frame_dim is not None and self.frame_dim < 1:
            raise ModelError(f"teacher config field 'frame_dim' is {self.frame_dim}, expected >= 1")
        if self.audio_dim is not None and self.audio_dim < 1:
            raise ModelError(f"teacher config field 'audio_dim' is {self.audio_dim}, expected >= 1 or null")
        if self.init_logit_scale is not None and not self.init_logit_scale > 0:
            raise ModelError(
                f"teacher config field 'init_logit_scale' is {self.init_logit_scale}, expected > 0"
            )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FrozenClipCheckpoint(PretrainedMixin):
    """The checkpoint hooks of a teacher over a frozen CLIP: only its own weights are saved.

    A subclass defines ``own_state_dict()`` (everything but the frozen CLIP text tower) and is built
    as ``cls(config, clip_model=...)``; the CLIP is referenced by the config and reloaded on load.
    """

    def own_state_dict(self) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def load_own_state_dict(self, state: dict[str, torch.Tensor], where: str | Path = "state dict") -> None:
        """Load :meth:`own_state_dict` tensors; ModelError names the first missing/mismatched key."""
        check_state(self.own_state_dict(), state, Path(where))
        self.load_state_dict(state, strict=False)  # type: ignore[attr-defined]

    def weights_for_save(self) -> dict[str, torch.Tensor]:
        return self.own_state_dict()

    def load_weights(self, tensors: dict[str, torch.Tensor], where: Path) -> None:
        self.load_own_state_dict(tensors, where)

    @classmethod
    def from_config(cls, config: Any, path: Path | None = None, *, clip_weights: str | None = None,
                    clip_model: nn.Module | None = None) -> Any:
        """Build the teacher of ``config``; ``clip_weights`` overrides the stored CLIP weights path (the
        file moved; its fingerprint must still match), ``clip_model`` passes an already loaded CLIP."""
        if clip_weights is not None:
            config.clip_weights = str(clip_weights)
        return cls(config, clip_model=clip_model)


class VideoAdviserTeacher(FrozenClipCheckpoint, nn.Module):
    """CLIP-based VideoAdviser teacher: ``forward(frames, mask, audio=None) -> logits (B, C)``.

    Args:
        config: the teacher's :class:`TeacherConfig`.
        clip_model: an already loaded open_clip model to take the text tower from (else loaded from
            ``config.clip_model`` / ``config.clip_weights``). Only its text tower is kept.
    """

    model_type = "videoadviser-teacher"
    config_class = TeacherConfig

    def __init__(self, config: TeacherConfig, *, clip_model: nn.Module | None = None) -> None:
        super().__init__()
        config.validate()
        self.path: Path | None = None
        self._fingerprint: str | None = None
        if clip_model is None:
            clip_model = load_clip(
                config.clip_model,
                config.clip_weights,
                allow_random=config.clip_weights == RANDOM_INIT,
                seed=config.clip_seed,
            )
        tokenizer = load_clip_tokenizer(config.clip_model)
        self.text_encoder = ClipTextEncoder(clip_model)
        fingerprint = tensor_fingerprint(self.text_encoder.state_dict())
        if config.clip_fingerprint and config.clip_fingerprint != fingerprint:
            raise ModelError(
                f"CLIP weights '{config.clip_weights}' ({config.clip_model}) have text-tower fingerprint "
                f"{fingerprint[:12]}..., but the teacher was trained with {config.clip_fingerprint[:12]}...; "
                "pass the same CLIP weights"
            )
        self.embed_dim = clip_embed_dim(clip_model)
        config.frame_dim = int(config.frame_dim or self.embed_dim)
        config.clip_fingerprint = fingerprint
        config.template = normalize_template(config.template)
        self.config = config
        if config.init_logit_scale is None:
            clip_scale = getattr(clip_model, "logit_scale", None)
            scale = float(clip_scale.detach().exp().reshape(-1)[0]) if clip_scale is not None else 1 / 0.07
            config.init_logit_scale = min(scale, 100.0)

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            self.video_encoder = VideoEncoder(
                config.frame_dim,
                self.embed_dim,
                pooling=config.pooling,
                temporal_layers=config.temporal_layers,
                max_frames=config.max_frames,
            )
            self.prompt_learner = PromptLearner(
                self.text_encoder,
                tokenizer,
                config.class_names,
                template=config.template,
                n_ctx=config.n_ctx,
                video_dim=self.embed_dim,
                audio_dim=config.audio_dim,
                conditioning=config.prompt_conditioning,
                meta_hidden=config.meta_hidden,
            )
        log_scale = torch.tensor(math.log(config.init_logit_scale), dtype=torch.float32)
        if config.learn_logit_scale:
            self.log_logit_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_logit_scale", log_scale)

    # ------------------------------------------------------------------ forward
    @property
    def num_classes(self) -> int:
        return len(self.config.class_names)

    @property
    def device(self) -> torch.device:
        return self.prompt_learner.ctx.device

    @property
    def logit_scale(self) -> torch.Tensor:
        """The (clamped to 100, as CLIP) multiplicative logit scale."""
        return self.log_logit_scale.exp().clamp(max=100.0)

    def train(self, mode: bool = True) -> VideoAdviserTeacher:
        super().train(mode)
        self.text_encoder.eval()
        return self

    def encode_video(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Unit-norm video embeddings ``(B, D)`` of frame embeddings ``(B, T, Dt)``."""
        return self.video_encoder(frames, mask)

    def class_text_features(
        self, video_emb: torch.Tensor | None = None, audio: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Unit-norm prompt embeddings: ``(B, C, D)`` per clip, or ``(C, D)`` shared."""
        return self.prompt_learner(video_emb, audio)

    def forward(
        self, frames: torch.Tensor, mask: torch.Tensor | None = None, audio: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Class logits ``(B, C)`` = logit_scale x cos(video embedding, per-clip prompt embedding)."""
        if audio is not None and self.config.audio_dim and audio.shape[-1] != self.config.audio_dim:
            raise DataError(
                f"audio features have width {audio.shape[-1]}, the teacher expects {self.config.audio_dim}"
            )
        v = self.encode_video(frames, mask)
        t = self.class_text_features(v, audio if self.config.audio_dim else None)
        sims = v @ t.t() if t.ndim == 2 else torch.einsum("bd,bcd->bc", v, t)
        return self.logit_scale * sims

    @torch.no_grad()
    def predict_logits(
        self,
        frames: ArrayLike,
        mask: ArrayLike | None = None,
        audio: ArrayLike | None = None,
        batch_size: int = 256,
    ) -> torch.Tensor:
        """Class logits ``(N, C)`` on the CPU, computed in batches in eval mode (numpy or torch input)."""
        was_training = self.training
        self.eval()
        frames_t, mask_t, audio_t = as_teacher_inputs(frames, mask, audio)
        out = []
        try:
            for s in range(0, len(frames_t), batch_size):
                out.append(
                    self(*_batch(frames_t, mask_t, audio_t, slice(s, s + batch_size), self.device)).cpu()
                )
        finally:
            self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, self.num_classes)

    def predict_proba(
        self,
        frames: ArrayLike,
        mask: ArrayLike | None = None,
        audio: ArrayLike | None = None,
        batch_size: int = 256,
    ) -> torch.Tensor:
        """Class posteriors ``(N, C)`` (softmax of :meth:`predict_logits`), the input of step 1."""
        return self.predict_logits(frames, mask, audio, batch_size).softmax(dim=-1)

    # ------------------------------------------------------------------ parameters / io
    def trainable_parameters(self) -> list[nn.Parameter]:
        """The teacher's own trainable parameters (never the frozen CLIP text tower)."""
        return [
            p for n, p in self.named_parameters() if p.requires_grad and not n.startswith("text_encoder.")
        ]

    def own_state_dict(self) -> dict[str, torch.Tensor]:
        """The teacher's own weights (everything but the frozen CLIP), as saved in ``model.safetensors``."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("text_encoder.")}

    def metadata(self) -> dict[str, Any]:
        """Run metadata: which CLIP (``clip_weights: "random-init"`` when random), what the teacher sees."""
        c = self.config
        return {
            "teacher": "videoadviser",
            "clip_model": c.clip_model,
            "clip_weights": c.clip_weights,
            "clip_fingerprint": c.clip_fingerprint,
            "teacher_input": c.teacher_input,
            "prompt_conditioning": c.prompt_conditioning,
            "pooling": c.pooling,
            "num_classes": self.num_classes,
            "trainable_parameters": int(sum(p.numel() for p in self.trainable_parameters())),
        }


# ---------------------------------------------------------------------- training
def as_teacher_inputs(
    frames: ArrayLike, mask: ArrayLike | None, audio: ArrayLike | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    frames_t = torch.as_tensor(
        np.asarray(frames) if not torch.is_tensor(frames) else frames, dtype=torch.float32
    )
    if frames_t.ndim != 3:
        raise DataError(f"teacher frames have shape {tuple(frames_t.shape)}, expected (N, T, D)")
    if mask is None:
        mask_t = torch.ones(frames_t.shape[:2], dtype=torch.bool)
    else:
        mask_t = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask).to(torch.bool)
    if mask_t.shape != frames_t.shape[:2]:
        raise DataError(f"teacher mask has shape {tuple(mask_t.shape)}, expected {tuple(frames_t.shape[:2])}")
    audio_t = None
    if audio is not None:
        audio_t = torch.as_tensor(
            np.asarray(audio) if not torch.is_tensor(audio) else audio, dtype=torch.float32
        )
        if audio_t.ndim != 2 or len(audio_t) != len(frames_t):
            raise DataError(
                f"audio features have shape {tuple(audio_t.shape)}, expected ({len(frames_t)}, Da)"
            )
    return frames_t, mask_t, audio_t


def _batch(
    frames: torch.Tensor, mask: torch.Tensor, audio: torch.Tensor | None, idx: Any, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    return (frames[idx].to(device), mask[idx].to(device), None if audio is None else audio[idx].to(device))


def _labelled(
    frames: ArrayLike,
    mask: ArrayLike | None,
    labels: ArrayLike,
    audio: ArrayLike | None,
    num_classes: int,
    what: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    frames_t, mask_t, audio_t = as_teacher_inputs(frames, mask, audio)
    labels_t = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels).to(torch.long)
    if labels_t.shape != (len(frames_t),):
        raise DataError(f"{what} labels have shape {tuple(labels_t.shape)}, expected ({len(frames_t)},)")
    if len(labels_t) and int(labels_t.max()) >= num_classes:
        raise DataError(f"{what} labels reach {int(labels_t.max())}, the teacher has {num_classes} classes")
    keep = labels_t >= 0  # unlabelled clips (-1) are skipped
    return frames_t[keep], mask_t[keep], labels_t[keep], None if audio_t is None else audio_t[keep]


def train_teacher(
    teacher: VideoAdviserTeacher,
    frames: ArrayLike,
    mask: ArrayLike | None,
    labels: ArrayLike,
    *,
    audio: ArrayLike | None = None,
    val: tuple | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Train the teacher's own parameters with cross-entropy; early-stop on validation accuracy.

    Args:
        teacher: the model (trained in place; the best validation epoch's weights are restored).
        frames, mask, labels: training clips ``(N, T, Dt)``, ``(N, T)`` bool, ``(N,)`` (``-1`` skipped).
        audio: ``(N, Da)`` when the teacher conditions its prompts on audio.
        val: ``(frames, mask, labels)`` or ``(frames, mask, labels, audio)`` of the VALIDATION split
            (never test). Model selection: highest validation accuracy, ties -> lower validation CE.
            ``None`` trains all ``epochs`` without selection.
        progress: ``progress(epoch, metrics)`` called after every epoch.
        options: :class:`TeacherFit` fields (epochs, lr, batch_size, seed, patience, weight_decay,
            num_threads, device, precision); the teacher is left on that device.

    Returns a history: per-epoch ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``, ``seconds``;
    ``best_epoch``, ``best``, ``stopped_early``, ``seed``.
    """
    c = teacher.num_classes
    tr = _labelled(frames, mask, labels, audio, c, "training")
    if teacher.config.audio_dim and tr[3] is None:
        raise DataError("the teacher conditions its prompts on audio; pass audio=(N, Da) features")
    data = {"frames": tr[0], "mask": tr[1], "labels": tr[2], **({"audio": tr[3]} if tr[3] is not None else {})}

    def loss_fn(b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        logits = teacher(b["frames"], b["mask"], b.get("audio"))
        acc = float((logits.argmax(-1) == b["labels"]).float().mean())
        return F.cross_entropy(logits, b["labels"]), {"train_acc": acc}

    evaluate = None
    if val is not None:
        if len(val) not in (3, 4):
            raise DataError("val: expected (frames, mask, labels) or (frames, mask, labels, audio)")
        va = _labelled(val[0], val[1], val[2], val[3] if len(val) == 4 else None, c, "validation")
        if len(va[2]) == 0:
            raise DataError("the validation split has no labelled clips")

        def evaluate() -> dict[str, float]:
            logits = teacher.predict_logits(va[0], va[1], va[3])
            return {
                "val_loss": float(F.cross_entropy(logits, va[2])),
                "val_acc": float((logits.argmax(-1) == va[2]).float().mean()),
            }

    opts = TeacherFit.of(options)
    optimizer = opts.optimizer(teacher.trainable_parameters())
    result = fit(teacher, loss_fn, data, optimizer, opts.fit_config(), evaluate=evaluate,
                 monitor=("val_acc", "val_loss"), mode=("max", "min"), state_fn=teacher.own_state_dict,
                 load_fn=teacher.load_own_state_dict, progress=epoch_progress(progress))
    return fit_history(result)


@dataclass
class TeacherFit(OptimSettings):
    """How a teacher (VideoAdviser or sentiment) is optimised: AdamW on its own parameters, :func:`fit`."""

    epochs: int = 20
    lr: float = 2e-3
    patience: int = 5
    num_threads: int | None = None

    @classmethod
    def of(cls, options: dict[str, Any]) -> TeacherFit:
        """From keyword options; unknown names or a non-positive lr are a one-line DataError (the loop
        checks epochs and batch size)."""
        unknown = sorted(set(options) - {f.name for f in fields(cls)})
        if unknown:
            raise DataError(f"teacher training option '{unknown[0]}' is unknown; expected TeacherFit fields")
        opts = cls(**options)
        if not opts.lr > 0:
            raise DataError(f"teacher lr is {opts.lr}; expected > 0")
        return opts

    def optimizer(self, params: list[nn.Parameter]) -> torch.optim.Optimizer:
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay)

    def fit_config(self) -> FitConfig:
        return FitConfig(epochs=self.epochs, batch_size=self.batch_size, seed=self.seed, patience=self.patience,
                         device=self.device, precision=self.precision, num_threads=self.num_threads)


def fit_history(result: FitResult) -> dict[str, Any]:
    """A teacher's training record for run files: per-epoch metrics, the selected epoch, the device."""
    return {"epochs": result.history, "best_epoch": result.best_epoch, "best": result.best,
            "stopped_early": result.stopped_early, "seed": result.config.get("seed"), "device": result.device,
            "precision": result.precision, "seconds": result.seconds}


def epoch_progress(progress: Progress | None) -> Any:
    """Adapt a teacher's ``progress(epoch, metrics)`` to the loop's ``progress(epoch, epochs, record)``."""
    if progress is None:
        return None
    return lambda epoch, _epochs, record: progress(epoch, record)


def require_teacher_view(dataset: AVDataset) -> None:
    """Refuse a data set without per-frame teacher embeddings, saying how to supply them."""
    if dataset.teacher_frames is None:
        raise DataError(
            f"data set '{dataset.name}' has no teacher view (teacher_frames); the teacher needs it: "
            "pair the data set with --frames PATH"
        )


def teacher_config_for_dataset(
    dataset: AVDataset,
    clip_model: str,
    clip_weights: str | None,
    *,
    use_audio: bool = False,
    **overrides: Any,
) -> TeacherConfig:
    """A :class:`TeacherConfig` fitting ``dataset``'s classes and teacher view (``teacher_frames``).

    ``clip_weights=None`` means ``"random-init"`` and is only accepted for synthetic data sets.
    """
    require_teacher_view(dataset)
    if clip_weights is None or clip_weights == RANDOM_INIT:
        if not dataset.synthetic:
            raise ModelError(
                "--clip-weights is required for real data; random CLIP weights are for synthetic data only"
            )
        clip_weights = RANDOM_INIT
    return TeacherConfig(
        clip_model=clip_model,
        clip_weights=str(clip_weights),
        class_names=list(dataset.class_names),
        frame_dim=int(dataset.teacher_frames.shape[2]),
        audio_dim=dataset.audio_dim if use_audio else None,
        **overrides,
    )


def train_teacher_on_dataset(
    teacher: VideoAdviserTeacher, dataset: AVDataset, *, val_fraction: float = 0.1, **train_kwargs: Any
) -> dict[str, Any]:
    """Train on ``dataset``'s train split, early-stopping on its val split (carved from train if absent).

    The test split is never touched. Audio features are passed when the teacher is audio-conditioned.
    """
    if dataset.teacher_frames is None:
        raise DataError(
            f"data set '{dataset.name}' has no teacher view (teacher_frames); the teacher needs it"
        )
    ds = dataset.with_validation_split(val_fraction, seed=int(train_kwargs.get("seed", 0)))
    tr, va = ds.subset("train"), ds.subset("val")
    use_audio = bool(teacher.config.audio_dim)
    val = None
    if len(va):
        val = (va.teacher_frames, va.teacher_mask, va.labels) + ((va.audio,) if use_audio else ())
    return train_teacher(
        teacher,
        tr.teacher_frames,
        tr.teacher_mask,
        tr.labels,
        audio=tr.audio if use_audio else None,
        val=val,
        **train_kwargs,
    )
