"""Audio and visual embedding towers: two MLPs into one shared L2-normalised space.

Each tower standardises its input with statistics of the training split (stored as buffers, so a
saved model is self-contained), then ``num_layers`` blocks of Linear → LayerNorm → GELU → Dropout,
and a final Linear to ``embed_dim``, L2-normalised. Every operation is per clip (LayerNorm, not
BatchNorm), so in eval mode a clip's embedding is the same alone or in any batch.

At inference only these towers run, whatever objective or distillation method trained them, so
the query cost is one tower forward pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from avret.models.base import SavedModelMixin, check_features
from avret.models.serialization import (
    config_from_dict,
    fingerprint_dir,
    load_state_strict,
    load_tensors,
    read_config,
    save_model_dir,
)


@dataclass
class TowerConfig:
    """Shape of the two towers (saved as ``config.json``)."""

    audio_dim: int = 128
    visual_dim: int = 1024
    embed_dim: int = 128
    hidden_dim: int = 512
    num_layers: int = 2
    dropout: float = 0.2
    class_names: list[str] = field(default_factory=list)
    model_type: str = "towers"


class Tower(nn.Module):
    """One modality's encoder: standardise → MLP → unit vector."""

    def __init__(self, in_dim: int, hidden_dim: int, embed_dim: int, num_layers: int, dropout: float) -> None:
        super().__init__()
        self.register_buffer("input_mean", torch.zeros(in_dim))
        self.register_buffer("input_std", torch.ones(in_dim))
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(num_layers):
            layers += [nn.Linear(d, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU(), nn.Dropout(dropout)]
            d = hidden_dim
        layers.append(nn.Linear(d, embed_dim))
        self.mlp = nn.Sequential(*layers)

    def set_input_stats(self, features: np.ndarray) -> None:
        """Standardise inputs with the mean/std of (training) ``features``."""
        x = torch.as_tensor(np.asarray(features, dtype=np.float32))
        self.input_mean.copy_(x.mean(0))
        self.input_std.copy_(x.std(0).clamp_min(1e-4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.mlp((x - self.input_mean) / self.input_std)
        return nn.functional.normalize(h, dim=-1)


class AVTowers(SavedModelMixin, nn.Module):
    """The deployed retrieval model: an audio tower and a visual tower."""

    model_type = "towers"

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.config = config
        self.path: Path | None = None
        args = (config.hidden_dim, config.embed_dim, config.num_layers, config.dropout)
        self.audio_tower = Tower(config.audio_dim, *args)
        self.visual_tower = Tower(config.visual_dim, *args)

    @property
    def embed_dim(self) -> int:
        return self.config.embed_dim

    def tower(self, modality: str) -> Tower:
        return self.audio_tower if modality == "audio" else self.visual_tower

    def forward(self, audio: torch.Tensor, visual: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.audio_tower(audio), self.visual_tower(visual)

    @torch.no_grad()
    def embed(self, modality: str, features: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Embed ``(n, D)`` features of one modality (eval mode, no gradients)."""
        x = check_features(self, modality, features, "features")
        was_training = self.training
        self.eval()
        tower = self.tower(modality)
        out = [tower(torch.from_numpy(x[i : i + batch_size])).numpy() for i in range(0, len(x), batch_size)]
        self.train(was_training)
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.embed_dim), np.float32)

    # ----------------------------------------------------------------- persistence
    def save_pretrained(self, path: str | Path) -> Path:
        """Save ``config.json`` + ``model.safetensors`` atomically."""
        self.path = save_model_dir(path, asdict(self.config), self.state_dict())
        self._fingerprint = fingerprint_dir(self.path)
        return self.path

    @classmethod
    def from_pretrained(cls, path: str | Path) -> AVTowers:
        """Load a directory written by :meth:`save_pretrained`."""
        path = Path(path)
        config = config_from_dict(TowerConfig, read_config(path), path)
        model = cls(config)
        load_state_strict(model, load_tensors(path), path)
        model.eval()
        model.path = path
        return model
