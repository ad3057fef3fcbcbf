"""Audio and visual embedding towers: two MLPs into one shared L2-normalised space.

Each tower standardises its input with statistics of the training split (stored as buffers, so a
saved model is self-contained), then ``num_layers`` blocks of Linear → LayerNorm → GELU → Dropout,
and a final Linear to ``embed_dim``, L2-normalised. Every operation is per clip (LayerNorm, not
BatchNorm), so in eval mode a clip's embedding is the same alone or in any batch.

At inference only these towers run, whatever objective or distillation method trained them, so
the query cost is one tower forward pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from avret.io import PretrainedMixin
from avret.models.base import RetrievalModelMixin, check_features


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

    def validate(self) -> None:
        """Sizes must be positive (a hand-edited config.json must not allocate absurd layers)."""
        for name in ("audio_dim", "visual_dim", "embed_dim", "hidden_dim"):
            value = getattr(self, name)
            if not 1 <= value <= 65536:
                raise ValueError(f"field '{name}' is {value}; expected 1..65536")
        if not 0 <= self.num_layers <= 16:
            raise ValueError(f"field 'num_layers' is {self.num_layers}; expected 0..16")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"field 'dropout' is {self.dropout}; expected 0 <= dropout < 1")


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


class AVTowers(PretrainedMixin, RetrievalModelMixin, nn.Module):
    """The deployed retrieval model: an audio tower and a visual tower."""

    model_type = "towers"
    config_class = TowerConfig

    def __init__(self, config: TowerConfig) -> None:
        super().__init__()
        self.config = config
        self.path: Path | None = None
        self._fingerprint: str | None = None
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

    @property
    def device(self) -> torch.device:
        return self.audio_tower.input_mean.device

    @torch.no_grad()
    def embed(self, modality: str, features: np.ndarray, batch_size: int = 4096) -> np.ndarray:
        """Embed ``(n, D)`` features of one modality (eval mode, no gradients, on the model's device)."""
        x = check_features(self, modality, features, "features")
        was_training = self.training
        self.eval()
        tower, device = self.tower(modality), self.device
        out = [tower(torch.from_numpy(x[i : i + batch_size]).to(device)).float().cpu().numpy()
               for i in range(0, len(x), batch_size)]
        self.train(was_training)
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, self.embed_dim), np.float32)
