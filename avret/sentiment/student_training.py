"""Fine-tuning the sentiment student, with optional distillation from teacher scores.

Protocol (no test-set peeking): train on the ``train`` split, evaluate the ``dev`` split after
every epoch and keep the weights of the epoch with the lowest dev MAE, then evaluate ``test`` once
with those weights. Optimisation follows common RoBERTa fine-tuning practice: AdamW, linear warmup
then linear decay to 0 (stepped per batch), a separate (higher) learning rate for the freshly
initialised head, optional layer-wise learning-rate decay for the encoder, gradient clipping,
dynamic padding over length-bucketed batches.

The loop is avret's one training loop (:func:`avret.train.loop.fit`): it seeds, places the model on
``--device``, runs bf16 autocast when asked, clips gradients, restores the best dev-MAE epoch (no
early stopping) and keeps the per-epoch history. This module only hands it the objective (texts
are tokenised inside ``loss_fn`` from the batch's row indices), the optimizer, the scheduler, the
length-bucketed batches and the dev evaluation. :func:`write_student_run` writes the result as
avret's one run-directory layout (:func:`avret.io.write_run`).
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avret.errors import DataError
from avret.io import write_run
from avret.sentiment.label_files import SentimentExample, by_split, write_teacher_scores
from avret.sentiment.metrics import json_safe, sentiment_metrics
from avret.sentiment.student import SentimentStudent
from avret.sentiment.student_loss import LOSSES, distillation_loss
from avret.train.loop import PRECISIONS, Callback, FitConfig, FitState, OptimSettings, fit
from avret.utils.device import resolve_device
from avret.utils.seeding import seed_everything


@dataclass
class SentimentTrainConfig(OptimSettings):
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
    rather than from a random head that first distorts the pretrained features. ``device``:
    ``auto`` | ``cpu`` | ``cuda`` (auto = CUDA when torch sees one); ``precision``: ``fp32`` or
    ``bf16`` (bf16 autocast of the training step, CUDA only; the CPU stays fp32).
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
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision is {self.precision!r} (expected one of {', '.join(PRECISIONS)})")


@dataclass
class SentimentTrainResult:
    """What a training run produced: the selected model and its dev/test numbers.

    ``history`` has one record per epoch: ``epoch``, ``train_loss``, ``train_seconds`` (the
    training batches only), ``seconds`` (with the dev evaluation) and ``dev`` (its metrics).
    ``device``/``precision`` are what the loop used (``auto`` resolved).
    """

    model: SentimentStudent
    best_epoch: int
    dev_metrics: dict[str, float]
    test_metrics: dict[str, float] | None
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    test_predictions: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    precision: str = "fp32"
    seconds: float = 0.0


ProgressFn = Callable[[str, int, int], None]


def _layer_index(name: str, n_layers: int) -> int:
    """Depth of an encoder parameter: embeddings 0, layer i -> i + 1, everything above -> n + 1."""
    if "embeddings" in name:
        return 0
    parts = name.split(".")
    for i, p in enumerate(parts[:-1]):
        if p in ("layer", "layers") and parts[i + 1].isdigit():
            return int(parts[i + 1]) + 1
    return n_layers + 1


def param_groups(model: SentimentStudent, cfg: SentimentTrainConfig) -> list[dict[str, Any]]:
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
            out.append(model.embed(**batch).double().cpu().numpy())
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
    cfg: SentimentTrainConfig,
    encoder: str | Path | None = None,
    teacher_scores: dict[str, float] | None = None,
    progress: ProgressFn | None = None,
    evaluate_test: bool = True,
) -> SentimentTrainResult:
    """Fine-tune a student on the train split; select the best dev-MAE epoch; test once at the end.

    Args:
        examples: all rows (train/dev/test); train and dev must be non-empty.
        cfg: hyper-parameters (``cfg.device``/``cfg.precision`` say where and how :func:`fit` runs).
        encoder: local Hugging Face encoder folder (None = the offline MiniLM default).
        teacher_scores: ``id -> teacher score`` covering the train split; enables distillation with
            ``cfg.alpha`` (see :mod:`avret.sentiment.student_loss`).
        progress: ``progress(phase, done, total)`` after every training step (phase ``"epoch N/E"``),
            for the CLI.
        evaluate_test: evaluate the test split once with the selected weights.
    """
    cfg.validate()
    device = resolve_device(cfg.device)  # a bad --device fails before the encoder is loaded
    train = by_split(examples, "train")
    dev = by_split(examples, "dev")
    test = by_split(examples, "test")
    if not train or not dev:
        raise DataError(f"need train and dev rows to train (got {len(train)} train, {len(dev)} dev)")
    teacher = None
    if teacher_scores is not None and cfg.alpha > 0:
        missing = [e.id for e in train if e.id not in teacher_scores]
        if missing:
            raise DataError(f"teacher scores: no score for train id {missing[0]!r} "
                            f"({len(missing)} of {len(train)} missing)")
        teacher = torch.tensor([teacher_scores[e.id] for e in train], dtype=torch.float32)

    threads_before = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        seed_everything(cfg.seed)  # the head's initial weights; fit seeds again for the trajectory
        model = _new_student(train, dev, cfg, encoder, device)
        texts = [e.text for e in train]
        labels = torch.tensor([e.label for e in train], dtype=torch.float32)
        lengths = [len(ids) for ids in model.tokenizer(texts, truncation=True, max_length=cfg.max_len)["input_ids"]]
        total = math.ceil(len(train) / cfg.batch_size) * cfg.epochs
        opt = torch.optim.AdamW(param_groups(model, cfg))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(total, cfg.warmup_ratio))

        def loss_fn(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            rows = batch["rows"].cpu()
            pred = model(**model.tokenize([texts[i] for i in rows.tolist()])).float()
            return distillation_loss(pred, labels[rows].to(pred.device),
                                     None if teacher is None else teacher[rows].to(pred.device),
                                     alpha=cfg.alpha, label_loss=cfg.loss, distill_loss=cfg.distill_loss)

        def dev_metrics() -> dict[str, float]:
            metrics, _ = evaluate(model, dev, cfg.eval_batch_size)
            return {f"dev_{k}": v for k, v in metrics.items()}

        timer = _TrainTimer()
        callbacks: list[Callback] = [timer] + ([_StepProgress(progress)] if progress is not None else [])
        fit_cfg = FitConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, seed=cfg.seed, patience=None,
                            device=str(device), precision=cfg.precision,
                            grad_clip=cfg.grad_clip if cfg.grad_clip > 0 else None, num_threads=cfg.threads)
        result = fit(model, loss_fn, len(train), opt, fit_cfg, evaluate=dev_metrics, monitor="dev_mae", mode="min",
                     scheduler=sched, scheduler_interval="batch", callbacks=callbacks,
                     batches=lambda gen, _epoch: length_bucketed_batches(lengths, cfg.batch_size, gen,
                                                                        cfg.bucket_batches))
        history = [_epoch_record(r, s) for r, s in zip(result.history, timer.seconds, strict=True)]
        test_m = None
        test_pred: dict[str, float] = {}
        if evaluate_test and test:
            test_m, preds = evaluate(model, test, cfg.eval_batch_size)
            test_pred = {e.id: float(p) for e, p in zip(test, preds, strict=True)}
    finally:
        torch.set_num_threads(threads_before)
    return SentimentTrainResult(model=model, best_epoch=result.best_epoch,
                                dev_metrics=history[result.best_epoch - 1]["dev"],
                       test_metrics=test_m, history=history, epoch_seconds=list(timer.seconds),
                       test_predictions=test_pred, device=result.device, precision=result.precision,
                       seconds=result.seconds)


def _new_student(train: Sequence[SentimentExample], dev: Sequence[SentimentExample], cfg: SentimentTrainConfig,
                 encoder: str | Path | None, device: torch.device) -> SentimentStudent:
    """A student on the pretrained encoder, head at the train-label mean (or the ridge probe), on ``device``."""
    model = SentimentStudent.from_encoder(encoder, pooling=cfg.pooling, head=cfg.head, dropout=cfg.dropout,
                                          max_len=cfg.max_len)
    if cfg.freeze_embeddings:
        for name, p in model.encoder.named_parameters():
            if "embeddings" in name:
                p.requires_grad_(False)
    with torch.no_grad():  # start the head at the train mean: faster, steadier first epoch
        model.head[-1].bias.fill_(float(torch.tensor([e.label for e in train], dtype=torch.float32).mean()))
    model.to(device)
    if cfg.head_init == "ridge":
        init_head_by_ridge(model, train, dev, cfg.eval_batch_size)
    return model


class _StepProgress(Callback):
    """``progress("epoch N/E", step, steps)`` after every training step (the CLI's bar)."""

    def __init__(self, progress: ProgressFn) -> None:
        self.progress = progress

    def on_batch_end(self, state: FitState, step: int, n_steps: int) -> None:
        self.progress(f"epoch {state.epoch}/{state.config.epochs}", step, n_steps)


class _TrainTimer(Callback):
    """Seconds of each epoch's training batches (batching included, dev evaluation excluded)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_fit_start(self, state: FitState) -> None:
        self._start = time.perf_counter()

    def on_batch_end(self, state: FitState, step: int, n_steps: int) -> None:
        if step == n_steps:
            self.seconds.append(time.perf_counter() - self._start)

    def on_epoch_end(self, state: FitState, record: dict[str, float]) -> None:
        self._start = time.perf_counter()


def _epoch_record(record: Mapping[str, float], train_seconds: float) -> dict[str, Any]:
    """fit's flat epoch record → ``{epoch, train_loss, train_seconds, seconds, dev: {...}}``."""
    dev = {k[len("dev_"):]: v for k, v in record.items() if k.startswith("dev_")}
    dev["n"] = int(dev["n"])
    out: dict[str, Any] = {k: v for k, v in record.items() if not k.startswith("dev_")}
    out["epoch"] = int(out["epoch"])
    out["train_seconds"] = train_seconds
    out["dev"] = dev
    return out


def sentiment_run_metadata(result: SentimentTrainResult, cfg: SentimentTrainConfig,
                           meta: Mapping[str, Any]) -> dict[str, Any]:
    """What ``run.json`` of a sentiment run records (besides :func:`avret.io.write_run`'s header).

    ``meta`` holds what the caller knows: ``data``, ``dataset``, ``encoder``, ``teacher`` (provenance
    of the teacher scores, or None).
    """
    distilled = bool(meta.get("teacher")) and cfg.alpha > 0
    return json_safe({
        "command": "sentiment train",
        "method": "distill" if distilled else "finetune",
        "seed": cfg.seed,
        **meta,
        "device": result.device,
        "precision": result.precision,
        "train_config": asdict(cfg),
        "selection": "best dev MAE epoch (no early stopping); test evaluated once with its weights",
        "best_epoch": result.best_epoch,
        "metrics": {"dev": result.dev_metrics, "test": result.test_metrics},
        "train_seconds": result.seconds,
        "epoch_seconds": result.epoch_seconds,
        "history": [json_safe(h) for h in result.history],
    })


def write_student_run(out: str | Path, result: SentimentTrainResult, cfg: SentimentTrainConfig, meta: Mapping[str, Any],
                      teacher_scores: Mapping[str, float] | None = None) -> Path:
    """Write the run directory of a sentiment training (atomically, :func:`avret.io.write_run`)::

        RUN/model/               the selected student (avret's checkpoint format, tokenizer/ inside)
        RUN/run.json             :func:`sentiment_run_metadata` + write_run's header (versions, file hashes)
        RUN/test_predictions.csv id,prediction of the single test evaluation
        RUN/teacher_scores.csv   id,score the student was advised with (when distilling)
    """

    def extra(tmp: Path) -> None:
        if result.test_predictions:
            with open(tmp / "test_predictions.csv", "w", newline="") as fh:
                w = csv.writer(fh, lineterminator="\n")
                w.writerow(["id", "prediction"])
                for k, v in result.test_predictions.items():
                    w.writerow([k, f"{v:.6f}"])
        if teacher_scores is not None:
            write_teacher_scores(tmp / "teacher_scores.csv", dict(teacher_scores))

    return write_run(out, result.model, sentiment_run_metadata(result, cfg, meta), extra=extra)
