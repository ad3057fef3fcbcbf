"""FAISS CPU/GPU handling.

avret depends on ``faiss-cpu``; users with a CUDA 12 GPU may install the official
``faiss-gpu-cu12`` wheel instead (``make setup-gpu``), which provides the same ``faiss`` module
plus the GPU symbols. This module hides the difference:

* :func:`resolve_device` turns ``"auto" | "cpu" | "cuda"`` into ``"cpu"`` or ``"cuda"``: ``auto``
  picks the GPU when the installed faiss sees one (``faiss.get_num_gpus() > 0``), ``cuda``
  without a visible GPU is a clear :class:`AvretError` (not a silent CPU fallback).
* :func:`to_device` moves a CPU index onto the GPU; index types without a GPU implementation
  (HNSW, ...) stay on the CPU under ``auto`` and are an error under an explicit ``cuda``.
* :func:`choose_backend` decides who searches: faiss (CPU, or GPU with faiss-gpu), or, for a Flat
  index on a CUDA GPU without faiss-gpu, torch (:mod:`avret.index.torch_flat`, exact, same answers).
  ``"torch-cpu"``/``"torch-cuda"`` ask for the torch backend explicitly (torch-cpu: for tests).
* :func:`to_cpu` gives the CPU copy, which is what is always written to disk, so an index built
  on a GPU machine loads on a CPU-only one and vice versa.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import faiss

from avret.errors import AvretError
from avret.index import torch_flat

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
#: Every ``--device`` value: the faiss ones, and the torch backend asked for by name.
BACKEND_DEVICES = (*DEVICES, "torch-cpu", "torch-cuda")

#: Largest k (and nprobe) FAISS GPU indexes support.
GPU_MAX_K = 2048


def num_gpus() -> int:
    """Number of GPUs the installed faiss can use (0 for faiss-cpu, which may lack the symbol)."""
    if not hasattr(faiss, "get_num_gpus") or not hasattr(faiss, "index_cpu_to_gpu"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except Exception:  # a broken CUDA install must not break CPU use
        return 0


def resolve_device(device: str) -> str:
    """Resolve ``"auto" | "cpu" | "cuda"`` to ``"cpu"`` or ``"cuda"``.

    Raises :class:`AvretError` for an unknown name, or for ``"cuda"`` when the installed faiss sees
    no GPU (faiss-cpu installed, or no CUDA device visible).
    """
    if device not in DEVICES:
        raise AvretError(f"unknown device {device!r}; expected one of {list(DEVICES)}")
    gpus = num_gpus()
    if device == "auto":
        return "cuda" if gpus > 0 else "cpu"
    if device == "cuda" and gpus == 0:
        raise AvretError(
            "device 'cuda' requested but the installed faiss sees no GPU "
            f"(faiss {getattr(faiss, '__version__', '?')}, get_num_gpus()=0); install faiss-gpu-cu12 "
            "(make setup-gpu) on a machine with a CUDA GPU, or use device 'cpu' or 'auto'"
        )
    return device


@dataclass(frozen=True)
class Backend:
    """Who searches an index: ``name`` "faiss" or "torch", on ``device`` "cpu" or "cuda"."""

    name: str
    device: str


def choose_backend(device: str, flat: bool) -> Backend:
    """The backend for ``device`` (one of :data:`BACKEND_DEVICES`) and an index that is ``flat`` or not.

    faiss-gpu stays the first choice for ``cuda``/``auto`` when installed; without it a Flat index
    is searched by torch on the GPU; ``auto`` falls back to faiss on the CPU. One-line
    :class:`AvretError` for an unknown device, a torch backend asked for a non-Flat index, or
    ``cuda`` that nothing can serve.
    """
    if device not in BACKEND_DEVICES:
        raise AvretError(f"unknown device {device!r}; expected one of {list(BACKEND_DEVICES)}")
    if device.startswith("torch-"):
        if not flat:
            raise AvretError(f"device {device!r} (the torch backend) searches Flat indexes only; "
                             "use device 'cpu', 'cuda' or 'auto' for this index")
        want = device.split("-", 1)[1]
        if want == "cuda" and not torch_flat.cuda_visible():
            raise AvretError("device 'torch-cuda' requested but torch sees no CUDA GPU; use 'torch-cpu' or 'cpu'")
        return Backend("torch", want)
    if device == "cpu" or num_gpus() > 0:
        return Backend("faiss", resolve_device(device))
    if flat and torch_flat.cuda_visible():
        return Backend("torch", "cuda")
    if device == "cuda":
        resolve_device(device)  # raises: no faiss GPU, and no torch GPU backend for this index
    return Backend("faiss", "cpu")


class Placed:
    """An index placed on a device, keeping its GPU resources alive as long as the index."""

    def __init__(self, index: Any, device: str, resources: Any = None) -> None:
        self.index = index
        self.device = device
        self.resources = resources


def to_device(cpu_index: Any, device: str, *, requested: str = "auto") -> Placed:
    """Place ``cpu_index`` on ``device`` (already resolved to ``"cpu"``/``"cuda"``).

    When the index type has no GPU implementation, ``requested="auto"`` keeps it on the CPU
    (logged), an explicit ``requested="cuda"`` raises :class:`AvretError`.
    """
    if device == "cpu":
        return Placed(cpu_index, "cpu")
    try:
        res = faiss.StandardGpuResources()
        gpu_index = faiss.index_cpu_to_gpu(res, 0, cpu_index)
    except Exception as exc:  # e.g. HNSW: no GPU implementation
        if requested == "cuda":
            raise AvretError(
                f"this FAISS index type ({type(cpu_index).__name__}) cannot run on the GPU: "
                f"{faiss_message(exc)}; use device 'cpu' or 'auto', or a GPU-capable factory (Flat, IVF...)"
            ) from None
        log.info("index type %s has no GPU implementation; searching on the CPU", type(cpu_index).__name__)
        return Placed(cpu_index, "cpu")
    return Placed(gpu_index, "cuda", res)


def to_cpu(index: Any, device: str) -> Any:
    """The CPU version of ``index`` placed on ``device`` (itself on the CPU), for ``write_index``.

    ``index_gpu_to_cpu`` also converts GPU parts inside wrappers (e.g. a PCA pre-transform).
    """
    if device == "cuda":
        return faiss.index_gpu_to_cpu(index)
    return index


def faiss_message(exc: BaseException) -> str:
    """The useful last part of a FAISS C++ exception (which includes a long source location)."""
    text = " ".join(str(exc).split())
    for marker in ("failed: ", "Error: "):
        if marker in text:
            text = text.rsplit(marker, 1)[1]
            break
    else:
        if " at /" in text and ": " in text:
            text = text.rsplit(": ", 1)[1]
    return text[:300]


def faiss_major(version: str) -> str:
    """Major version component of a version string (``"1.9.0"`` -> ``"1"``)."""
    return str(version).split(".", 1)[0].strip()
