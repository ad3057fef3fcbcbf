"""The one place where a ``--device`` option becomes a :class:`torch.device`.

Every command that runs a torch model (``train``, ``distill``, ``sentiment train``, ``features
extract``) takes ``--device auto|cpu|cuda`` and resolves it here: ``auto`` is CUDA when torch sees
a GPU, else the CPU; ``cuda`` (or ``cuda:N``) without a visible GPU is a one-line user error.
FAISS placement has its own check (:func:`avret.index.backend.resolve_device`), because the
installed faiss build, not torch, decides whether an index can live on a GPU.
"""

from __future__ import annotations

import torch

from avret.errors import AvretError

DEVICE_CHOICES = ("auto", "cpu", "cuda")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto" | "cpu" | "cuda" | "cuda:N"`` (or a torch.device) → a usable :class:`torch.device`."""
    if isinstance(device, torch.device):
        device = str(device)
    name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise AvretError(
                f"--device '{device}': torch sees no CUDA GPU (torch.cuda.is_available() is False); "
                "use --device cpu or auto"
            )
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise AvretError(
                f"--device '{device}': expected cuda:0..cuda:{torch.cuda.device_count() - 1}"
            )
        return torch.device(name)
    raise AvretError(f"--device '{device}': expected one of {', '.join(DEVICE_CHOICES)} (or cuda:N)")
