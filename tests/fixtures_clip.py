"""Reusable tiny open_clip fixtures (plain functions; no pytest magic).

``make_tiny_clip(tmp_dir)`` writes a tiny open_clip model config (registered through
:func:`avret.models.clip.register_model_config`) and seeded random weights to local files, so tests
exercise the same ``load_clip(name, weights_path)`` path users take with real CLIP weights --
nothing is ever downloaded.
"""

from __future__ import annotations

import json
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


def register_tiny_clip(tmp_dir: str | os.PathLike[str], name: str = TINY_CLIP_NAME) -> str:
    """Write the tiny architecture to ``tmp_dir/<name>.json`` and register it with open_clip; returns ``name``."""
    from avret.models.clip import register_model_config

    path = Path(tmp_dir) / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(TINY_CLIP_CONFIG))
    return register_model_config(path)


def make_tiny_clip(
    tmp_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    name: str = TINY_CLIP_NAME,
    filename: str = "tiny_clip.pt",
) -> tuple[str, str]:
    """Register the tiny CLIP and save seeded random weights of it with ``torch.save(state_dict)``.

    Returns ``(model_name, weights_path)`` for ``load_clip`` / ``TeacherConfig``. The file is reused
    when it already exists in ``tmp_dir``.
    """
    from avret.models.clip import load_clip

    register_tiny_clip(tmp_dir, name)
    path = Path(tmp_dir) / filename
    if not path.exists():
        model = load_clip(name, None, allow_random=True, seed=seed)
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
