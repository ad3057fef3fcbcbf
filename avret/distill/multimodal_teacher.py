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

It never becomes part of the deployed towers.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from avret.data.dataset import AVDataset
from avret.errors import DataError

MODALITIES = ("audio", "visual", "view")


def pooled_view(dataset: AVDataset) -> np.ndarray:
    """``(N, Dt)`` masked mean over frames of ``dataset.teacher_frames`` (the teacher view)."""
    if dataset.teacher_frames is None or dataset.teacher_mask is None:
        raise DataError(f"{dataset.source or dataset.name}: field 'teacher_frames' is missing; "
                        "this method needs a teacher view")
    mask = dataset.teacher_mask[..., None].astype(np.float32)
    return (dataset.teacher_frames * mask).sum(1) / np.maximum(mask.sum(1), 1.0)


class MultimodalTeacher(nn.Module):
    """MLP teacher over audio + visual + teacher view with per-modality missing tokens."""

    def __init__(self, dims: dict[str, int], num_classes: int, hidden_dim: int = 256, fusion: str = "sum",
                 dropout: float = 0.1) -> None:
        super().__init__()
        if fusion not in ("sum", "concat"):
            raise ValueError(f"fusion '{fusion}': expected 'sum' or 'concat'")
        if set(dims) != set(MODALITIES):
            raise ValueError(f"dims: expected the modalities {MODALITIES}, got {sorted(dims)}")
        self.fusion = fusion
        self.hidden_dim = hidden_dim
        for m in MODALITIES:
            self.register_buffer(f"{m}_mean", torch.zeros(dims[m]))
            self.register_buffer(f"{m}_std", torch.ones(dims[m]))
        self.proj = nn.ModuleDict({m: nn.Sequential(nn.Linear(dims[m], hidden_dim), nn.GELU()) for m in MODALITIES})
        self.missing = nn.ParameterDict({m: nn.Parameter(torch.zeros(hidden_dim)) for m in MODALITIES})
        fused = hidden_dim * (len(MODALITIES) if fusion == "concat" else 1)
        self.trunk = nn.Sequential(nn.Linear(fused, hidden_dim), nn.GELU(), nn.Dropout(dropout))
        self.classifier = nn.Linear(hidden_dim, num_classes)

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
        """Eval-mode logits for all rows of ``inputs`` with only the ``present`` modalities."""
        was_training = self.training
        self.eval()
        n = next(iter(inputs.values())).shape[0]
        out = [self({m: x[i : i + batch_size] for m, x in inputs.items()}, present) for i in range(0, n, batch_size)]
        self.train(was_training)
        return torch.cat(out) if out else torch.zeros(0, self.classifier.out_features)


def dataset_inputs(dataset: AVDataset) -> dict[str, torch.Tensor]:
    """The teacher's inputs of every clip of ``dataset`` (audio, visual, pooled teacher view)."""
    return {"audio": torch.from_numpy(dataset.audio), "visual": torch.from_numpy(dataset.visual),
            "view": torch.from_numpy(np.ascontiguousarray(pooled_view(dataset), dtype=np.float32))}


def build_teacher(train: AVDataset, hidden_dim: int = 256, fusion: str = "sum") -> MultimodalTeacher:
    """A fresh teacher sized for ``train`` with its input statistics set."""
    inputs = dataset_inputs(train)
    teacher = MultimodalTeacher({m: x.shape[1] for m, x in inputs.items()}, train.num_classes, hidden_dim, fusion)
    teacher.set_input_stats(inputs)
    return teacher


def train_multimodal_teacher(teacher: MultimodalTeacher, train: AVDataset, val: AVDataset, epochs: int = 30,
                             lr: float = 2e-3, batch_size: int = 128, modality_dropout: float = 0.3,
                             patience: int = 5, seed: int = 0) -> list[dict[str, float]]:
    """Train ``teacher`` to classify ``train`` (cross-entropy, modality dropout); keep the best val epoch.

    Early stopping on the validation cross-entropy of the full (all-modality) teacher; the weights
    of the best epoch are restored. Returns the per-epoch history.
    """
    gen = torch.Generator().manual_seed(seed)
    x_tr, x_va = dataset_inputs(train), dataset_inputs(val)
    y_tr, y_va = torch.from_numpy(train.labels), torch.from_numpy(val.labels)
    opt = torch.optim.AdamW(teacher.parameters(), lr=lr, weight_decay=1e-4)
    best, best_state, since, history = float("inf"), copy.deepcopy(teacher.state_dict()), 0, []
    for epoch in range(epochs):
        teacher.train()
        order = torch.randperm(len(train), generator=gen)
        for i in range(0, len(order), batch_size):
            rows = order[i : i + batch_size]
            drop = {m: torch.rand(len(rows), generator=gen) < modality_dropout for m in MODALITIES}
            loss = F.cross_entropy(teacher({m: x[rows] for m, x in x_tr.items()}, drop_mask=drop), y_tr[rows])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        logits = teacher.predict_logits(x_va)
        val_ce = F.cross_entropy(logits, y_va).item() if len(y_va) else 0.0
        val_acc = float((logits.argmax(1) == y_va).float().mean()) if len(y_va) else 0.0
        history.append({"epoch": epoch, "val_ce": val_ce, "val_accuracy": val_acc})
        if val_ce < best:
            best, best_state, since = val_ce, copy.deepcopy(teacher.state_dict()), 0
        else:
            since += 1
            if since >= patience:
                break
    teacher.load_state_dict(best_state)
    teacher.eval()
    return history
