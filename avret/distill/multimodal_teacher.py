"""A small training-only multimodal teacher shared by the ``msd`` and ``mi-kd`` methods.

The teacher sees three modalities of a clip: the raw ``audio`` features, the raw ``visual``
features and the mean-pooled *teacher view* (``view``: the masked mean of ``teacher_frames``).
Each modality is standardised with training-split statistics and projected by its own
``Linear → GELU`` into a ``hidden_dim`` space; the projections are fused — ``sum`` (default,
``Σ_m e_m``) or ``concat`` (``[e_audio; e_visual; e_view]``) — and a trunk
``Linear → GELU → Dropout`` gives the teacher representation (:meth:`MultimodalTeacher.encode`),
followed by a linear classifier.

**Missing modalities.** Each modality has a learned *missing token* (a ``hidden_dim`` vector). A
modality that is removed is not zeroed: its projection ``e_m`` is replaced by the token, so the
fused input stays in distribution. The tokens are learned by *modality dropout* while the
teacher is trained (each modality of each clip is replaced by its token with probability
``modality_dropout``), so the teacher's posteriors with a modality removed are meaningful — which
MSD's per-modality KD terms and saliency need.

It never becomes part of the deployed towers, but it is an avret model like any other: a typed
:class:`MultimodalTeacherConfig`, saved and loaded in the one checkpoint format
(:mod:`avret.io`, ``model_type: multimodal-teacher``), and trained by the one loop
(:func:`avret.train.loop.fit`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from avret.data.dataset import AVDataset
from avret.errors import DataError
from avret.io import PretrainedMixin
from avret.train.loop import FitConfig, FitResult, fit
from avret.utils.device import resolve_device

MODALITIES = ("audio", "visual", "view")
STUDENT_MODALITIES = ("audio", "visual")  # what the towers see; the view is the teacher's alone
FUSIONS = ("sum", "concat")


def pooled_view(dataset: AVDataset) -> np.ndarray:
    """``(N, Dt)`` masked mean over frames of ``dataset.teacher_frames`` (the teacher view)."""
    if dataset.teacher_frames is None or dataset.teacher_mask is None:
        raise DataError(f"{dataset.source or dataset.name}: field 'teacher_frames' is missing; "
                        "this method needs a teacher view")
    mask = dataset.teacher_mask[..., None].astype(np.float32)
    return (dataset.teacher_frames * mask).sum(1) / np.maximum(mask.sum(1), 1.0)


@dataclass
class MultimodalTeacherConfig:
    """Shape of a :class:`MultimodalTeacher` (saved as ``config.json``).

    Attributes:
        dims: input width of each modality (``audio``, ``visual``, ``view``).
        num_classes: classes of the classifier.
        hidden_dim: width of the projections, the trunk and the missing tokens.
        fusion: ``sum`` (``Σ_m e_m``) or ``concat`` (``[e_audio; e_visual; e_view]``).
        dropout: dropout after the trunk.
    """

    dims: dict[str, int]
    num_classes: int
    hidden_dim: int = 256
    fusion: str = "sum"
    dropout: float = 0.1

    def validate(self) -> None:
        """``ValueError`` naming the first field out of range."""
        if set(self.dims) != set(MODALITIES):
            raise ValueError(f"field 'dims': expected the modalities {MODALITIES}, got {sorted(self.dims)}")
        for name, value in [*((f"dims.{m}", self.dims[m]) for m in MODALITIES), ("num_classes", self.num_classes),
                            ("hidden_dim", self.hidden_dim)]:
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65536:
                raise ValueError(f"field '{name}' is {value!r}; expected an integer in 1..65536")
        if self.fusion not in FUSIONS:
            raise ValueError(f"field 'fusion' is '{self.fusion}'; expected 'sum' or 'concat'")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"field 'dropout' is {self.dropout}; expected 0 <= dropout < 1")


class MultimodalTeacher(PretrainedMixin, nn.Module):
    """MLP teacher over audio + visual + teacher view with per-modality missing tokens."""

    model_type = "multimodal-teacher"
    config_class = MultimodalTeacherConfig

    def __init__(self, config: MultimodalTeacherConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        dims, hidden_dim = config.dims, config.hidden_dim
        for m in MODALITIES:
            self.register_buffer(f"{m}_mean", torch.zeros(dims[m]))
            self.register_buffer(f"{m}_std", torch.ones(dims[m]))
        self.proj = nn.ModuleDict({m: nn.Sequential(nn.Linear(dims[m], hidden_dim), nn.GELU()) for m in MODALITIES})
        self.missing = nn.ParameterDict({m: nn.Parameter(torch.zeros(hidden_dim)) for m in MODALITIES})
        fused = hidden_dim * (len(MODALITIES) if config.fusion == "concat" else 1)
        self.trunk = nn.Sequential(nn.Linear(fused, hidden_dim), nn.GELU(), nn.Dropout(config.dropout))
        self.classifier = nn.Linear(hidden_dim, config.num_classes)

    @property
    def hidden_dim(self) -> int:
        return self.config.hidden_dim

    @property
    def fusion(self) -> str:
        return self.config.fusion

    @property
    def device(self) -> torch.device:
        return self.classifier.weight.device

    def set_input_stats(self, inputs: dict[str, torch.Tensor]) -> None:
        """Standardise each modality with the mean/std of (training) ``inputs``."""
        for m in MODALITIES:
            getattr(self, f"{m}_mean").copy_(inputs[m].mean(0))
            getattr(self, f"{m}_std").copy_(inputs[m].std(0).clamp_min(1e-4))

    def encode(self, inputs: dict[str, torch.Tensor], present: Iterable[str] = MODALITIES,
               drop_mask: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The teacher representation ``(N, hidden_dim)``.

        Modalities not in ``present`` are replaced by their missing token for every clip;
        ``drop_mask[m]`` (``(N,)`` bool) replaces it for the marked clips only (modality dropout).
        """
        present = set(present)
        parts = []
        for m in MODALITIES:
            x = inputs[m]
            n = x.shape[0]
            if m not in present:
                e = self.missing[m].expand(n, -1)
            else:
                e = self.proj[m]((x - getattr(self, f"{m}_mean")) / getattr(self, f"{m}_std"))
                if drop_mask is not None and m in drop_mask:
                    e = torch.where(drop_mask[m][:, None], self.missing[m].expand(n, -1), e)
            parts.append(e)
        fused = torch.stack(parts).sum(0) if self.fusion == "sum" else torch.cat(parts, dim=-1)
        return self.trunk(fused)

    def forward(self, inputs: dict[str, torch.Tensor], present: Iterable[str] = MODALITIES,
                drop_mask: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Class logits ``(N, C)`` (see :meth:`encode` for ``present`` and ``drop_mask``)."""
        return self.classifier(self.encode(inputs, present, drop_mask))

    @torch.no_grad()
    def predict_logits(self, inputs: dict[str, torch.Tensor], present: Iterable[str] = MODALITIES,
                       batch_size: int = 4096) -> torch.Tensor:
        """Eval-mode logits for all rows of ``inputs`` with only the ``present`` modalities.

        The inputs may live anywhere; each chunk is moved to the teacher's device, and so are the logits.
        """
        was_training = self.training
        self.eval()
        present = tuple(present)
        n, device = next(iter(inputs.values())).shape[0], self.device
        out = [self({m: x[i : i + batch_size].to(device) for m, x in inputs.items()}, present)
               for i in range(0, n, batch_size)]
        self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, self.classifier.out_features, device=device)


def dataset_inputs(dataset: AVDataset) -> dict[str, torch.Tensor]:
    """The teacher's inputs of every clip of ``dataset`` (audio, visual, pooled teacher view)."""
    return {"audio": torch.from_numpy(dataset.audio), "visual": torch.from_numpy(dataset.visual),
            "view": torch.from_numpy(np.ascontiguousarray(pooled_view(dataset), dtype=np.float32))}


def build_teacher(train: AVDataset, hidden_dim: int = 256, fusion: str = "sum") -> MultimodalTeacher:
    """A fresh teacher sized for ``train`` with its input statistics set."""
    inputs = dataset_inputs(train)
    config = MultimodalTeacherConfig({m: int(x.shape[1]) for m, x in inputs.items()}, int(train.num_classes),
                                     hidden_dim, fusion)
    teacher = MultimodalTeacher(config)
    teacher.set_input_stats(inputs)
    return teacher


def train_multimodal_teacher(teacher: MultimodalTeacher, train: AVDataset, val: AVDataset, epochs: int = 30,
                             lr: float = 2e-3, batch_size: int = 128, modality_dropout: float = 0.3,
                             patience: int = 5, seed: int = 0, device: str = "cpu") -> FitResult:
    """Train ``teacher`` to classify ``train`` (cross-entropy, modality dropout); keep the best val epoch.

    Runs on :func:`avret.train.loop.fit` (seeded by ``seed``, on ``device``): AdamW, early stopping
    after ``patience`` epochs without a lower validation cross-entropy of the full (all-modality)
    teacher, the best epoch's weights restored. The modality-dropout masks come from a CPU
    generator seeded with ``seed`` (the same masks on every device). Returns the fit's record; its
    ``best`` holds ``val_ce`` and ``val_accuracy`` of the selected epoch. The teacher is left on
    ``device``, in eval mode.
    """
    x_tr = dataset_inputs(train)
    data = {**x_tr, "labels": torch.from_numpy(train.labels).long()}
    masks = torch.Generator().manual_seed(seed)

    def loss_fn(batch: dict[str, torch.Tensor]) -> torch.Tensor:
        n = len(batch["rows"])
        drop = {m: (torch.rand(n, generator=masks) < modality_dropout).to(batch["rows"].device) for m in MODALITIES}
        return F.cross_entropy(teacher({m: batch[m] for m in MODALITIES}, drop_mask=drop), batch["labels"])

    evaluate = None
    if len(val):
        target = resolve_device(device)
        x_va = {m: x.to(target) for m, x in dataset_inputs(val).items()}
        y_va = torch.from_numpy(val.labels).long().to(target)

        def evaluate() -> dict[str, float]:
            logits = teacher.predict_logits(x_va)
            return {"val_ce": F.cross_entropy(logits, y_va).item(),
                    "val_accuracy": float((logits.argmax(1) == y_va).float().mean())}

    optimizer = torch.optim.AdamW(teacher.parameters(), lr=lr, weight_decay=1e-4)
    config = FitConfig(epochs=epochs, batch_size=batch_size, seed=seed, patience=patience, device=device)
    result = fit(teacher, loss_fn, data, optimizer, config, evaluate=evaluate, monitor="val_ce", mode="min")
    teacher.eval()
    return result
