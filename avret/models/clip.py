"""THE open_clip loader: every CLIP in avret is built here, from local files only -- never downloaded.

``features extract`` (the image tower, :class:`avret.features.clip_frames.ClipFrameEncoder`), the
VideoAdviser teacher and the sentiment teacher (the text tower) all call :func:`load_clip`, so one
``--clip-model`` / ``--clip-weights`` pair means the same network everywhere.

Model names. An open_clip architecture name in either spelling (``ViT-B-32`` or ``ViT-B/32``), one
of avret's own architectures (the JSON files in ``avret/models/clip_configs/``, e.g.
:data:`SYNTHETIC_CLIP`), or the path of an open_clip model-config ``.json`` (keys ``embed_dim``,
``vision_cfg``, ``text_cfg``; the file stem becomes the name). Configs are registered only through
open_clip's public :func:`open_clip.add_model_config`; avret's own are registered on first use, so
they are known in any process. Schema names (``hf-hub:``, ``local-dir:``) are refused.

Weights. A local ``.pt``/``.pth``/``.bin`` (read with ``torch.load(weights_only=True)``) or
``.safetensors`` state dict, loaded strictly with :func:`open_clip.load_checkpoint` (which applies
open_clip's own key conversions). A missing or unreadable file, or a state dict that does not fit
the architecture (naming the first missing / unexpected / wrongly-shaped key), is a one-line
:class:`~avret.errors.ModelError`. ``allow_random=True`` with weights ``None`` or
:data:`RANDOM_INIT` gives seeded, deterministic random weights -- for synthetic data and tests only.

The synthetic CLIP. No pretrained CLIP can be downloaded here, and vegas-synth's teacher view is
synthetic anyway, so on vegas-synth the teacher uses the small :data:`SYNTHETIC_CLIP` with seeded
random weights (``clip_weights = "random-init"``, refused for real data): the prompt context,
meta-net and video encoder still learn; the teacher's knowledge comes from its cleaner input.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from avret.errors import ModelError
from avret.utils.device import resolve_device

__all__ = [
    "CONFIG_DIR",
    "RANDOM_INIT",
    "SYNTHETIC_CLIP",
    "available_models",
    "clip_embed_dim",
    "clip_image_transform",
    "load_clip",
    "load_clip_tokenizer",
    "register_model_config",
    "resolve_model_name",
    "tensor_fingerprint",
]

#: ``clip_weights`` value recorded for seeded random weights (synthetic data / tests only).
RANDOM_INIT = "random-init"
#: avret's small CLIP architecture for synthetic data (``clip_configs/avret-synth-clip.json``).
SYNTHETIC_CLIP = "avret-synth-clip"
#: avret's own open_clip model configs, one ``<name>.json`` each (shipped as package data).
CONFIG_DIR = Path(__file__).with_name("clip_configs")

_REQUIRED_KEYS = ("embed_dim", "vision_cfg", "text_cfg")
_SCHEMAS = ("hf-hub:", "local-dir:")
# name -> (resolved config path, mtime) last handed to open_clip.add_model_config in this process
_registered: dict[str, tuple[str, int]] = {}
_builtins_registered = False
_SIZE_MISMATCH = re.compile(
    r"size mismatch for ([^:\s]+): copying a param with shape torch\.Size\(\[([^\]]*)\]\) from checkpoint, "
    r"the shape in current model is torch\.Size\(\[([^\]]*)\]\)"
)


# --------------------------------------------------------------------------------------------- names


def _register_builtin_configs() -> None:
    """Hand avret's own config folder to open_clip once per process."""
    global _builtins_registered
    import open_clip

    if not _builtins_registered:
        open_clip.add_model_config(CONFIG_DIR)
        _builtins_registered = True


def available_models() -> list[str]:
    """Names of the open_clip architectures known to this process (avret's own included)."""
    import open_clip

    _register_builtin_configs()
    return list(open_clip.list_models())


def register_model_config(path: str | os.PathLike[str]) -> str:
    """Register the open_clip model-config ``.json`` at ``path`` with open_clip; returns its name (stem).

    The file is checked first (open_clip would otherwise skip a config without the required keys,
    or keep failing on a file that is not JSON). Registering the same unchanged file again is free.
    """
    import open_clip

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"--clip-model config file {path} does not exist; expected an open_clip json config")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"--clip-model config file {path} is not valid JSON ({exc})") from None
    if not isinstance(cfg, dict) or not all(k in cfg for k in _REQUIRED_KEYS):
        raise ModelError(
            f"--clip-model config file {path}: expected an open_clip model config with keys "
            f"{', '.join(_REQUIRED_KEYS)}"
        )
    _register_builtin_configs()  # first, so that a user's file of the same name wins
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    if _registered.get(path.stem) != key:
        open_clip.add_model_config(path)
        _registered[path.stem] = key
    return path.stem


def resolve_model_name(name: str) -> str:
    """The open_clip architecture name for ``name`` (``ViT-B/32`` -> ``ViT-B-32``; a ``.json`` -> its stem).

    Raises :class:`ModelError` for schema names (``hf-hub:``, ``local-dir:``) and unknown names.
    """
    import open_clip

    name = str(name).strip()
    if not name:
        raise ModelError("--clip-model: empty model name; expected an open_clip architecture name")
    if name.startswith(_SCHEMAS):
        raise ModelError(
            f"--clip-model '{name}': schema names are not supported (nothing is downloaded); give an "
            "architecture name (e.g. ViT-B-32) and the local weights file with --clip-weights"
        )
    if name.lower().endswith(".json"):
        return register_model_config(name)
    _register_builtin_configs()
    cleaned = name.replace("/", "-")
    if open_clip.get_model_config(cleaned) is None:
        models = available_models()
        preferred = [m for m in ("ViT-B-32", "ViT-B-16", "ViT-L-14", "RN50") if m in models]
        few = ", ".join(preferred + [m for m in models if m not in preferred][: 6 - len(preferred)])
        raise ModelError(
            f"--clip-model '{name}' is not an open_clip architecture nor a model-config .json; available "
            f"include {few}, ... ({len(models)} known)"
        )
    return cleaned


# --------------------------------------------------------------------------------------------- loading


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


@contextlib.contextmanager
def _without_random_init_warning() -> Iterator[None]:
    """Hide open_clip's "No pretrained weights loaded ... initialized randomly" while building.

    The model is always built empty and then filled by :func:`_load_weights` (or is random on
    purpose, which avret records as ``random-init``), so the warning would only mislead.
    """
    quiet = _DropMessage("No pretrained weights loaded")
    root = logging.getLogger()  # open_clip logs through the root logger
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)


def load_clip(
    name: str,
    weights: str | os.PathLike[str] | None,
    *,
    device: str | torch.device = "cpu",
    allow_random: bool = False,
    seed: int = 0,
) -> nn.Module:
    """An open_clip model of architecture ``name`` holding the weights of the local file ``weights``.

    Args:
        name: architecture (``ViT-B-32``, ``ViT-B/32``, an avret config) or a model-config ``.json`` path.
        weights: local checkpoint; ``None`` or ``"random-init"`` only with ``allow_random=True``.
        device: ``auto | cpu | cuda | cuda:N`` or a torch.device (see :func:`avret.utils.device.resolve_device`).
        allow_random: permit seeded random weights -- synthetic data / tests only.
        seed: seed of the random weights (the same on every device: they are drawn on the CPU).

    Returns the full CLIP (both towers), fp32, in eval mode, on ``device``.
    """
    import open_clip

    arch = resolve_model_name(name)
    random_init = weights is None or str(weights) == RANDOM_INIT
    if random_init and not allow_random:
        raise ModelError(
            f"--clip-weights: no weights file given for '{name}'; expected a local open_clip checkpoint path "
            "(random weights are only allowed for synthetic data)"
        )
    path = None if random_init else Path(weights)  # type: ignore[arg-type]
    if path is not None and str(weights).startswith(_SCHEMAS):
        raise ModelError(f"--clip-weights '{weights}': remote weights are not supported; give a local file")
    if path is not None and not path.is_file():
        raise ModelError(f"--clip-weights {path} does not exist; expected a local open_clip checkpoint file")
    target = resolve_device(device)
    with _without_random_init_warning(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = open_clip.create_model(
                arch, pretrained=None, load_weights=False, pretrained_image=False, pretrained_text=False,
                device="cpu", precision="fp32",
            )
        except Exception as exc:  # noqa: BLE001 -- open_clip raises many types
            raise ModelError(f"--clip-model '{name}': open_clip could not build it offline ({exc})") from None
    if path is not None:
        _load_weights(model, path, arch)
    return model.to(target).eval()


def _load_weights(model: nn.Module, path: Path, arch: str) -> None:
    """Load ``path`` into ``model`` with open_clip's loader; ModelError names the first key that does not fit."""
    import open_clip

    misfit = f"--clip-weights {path} does not fit the architecture '{arch}':"
    try:
        result = open_clip.load_checkpoint(model, str(path), strict=False, weights_only=True, device="cpu")
    except Exception as exc:  # noqa: BLE001 -- pickle, zip, safetensors, conversion errors
        text = str(exc)
        m = _SIZE_MISMATCH.search(text)
        if m:
            got, want = (tuple(int(v) for v in s.split(",") if v.strip()) for s in (m[2], m[3]))
            raise ModelError(
                f"{misfit} key '{m[1]}' has shape {got}, expected {want}; is --clip-model right?"
            ) from None
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)[:200]
        raise ModelError(
            f"--clip-weights {path} is unreadable or not a CLIP state dict ({type(exc).__name__}: {first}); "
            "expected a torch or safetensors state dict"
        ) from None
    missing = list(getattr(result, "missing_keys", []))
    if missing:
        shape = tuple(model.state_dict()[missing[0]].shape)
        raise ModelError(
            f"{misfit} key '{missing[0]}' is missing (expected shape {shape}; {len(missing)} missing); "
            "is --clip-model right?"
        )
    unexpected = list(getattr(result, "unexpected_keys", []))
    if unexpected:
        raise ModelError(
            f"{misfit} unexpected key '{unexpected[0]}' ({len(unexpected)} unexpected); is --clip-model right?"
        )


def load_clip_tokenizer(name: str) -> Any:
    """The open_clip tokenizer of architecture ``name``, built offline (ModelError if it needs a download)."""
    import open_clip

    arch = resolve_model_name(name)
    cfg = open_clip.get_model_config(arch) or {}
    if not (cfg.get("text_cfg", {}).get("hf_tokenizer_name") or "siglip" in arch.lower()):
        return open_clip.get_tokenizer(arch)
    # These tokenizers come from the Hugging Face hub; only its local cache may be used.
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        return open_clip.get_tokenizer(arch)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(
            f"--clip-model '{name}': its tokenizer is not available offline ({type(exc).__name__})"
        ) from None
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def clip_image_transform(name: str) -> Callable[[Any], torch.Tensor]:
    """The open_clip eval preprocess (PIL image -> normalised tensor) of architecture ``name``; no weights needed.

    Resize the shorter side, centre-crop to the model's image size, normalise with the config's
    ``preprocess_cfg`` mean/std (OpenAI CLIP's by default).
    """
    import open_clip

    cfg = open_clip.get_model_config(resolve_model_name(name)) or {}
    pp = cfg.get("preprocess_cfg", {})
    return open_clip.image_transform(
        cfg.get("vision_cfg", {}).get("image_size", 224),
        is_train=False,
        mean=pp.get("mean"),
        std=pp.get("std"),
        resize_mode=pp.get("resize_mode"),
        interpolation=pp.get("interpolation"),
    )


# --------------------------------------------------------------------------------------------- facts


def clip_embed_dim(model: nn.Module) -> int:
    """The joint image-text embedding width of an open_clip model."""
    proj = getattr(model, "text_projection", None)
    if proj is None and hasattr(model, "text"):
        proj = getattr(model.text, "text_projection", None)
    if isinstance(proj, nn.Linear):
        return int(proj.out_features)
    if proj is not None:
        return int(proj.shape[1])
    out = getattr(getattr(model, "visual", None), "output_dim", None)
    if out is None:
        raise ModelError("open_clip model has no text projection; cannot tell its embedding width")
    return int(out)


def tensor_fingerprint(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over names, shapes, dtypes and bytes of ``tensors`` in sorted-name order."""
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().to("cpu").contiguous()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
