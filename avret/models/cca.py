"""Linear CCA: the classical reference row for cross-modal retrieval.

Regularised CCA (Hotelling 1936; ridge on both covariances, as is customary for high-dimensional
features) maps both modalities into ``n_components`` canonical dimensions; retrieval uses cosine
similarity there. It is fitted in closed form on the training split; the number of components and
the ridge are chosen on the validation split (never the test split).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from avret.errors import ModelError
from avret.io import WEIGHTS_NAME, PretrainedMixin
from avret.models.base import RetrievalModelMixin, check_features, l2_normalize


@dataclass
class CCAConfig:
    """Size of the CCA projection (saved as ``config.json``)."""

    audio_dim: int = 128
    visual_dim: int = 1024
    n_components: int = 64
    reg: float = 1e-3
    class_names: list[str] = field(default_factory=list)


def _inv_sqrt(cov: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(cov)
    return (vecs / np.sqrt(np.maximum(vals, 1e-12))) @ vecs.T


class CCAModel(PretrainedMixin, RetrievalModelMixin):
    """Fitted CCA projections ``(x - mean) @ W`` per modality, unit-normalised."""

    model_type = "cca"
    config_class = CCAConfig

    def __init__(self, config: CCAConfig, params: dict[str, np.ndarray] | None = None) -> None:
        params = params if params is not None else {}
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

    # ----------------------------------------------------------------- the checkpoint format's hooks
    def weights_for_save(self) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v) for k, v in self.params.items()}

    def load_weights(self, tensors: dict[str, torch.Tensor], where: Path) -> None:
        c = self.config
        expected = {
            "audio_mean": (c.audio_dim,), "visual_mean": (c.visual_dim,),
            "audio_proj": (c.audio_dim, c.n_components), "visual_proj": (c.visual_dim, c.n_components),
            "canonical_corr": (c.n_components,),
        }
        for key, shape in expected.items():
            if key not in tensors or tuple(tensors[key].shape) != shape:
                got = tuple(tensors[key].shape) if key in tensors else "missing"
                raise ModelError(f"{where / WEIGHTS_NAME}: weight '{key}' is {got}, expected {shape}")
            if not torch.isfinite(tensors[key]).all():
                raise ModelError(f"{where / WEIGHTS_NAME}: weight '{key}' holds NaN or inf; expected finite weights")
        self.params = {k: tensors[k].double().numpy() for k in expected}
