"""CLIP frame embeddings with an open_clip image encoder loaded from local weights (never downloaded).

The model is named as open_clip names it (``ViT-B-32``, ...) or given as the path of an open_clip
model-config JSON (its file stem becomes the name; handy for custom or tiny models). The weights
are a local file: a full CLIP state dict (``torch.save(model.state_dict())``, or an open_clip /
OpenAI checkpoint that ``open_clip.load_checkpoint`` understands). Only the image tower is kept.

Frames are preprocessed with the model's own open_clip eval transform (resize shorter side,
centre-crop, normalise with the model's mean/std). Each frame embedding is L2-normalised; the
clip-level visual feature is the mean of the normalised frame embeddings (not re-normalised, so
its norm says how consistent the frames are).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avret.errors import ModelError


def resolve_model_name(name: str) -> str:
    """Return an open_clip model name, registering ``name`` first when it is a model-config JSON path."""
    import open_clip

    path = Path(name)
    if path.suffix == ".json":
        if not path.is_file():
            raise ModelError(f"{path}: open_clip model-config JSON not found")
        open_clip.add_model_config(path)
        name = path.stem
    if open_clip.get_model_config(name) is None:
        raise ModelError(
            f"CLIP model '{name}' is not an open_clip model name (e.g. ViT-B-32) nor a model-config .json"
        )
    return name


def clip_transform(name: str) -> Callable[[Any], torch.Tensor]:
    """The open_clip eval preprocess (PIL image -> normalised tensor) of model ``name``; no weights needed."""
    import open_clip

    name = resolve_model_name(name)
    cfg = open_clip.get_model_config(name) or {}
    vision = cfg.get("vision_cfg", {})
    size = vision.get("image_size", 224)
    pp = cfg.get("preprocess_cfg", {})
    return open_clip.image_transform(
        size,
        is_train=False,
        mean=pp.get("mean"),
        std=pp.get("std"),
        resize_mode=pp.get("resize_mode"),
        interpolation=pp.get("interpolation"),
    )


class ClipFrameEncoder:
    """An open_clip image tower on a device: frames -> L2-normalised embeddings."""

    def __init__(self, name: str, visual: torch.nn.Module, device: str | torch.device = "cpu") -> None:
        self.name = name
        self.device = torch.device(device)
        self.visual = visual.to(self.device).eval()
        self.transform = clip_transform(name)
        self.dim = int(self._probe_dim())

    def _probe_dim(self) -> int:
        out_dim = getattr(self.visual, "output_dim", None)
        if out_dim is not None:
            return int(out_dim)
        size = getattr(self.visual, "image_size", (224, 224))
        size = size if isinstance(size, tuple | list) else (size, size)
        with torch.inference_mode():
            return int(self.visual(torch.zeros(1, 3, *size, device=self.device)).shape[-1])

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor, batch_size: int = 64) -> np.ndarray:
        """``(n, 3, H, W)`` preprocessed frames -> ``(n, D)`` float32 L2-normalised embeddings."""
        outs = []
        for i in range(0, pixels.shape[0], batch_size):
            x = pixels[i : i + batch_size].to(self.device, torch.float32)
            emb = torch.nn.functional.normalize(self.visual(x).float(), dim=-1)
            outs.append(emb.cpu())
        if not outs:
            return np.zeros((0, self.dim), np.float32)
        return torch.cat(outs).numpy()

    def encode_images(self, images: list, batch_size: int = 64) -> np.ndarray:
        """PIL frames -> ``(n, D)`` normalised embeddings (preprocess + :meth:`encode`)."""
        return self.encode(torch.stack([self.transform(im) for im in images]), batch_size)

    @staticmethod
    def clip_feature(frame_embeddings: np.ndarray) -> np.ndarray:
        """Clip-level feature: mean of the L2-normalised frame embeddings."""
        return frame_embeddings.mean(axis=0).astype(np.float32)


def load_clip(name: str, weights: str | Path, device: str | torch.device = "cpu") -> ClipFrameEncoder:
    """Build open_clip model ``name`` and load ``weights`` (a local file) strictly; keep the image tower.

    Raises :class:`ModelError` for an unknown model name, a missing or unreadable file, or weights
    that do not fit the model.
    """
    import open_clip

    name = resolve_model_name(name)
    weights = Path(weights)
    if not weights.is_file():
        raise ModelError(f"{weights}: CLIP weights file not found")
    model = open_clip.create_model(name, pretrained=None, pretrained_image=False, pretrained_text=False)
    try:
        open_clip.load_checkpoint(model, str(weights), strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
        detail = " ".join(lines[:3])[:300]
        raise ModelError(f"{weights}: does not fit CLIP model '{name}' ({detail})") from None
    except Exception as exc:  # noqa: BLE001 - unreadable / not a checkpoint
        raise ModelError(f"{weights}: not a readable CLIP checkpoint ({type(exc).__name__}: {exc})") from None
    return ClipFrameEncoder(name, model.visual, device=device)
