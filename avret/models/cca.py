"""Linear CCA: the classical reference row for cross-modal retrieval.

Regularised CCA (Hotelling 1936; ridge on both covariances, as is customary for high-dimensional
features) maps both modalities into ``n_components`` canonical dimensions; retrieval uses cosine
similarity there. It is fitted in closed form on the training split; the number of components and
the ridge are chosen on the validation split (never the test split).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from avret.errors import ModelError
from avret.models.base import SavedModelMixin, check_features, l2_normalize
from avret.models.serialization import (
    config_from_dict,
    fingerprint_dir,
    load_tensors,
    read_config,
    save_model_dir,
)


@dataclass
class CCAConfig:
    """Size of the CCA projection (saved as ``config.json``)."""

    audio_dim: int = 128
    visual_dim: int = 1024
    n_components: int = 64
    reg: float = 1e-3
    class_names: list[str] = field(default_factory=list)
    model_type: str = "cca"


def _inv_sqrt(cov: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(cov)
    return (vecs / np.sqrt(np.maximum(vals, 1e-12))) @ vecs.T


class CCAModel(SavedModelMixin):
    """Fitted CCA projections ``(x - mean) @ W`` per modality, unit-normalised."""

    model_type = "cca"

    def __init__(self, config: CCAConfig, params: dict[str, np.ndarray]) -> None:
        self.config = config
        self.params = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
        self.path: Path | None = None
        self._fingerprint: str | None = None

    @property
    def embed_dim(self) -> int:
        return self.config.n_components

    @classmethod
    def fit(cls, audio: np.ndarray, visual: np.ndarray, n_components: int = 64, reg: float = 1e-3,
            class_names: list[str] | None = None) -> CCAModel:
        """Fit on paired training features (row i of both is the same clip)."""
        a = np.asarray(audio, np.float64)
        v = np.asarray(visual, np.float64)
        mean_a, mean_v = a.mean(0), v.mean(0)
        a, v = a - mean_a, v - mean_v
        n = len(a)
        caa = a.T @ a / (n - 1)
        cvv = v.T @ v / (n - 1)
        cav = a.T @ v / (n - 1)
        caa += reg * np.trace(caa) / len(caa) * np.eye(len(caa))
        cvv += reg * np.trace(cvv) / len(cvv) * np.eye(len(cvv))
        ka, kv = _inv_sqrt(caa), _inv_sqrt(cvv)
        u, s, vt = np.linalg.svd(ka @ cav @ kv)
        k = min(n_components, len(s))
        config = CCAConfig(a.shape[1], v.shape[1], k, reg, list(class_names or []))
        return cls(config, {
            "audio_mean": mean_a, "visual_mean": mean_v,
            "audio_proj": ka @ u[:, :k], "visual_proj": kv @ vt.T[:, :k], "canonical_corr": s[:k],
        })

    def embed(self, modality: str, features: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Project ``(n, D)`` features of one modality and normalise."""
        x = check_features(self, modality, features, "features").astype(np.float64)
        return l2_normalize((x - self.params[f"{modality}_mean"]) @ self.params[f"{modality}_proj"])

    def save_pretrained(self, path: str | Path) -> Path:
        tensors = {k: torch.from_numpy(v) for k, v in self.params.items()}
        self.path = save_model_dir(path, asdict(self.config), tensors)
        self._fingerprint = fingerprint_dir(self.path)
        return self.path

    @classmethod
    def from_pretrained(cls, path: str | Path) -> CCAModel:
        path = Path(path)
        config = config_from_dict(CCAConfig, read_config(path), path)
        tensors = load_tensors(path)
        expected = {
            "audio_mean": (config.audio_dim,), "visual_mean": (config.visual_dim,),
            "audio_proj": (config.audio_dim, config.n_components),
            "visual_proj": (config.visual_dim, config.n_components),
            "canonical_corr": (config.n_components,),
        }
        for key, shape in expected.items():
            if key not in tensors or tuple(tensors[key].shape) != shape:
                got = tuple(tensors[key].shape) if key in tensors else "missing"
                raise ModelError(f"{path / 'model.safetensors'}: weight '{key}' is {got}, expected {shape}")
        model = cls(config, {k: v.numpy() for k, v in tensors.items()})
        model.path = path
        return model
