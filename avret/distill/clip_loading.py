"""Load an open_clip model from a local weights file -- never from the network.

``load_clip(name, weights_path)`` builds any open_clip architecture (``open_clip.list_models()``, or a
path to an open_clip model-config ``.json``) with random weights, then loads the state dict of the local
checkpoint (``.pt``/``.bin``/``.pth`` written by ``torch.save``, or ``.safetensors``) through the same
key conversions open_clip's own ``load_checkpoint`` applies. Anything that goes wrong becomes a one-line
:class:`~avret.errors.ModelError`: a missing or unreadable file, or a state dict that does not fit the
architecture (naming the first missing / unexpected / wrongly-shaped key).

``allow_random=True`` with ``weights_path=None`` builds deterministic random weights (seeded) -- only for
synthetic data and tests; run metadata then records ``clip_weights: "random-init"``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from avret.errors import ModelError

RANDOM_INIT = "random-init"

__all__ = [
    "RANDOM_INIT",
    "available_models",
    "clip_embed_dim",
    "load_clip",
    "load_clip_tokenizer",
    "register_model_config",
    "resolve_model_name",
    "tensor_fingerprint",
]


def available_models() -> list[str]:
    """Names of the open_clip architectures known to this process."""
    import open_clip

    return list(open_clip.list_models())


def register_model_config(name: str, config: dict[str, Any]) -> None:
    """Make an open_clip architecture config known under ``name`` (e.g. a tiny test model)."""
    import open_clip.factory as factory

    if not all(k in config for k in ("embed_dim", "vision_cfg", "text_cfg")):
        raise ModelError(f"model config '{name}': expected keys 'embed_dim', 'vision_cfg', 'text_cfg'")
    factory._MODEL_CONFIGS[name] = dict(config)


def _builtin_configs() -> dict[str, dict[str, Any]]:
    """avret's own architectures (registered on first use, so saved teachers reload anywhere)."""
    from avret.distill.synthetic_clip import SYNTH_CLIP_CONFIG, SYNTH_CLIP_NAME

    return {SYNTH_CLIP_NAME: SYNTH_CLIP_CONFIG}


def resolve_model_name(name: str) -> str:
    """The open_clip architecture name for ``name``; a ``.json`` config path is registered by its stem.

    Raises :class:`ModelError` for remote schemas (``hf-hub:``) and unknown names (listing a few).
    """
    import open_clip

    if not name:
        raise ModelError("--clip-model: empty model name; expected an open_clip architecture name")
    if name.startswith(("hf-hub:", "local-dir:")):
        raise ModelError(
            f"--clip-model '{name}': schema names are not supported; give an architecture name "
            "(e.g. ViT-B-32) and the weights file with --clip-weights"
        )
    if name.endswith(".json"):
        path = Path(name)
        if not path.is_file():
            raise ModelError(
                f"--clip-model config file {path} does not exist; expected an open_clip json config"
            )
        try:
            cfg = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ModelError(f"--clip-model config file {path} is not valid JSON ({exc})") from exc
        cfg = cfg.get("model_cfg", cfg)
        register_model_config(path.stem, cfg)
        return path.stem
    cleaned = name.replace("/", "-")
    if open_clip.get_model_config(cleaned) is None and cleaned in _builtin_configs():
        register_model_config(cleaned, _builtin_configs()[cleaned])
    if open_clip.get_model_config(cleaned) is None:
        models = available_models()
        preferred = [m for m in ("ViT-B-32", "ViT-B-16", "ViT-L-14", "RN50") if m in models]
        few = ", ".join(preferred + [m for m in models if m not in preferred][: 6 - len(preferred)])
        raise ModelError(
            f"--clip-model '{name}' is not an open_clip architecture; available include {few}, ... "
            f"({len(models)} in open_clip.list_models())"
        )
    return cleaned


def load_clip(
    name: str, weights_path: str | os.PathLike[str] | None, *, allow_random: bool = False, seed: int = 0
) -> nn.Module:
    """An open_clip model of architecture ``name`` with the weights of the local file ``weights_path``.

    Args:
        name: open_clip architecture (``ViT-B-32``, ...) or a path to an open_clip model-config json.
        weights_path: local checkpoint; ``None`` or ``"random-init"`` only with ``allow_random=True``.
        allow_random: permit random (seeded, deterministic) weights -- synthetic data / tests only.
        seed: seed of the random weights.

    Returns the model in eval mode on the CPU, fp32.
    """
    import open_clip

    arch = resolve_model_name(name)
    random_init = weights_path is None or str(weights_path) == RANDOM_INIT
    if random_init and not allow_random:
        raise ModelError(
            f"--clip-weights: no weights file given for '{name}'; expected a local open_clip checkpoint path "
            "(random weights are only allowed for synthetic data)"
        )
    path = None if random_init else Path(weights_path)  # type: ignore[arg-type]
    if path is not None and not path.is_file():
        raise ModelError(f"--clip-weights {path} does not exist; expected a local open_clip checkpoint file")

    quiet = _DropMessage("No pretrained weights loaded")  # we load the weights ourselves, below
    logging.getLogger().addFilter(quiet)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = open_clip.create_model(
                arch,
                pretrained=None,
                load_weights=False,
                pretrained_image=False,
                pretrained_text=False,
                device="cpu",
                precision="fp32",
            )
        except Exception as exc:  # noqa: BLE001 -- open_clip raises many types
            raise ModelError(f"--clip-model '{name}': open_clip could not build it offline ({exc})") from exc
        finally:
            logging.getLogger().removeFilter(quiet)
    if path is not None:
        _load_weights(model, path)
    model.eval()
    return model


class _DropMessage(logging.Filter):
    def __init__(self, text: str) -> None:
        super().__init__()
        self.text = text

    def filter(self, record: logging.LogRecord) -> bool:
        return self.text not in record.getMessage()


def _load_weights(model: nn.Module, path: Path) -> None:
    """Load ``path`` into ``model`` strictly; ModelError names the first key that does not fit."""
    from open_clip import factory
    from open_clip.convert import convert_state_dict
    from open_clip.model import convert_to_custom_text_state_dict, resize_pos_embed, resize_text_pos_embed

    if path.suffix in (".npz", ".npy"):
        try:
            factory.load_checkpoint(model, str(path))
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"--clip-weights {path}: could not load big_vision weights ({exc})") from exc
        return
    try:
        state = factory.load_state_dict(str(path), device="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 -- pickle, zip, safetensors errors
        msg = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise ModelError(
            f"--clip-weights {path} is unreadable ({msg}); expected a torch or safetensors state dict"
        ) from exc
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise ModelError(f"--clip-weights {path} does not hold a state dict of tensors")
    try:
        state = convert_state_dict(model, state)
        if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
            state = convert_to_custom_text_state_dict(state)
        for key in ("logit_scale", "logit_bias"):
            own = getattr(model, key, None)
            if key in state and own is not None and own.ndim != state[key].ndim:
                state[key] = state[key].reshape(own.shape)
        if (
            "logit_bias" not in state
            and getattr(model, "logit_bias", None) is not None
            and "logit_scale" in state
        ):
            state["logit_bias"] = torch.zeros_like(state["logit_scale"])
        state.pop("text.transformer.embeddings.position_ids", None)
        resize_pos_embed(state, model)
        resize_text_pos_embed(state, model)
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise ModelError(
            f"--clip-weights {path}: state dict could not be converted for this model ({exc})"
        ) from exc

    expected = model.state_dict()
    for key, value in expected.items():
        if key not in state:
            raise ModelError(
                f"--clip-weights {path} does not fit the architecture: key '{key}' is missing "
                f"(expected shape {tuple(value.shape)}); is --clip-model right?"
            )
        if tuple(state[key].shape) != tuple(value.shape):
            raise ModelError(
                f"--clip-weights {path} does not fit the architecture: key '{key}' has shape "
                f"{tuple(state[key].shape)}, expected {tuple(value.shape)}; is --clip-model right?"
            )
    unexpected = [k for k in state if k not in expected]
    if unexpected:
        raise ModelError(
            f"--clip-weights {path} does not fit the architecture: unexpected key '{unexpected[0]}' "
            f"({len(unexpected)} unexpected); is --clip-model right?"
        )
    model.load_state_dict(state, strict=True)


def load_clip_tokenizer(name: str) -> Any:
    """The open_clip tokenizer of architecture ``name``, built offline (ModelError if it needs a download)."""
    import open_clip

    arch = resolve_model_name(name)
    cfg = open_clip.get_model_config(arch) or {}
    if cfg.get("text_cfg", {}).get("hf_tokenizer_name") or "siglip" in arch.lower():
        # These tokenizers are fetched from the Hugging Face hub; try the local cache only.
        old = os.environ.get("HF_HUB_OFFLINE")
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            return open_clip.get_tokenizer(arch)
        except Exception as exc:  # noqa: BLE001
            raise ModelError(
                f"--clip-model '{name}': its tokenizer is not available offline ({type(exc).__name__})"
            ) from exc
        finally:
            if old is None:
                os.environ.pop("HF_HUB_OFFLINE", None)
            else:
                os.environ["HF_HUB_OFFLINE"] = old
    return open_clip.get_tokenizer(arch)


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
