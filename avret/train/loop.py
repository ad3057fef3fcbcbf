"""THE training loop of avret: every model that is trained by gradient descent goes through :func:`fit`.

The retrieval towers (with or without a distillation method's auxiliary loss), the VideoAdviser
teacher, the step-1 relevance head, the MSD/MI-KD multimodal teacher, the sentiment student and the
sentiment teacher all call :func:`fit`; what differs between them is only what they hand in:

* ``loss_fn(batch) -> loss`` or ``(loss, logs)``: the model's objective on one mini-batch. ``batch``
  is a :class:`dict` of the row-aligned training tensors in ``data`` sliced to the batch's rows and
  already on the device, plus ``batch["rows"]`` (the row indices, on the device) and
  ``batch["global_rows"]`` (the rows of the whole global batch; the same as ``rows`` in one process).
* ``evaluate() -> metrics``: the *validation* metrics (never the test split), called in eval mode
  under ``torch.no_grad()`` after every epoch; ``monitor``/``mode`` say which one selects the epoch.
* an optimizer (and optionally a scheduler stepped per epoch or per batch), and callbacks.

The loop owns everything else, so it is written once:

* **seeding** — torch (CPU and CUDA), NumPy and Python are seeded with ``config.seed`` at the start,
  and mini-batches are drawn from a generator seeded with it: one seed, one trajectory;
* **the device** — ``config.device`` (``auto|cpu|cuda``) is resolved once
  (:func:`avret.utils.device.resolve_device`); the model and any ``modules`` (training-only heads)
  are moved there and every batch is sent there; the model is returned on that device;
* **precision** — ``config.precision="bf16"`` runs ``loss_fn`` under bf16 autocast on CUDA (on the
  CPU it stays fp32 and the history records what was used);
* **model selection** — early stopping after ``config.patience`` epochs without improvement of the
  monitored validation metric, and the best epoch's weights restored at the end;
* **history** — one record per epoch (mean training loss and logs, validation metrics, seconds);
* **several processes** — with ``config.distributed`` and a process group of N > 1 ranks (torchrun),
  data-parallel training with one objective: the same global batches of N × ``batch_size`` rows
  on every rank, rank r's slice in ``batch``, the parameters broadcast from rank 0 at the start and
  the gradients averaged over the ranks after every backward; validation on rank 0, its metrics
  broadcast; the training state written by rank 0 only. ``loss_fn`` must return the loss of the
  *global* batch, gathering what carries gradients with
  :func:`avret.train.distributed.all_gather_with_grad` (the rules: :mod:`avret.train.distributed`);
  a ``loss_fn`` that averages over its own rows only is plain data parallelism (the uneven last
  batch then weighs its rows per rank);
* **resume** — with ``config.checkpoint`` set, the complete training state (weights, the training-only
  ``modules``, optimizer, scheduler, RNG states, best state, history) is saved atomically after every
  epoch, and a later call with the same arguments continues after the last finished epoch, reaching
  the same weights as an uninterrupted run. (Optimizers that a module keeps *inside* itself, such as
  MI-KD's discriminator optimizer, are not part of that state: such a resume is close, not exact.)

Patterns taken from Lightning's ``Trainer``/``Fabric`` and Hugging Face's ``Trainer``: the loop knows
nothing of the model; early stopping, checkpointing and progress are behaviour of the loop or of
callbacks, and device placement and precision live in one place.
"""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from avret.errors import AvretError
from avret.train import distributed as dist
from avret.utils.atomic import atomic_file
from avret.utils.device import resolve_device
from avret.utils.seeding import seed_everything

LossOut = torch.Tensor | tuple[torch.Tensor, Mapping[str, float]]
LossFn = Callable[[dict[str, torch.Tensor]], LossOut]
Progress = Callable[[int, int, dict[str, float]], None]
PRECISIONS = ("fp32", "bf16")
STATE_FILE = "train_state.pt"


@dataclass
class OptimSettings:
    """The optimisation settings every trained model's config starts from (it adds its own, and may
    change these defaults); :class:`FitConfig` is what the loop itself is given."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.0
    seed: int = 0
    device: str = "auto"
    precision: str = "fp32"


@dataclass
class FitConfig:
    """How :func:`fit` runs (the optimizer and the objective are handed in separately).

    Attributes:
        epochs: most epochs to train.
        batch_size: clips per mini-batch (the last, smaller batch of an epoch is kept).
        seed: seeds torch/NumPy/Python at the start and the mini-batch order.
        patience: stop after this many epochs without improvement of the monitored validation
            metric; ``None`` = never stop early (the best epoch is still restored).
        device: ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N``.
        precision: ``fp32`` or ``bf16`` (bf16 autocast of ``loss_fn``, CUDA only).
        grad_clip: clip the global gradient norm of every optimised parameter; ``None`` = no clipping.
        min_batch_size: skip training batches smaller than this (a contrastive loss needs 2 clips).
        num_threads: torch intra-op CPU threads during the call (restored afterwards); ``None`` = as is.
        checkpoint: a directory for the resumable training state; ``None`` = no resume.
        distributed: train data-parallel over the process group when one of N > 1 ranks is up
            (``batch_size`` is then per rank; see the module docstring); ignored in one process.
    """

    epochs: int = 10
    batch_size: int = 64
    seed: int = 0
    patience: int | None = None
    device: str = "auto"
    precision: str = "fp32"
    grad_clip: float | None = None
    min_batch_size: int = 1
    num_threads: int | None = None
    checkpoint: str | None = None
    distributed: bool = False

    def validate(self) -> None:
        """One-line :class:`AvretError` for a setting out of range."""
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise AvretError(f"epochs is {self.epochs!r}; expected an integer >= 1")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise AvretError(f"batch_size is {self.batch_size!r}; expected an integer >= 1")
        if self.patience is not None and self.patience < 1:
            raise AvretError(f"patience is {self.patience!r}; expected >= 1 or None")
        if self.precision not in PRECISIONS:
            raise AvretError(f"precision '{self.precision}': expected one of {', '.join(PRECISIONS)}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise AvretError(f"grad_clip is {self.grad_clip!r}; expected > 0 or None")


@dataclass
class FitResult:
    """What :func:`fit` did: the per-epoch history and the selected epoch."""

    history: list[dict[str, float]]
    best_epoch: int  # 1-based; the last epoch when there was no validation
    best: dict[str, float] = field(default_factory=dict)  # the selected epoch's record
    stopped_early: bool = False
    seconds: float = 0.0
    device: str = "cpu"
    precision: str = "fp32"
    resumed_from_epoch: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    world_size: int = 1  # processes that trained together (global batch = world_size × batch_size)


class Callback:
    """Hooks into :func:`fit`; override what you need."""

    def on_fit_start(self, state: FitState) -> None: ...

    def on_batch_end(self, state: FitState, step: int, n_steps: int) -> None: ...

    def on_epoch_end(self, state: FitState, record: dict[str, float]) -> None: ...

    def on_fit_end(self, state: FitState) -> None: ...


class ProgressCallback(Callback):
    """Calls ``progress(epoch, epochs, record)`` after every epoch (the CLI's progress bars)."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress

    def on_epoch_end(self, state: FitState, record: dict[str, float]) -> None:
        self.progress(state.epoch, state.config.epochs, dict(record))


@dataclass
class FitState:
    """The loop's live state, as callbacks see it."""

    config: FitConfig
    device: torch.device
    model: nn.Module
    optimizer: torch.optim.Optimizer
    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] | None = None
    best_epoch: int = 0
    stale: int = 0
    stop: bool = False  # a callback may set it to end training after this epoch


def default_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A fresh random permutation of ``n`` rows cut into batches; the last partial batch is kept."""
    order = torch.randperm(n, generator=generator)
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def _n_rows(data: Mapping[str, torch.Tensor] | int) -> int:
    if isinstance(data, int):
        return data
    sizes = {k: len(v) for k, v in data.items()}
    if len(set(sizes.values())) > 1:
        raise AvretError(f"training data: tensors of different lengths {sizes}; expected row-aligned tensors")
    return next(iter(sizes.values()), 0)


def _modes(monitor: str | Sequence[str], mode: str | Sequence[str]) -> tuple[str, ...]:
    n = 1 if isinstance(monitor, str) else len(monitor)
    modes = (mode,) * n if isinstance(mode, str) else tuple(mode)
    if len(modes) != n or any(m not in ("max", "min") for m in modes):
        raise AvretError(f"mode {mode!r}: expected 'max' or 'min' for each monitored metric")
    return modes


def _monitored(record: Mapping[str, float], monitor: str | Sequence[str]) -> tuple[float, ...]:
    keys = (monitor,) if isinstance(monitor, str) else tuple(monitor)
    missing = [k for k in keys if k not in record]
    if missing:
        raise AvretError(f"validation metrics {sorted(record)} lack the monitored '{missing[0]}'")
    return tuple(float(record[k]) for k in keys)


def _state_copy(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in state.items()}


def fit(
    model: nn.Module,
    loss_fn: LossFn,
    data: Mapping[str, torch.Tensor] | int,
    optimizer: torch.optim.Optimizer,
    config: FitConfig,
    *,
    evaluate: Callable[[], Mapping[str, float]] | None = None,
    monitor: str | Sequence[str] = "val_map",
    mode: str | Sequence[str] = "max",
    scheduler: Any = None,
    scheduler_interval: str = "epoch",
    batches: Callable[[torch.Generator, int], Iterable[torch.Tensor]] | None = None,
    modules: Sequence[nn.Module] = (),
    state_fn: Callable[[], Mapping[str, torch.Tensor]] | None = None,
    load_fn: Callable[[Mapping[str, torch.Tensor]], Any] | None = None,
    callbacks: Sequence[Callback] = (),
    progress: Progress | None = None,
) -> FitResult:
    """Train ``model`` with ``optimizer`` on ``loss_fn`` over ``data``; select the epoch on ``evaluate``.

    Args:
        model: the module being trained; moved to the device, in train mode during epochs and eval
            mode for ``evaluate``; its selected weights are loaded at the end.
        loss_fn: the objective of one batch (see the module docstring for ``batch``).
        data: row-aligned training tensors (kept where they are; each batch is sliced and moved), or
            the number of rows when ``loss_fn`` only needs ``batch["rows"]``.
        optimizer: over the parameters to train (they may include training-only ``modules``).
        config: :class:`FitConfig`.
        evaluate: validation metrics after each epoch; ``None`` = train every epoch, keep the last.
        monitor, mode: the metric (or tuple of metrics, compared lexicographically) that selects the
            epoch, and whether higher (``max``) or lower (``min``) is better (one mode per metric).
        scheduler, scheduler_interval: an LR scheduler stepped after every ``epoch`` or ``batch``.
        batches: ``batches(generator, epoch)`` yields the row indices of each batch (default: a
            random permutation cut into ``config.batch_size`` pieces).
        modules: training-only modules (distillation heads, critics) to move to the device and to
            switch between train/eval mode with the model.
        state_fn, load_fn: what "the weights" are for best-state restore (default: the model's whole
            ``state_dict``; a teacher with a frozen backbone hands in its own weights only).
        callbacks, progress: hooks; ``progress(epoch, epochs, record)`` after every epoch (on rank 0
            only when distributed; callbacks run on every rank).

    Distributed (``config.distributed`` under torchrun): ``batches`` yields the *global* batches
    (every rank must yield the same), and each rank gets its slice
    (:func:`avret.train.distributed.shard_bounds`).
    """
    config.validate()
    modes = _modes(monitor, mode)
    if scheduler_interval not in ("epoch", "batch"):
        raise AvretError(f"scheduler_interval '{scheduler_interval}': expected 'epoch' or 'batch'")
    n = _n_rows(data)
    if n == 0:
        raise AvretError("no training rows: the training split is empty")
    world = dist.world_size() if config.distributed else 1
    rank = dist.rank() if world > 1 else 0
    device = resolve_device(config.device)
    if world > 1:
        device = dist.local_device(device)
    precision = "bf16" if config.precision == "bf16" and device.type == "cuda" else "fp32"
    state_fn = state_fn or model.state_dict
    load_fn = load_fn or model.load_state_dict
    show = progress is not None and rank == 0
    callbacks = list(callbacks) + ([ProgressCallback(progress)] if show else [])
    tensors = {} if isinstance(data, int) else dict(data)
    params = [p for group in optimizer.param_groups for p in group["params"]]

    model.to(device)
    for m in modules:
        m.to(device)
    _optimizer_to(optimizer, device)

    seed_everything(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    state = FitState(config, device, model, optimizer)
    best_weights: dict[str, torch.Tensor] | None = None
    ckpt = Path(config.checkpoint) / STATE_FILE if config.checkpoint else None
    resumed = 0
    if ckpt is not None and ckpt.is_file():
        best_weights, resumed = _load_train_state(ckpt, state, modules, scheduler, generator, load_fn)
    if world > 1:
        if not dist.all_equal(resumed):
            raise AvretError(f"{ckpt}: the ranks found different training states; the checkpoint directory "
                             "must be on a file system that every rank sees")
        for m in (model, *modules):  # one starting point, whatever each rank built
            dist.broadcast_module(m)

    threads_before = torch.get_num_threads()
    if config.num_threads:
        torch.set_num_threads(int(config.num_threads))
    started = time.perf_counter()
    try:
        for cb in callbacks:
            cb.on_fit_start(state)
        for epoch in range(resumed + 1, config.epochs + 1):
            if state.stop:
                break
            state.epoch = epoch
            t0 = time.perf_counter()
            _set_mode(model, modules, train=True)
            epoch_batches = list(batches(generator, epoch) if batches is not None
                                 else default_batches(n, config.batch_size * world, generator))
            sums: dict[str, float] = {}
            seen = 0
            for step, rows in enumerate(epoch_batches):
                if len(rows) < config.min_batch_size:
                    continue
                start, stop = dist.shard_bounds(len(rows), rank, world)
                local = rows[start:stop]
                batch = {k: v[local].to(device, non_blocking=True) for k, v in tensors.items()}
                batch["rows"] = local.to(device)
                batch["global_rows"] = batch["rows"] if world == 1 else rows.to(device)
                with _autocast(device, precision):
                    out = loss_fn(batch)
                loss, logs = (out if isinstance(out, tuple) else (out, {}))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if world > 1:
                    dist.average_gradients(params)
                if config.grad_clip is not None:
                    nn.utils.clip_grad_norm_(params, config.grad_clip)
                optimizer.step()
                if scheduler is not None and scheduler_interval == "batch":
                    scheduler.step()
                w = len(rows)
                for k, v in {"train_loss": float(loss.detach()), **logs}.items():
                    sums[k] = sums.get(k, 0.0) + float(v) * w
                seen += w
                for cb in callbacks:
                    cb.on_batch_end(state, step + 1, len(epoch_batches))
            if scheduler is not None and scheduler_interval == "epoch":
                scheduler.step()
            record: dict[str, float] = {"epoch": epoch, **{k: v / max(seen, 1) for k, v in sums.items()}}
            if evaluate is not None:
                _set_mode(model, modules, train=False)
                with torch.no_grad():  # rank 0 validates; every rank takes the same decision from its numbers
                    metrics = {k: float(v) for k, v in evaluate().items()} if rank == 0 else {}
                record.update(dist.broadcast_object(metrics) if world > 1 else metrics)
                key = _monitored(record, monitor)
                best_key = None if state.best is None else _monitored(state.best, monitor)
                if best_key is None or _lex_better(key, best_key, modes):
                    state.best, state.best_epoch, state.stale = dict(record), epoch, 0
                    best_weights = _state_copy(state_fn())
                else:
                    state.stale += 1
            record["seconds"] = time.perf_counter() - t0
            state.history.append(record)
            if config.patience is not None and evaluate is not None and state.stale >= config.patience:
                state.stop = True
            if ckpt is not None:
                if rank == 0:
                    _save_train_state(ckpt, state, modules, scheduler, generator, best_weights, state_fn)
                dist.barrier()  # the saved epoch is on disk before any rank goes on (or stops)
            for cb in callbacks:
                cb.on_epoch_end(state, record)
            if world > 1:  # a callback's stop: rank 0's word
                state.stop = dist.broadcast_object(state.stop)
        stopped_early = state.stop and state.epoch < config.epochs
        if best_weights is not None:
            load_fn(best_weights)
        else:
            state.best_epoch = len(state.history)
            state.best = dict(state.history[-1]) if state.history else {}
        _set_mode(model, modules, train=False)
        for cb in callbacks:
            cb.on_fit_end(state)
    finally:
        torch.set_num_threads(threads_before)
    best = {k: v for k, v in (state.best or {}).items() if k != "seconds"}
    return FitResult(state.history, state.best_epoch, best, stopped_early, time.perf_counter() - started,
                     str(device), precision, resumed, asdict(config), world)


def _lex_better(new: tuple[float, ...], best: tuple[float, ...], modes: tuple[str, ...]) -> bool:
    """Lexicographic comparison, each metric in its own direction (ties: not better)."""
    for a, b, m in zip(new, best, modes, strict=True):
        if a != b:
            return a > b if m == "max" else a < b
    return False


def _set_mode(model: nn.Module, modules: Sequence[nn.Module], train: bool) -> None:
    model.train(train)
    for m in modules:
        m.train(train)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _optimizer_to(optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    """Move optimizer state (e.g. AdamW moments of a resumed run) to ``device``."""
    for st in optimizer.state.values():
        for k, v in st.items():
            if torch.is_tensor(v) and k != "step":
                st[k] = v.to(device)


def _numpy_rng_state() -> list[Any]:
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    return [torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)]


def _save_train_state(path: Path, state: FitState, modules: Sequence[nn.Module], scheduler: Any,
                      generator: torch.Generator,
                      best_weights: dict[str, torch.Tensor] | None,
                      state_fn: Callable[[], Mapping[str, torch.Tensor]]) -> None:
    """Everything needed to continue after ``state.epoch``, written atomically (tmp + rename)."""
    payload = {
        "epoch": state.epoch,
        "model": {k: v.detach().cpu() for k, v in state.model.state_dict().items()},
        "modules": [{k: v.detach().cpu() for k, v in m.state_dict().items()} for m in modules],
        "optimizer": state.optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "best_weights": None if best_weights is None else {k: v.cpu() for k, v in best_weights.items()},
        "best": state.best,
        "best_epoch": state.best_epoch,
        "stale": state.stale,
        "stop": state.stop,
        "history": state.history,
        "rng_cpu": torch.get_rng_state(),
        "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "rng_numpy": _numpy_rng_state(),
        "generator": generator.get_state(),
    }
    with atomic_file(path, "wb") as fh:  # a full disk is one line, and no temporary is left behind
        torch.save(payload, fh)


def _load_train_state(path: Path, state: FitState, modules: Sequence[nn.Module], scheduler: Any,
                      generator: torch.Generator,
                      load_fn: Callable[[Mapping[str, torch.Tensor]], Any]
                      ) -> tuple[dict[str, torch.Tensor] | None, int]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        state.model.load_state_dict(payload["model"])
        for m, saved in zip(modules, payload["modules"], strict=True):
            m.load_state_dict(saved)
        state.optimizer.load_state_dict(copy.deepcopy(payload["optimizer"]))
        if scheduler is not None and payload["scheduler"] is not None:
            scheduler.load_state_dict(payload["scheduler"])
        torch.set_rng_state(payload["rng_cpu"])
        if payload["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(payload["rng_cuda"])
        keys, pos, has_gauss, gauss = payload["rng_numpy"]
        np.random.set_state(("MT19937", keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
        generator.set_state(payload["generator"])
    except Exception as exc:  # a torn or foreign file: say which, never a traceback
        raise AvretError(f"{path}: unreadable training state ({type(exc).__name__}); delete it to start over") \
            from None
    _optimizer_to(state.optimizer, state.device)
    state.epoch = int(payload["epoch"])
    state.history = list(payload["history"])
    state.best = payload["best"]
    state.best_epoch = int(payload["best_epoch"])
    state.stale = int(payload["stale"])
    state.stop = bool(payload["stop"])
    best = payload["best_weights"]
    if best is not None:
        best = {k: v.to(state.device) for k, v in best.items()}
    return best, state.epoch
