"""Fine-tuning the sentiment student, with optional distillation from teacher scores.

Protocol (no test-set peeking): train on the ``train`` split, evaluate the ``dev`` split after
every epoch and keep the weights of the epoch with the lowest dev MAE, then evaluate ``test`` once
with those weights. Optimisation follows common RoBERTa fine-tuning practice: AdamW, linear warmup
then linear decay to 0, a separate (higher) learning rate for the freshly initialised head,
optional layer-wise learning-rate decay for the encoder, gradient clipping, dynamic padding.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avret.errors import DataError
from avret.sentiment.data import SentimentExample, by_split
from avret.sentiment.distill import LOSSES, distillation_loss
from avret.sentiment.metrics import json_safe, sentiment_metrics
from avret.sentiment.student import SentimentStudent


@dataclass
class TrainConfig:
    """Fine-tuning hyper-parameters (defaults: tuned on MOSI dev with the MiniLM encoder).

    ``freeze_embeddings`` keeps the (large, 30k-row) token embedding table fixed: on MOSI's 1.3k
    training sentences it barely moves anyway, and skipping its gradient and AdamW update makes each
    step markedly cheaper on a CPU. ``bucket_batches``: batches are drawn from length-sorted pools
    of that many batches (then shuffled), so dynamic padding wastes little compute; 1 = plain
    random batches. ``threads``: torch CPU threads; 1 by default because on a shared, oversubscribed
    machine 2 OpenMP threads measured ~3x *slower* per step than 1. ``head_init``: ``"mean"`` starts
    the head at zero weights and the train-label mean as bias; ``"ridge"`` first fits the linear head
    by ridge regression on the frozen pooled embeddings (alpha chosen on dev), i.e. linear probing
    then fine-tuning (LP-FT, Kumar et al. 2022), so fine-tuning starts from the probe's solution
    rather than from a random head that first distorts the pretrained features.
    """

    epochs: int = 6
    batch_size: int = 32
    lr: float = 5e-5
    head_lr: float = 1e-3
    layer_decay: float = 1.0
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    grad_clip: float = 1.0
    max_len: int = 64
    pooling: str = "mean"
    head: str = "linear"
    dropout: float = 0.1
    loss: str = "l1"
    alpha: float = 0.5
    distill_loss: str = "l1"
    seed: int = 0
    eval_batch_size: int = 128
    freeze_embeddings: bool = True
    head_init: str = "mean"
    bucket_batches: int = 16
    threads: int = 1

    def validate(self) -> None:
        """Raise ValueError on nonsensical settings (the CLI turns them into one-line errors)."""
        if self.epochs < 1:
            raise ValueError(f"epochs is {self.epochs} (expected >= 1)")
        if self.batch_size < 1:
            raise ValueError(f"batch_size is {self.batch_size} (expected >= 1)")
        if self.lr <= 0 or self.head_lr <= 0:
            raise ValueError("learning rates must be > 0")
        if self.head_init not in ("mean", "ridge"):
            raise ValueError(f"head_init is {self.head_init!r} (expected 'mean' or 'ridge')")
        if self.loss not in LOSSES or self.distill_loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha is {self.alpha} (expected in [0, 1])")


@dataclass
class TrainResult:
    """What a training run produced: the selected model and its dev/test numbers."""

    model: SentimentStudent
    best_epoch: int
    dev_metrics: dict[str, float]
    test_metrics: dict[str, float] | None
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    test_predictions: dict[str, float] = field(default_factory=dict)


ProgressFn = Callable[[str, int, int], None]


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch (CPU) for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _layer_index(name: str, n_layers: int) -> int:
    """Depth of an encoder parameter: embeddings 0, layer i -> i + 1, everything above -> n + 1."""
    if "embeddings" in name:
        return 0
    parts = name.split(".")
    for i, p in enumerate(parts[:-1]):
        if p in ("layer", "layers") and parts[i + 1].isdigit():
            return int(parts[i + 1]) + 1
    return n_layers + 1


def param_groups(model: SentimentStudent, cfg: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: encoder (layer-wise decayed lr, no decay on bias/LayerNorm) and head (head_lr)."""
    n_layers = int(getattr(model.encoder.config, "num_hidden_layers", 0) or 0)
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, p in model.encoder.named_parameters():
        if not p.requires_grad:
            continue
        depth = _layer_index(name, n_layers)
        lr = cfg.lr * cfg.layer_decay ** (n_layers + 1 - depth)
        wd = 0.0 if (p.ndim < 2 or "LayerNorm" in name or "layer_norm" in name) else cfg.weight_decay
        groups.setdefault((lr, wd), []).append(p)
    out = [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]
    out.append({"params": list(model.head.parameters()), "lr": cfg.head_lr, "weight_decay": 0.0})
    return out


def linear_schedule(total_steps: int, warmup_ratio: float) -> Callable[[int], float]:
    """Learning-rate multiplier: linear warmup over ``warmup_ratio`` of the steps, then linear to 0."""
    warmup = max(1, int(round(total_steps * warmup_ratio)))

    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return fn


def length_bucketed_batches(lengths: Sequence[int], batch_size: int, gen: torch.Generator,
                            bucket_batches: int = 16) -> list[torch.Tensor]:
    """Shuffled batches of indices whose members have similar lengths (less padding).

    The rows are shuffled, cut into pools of ``bucket_batches * batch_size``, each pool sorted by
    length and cut into batches, and the batch order shuffled again: every row still appears
    exactly once per epoch, in a different random batch each epoch.
    """
    n = len(lengths)
    perm = torch.randperm(n, generator=gen).tolist()
    pool = max(1, bucket_batches) * batch_size
    batches: list[torch.Tensor] = []
    for start in range(0, n, pool):
        chunk = sorted(perm[start:start + pool], key=lambda i: lengths[i])
        batches += [torch.tensor(chunk[j:j + batch_size]) for j in range(0, len(chunk), batch_size)]
    order = torch.randperm(len(batches), generator=gen).tolist()
    return [batches[i] for i in order]


@torch.no_grad()
def init_head_by_ridge(model: SentimentStudent, train: Sequence[SentimentExample],
                       dev: Sequence[SentimentExample], batch_size: int = 128) -> float:
    """LP-FT: set a linear head to the ridge solution on frozen pooled embeddings; returns alpha.

    Ridge alpha is chosen on dev MAE (the test split is not touched). MLP heads are left as they are.
    """
    from avret.sentiment.probe import ridge_select

    if model.config.head != "linear":
        return float("nan")

    def pooled(rows: Sequence[SentimentExample]) -> np.ndarray:
        model.eval()
        out = []
        for i in range(0, len(rows), batch_size):
            batch = model.tokenize([e.text for e in rows[i:i + batch_size]])
            out.append(model.embed(**batch).double().numpy())
        return np.concatenate(out)

    ridge = ridge_select(pooled(train), np.array([e.label for e in train]), pooled(dev),
                         np.array([e.label for e in dev]))
    lin = model.head[-1]
    lin.weight.copy_(torch.as_tensor(ridge.coef, dtype=lin.weight.dtype).reshape(1, -1))
    lin.bias.fill_(float(ridge.y_mean - ridge.x_mean @ ridge.coef))
    model.train()
    return ridge.alpha


def evaluate(model: SentimentStudent, examples: Sequence[SentimentExample], batch_size: int = 128
             ) -> tuple[dict[str, float], np.ndarray]:
    """Metrics and predictions of ``model`` on ``examples``."""
    preds = model.predict([e.text for e in examples], batch_size=batch_size)
    return sentiment_metrics(preds, [e.label for e in examples]), preds


def train_student(
    examples: Sequence[SentimentExample],
    cfg: TrainConfig,
    encoder: str | Path | None = None,
    teacher_scores: dict[str, float] | None = None,
    progress: ProgressFn | None = None,
    evaluate_test: bool = True,
) -> TrainResult:
    """Fine-tune a student on the train split; select the best dev-MAE epoch; test once at the end.

    Args:
        examples: all rows (train/dev/test); train and dev must be non-empty.
        cfg: hyper-parameters.
        encoder: local Hugging Face encoder folder (None = the offline MiniLM default).
        teacher_scores: ``id -> teacher score`` covering the train split; enables distillation with
            ``cfg.alpha`` (see :mod:`avret.sentiment.distill`).
        progress: ``progress(phase, done, total)`` callback (phase ``"epoch N"``), for the CLI.
        evaluate_test: evaluate the test split once with the selected weights.
    """
    cfg.validate()
    set_seed(cfg.seed)
    train = by_split(examples, "train")
    dev = by_split(examples, "dev")
    test = by_split(examples, "test")
    if not train or not dev:
        raise DataError(f"need train and dev rows to train (got {len(train)} train, {len(dev)} dev)")
    torch.set_num_threads(cfg.threads)
    teacher = None
    if teacher_scores is not None and cfg.alpha > 0:
        missing = [e.id for e in train if e.id not in teacher_scores]
        if missing:
            raise DataError(f"teacher scores: no score for train id {missing[0]!r} "
                            f"({len(missing)} of {len(train)} missing)")
        teacher = torch.tensor([teacher_scores[e.id] for e in train], dtype=torch.float32)

    model = SentimentStudent.from_encoder(encoder, pooling=cfg.pooling, head=cfg.head, dropout=cfg.dropout,
                                          max_len=cfg.max_len)
    if cfg.freeze_embeddings:
        for name, p in model.encoder.named_parameters():
            if "embeddings" in name:
                p.requires_grad_(False)
    labels = torch.tensor([e.label for e in train], dtype=torch.float32)
    with torch.no_grad():  # start the head at the train mean: faster, steadier first epoch
        model.head[-1].bias.fill_(float(labels.mean()))
    if cfg.head_init == "ridge":
        init_head_by_ridge(model, train, dev, cfg.eval_batch_size)
    texts = [e.text for e in train]
    tokenized = model.tokenizer(texts, truncation=True, max_length=cfg.max_len)["input_ids"]
    lengths = [len(ids) for ids in tokenized]
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    opt = torch.optim.AdamW(param_groups(model, cfg))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(total, cfg.warmup_ratio))
    gen = torch.Generator().manual_seed(cfg.seed)

    best: tuple[float, int, dict[str, torch.Tensor], dict[str, float]] | None = None
    history: list[dict[str, Any]] = []
    epoch_seconds: list[float] = []
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        t0 = time.perf_counter()
        batches = length_bucketed_batches(lengths, cfg.batch_size, gen, cfg.bucket_batches)
        losses = []
        for step, idx in enumerate(batches):
            batch = model.tokenize([texts[i] for i in idx.tolist()])
            pred = model(**batch)
            loss = distillation_loss(pred, labels[idx], None if teacher is None else teacher[idx],
                                     alpha=cfg.alpha, label_loss=cfg.loss, distill_loss=cfg.distill_loss)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if progress is not None:
                progress(f"epoch {epoch}/{cfg.epochs}", step + 1, steps_per_epoch)
        train_s = time.perf_counter() - t0
        epoch_seconds.append(train_s)
        dev_m, _ = evaluate(model, dev, cfg.eval_batch_size)
        record = {"epoch": epoch, "train_loss": float(np.mean(losses)), "train_seconds": train_s,
                  "dev": json_safe(dev_m)}
        history.append(record)
        if best is None or dev_m["mae"] < best[0]:
            state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            best = (dev_m["mae"], epoch, state, dev_m)
    assert best is not None
    model.load_state_dict(best[2])
    model.eval()
    test_m = None
    test_pred: dict[str, float] = {}
    if evaluate_test and test:
        test_m, preds = evaluate(model, test, cfg.eval_batch_size)
        test_pred = {e.id: float(p) for e, p in zip(test, preds, strict=True)}
    return TrainResult(model=model, best_epoch=best[1], dev_metrics=best[3], test_metrics=test_m,
                       history=history, epoch_seconds=epoch_seconds, test_predictions=test_pred)


def write_run(out_dir: str | Path, result: TrainResult, cfg: TrainConfig, meta: dict[str, Any],
              teacher_scores: dict[str, float] | None = None) -> Path:
    """Write a self-contained run directory atomically (nothing half-written on error).

    Contents: the student (config.json, model.safetensors, tokenizer files), ``training.json``
    (hyper-parameters, data, teacher provenance, per-epoch history), ``metrics.json`` (selected
    epoch's dev metrics and the single test evaluation), ``test_predictions.csv`` and, when
    distilling, ``teacher_scores.csv`` (what the student was advised with).
    """
    import csv

    from avret.sentiment.data import write_teacher_scores
    from avret.utils.atomic import atomic_dir, write_json

    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        result.model.save_pretrained(tmp)
        write_json(tmp / "training.json", json_safe({
            "train_config": asdict(cfg), **meta, "best_epoch": result.best_epoch,
            "epoch_seconds": result.epoch_seconds, "history": result.history,
        }))
        write_json(tmp / "metrics.json", json_safe({
            "selection": "best dev MAE epoch", "best_epoch": result.best_epoch,
            "dev": result.dev_metrics, "test": result.test_metrics,
        }))
        if result.test_predictions:
            with open(tmp / "test_predictions.csv", "w", newline="") as fh:
                w = csv.writer(fh, lineterminator="\n")
                w.writerow(["id", "prediction"])
                for k, v in result.test_predictions.items():
                    w.writerow([k, f"{v:.6f}"])
        if teacher_scores is not None:
            write_teacher_scores(tmp / "teacher_scores.csv", teacher_scores)
    return out_dir


def deepcopy_config(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    """A copy of ``cfg`` with some fields changed (benchmarks vary the seed / alpha)."""
    new = copy.deepcopy(cfg)
    for k, v in changes.items():
        setattr(new, k, v)
    return new
