"""The interface every retrieval model offers: embed audio or visual features into one space.

Both the neural towers and the CCA baseline implement :class:`Embedder`, so the index, search and
eval code never care which one made the embeddings. Both save in avret's one checkpoint format and
load through :func:`avret.io.load_model`, which dispatches on the ``model_type`` of ``config.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from avret.data.dataset import check_finite, check_width
from avret.errors import ModelError

MODALITIES = ("audio", "visual")


@runtime_checkable
class Embedder(Protocol):
    """A model that maps audio and visual features into one L2-normalised space."""

    model_type: str
    path: Path | None

    @property
    def audio_dim(self) -> int: ...

    @property
    def visual_dim(self) -> int: ...

    @property
    def embed_dim(self) -> int: ...

    def embed(self, modality: str, features: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """``(n, D_modality)`` features → ``(n, embed_dim)`` float32 unit vectors."""
        ...

    def fingerprint(self) -> str: ...

    def save_pretrained(self, path: str | Path) -> Path: ...


class RetrievalModelMixin:
    """Feature widths of a retrieval model, read from its ``config``."""

    config: Any

    @property
    def audio_dim(self) -> int:
        return int(self.config.audio_dim)

    @property
    def visual_dim(self) -> int:
        return int(self.config.visual_dim)


def input_dim(model: Embedder, modality: str) -> int:
    """The feature width ``model`` expects for ``modality``."""
    if modality not in MODALITIES:
        raise ModelError(f"modality '{modality}': expected one of {list(MODALITIES)}")
    return model.audio_dim if modality == "audio" else model.visual_dim


def check_features(model: Embedder, modality: str, features: np.ndarray, what: str) -> np.ndarray:
    """Validate ``features`` for ``model``: 2-D, the right width, finite; returns float32."""
    features = np.asarray(features, dtype=np.float32)
    if features.ndim == 1:
        features = features[None, :]
    if features.ndim != 2:
        raise ModelError(f"{what}: shape {features.shape}, expected (n, {input_dim(model, modality)})")
    check_width(features, input_dim(model, modality), f"{what} ({modality} features)")
    check_finite(features, what)
    return features


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Unit-length rows (zero rows stay zero)."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


def require_embedder(model: Any, where: str | Path) -> Embedder:
    """``model`` if it is a retrieval model (towers or CCA), else a one-line ModelError."""
    if not isinstance(model, Embedder):
        kind = getattr(model, "model_type", type(model).__name__)
        raise ModelError(f"{where}: model_type '{kind}' is not a retrieval model; expected towers or cca")
    return model
