"""Training loop of the retrieval towers, shared by plain training and every distillation method.

Model selection uses the validation split carved out of the training split (never the test
split): after each epoch the mean of audio→visual and visual→audio mAP on ``val`` is measured and
the best epoch's weights are kept; training stops after ``patience`` epochs without improvement.
A distillation method plugs in as an :class:`AuxiliaryLoss` added to the retrieval objective; it
may bring its own training-only parameters, which never become part of the deployed towers.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from avret.data.dataset import AVDataset
from avret.errors import DataError
from avret.models.objectives import RetrievalObjective
from avret.models.towers import AVTowers, TowerConfig
from avret.utils.seeding import seed_everything

Progress = Callable[[int, int, dict[str, float]], None]


@dataclass
class TrainConfig:
    """Optimisation settings of the towers."""

    epochs: int = 80
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    temperature: float = 0.1
    classifier_weight: float = 0.5
    patience: int = 12
    val_fraction: float = 0.1
    seed: int = 0


@dataclass
class Batch:
    """One mini-batch of training clips; ``rows`` index the training subset."""

    rows: torch.Tensor
    audio: torch.Tensor
    visual: torch.Tensor
    labels: torch.Tensor


class AuxiliaryLoss(Protocol):
    """A distillation term: extra loss from the batch and the towers' outputs."""

    def parameters(self) -> Any: ...

    def __call__(
        self, batch: Batch, audio_emb: torch.Tensor, visual_emb: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, float]]: ...


@dataclass
class TrainResult:
    """The selected model and how it was selected."""

    model: AVTowers
    best_epoch: int
    best_val_map: float
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    train_config: dict[str, Any] = field(default_factory=dict)


def validation_map(model: AVTowers, val: AVDataset) -> float:
    """Mean of A→V and V→A mAP on the validation clips (model selection only)."""
    from avret.eval.retrieval import cross_modal_report

    a = model.embed("audio", val.audio)
    v = model.embed("visual", val.visual)
    return cross_modal_report(a, v, val.labels, val.class_names).mean_map


def train_towers(
    dataset: AVDataset,
    tower_config: TowerConfig | None = None,
    config: TrainConfig | None = None,
    aux_loss: AuxiliaryLoss | None = None,
    progress: Progress | None = None,
) -> TrainResult:
    """Train audio/visual towers on ``dataset``'s train split, selecting the epoch on ``val``.

    ``dataset`` must be labelled; a ``val`` split is carved from ``train`` when absent. The rows
    passed to ``aux_loss`` in :class:`Batch` index ``dataset.subset("train")`` after carving.
    """
    cfg = config or TrainConfig()
    dataset = dataset.with_validation_split(cfg.val_fraction, seed=cfg.seed)
    train, val = dataset.subset("train"), dataset.subset("val")
    if len(train) == 0 or len(val) == 0:
        raise DataError(f"{dataset.name}: needs labelled 'train' clips (got {len(train)}) to train towers")
    if (train.labels < 0).any():
        raise DataError(f"{dataset.name}: field 'labels' has unlabelled training clips; expected class labels")
    seed_everything(cfg.seed)
    tcfg = tower_config or TowerConfig()
    tcfg = TowerConfig(**{**asdict(tcfg), "audio_dim": dataset.audio_dim, "visual_dim": dataset.visual_dim,
                          "class_names": list(dataset.class_names)})
    model = AVTowers(tcfg)
    model.audio_tower.set_input_stats(train.audio)
    model.visual_tower.set_input_stats(train.visual)
    objective = RetrievalObjective(tcfg.embed_dim, dataset.num_classes, cfg.temperature, cfg.classifier_weight)
    params = list(model.parameters()) + list(objective.parameters())
    if aux_loss is not None:
        params += [p for p in aux_loss.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)

    audio = torch.from_numpy(train.audio)
    visual = torch.from_numpy(train.visual)
    labels = torch.from_numpy(train.labels)
    gen = torch.Generator().manual_seed(cfg.seed)
    best_map, best_epoch, best_state, since_best = -1.0, -1, None, 0
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        model.train()
        objective.train()
        order = torch.randperm(len(train), generator=gen)
        sums: dict[str, float] = {}
        n_batches = 0
        for i in range(0, len(order), cfg.batch_size):
            rows = order[i : i + cfg.batch_size]
            if len(rows) < 2:
                continue
            batch = Batch(rows, audio[rows], visual[rows], labels[rows])
            a_emb, v_emb = model(batch.audio, batch.visual)
            loss, logs = objective(a_emb, v_emb, batch.labels)
            if aux_loss is not None:
                extra, extra_logs = aux_loss(batch, a_emb, v_emb)
                loss = loss + extra
                logs = {**logs, **extra_logs}
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(params, 5.0)
            optimizer.step()
            for k, v in {"loss": loss.item(), **logs}.items():
                sums[k] = sums.get(k, 0.0) + v
            n_batches += 1
        scheduler.step()
        model.eval()
        val_map = validation_map(model, val)
        record = {"epoch": epoch, "val_map": val_map, **{k: v / max(n_batches, 1) for k, v in sums.items()}}
        history.append(record)
        if val_map > best_map:
            best_map, best_epoch, since_best = val_map, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            since_best += 1
        if progress is not None:
            progress(epoch + 1, cfg.epochs, record)
        if since_best >= cfg.patience:
            break
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(model, best_epoch, best_map, history, time.perf_counter() - start, asdict(cfg))
