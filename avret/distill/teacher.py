"""The VideoAdviser teacher: CLIP video embedding x video-enhanced prompts -> class logits.

``VideoAdviserTeacher(config)`` combines

* the frozen text tower of an open_clip model (:class:`~avret.distill.prompts.ClipTextEncoder`),
  loaded from a local weights file (:func:`~avret.distill.clip_loading.load_clip`),
* a :class:`~avret.distill.video_encoder.VideoEncoder` over precomputed per-frame embeddings,
* a :class:`~avret.distill.prompts.PromptLearner` (learnable context, CoCoOp-style meta-net),
* a learnable logit scale,

so that ``forward(frames, mask, audio=None)`` returns class logits ``(B, C)`` =
``scale * cos(video embedding, prompt embedding of each class)``.

Checkpoints (``save_pretrained``) hold only the teacher's own weights (``model.safetensors``) plus
``config.json``; the frozen CLIP is referenced by architecture name, weights path and a sha256
fingerprint of its text tower, which ``from_pretrained`` checks against the weights it loads.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from avret.distill.clip_loading import (
    RANDOM_INIT,
    clip_embed_dim,
    load_clip,
    load_clip_tokenizer,
    tensor_fingerprint,
)
from avret.distill.prompts import CONDITIONINGS, ClipTextEncoder, PromptLearner, normalize_template
from avret.distill.video_encoder import POOLINGS, VideoEncoder
from avret.errors import DataError, ModelError
from avret.utils.atomic import atomic_dir, write_json

if TYPE_CHECKING:
    from avret.data.dataset import AVDataset

FORMAT = "avret-videoadviser"
FORMAT_VERSION = 1
TEACHER_INPUTS = ("video", "text")

__all__ = [
    "TeacherConfig",
    "VideoAdviserTeacher",
    "read_checkpoint",
    "teacher_config_for_dataset",
    "train_teacher",
    "train_teacher_on_dataset",
    "write_checkpoint",
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

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> TeacherConfig:
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ModelError(f"{where}: unknown teacher config field '{unknown[0]}'")
        missing = [n for n in ("clip_model", "clip_weights", "class_names") if n not in data]
        if missing:
            raise ModelError(f"{where}: teacher config field '{missing[0]}' is missing")
        return cls(**data)


class VideoAdviserTeacher(nn.Module):
    """CLIP-based VideoAdviser teacher: ``forward(frames, mask, audio=None) -> logits (B, C)``.

    Args:
        config: the teacher's :class:`TeacherConfig`.
        clip_model: an already loaded open_clip model to take the text tower from (else loaded from
            ``config.clip_model`` / ``config.clip_weights``). Only its text tower is kept.
    """

    def __init__(self, config: TeacherConfig, *, clip_model: nn.Module | None = None) -> None:
        super().__init__()
        config.validate()
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
        frames_t, mask_t, audio_t = _as_inputs(frames, mask, audio)
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

    def load_own_state_dict(self, state: dict[str, torch.Tensor], where: str = "state dict") -> None:
        """Load :meth:`own_state_dict` tensors; ModelError names the first missing/mismatched key."""
        _load_exact(self, self.own_state_dict(), state, where)

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

    def save_pretrained(self, directory: str | os.PathLike[str]) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (own weights only) atomically to ``directory``."""
        return write_checkpoint(
            directory, "teacher", {"teacher": self.config.to_dict()}, self.own_state_dict(), self.metadata()
        )

    @classmethod
    def from_pretrained(
        cls,
        directory: str | os.PathLike[str],
        *,
        clip_weights: str | None = None,
        clip_model: nn.Module | None = None,
        map_location: str | torch.device = "cpu",
    ) -> VideoAdviserTeacher:
        """Rebuild a teacher saved by :meth:`save_pretrained`.

        ``clip_weights`` overrides the stored CLIP weights path (the file moved); its fingerprint must
        still match. ``clip_model`` passes an already loaded open_clip model instead.
        """
        cfg, tensors, where = read_checkpoint(directory, "teacher")
        config = TeacherConfig.from_dict(dict(cfg.get("teacher", {})), where)
        if clip_weights is not None:
            config.clip_weights = str(clip_weights)
        teacher = cls(config, clip_model=clip_model)
        teacher.load_own_state_dict(tensors, where)
        return teacher.to(map_location)


# ---------------------------------------------------------------------- checkpoints
def write_checkpoint(
    directory: str | os.PathLike[str],
    kind: str,
    config: dict[str, Any],
    tensors: dict[str, torch.Tensor],
    metadata: dict[str, Any],
) -> Path:
    """Atomically write ``config.json`` (format, kind, config, metadata) and ``model.safetensors``."""
    from safetensors.torch import save_file

    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "model.safetensors")
        )
        write_json(
            tmp / "config.json",
            {
                "format": FORMAT,
                "version": FORMAT_VERSION,
                "kind": kind,
                "config": config,
                "metadata": metadata,
            },
        )
    return directory


def read_checkpoint(
    directory: str | os.PathLike[str], kind: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor], str]:
    """Read a checkpoint written by :func:`write_checkpoint`: ``(config, tensors, where)``."""
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_path = directory / "config.json"
    weights = directory / "model.safetensors"
    if not directory.is_dir():
        raise ModelError(
            f"teacher directory {directory} does not exist; expected a directory written by save_pretrained"
        )
    if not cfg_path.is_file():
        raise ModelError(
            f"{cfg_path} does not exist; expected a teacher directory written by save_pretrained"
        )
    try:
        doc = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"{cfg_path} is not valid JSON ({exc})") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise ModelError(
            f"{cfg_path}: field 'format' is {doc.get('format') if isinstance(doc, dict) else None!r}, "
            f"expected '{FORMAT}'"
        )
    if doc.get("kind") != kind:
        raise ModelError(f"{cfg_path}: field 'kind' is '{doc.get('kind')}', expected '{kind}'")
    if not weights.is_file():
        raise ModelError(f"{weights} does not exist; expected the teacher's weights next to config.json")
    try:
        tensors = load_file(str(weights), device="cpu")
    except Exception as exc:  # noqa: BLE001
        raise ModelError(
            f"{weights} is unreadable ({type(exc).__name__}); expected a safetensors file"
        ) from exc
    return dict(doc.get("config") or {}), tensors, str(weights)


def _load_exact(
    module: nn.Module, expected: dict[str, torch.Tensor], state: dict[str, torch.Tensor], where: str
) -> None:
    for key, value in expected.items():
        if key not in state:
            raise ModelError(f"{where}: key '{key}' is missing (expected shape {tuple(value.shape)})")
        if tuple(state[key].shape) != tuple(value.shape):
            raise ModelError(
                f"{where}: key '{key}' has shape {tuple(state[key].shape)}, expected {tuple(value.shape)}"
            )
    extra = [k for k in state if k not in expected]
    if extra:
        raise ModelError(f"{where}: unexpected key '{extra[0]}'")
    module.load_state_dict(state, strict=False)


# ---------------------------------------------------------------------- training
def _as_inputs(
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


def fit_loop(
    model: nn.Module,
    params: list[nn.Parameter],
    n_train: int,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    evaluate: Callable[[], dict[str, float]] | None,
    better: Callable[[dict, dict], bool],
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    patience: int,
    weight_decay: float,
    state_fn: Callable[[], dict[str, torch.Tensor]],
    load_fn: Callable[[dict[str, torch.Tensor]], None],
    progress: Progress | None,
    train_metrics: Callable[[], dict[str, float]] | None = None,
    num_threads: int | None = None,
) -> dict[str, Any]:
    """Shared mini-batch loop with early stopping on a validation metric; restores the best state.

    ``loss_fn(batch_indices)`` returns the batch loss; ``evaluate()`` returns validation metrics
    (``None``: no validation, train all epochs); ``better(new, best)`` compares them;
    ``train_metrics()`` adds metrics gathered by ``loss_fn`` during the epoch; ``num_threads`` sets
    torch's intra-op threads for the call (1 is often fastest for tiny models on a busy CPU).
    """
    if n_train == 0:
        raise DataError("no labelled training clips; the teacher needs a non-empty training split")
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise DataError(f"epochs={epochs}, batch_size={batch_size}, lr={lr}: expected positive values")
    history: dict[str, Any] = {"epochs": [], "best_epoch": None, "stopped_early": False, "seed": seed}
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    gen = torch.Generator().manual_seed(seed)
    best: dict[str, float] | None = None
    best_state: dict[str, torch.Tensor] | None = None
    stale = 0
    threads_before = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(int(num_threads))
    try:
        devices = [] if not torch.cuda.is_available() else list(range(torch.cuda.device_count()))
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            for epoch in range(1, epochs + 1):
                t0 = time.perf_counter()
                model.train()
                perm = torch.randperm(n_train, generator=gen)
                total, count = 0.0, 0
                for s in range(0, n_train, batch_size):
                    idx = perm[s : s + batch_size]
                    loss = loss_fn(idx)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total += float(loss.detach()) * len(idx)
                    count += len(idx)
                record: dict[str, float] = {"epoch": epoch, "train_loss": total / max(count, 1)}
                if train_metrics is not None:
                    record.update(train_metrics())
                if evaluate is not None:
                    model.eval()
                    with torch.no_grad():
                        record.update(evaluate())
                record["seconds"] = time.perf_counter() - t0
                history["epochs"].append(record)
                if progress is not None:
                    progress(epoch, dict(record))
                if evaluate is None:
                    continue
                if best is None or better(record, best):
                    best, stale = record, 0
                    best_state = {k: v.detach().clone() for k, v in state_fn().items()}
                    history["best_epoch"] = epoch
                else:
                    stale += 1
                    if stale >= patience:
                        history["stopped_early"] = True
                        break
    finally:
        torch.set_num_threads(threads_before)
    if best_state is not None:
        load_fn(best_state)
    if best is not None:
        history["best"] = {k: v for k, v in best.items() if k != "seconds"}
    else:
        history["best_epoch"] = len(history["epochs"])
    model.eval()
    return history


def _labelled(
    frames: ArrayLike,
    mask: ArrayLike | None,
    labels: ArrayLike,
    audio: ArrayLike | None,
    num_classes: int,
    what: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    frames_t, mask_t, audio_t = _as_inputs(frames, mask, audio)
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
    epochs: int = 20,
    lr: float = 2e-3,
    batch_size: int = 64,
    seed: int = 0,
    patience: int = 5,
    weight_decay: float = 0.0,
    progress: Progress | None = None,
    num_threads: int | None = None,
) -> dict[str, Any]:
    """Train the teacher's own parameters with cross-entropy; early-stop on validation accuracy.

    Args:
        teacher: the model (trained in place; the best validation epoch's weights are restored).
        frames, mask, labels: training clips ``(N, T, Dt)``, ``(N, T)`` bool, ``(N,)`` (``-1`` skipped).
        audio: ``(N, Da)`` when the teacher conditions its prompts on audio.
        val: ``(frames, mask, labels)`` or ``(frames, mask, labels, audio)`` of the VALIDATION split
            (never test). Model selection: highest validation accuracy, ties -> lower validation CE.
            ``None`` trains all ``epochs`` without selection.
        epochs, lr, batch_size, seed, patience, weight_decay: optimisation (AdamW); deterministic given seed.
        progress: ``progress(epoch, metrics)`` called after every epoch.
        num_threads: torch intra-op threads during training (None: leave as is; restored afterwards).

    Returns a history: per-epoch ``train_loss``, ``train_acc``, ``val_loss``, ``val_acc``, ``seconds``;
    ``best_epoch``, ``best``, ``stopped_early``, ``seed``.
    """
    c = teacher.num_classes
    tr = _labelled(frames, mask, labels, audio, c, "training")
    if teacher.config.audio_dim and tr[3] is None:
        raise DataError("the teacher conditions its prompts on audio; pass audio=(N, Da) features")
    device = teacher.device
    correct = {"n": 0, "seen": 0}

    def loss_fn(idx: torch.Tensor) -> torch.Tensor:
        f, m, a = _batch(tr[0], tr[1], tr[3], idx, device)
        y = tr[2][idx].to(device)
        logits = teacher(f, m, a)
        correct["n"] += int((logits.argmax(-1) == y).sum())
        correct["seen"] += len(idx)
        return F.cross_entropy(logits, y)

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

    def train_metrics() -> dict[str, float]:
        acc = correct["n"] / max(correct["seen"], 1)
        correct["n"] = correct["seen"] = 0
        return {"train_acc": acc}

    return fit_loop(
        teacher,
        teacher.trainable_parameters(),
        len(tr[2]),
        loss_fn,
        evaluate,
        lambda new, best: (new["val_acc"], -new["val_loss"]) > (best["val_acc"], -best["val_loss"]),
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        seed=seed,
        patience=patience,
        weight_decay=weight_decay,
        state_fn=teacher.own_state_dict,
        load_fn=teacher.load_own_state_dict,
        progress=progress,
        train_metrics=train_metrics,
        num_threads=num_threads,
    )


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
