"""CLIP frame embeddings with an open_clip image encoder loaded from local weights (never downloaded).

The model and its weights are loaded by avret's one CLIP loader, :func:`avret.models.clip.load_clip`
(the same one the distillation teachers use): an open_clip name (``ViT-B-32`` or ``ViT-B/32``),
one of avret's own architectures, or the path of an open_clip model-config JSON, and a local
weights file. Only the image tower is kept.

Frames are preprocessed with the model's own open_clip eval transform (resize shorter side,
centre-crop, normalise with the model's mean/std). Each frame embedding is L2-normalised; the
clip-level visual feature is the mean of the normalised frame embeddings (not re-normalised, so
its norm says how consistent the frames are).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from avret.models.clip import clip_image_transform, load_clip, resolve_model_name
from avret.utils.device import resolve_device


class ClipFrameEncoder:
    """An open_clip image tower on a device: frames -> L2-normalised embeddings."""

    def __init__(self, name: str, visual: torch.nn.Module, device: str | torch.device = "cpu") -> None:
        self.name = name
        self.device = resolve_device(device)
        self.visual = visual.to(self.device).eval()
        self.transform = clip_image_transform(name)
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


def load_clip_frame_encoder(
    name: str, weights: str | Path, device: str | torch.device = "cpu"
) -> ClipFrameEncoder:
    """The image tower of CLIP ``name`` with the local ``weights``, from :func:`avret.models.clip.load_clip`.

    Raises :class:`~avret.errors.ModelError` for an unknown model name, a missing or unreadable file,
    or weights that do not fit the model.
    """
    model = load_clip(name, weights)  # on the CPU: only the image tower goes to ``device``
    return ClipFrameEncoder(resolve_model_name(name), model.visual, device=device)
