"""The interface every retrieval model offers: embed audio or visual features into one space.

Both the neural towers and the CCA baseline implement :class:`Embedder`, so the index, search and
eval code never care which one made the embeddings. :func:`load_model` dispatches on the
``model_type`` field of ``config.json``, like transformers' Auto classes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from avret.data.dataset import check_finite, check_width
from avret.errors import ModelError
from avret.models.serialization import fingerprint_dir, read_config

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


class SavedModelMixin:
    """Shared by the concrete models: feature widths from ``config`` and the cached fingerprint."""

    config: Any
    path: Path | None
    _fingerprint: str | None = None

    @property
    def audio_dim(self) -> int:
        return int(self.config.audio_dim)

    @property
    def visual_dim(self) -> int:
        return int(self.config.visual_dim)

    def fingerprint(self) -> str:
        """sha256 of the saved config + weights (the model must have been saved or loaded)."""
        if self._fingerprint is None:
            if self.path is None:
                raise RuntimeError("fingerprint() needs a saved model; call save_pretrained first")
            self._fingerprint = fingerprint_dir(self.path)
        return self._fingerprint


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


def load_model(path: str | Path) -> Embedder:
    """Load any avret retrieval model directory (towers or CCA) by its ``model_type``."""
    from avret.models.cca import CCAModel
    from avret.models.towers import AVTowers

    path = Path(path)
    if path.is_dir() and not (path / "config.json").exists() and (path / "model" / "config.json").exists():
        path = path / "model"  # a run directory: the deployed model lives in RUN/model
    raw = read_config(path)
    kinds = {"towers": AVTowers, "cca": CCAModel}
    kind = raw.get("model_type")
    if kind not in kinds:
        raise ModelError(f"{path / 'config.json'}: model_type '{kind}', expected one of {sorted(kinds)}")
    return kinds[kind].from_pretrained(path)
