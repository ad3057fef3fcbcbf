"""Training the retrieval towers, shared by plain training and every distillation method.

Model selection uses the validation split carved out of the training split (never the test
split): after each epoch the mean of audio→visual and visual→audio mAP on ``val`` is measured and
the best epoch's weights are kept; training stops after ``patience`` epochs without improvement.
A distillation method plugs in as an :class:`AuxiliaryLoss` added to the retrieval objective; it
may bring its own training-only parameters, which never become part of the deployed towers.
The loop itself is :func:`avret.train.loop.fit`, the one loop of avret.

**Several processes** (``torchrun --nproc-per-node N``; the rules are :mod:`avret.train.distributed`'s):
``batch_size`` is per process, the global batch N × ``batch_size``. Each rank runs the towers on
its own slice; the embeddings are all-gathered *with gradients*, and the retrieval objective and the
auxiliary loss are computed on the whole global batch on every rank: the :class:`Batch` an
:class:`AuxiliaryLoss` receives is the global batch (its rows, raw features and labels, taken from
the training data every rank holds) with the gathered embeddings, exactly what one process with
batch N × ``batch_size`` hands it. So the cross-modal SupCon term sees the negatives of every rank,
the prototype classifier every clip, VideoAdviser's pairwise relevance every (audio, visual) pair of
the global batch and MI-KD's InfoNCE critics every rank's clips as negatives; per-clip terms (KD,
MSD, per-clip regression) are the same means. A loss module that steps its own optimiser inside the
call (MI-KD's discriminators, MSD's meta-learner) does so on the same global inputs on every rank,
so it stays identical everywhere without communication. The cost: the auxiliary loss (e.g. MI-KD's
jointly trained teacher) runs on the global batch on every rank, not on a slice.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from avret.data.dataset import AVDataset
from avret.errors import DataError
from avret.losses.auxiliary import AuxiliaryLoss, Batch  # re-exported: they lived here before
from avret.losses.contrastive import RetrievalObjective
from avret.models.towers import AVTowers, TowerConfig
from avret.train import distributed as dist
from avret.train.loop import Callback, FitConfig, OptimSettings, Progress, fit
from avret.utils.seeding import seed_everything

# (audio embeddings, visual embeddings, labels, class names) -> mean of A→V and V→A mAP
ValMetric = Callable[[np.ndarray, np.ndarray, np.ndarray, list[str]], float]


@dataclass
class TrainConfig(OptimSettings):
    """Optimisation settings of the towers (``device``/``precision``: see :class:`FitConfig`)."""

    epochs: int = 80
    batch_size: int = 256
    weight_decay: float = 1e-4
    temperature: float = 0.1
    classifier_weight: float = 0.5
    patience: int = 12
    val_fraction: float = 0.1


@dataclass
class TrainResult:
    """The selected model and how it was selected."""

    model: AVTowers
    best_epoch: int
    best_val_map: float
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0
    train_config: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"
    precision: str = "fp32"
    world_size: int = 1  # processes (torchrun); the global batch is world_size × batch_size


def mean_map(audio: np.ndarray, visual: np.ndarray, labels: np.ndarray, class_names: list[str]) -> float:
    """The default validation metric: the field's mean of A→V and V→A mAP."""
    from avret.eval.retrieval import cross_modal_report

    return cross_modal_report(audio, visual, labels, class_names).mean_map


def validation_map(model: AVTowers, val: AVDataset, metric: ValMetric = mean_map) -> float:
    """Mean of A→V and V→A mAP on the validation clips (model selection only)."""
    return metric(model.embed("audio", val.audio), model.embed("visual", val.visual), val.labels,
                  list(val.class_names))


def train_towers(
    dataset: AVDataset,
    tower_config: TowerConfig | None = None,
    config: TrainConfig | None = None,
    aux_loss: AuxiliaryLoss | None = None,
    progress: Progress | None = None,
    val_metric: ValMetric = mean_map,
    checkpoint: str | None = None,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Train audio/visual towers on ``dataset``'s train split, selecting the epoch on ``val``.

    ``dataset`` must be labelled; a ``val`` split is carved from ``train`` when absent. The rows
    passed to ``aux_loss`` in :class:`Batch` index ``dataset.subset("train")`` after carving.
    ``checkpoint``: a directory for the resumable training state (see :class:`FitConfig`);
    ``callbacks``: :class:`~avret.train.loop.Callback` hooks into the loop. Under torchrun the
    process group is initialised here (:func:`avret.train.distributed.init_from_env`) and every rank
    must call this with the same arguments.
    """
    cfg = config or TrainConfig()
    dist.init_from_env(cfg.device)
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
    modules: list[nn.Module] = [objective]
    params = list(model.parameters()) + list(objective.parameters())
    if aux_loss is not None:
        params += [p for p in aux_loss.parameters() if p.requires_grad]
        if isinstance(aux_loss, nn.Module):
            modules.append(aux_loss)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    data = {"audio": torch.from_numpy(train.audio), "visual": torch.from_numpy(train.visual),
            "labels": torch.from_numpy(train.labels)}

    world = dist.world_size()

    def global_batch(b: dict[str, torch.Tensor]) -> tuple[Batch, tuple[int, ...] | None]:
        """The whole global batch (this rank's slice in one process), and every rank's slice length."""
        if world == 1:
            return Batch(b["rows"], b["audio"], b["visual"], b["labels"]), None
        rows = b["global_rows"]
        on_cpu = rows.cpu()
        sizes = tuple(dist.shard_sizes(len(rows), world))
        if aux_loss is None:  # the retrieval objective needs only the labels of the global batch
            return Batch(rows, b["audio"], b["visual"], data["labels"][on_cpu].to(rows.device)), sizes
        return Batch(rows, *(data[k][on_cpu].to(rows.device) for k in ("audio", "visual", "labels"))), sizes

    def loss_fn(b: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        batch, sizes = global_batch(b)
        with dist.rank_rng(b["rows"].device):  # per-rank dropout; the shared RNG stream stays in step
            a_emb, v_emb = model(b["audio"], b["visual"])
        a_emb, v_emb = dist.all_gather_with_grad(a_emb, sizes), dist.all_gather_with_grad(v_emb, sizes)
        loss, logs = objective(a_emb, v_emb, batch.labels)
        if aux_loss is not None:
            extra, extra_logs = aux_loss(batch, a_emb, v_emb)
            loss = loss + extra
            logs = {**logs, **extra_logs}
        return loss, logs

    fit_cfg = FitConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed, patience=cfg.patience,
                        device=cfg.device, precision=cfg.precision, grad_clip=5.0, min_batch_size=2,
                        checkpoint=checkpoint, distributed=True)
    result = fit(model, loss_fn, data, optimizer, fit_cfg,
                 evaluate=lambda: {"val_map": validation_map(model, val, val_metric)},
                 monitor="val_map", mode="max", scheduler=scheduler, modules=modules, progress=progress,
                 callbacks=callbacks)
    return TrainResult(model, result.best_epoch, float(result.best["val_map"]), result.history, result.seconds,
                       asdict(cfg), result.device, result.precision, result.world_size)
