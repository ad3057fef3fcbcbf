"""Optional Inception-v3 visual features from torchvision, with local weights and an optional PCA.

What this computes: torchvision's ``inception_v3`` with ``fc`` replaced by identity, i.e. the
2048-d global-average-pool features, per frame (frames resized to 342, centre-cropped to 299 and
ImageNet-normalised, the torchvision ``IMAGENET1K_V1`` eval transform; ``transform_input=True``
as torchvision sets for those weights). The clip feature is the mean over frames.

The community VEGAS / AVE 1024-d "Inception" features came from a different Inception-v3 export
(a 1024-d bottleneck / PCA of the pool features, YouTube-8M style); those exact weights are not
reproducible from torchvision. Instead, a PCA file (``.npz`` with ``mean`` (2048,) and
``components`` (k, 2048), e.g. k = 1024, made by :func:`fit_pca` + :func:`save_pca` on features of
your own training clips) can be applied to reach the same width. Without it the features are
2048-d. Both are documented in ``docs/features.md``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from avret.errors import ModelError
from avret.utils.atomic import atomic_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
POOL_DIM = 2048


def inception_transform():  # noqa: ANN201 - torchvision Compose
    """torchvision's eval transform for Inception-v3 IMAGENET1K_V1 (PIL image -> tensor)."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize(342, interpolation=T.InterpolationMode.BILINEAR),
            T.CenterCrop(299),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )


def fit_pca(features: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """``(mean (D,), components (dim, D))`` of ``features`` (N, D) by SVD; for :func:`save_pca`."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or dim < 1 or dim > min(x.shape):
        raise ValueError(f"need (N, D) features with 1 <= dim <= min(N, D), got {x.shape} and dim={dim}")
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    return mean.astype(np.float32), vt[:dim].astype(np.float32)


def save_pca(path: str | Path, mean: np.ndarray, components: np.ndarray) -> None:
    """Write a PCA ``.npz`` (``mean``, ``components``) atomically."""
    with atomic_file(path, "wb") as fh:
        np.savez(fh, mean=mean, components=components)


def load_pca(path: str | Path, in_dim: int = POOL_DIM) -> tuple[np.ndarray, np.ndarray]:
    """Read a PCA ``.npz``; raises ModelError for a missing or mis-shaped file."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: Inception PCA file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            mean, comps = z["mean"].astype(np.float32), z["components"].astype(np.float32)
    except (KeyError, ValueError, OSError) as exc:
        raise ModelError(f"{path}: expected an .npz with 'mean' and 'components' ({exc})") from None
    if mean.shape != (in_dim,) or comps.ndim != 2 or comps.shape[1] != in_dim:
        raise ModelError(
            f"{path}: mean {mean.shape} / components {comps.shape}, expected ({in_dim},) / (k, {in_dim})"
        )
    return mean, comps


class InceptionEncoder:
    """Inception-v3 pool features (optionally PCA-projected) for preprocessed 299x299 frames."""

    def __init__(
        self,
        model: torch.nn.Module,
        pca: tuple[np.ndarray, np.ndarray] | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.pca = pca
        self.transform = inception_transform()
        self.dim = POOL_DIM if pca is None else int(pca[1].shape[0])

    @torch.inference_mode()
    def encode(self, pixels: torch.Tensor, batch_size: int = 32) -> np.ndarray:
        """``(n, 3, 299, 299)`` -> ``(n, dim)`` float32 (PCA applied when given)."""
        outs = []
        for i in range(0, pixels.shape[0], batch_size):
            outs.append(self.model(pixels[i : i + batch_size].to(self.device, torch.float32)).float().cpu())
        feats = torch.cat(outs).numpy() if outs else np.zeros((0, POOL_DIM), np.float32)
        if self.pca is not None:
            mean, comps = self.pca
            feats = (feats - mean) @ comps.T
        return feats.astype(np.float32)

    @staticmethod
    def clip_feature(frame_features: np.ndarray) -> np.ndarray:
        """Clip-level feature: mean over frames."""
        return frame_features.mean(axis=0).astype(np.float32)


def load_inception(
    weights: str | Path, pca: str | Path | None = None, device: str | torch.device = "cpu"
) -> InceptionEncoder:
    """torchvision Inception-v3 with a local state dict (with or without ``AuxLogits.*``), fc -> identity."""
    from torchvision.models import inception_v3

    weights = Path(weights)
    if not weights.is_file():
        raise ModelError(f"{weights}: Inception-v3 weights file not found")
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        kind = type(exc).__name__
        raise ModelError(f"{weights}: not a readable Inception-v3 checkpoint ({kind})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ModelError(f"{weights}: expected an Inception-v3 state dict (name -> tensor)")
    aux = any(k.startswith("AuxLogits.") for k in state)
    num_classes = int(state["fc.weight"].shape[0]) if "fc.weight" in state else 1000
    with torch.device("meta"):  # no wasted random init: every tensor comes from the file
        model = inception_v3(weights=None, aux_logits=aux, init_weights=False, transform_input=True,
                             num_classes=num_classes)
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())[:300]
        raise ModelError(f"{weights}: does not fit torchvision inception_v3 ({detail})") from None
    model.fc = torch.nn.Identity()
    return InceptionEncoder(model, load_pca(pca) if pca is not None else None, device=device)
