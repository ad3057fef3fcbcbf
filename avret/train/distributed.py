"""Data-parallel training over several processes (``torchrun``), with global negatives.

``torchrun --nproc-per-node N .venv/bin/avret train ...`` (or ``avret distill``, or any script that
calls :func:`avret.train.tower_training.train_towers`) trains the towers with N processes; multi-node is the
same with ``torchrun --nnodes``. This module is the one place that touches :mod:`torch.distributed`.
In a single process (no ``WORLD_SIZE`` > 1 in the environment and no process group) every function
here is a no-op or returns the single-process answer, and nothing of ``torch.distributed`` is used.

The rules (what :func:`avret.train.loop.fit` does with ``FitConfig.distributed``):

* **Start-up** — :func:`init_from_env` reads ``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` (set by
  torchrun) and initialises the process group once per process: NCCL when the training device is a
  GPU (each process uses ``cuda:LOCAL_RANK``; ``--device cuda``/``auto`` mean that GPU), Gloo on the
  CPU. The group lives until the process exits (or :func:`shutdown`).
* **Batches** — ``FitConfig.batch_size`` is *per process*: every rank draws the same permutation
  from the same seeded generator and cuts global batches of ``world_size × batch_size`` rows; rank
  r takes the r-th contiguous slice (:func:`shard_bounds`). The last, smaller global batch is kept
  and split as evenly as it goes; a rank whose slice is empty still takes part in every collective.
  So N processes with batch b see exactly the batches of one process with batch N·b, in order.
* **One objective** — every rank computes the loss of the *whole global batch*: per-clip outputs
  that carry gradients (the towers' embeddings) are gathered with :func:`all_gather_with_grad`, and
  everything else of the global batch (labels, rows, raw inputs, a teacher's targets) is taken from
  the training data, which every rank holds. The contrastive objective therefore sees the negatives
  of every rank. The gather's backward *sums* the gradient every rank's copy of the loss sends to
  each rank's rows (rank r gets N × dL/dx_r), and the parameter gradients are then *averaged* over
  the ranks (:func:`average_gradients`, one all-reduce); the result is exactly dL/dθ of one process
  with batch N·b, for the towers as for any head used on the gathered tensors (the prototypes, a
  distillation loss's parameters, a jointly trained teacher). ``tests/test_distributed.py`` checks
  loss, gradients and updated weights against one process.
* **Randomness** — the global torch RNG is the same stream on every rank (same seed), so anything
  random computed on the global batch (a jointly trained teacher's dropout) is identical on every
  rank; the towers' own forward on the rank's rows runs under :func:`rank_rng`, which forks the RNG
  and seeds it per rank and step (different dropout masks per rank, deterministic, and the shared
  stream untouched whatever the slice sizes).
* **Same decisions** — the model's and the training-only modules' parameters and buffers are
  broadcast from rank 0 when training starts (any drift in what was built before is removed);
  gradients are averaged, so the weights stay identical on every rank. Validation runs on rank 0
  and its metrics are broadcast, so early stopping and the selected epoch are the same everywhere.
* **Files** — only rank 0 writes (run directories, ``train_state``, a teacher): :func:`on_main`
  runs a writer on rank 0 and hands its result, or its error, to every rank. A resumable
  ``--out`` must be on a file system every rank sees (every rank reads the training state).

Patterns from open_clip's ``gather_features`` (all-gather with gradients for a contrastive loss) and
DDP (rank-0 broadcast at start, averaged gradients); the gather here pads uneven slices.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import os
import pickle
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
from torch import nn

from avret.errors import AvretError
from avret.utils.device import resolve_device

T = TypeVar("T")
ENV_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK")
#: how long a rank waits in a collective for the others (a teacher trained on every rank in parallel)
TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``world_size`` processes, this one is ``rank`` (``local_rank`` on its node)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    backend: str | None = None  # None: single process

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise AvretError(f"environment variable {name}={value!r}: expected an integer (set by torchrun)") from None


def env_info() -> DistInfo:
    """The launch as the environment describes it (torchrun's variables), without initialising anything."""
    world = _env_int("WORLD_SIZE", 1)
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if world < 1 or not 0 <= rank < world:
        raise AvretError(f"environment: RANK={rank} WORLD_SIZE={world}; expected 0 <= RANK < WORLD_SIZE")
    return DistInfo(world, rank, local)


def is_distributed() -> bool:
    """True when a process group of more than one process is up."""
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


def info() -> DistInfo:
    """This process's place: from the process group when one is up, else from the environment."""
    if is_distributed():
        d = torch.distributed
        return DistInfo(d.get_world_size(), d.get_rank(), env_info().local_rank, str(d.get_backend()))
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return DistInfo()  # a group of one process
    return env_info()


def world_size() -> int:
    return torch.distributed.get_world_size() if is_distributed() else 1


def rank() -> int:
    return torch.distributed.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """Rank 0 (or the only process); before the group is up, as torchrun's ``RANK`` says."""
    return info().rank == 0


def init_from_env(device: str | torch.device = "auto") -> DistInfo:
    """Initialise the process group when launched by torchrun (``WORLD_SIZE`` > 1); idempotent.

    NCCL when ``device`` resolves to a GPU (this process then uses ``cuda:LOCAL_RANK``), else Gloo.
    Single process: returns ``DistInfo()`` and touches nothing.
    """
    if is_distributed():
        return info()
    env = env_info()
    if env.world_size <= 1:
        return DistInfo()
    dev = resolve_device(device)
    backend = "gloo"
    if dev.type == "cuda":
        if env.local_rank >= torch.cuda.device_count():
            raise AvretError(f"LOCAL_RANK {env.local_rank}: torch sees {torch.cuda.device_count()} GPU(s); "
                             "start at most one process per GPU (torchrun --nproc-per-node)")
        torch.cuda.set_device(env.local_rank if dev.index is None else dev.index)  # NCCL's objects go there
        backend = "nccl"
    for name in ("MASTER_ADDR", "MASTER_PORT"):
        if not os.environ.get(name):
            raise AvretError(f"environment variable {name} is not set; launch with torchrun")
    torch.distributed.init_process_group(backend, init_method="env://", world_size=env.world_size,
                                         rank=env.rank, timeout=TIMEOUT)
    atexit.register(shutdown)
    return info()


def shutdown(synchronize: bool = False) -> None:
    """Destroy the process group (if this process has one).

    ``synchronize``: first wait at a barrier for every rank, so that all ranks leave the group
    together once no collective is pending — what a command does after its work is written
    (PyTorch's advice: destroy the group explicitly near the end of main, on every rank). The
    ``atexit`` call that :func:`init_from_env` registers does not synchronize (after an error
    the other ranks may never reach a barrier).
    """
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        if synchronize:
            torch.distributed.barrier()
        # Objects in reference cycles (autograd graphs of gathered tensors, collective work) can keep the
        # Gloo group alive past destroy_process_group; it is then torn down during interpreter finalization
        # and aborts ("terminate called without an active exception", ~1 run in 8 of a 2-process torchrun
        # train on a loaded machine). Collecting them first and after lets the group die while Python is up
        # (0 aborts in 30 such runs).
        gc.collect()
        torch.distributed.destroy_process_group()
        gc.collect()


def local_device(device: torch.device) -> torch.device:
    """``cuda`` without an index → this process's GPU (``cuda:LOCAL_RANK`` under torchrun)."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def barrier() -> None:
    if is_distributed():
        torch.distributed.barrier()


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """``[start, stop)`` of rank ``rank``'s contiguous slice of ``n`` global rows (``ceil(n / world)`` each)."""
    per = -(-n // world)
    return min(rank * per, n), min((rank + 1) * per, n)


def shard_sizes(n: int, world: int) -> list[int]:
    """The slice length of every rank for a global batch of ``n`` rows."""
    return [b - a for a, b in (shard_bounds(n, r, world) for r in range(world))]


class _GatherWithGrad(torch.autograd.Function):
    """All-gather of uneven slices (padded to the longest); backward: sum over ranks, own slice."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:  # type: ignore[override]
        r = torch.distributed.get_rank()
        longest = max(sizes)
        padded = x.new_zeros((longest, *x.shape[1:]))
        padded[: len(x)] = x.detach()
        parts = [torch.empty_like(padded) for _ in sizes]
        torch.distributed.all_gather(parts, padded.contiguous())
        ctx.sizes, ctx.rank = sizes, r
        return torch.cat([p[:s] for p, s in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # type: ignore[override]
        grad = grad.contiguous().clone()
        torch.distributed.all_reduce(grad)  # every rank's copy of the loss sends gradient to every row
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]], None


def all_gather_with_grad(x: torch.Tensor, sizes: Sequence[int] | None = None) -> torch.Tensor:
    """Concatenate every rank's ``x`` (rank order) along dim 0, keeping gradients; ``x`` itself in one process.

    ``sizes``: every rank's ``len(x)`` when known (else one small all-gather finds them); slices
    may differ in length, or be empty. The backward sums the gradients of all ranks' losses for
    this rank's rows (see the module docstring for why that, averaged over ranks, is exact).
    """
    if not is_distributed():
        return x
    if sizes is None:
        n = torch.tensor([len(x)], device=x.device)
        found = [torch.zeros_like(n) for _ in range(world_size())]
        torch.distributed.all_gather(found, n)
        sizes = [int(t.item()) for t in found]
    sizes = tuple(int(s) for s in sizes)
    if len(sizes) != world_size() or sizes[rank()] != len(x):
        raise ValueError(f"all_gather_with_grad: sizes {sizes} do not match this rank's {len(x)} rows")
    return _GatherWithGrad.apply(x, sizes)


def average_gradients(params: Sequence[nn.Parameter]) -> None:
    """Average the gradients of ``params`` over the ranks, in one all-reduce.

    A parameter keeps ``grad = None`` only when it has none on every rank (as in one process, so an
    optimizer skips it just the same); otherwise a missing gradient counts as zeros.
    """
    if not is_distributed() or not params:
        return
    like = params[0]
    flags = torch.tensor([0.0 if p.grad is None else 1.0 for p in params], device=like.device)
    flat = torch.cat([(torch.zeros_like(p) if p.grad is None else p.grad).reshape(-1).float() for p in params]
                     + [flags])
    torch.distributed.all_reduce(flat)
    flat /= world_size()
    offset = 0
    for p, has in zip(params, flat[-len(params):].tolist(), strict=True):
        n = p.numel()
        if has > 0:
            g = flat[offset : offset + n].view_as(p).to(p.dtype)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
        offset += n


def broadcast_module(module: nn.Module, src: int = 0) -> None:
    """Overwrite ``module``'s parameters and floating/int buffers on every rank with rank ``src``'s."""
    if not is_distributed():
        return
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            torch.distributed.broadcast(t.data, src)


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (picklable objects; the argument is ignored elsewhere)."""
    if not is_distributed():
        return obj
    holder = [obj if rank() == src else None]
    device = torch.device("cuda", torch.cuda.current_device()) \
        if str(torch.distributed.get_backend()) == "nccl" else None
    torch.distributed.broadcast_object_list(holder, src, device=device)
    return holder[0]  # type: ignore[return-value]


def all_equal(value: Any) -> bool:
    """Whether every rank holds the same picklable ``value``."""
    if not is_distributed():
        return True
    values: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(values, value)
    return all(pickle.dumps(v) == pickle.dumps(values[0]) for v in values)


def on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` (a writer) on rank 0 only; every rank returns its result or raises its error.

    The other ranks wait; an :class:`AvretError` of rank 0 is raised on every rank (one line), any
    other exception on rank 0 as itself and elsewhere as an :class:`AvretError` naming it.
    """
    if not is_distributed():
        return fn()
    result, error, exc = None, None, None
    if rank() == 0:
        try:
            result = fn()
        except BaseException as e:  # every rank must learn of it, or the others wait forever
            exc, error = e, str(e) if isinstance(e, AvretError) else f"rank 0 failed: {type(e).__name__}: {e}"
    result, error = broadcast_object((result, error))
    if exc is not None:
        raise exc
    if error is not None:
        raise AvretError(error)
    return result  # type: ignore[return-value]


@contextlib.contextmanager
def rank_rng(device: torch.device) -> Iterator[None]:
    """Per-rank randomness for work on this rank's rows (dropout of the towers), the shared stream untouched.

    One seed is drawn from the shared stream (the same draw on every rank, so the stream stays in
    step), and the forked RNG is seeded with it plus the rank. A no-op in one process.
    """
    if not is_distributed():
        yield
        return
    seed = int(torch.randint(0, 2**62, (1,)).item()) + rank()
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def free_port() -> int:
    """A TCP port that is free now on this host (for a local launch)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawned(local_rank: int, fn: Callable[..., Any], world: int, port: int, threads: int | None,
             args: tuple[Any, ...]) -> None:
    os.environ.update({"WORLD_SIZE": str(world), "RANK": str(local_rank), "LOCAL_RANK": str(local_rank),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    if threads:
        torch.set_num_threads(threads)
    try:
        fn(local_rank, *args)
    finally:
        shutdown()


def spawn_local(fn: Callable[..., Any], nprocs: int, *args: Any, threads: int | None = None) -> None:
    """Run ``fn(rank, *args)`` in ``nprocs`` fresh processes on this host, as torchrun would start them.

    Each process gets torchrun's environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, a free
    ``MASTER_PORT``) and ``threads`` torch threads; ``fn`` must be importable (a module-level
    function). The group is initialised by ``fn`` (e.g. through :func:`init_from_env`). Used by the
    tests and the benchmark; an error in any process is raised here.
    """
    import torch.multiprocessing as mp

    mp.spawn(_spawned, args=(fn, nprocs, free_port(), threads, args), nprocs=nprocs, join=True)
