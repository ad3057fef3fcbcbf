"""Reusable tiny open_clip fixtures (plain functions; no pytest magic).

``make_tiny_clip(tmp_dir)`` registers a tiny open_clip architecture and writes seeded random
weights to a local file, so tests exercise the same ``load_clip(name, weights_path)`` path users
take with real CLIP weights -- nothing is ever downloaded.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

TINY_CLIP_NAME = "avret-tiny-clip"
TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def register_tiny_clip(name: str = TINY_CLIP_NAME) -> str:
    """Register the tiny architecture with open_clip under ``name``; returns the name."""
    from avret.distill.clip_loading import register_model_config

    register_model_config(name, TINY_CLIP_CONFIG)
    return name


def make_tiny_clip(
    tmp_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    name: str = TINY_CLIP_NAME,
    filename: str = "tiny_clip.pt",
) -> tuple[str, str]:
    """Register the tiny CLIP and save seeded random weights with ``torch.save(state_dict)``.

    Returns ``(model_name, weights_path)`` for ``load_clip`` / ``TeacherConfig``. The file is reused
    when it already exists in ``tmp_dir``.
    """
    import open_clip

    register_tiny_clip(name)
    path = Path(tmp_dir) / filename
    if not path.exists():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = open_clip.create_model(
                name, pretrained=None, pretrained_text=False, pretrained_image=False
            )
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return name, str(path)


def make_class_frames(
    n_per_class: int,
    num_classes: int,
    *,
    frames: int = 4,
    dim: int = 512,
    noise: float = 0.5,
    seed: int = 0,
    drop_last_frames: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An easy synthetic teacher view: each class has a random mean frame embedding.

    Returns ``frames (N, T, dim)`` float32, ``mask (N, T)`` bool (some clips miss trailing frames when
    ``drop_last_frames``), ``labels (N,)`` int64, shuffled.
    """
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(num_classes, dim))
    labels = np.repeat(np.arange(num_classes), n_per_class)
    x = means[labels][:, None, :] + noise * rng.normal(size=(len(labels), frames, dim))
    mask = np.ones((len(labels), frames), dtype=bool)
    if drop_last_frames:
        keep = rng.integers(1, frames + 1, size=len(labels))
        mask = np.arange(frames)[None, :] < keep[:, None]
    order = rng.permutation(len(labels))
    return x[order].astype(np.float32), mask[order], labels[order].astype(np.int64)
