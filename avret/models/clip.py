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

Weights (:data:`WEIGHT_FORMS`), local files in any of the three forms CLIP is distributed in:

* an **open_clip checkpoint**: a ``.pt``/``.pth``/``.bin`` (read with ``torch.load(weights_only=True)``)
  or ``.safetensors`` state dict, e.g. ``open_clip_pytorch_model.bin`` / ``.safetensors``, loaded
  with :func:`open_clip.load_checkpoint` (which applies open_clip's own key conversions);
* **OpenAI's TorchScript archive** (``ViT-B-32.pt`` of openai/CLIP): its tensors are read with
  ``torch.jit.load`` (the archive's code is compiled by TorchScript, never run; no Python pickle
  code), fp16 weights become fp32, and the network uses QuickGELU as OpenAI's does. open_clip's
  CLIP has OpenAI's module layout, so the key names are the same (as in open_clip's
  ``load_openai_model``);
* a **Hugging Face ``CLIPModel`` folder** (``config.json`` + ``model.safetensors`` or
  ``pytorch_model.bin``, e.g. a snapshot in a local HF cache): ``config.json`` is read as data (no
  ``transformers`` class is instantiated, no code from the folder runs), the key names are
  converted to open_clip's (:func:`hf_clip_to_open_clip`: q/k/v projections concatenated into
  ``in_proj``, the projections transposed), and the activation follows its ``hidden_act``; the
  folder's heads and layer-norm eps must agree with the architecture.

In every form the state dict is loaded strictly into the architecture named by ``--clip-model``. A
missing or unreadable file, a file of none of these forms (the error names the three), or a state
dict that does not fit the architecture (naming the first missing / unexpected / wrongly-shaped
key) is a one-line :class:`~avret.errors.ModelError`. ``allow_random=True`` with weights ``None`` or
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
import math
import os
import re
import zipfile
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
    "WEIGHT_FORMS",
    "available_models",
    "clip_embed_dim",
    "clip_image_transform",
    "clip_weights_form",
    "hf_clip_to_open_clip",
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

#: The forms of ``--clip-weights`` the loader accepts (named in the error for any other file).
WEIGHT_FORMS = (
    "an open_clip checkpoint (open_clip_pytorch_model.bin / .safetensors, or a .pt/.pth state dict)",
    "OpenAI's TorchScript archive (e.g. ViT-B-32.pt)",
    "a Hugging Face CLIPModel folder (config.json + model.safetensors)",
)
_FORMS_LINE = "expected " + "; ".join(WEIGHT_FORMS[:-1]) + "; or " + WEIGHT_FORMS[-1]
# entries of OpenAI's archive that are not weights (open_clip drops them too)
_OPENAI_NON_WEIGHTS = ("input_resolution", "context_length", "vocab_size")
_HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# transformers' CLIPTextConfig / CLIPVisionConfig defaults of the settings avret checks
_HF_DEFAULTS = {
    "text_config": {"num_attention_heads": 8, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
    "vision_config": {"num_attention_heads": 12, "hidden_act": "quick_gelu", "layer_norm_eps": 1e-5},
}

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
    _check_config_values(path, cfg)
    _register_builtin_configs()  # first, so that a user's file of the same name wins
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    if _registered.get(path.stem) != key:
        open_clip.add_model_config(path)
        _registered[path.stem] = key
    return path.stem


#: The token ids open_clip's own tokenizer produces (a smaller text vocabulary would index past its table).
CLIP_TOKENIZER_VOCAB = 49408


def _check_config_values(path: Path, cfg: dict[str, Any]) -> None:
    """The values a model is built from: positive sizes (the text vocabulary is checked where text is
    tokenized, :func:`load_clip_tokenizer`: a frames-only use needs no text tower)."""
    text, vision = cfg.get("text_cfg"), cfg.get("vision_cfg")
    if not isinstance(text, dict) or not isinstance(vision, dict):
        raise ModelError(f"--clip-model config file {path}: text_cfg and vision_cfg must be JSON objects")
    embed = cfg.get("embed_dim")
    if not isinstance(embed, int) or isinstance(embed, bool) or not 1 <= embed <= 65536:
        raise ModelError(f"--clip-model config file {path}: embed_dim is {embed!r}; expected an integer in 1..65536")
    vocab = text.get("vocab_size", CLIP_TOKENIZER_VOCAB)
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab < 1:
        raise ModelError(f"--clip-model config file {path}: text_cfg.vocab_size is {vocab!r}; expected an integer")
    ctx = text.get("context_length", 77)
    if not isinstance(ctx, int) or not 2 <= ctx <= 4096:
        raise ModelError(f"--clip-model config file {path}: text_cfg.context_length is {ctx!r}; expected 2..4096")


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
    if path is not None and not path.exists():
        raise ModelError(f"--clip-weights {path} does not exist; {_FORMS_LINE}")
    form = None if path is None else clip_weights_form(path)
    hf_config = _read_hf_config(_hf_folder(path)) if form == "hf" else None  # type: ignore[arg-type]
    # OpenAI's CLIP (and an HF folder saying so) uses QuickGELU; open_clip's ViT-B-32 config does not
    quick_gelu = True if form == "openai" else None
    if hf_config is not None:
        quick_gelu = _hf_quick_gelu(hf_config, path)  # type: ignore[arg-type]
    target = resolve_device(device)
    with _without_random_init_warning(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        try:
            model = open_clip.create_model(
                arch, pretrained=None, load_weights=False, pretrained_image=False, pretrained_text=False,
                device="cpu", precision="fp32", **({} if quick_gelu is None else {"quick_gelu": quick_gelu}),
            )
        except Exception as exc:  # noqa: BLE001 -- open_clip raises many types
            raise ModelError(f"--clip-model '{name}': open_clip could not build it offline ({exc})") from None
    if path is not None and form == "open_clip":
        _load_weights(model, path, arch)
    elif path is not None and form == "openai":
        _load_state(model, _read_openai_archive(path), path, arch)
    elif path is not None and hf_config is not None:
        folder = _hf_folder(path)
        _check_hf_architecture(model, hf_config, folder, arch)
        _load_state(model, hf_clip_to_open_clip(_read_hf_weights(folder)), folder, arch)
    return model.to(target).eval()


def clip_weights_form(path: str | os.PathLike[str]) -> str:
    """Which of :data:`WEIGHT_FORMS` the local ``path`` is: ``"open_clip"``, ``"openai"`` or ``"hf"``.

    Decided from the file's container only (nothing is loaded): a folder is a Hugging Face folder
    (as is its ``model.safetensors`` / ``pytorch_model.bin`` next to a ``config.json``), a zip
    archive holding TorchScript code is OpenAI's archive, anything else a state dict. A folder
    without ``config.json`` and a weights file is a :class:`ModelError` naming the forms.
    """
    path = Path(path)
    if path.is_dir():
        if _hf_folder(path) is None:
            raise ModelError(f"--clip-weights {path} is a folder without config.json and "
                             f"{' or '.join(_HF_WEIGHT_FILES)}; {_FORMS_LINE}")
        return "hf"
    if path.name in _HF_WEIGHT_FILES and (path.parent / "config.json").is_file():
        return "hf"
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (OSError, zipfile.BadZipFile):
            return "open_clip"
        if any(n.endswith("/constants.pkl") or "/code/" in n for n in names):
            return "openai"
    return "open_clip"


def _hf_folder(path: Path | None) -> Path | None:
    """The Hugging Face folder ``path`` is (or whose weights file it is); None when it is not one."""
    if path is None:
        return None
    folder = path if path.is_dir() else path.parent
    if (folder / "config.json").is_file() and any((folder / f).is_file() for f in _HF_WEIGHT_FILES):
        return folder
    return None


def _read_openai_archive(path: Path) -> dict[str, torch.Tensor]:
    """The fp32 weights of OpenAI's TorchScript archive (its code is never run)."""
    try:
        archive = torch.jit.load(str(path), map_location="cpu")
        state = dict(archive.state_dict())
    except Exception as exc:  # noqa: BLE001 -- any unreadable archive is the user's problem
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)[:160]
        raise ModelError(f"--clip-weights {path} is not a readable TorchScript archive "
                         f"({type(exc).__name__}: {first}); {_FORMS_LINE}") from None
    for key in _OPENAI_NON_WEIGHTS:
        state.pop(key, None)
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _read_hf_config(folder: Path) -> dict[str, Any]:
    """``config.json`` of a Hugging Face CLIPModel folder, as data (ModelError unless it is a CLIP config)."""
    path = folder / "config.json"
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ModelError(f"--clip-weights {path} is not valid JSON ({type(exc).__name__}); {_FORMS_LINE}") from None
    if not (isinstance(cfg, dict) and cfg.get("model_type") == "clip"):
        kind = cfg.get("model_type") if isinstance(cfg, dict) else None
        raise ModelError(f"--clip-weights {path}: model_type '{kind}' is not a Hugging Face CLIPModel "
                         f"(model_type 'clip'); {_FORMS_LINE}")
    # older configs keep the towers' settings in *_config_dict; a setting left out has the HF default
    return {**cfg, **{part: {**_HF_DEFAULTS[part], **(cfg.get(part) or cfg.get(f"{part}_dict") or {})}
                      for part in _HF_DEFAULTS}}


def _hf_quick_gelu(cfg: dict[str, Any], path: Path) -> bool:
    acts = {cfg[part]["hidden_act"] for part in _HF_DEFAULTS}
    if acts == {"quick_gelu"}:
        return True
    if acts == {"gelu"}:
        return False
    raise ModelError(f"--clip-weights {path}: hidden_act {sorted(acts)} is not supported; expected 'quick_gelu' "
                     "or 'gelu' in both text_config and vision_config")


def _check_hf_architecture(model: nn.Module, cfg: dict[str, Any], folder: Path, arch: str) -> None:
    """What key shapes cannot show: the heads and the layer-norm eps of the folder agree with ``arch``."""
    towers = {"text_config": model, "vision_config": model.visual}
    for part, tower in towers.items():
        blocks = getattr(getattr(tower, "transformer", None), "resblocks", None)
        if not blocks:
            raise ModelError(f"--clip-model '{arch}' is not a ViT CLIP; a Hugging Face CLIPModel needs one")
        heads = int(blocks[0].attn.num_heads)
        want = cfg[part].get("num_attention_heads")
        if want != heads:
            raise ModelError(f"--clip-weights {folder / 'config.json'}: {part}.num_attention_heads is {want}, "
                             f"the architecture '{arch}' has {heads}; is --clip-model right?")
        eps = float(cfg[part]["layer_norm_eps"])
        if not math.isclose(eps, float(blocks[0].ln_1.eps)):
            raise ModelError(f"--clip-weights {folder / 'config.json'}: {part}.layer_norm_eps is {eps}, "
                             f"the architecture '{arch}' has {blocks[0].ln_1.eps}")


def _read_hf_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of a Hugging Face folder (safetensors preferred; a .bin only with ``weights_only``)."""
    path = next(folder / f for f in _HF_WEIGHT_FILES if (folder / f).is_file())
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise ModelError(f"--clip-weights {path} is unreadable ({type(exc).__name__}); {_FORMS_LINE}") from None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ModelError(f"--clip-weights {path} is not a state dict (name -> tensor); {_FORMS_LINE}")
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


# Hugging Face CLIP name -> open_clip name, per transformer block and for the rest
_HF_BLOCK = {
    "self_attn.out_proj.weight": "attn.out_proj.weight", "self_attn.out_proj.bias": "attn.out_proj.bias",
    "layer_norm1.weight": "ln_1.weight", "layer_norm1.bias": "ln_1.bias",
    "layer_norm2.weight": "ln_2.weight", "layer_norm2.bias": "ln_2.bias",
    "mlp.fc1.weight": "mlp.c_fc.weight", "mlp.fc1.bias": "mlp.c_fc.bias",
    "mlp.fc2.weight": "mlp.c_proj.weight", "mlp.fc2.bias": "mlp.c_proj.bias",
}
_HF_REST = {
    "logit_scale": "logit_scale",
    "text_model.embeddings.token_embedding.weight": "token_embedding.weight",
    "text_model.embeddings.position_embedding.weight": "positional_embedding",
    "text_model.final_layer_norm.weight": "ln_final.weight",
    "text_model.final_layer_norm.bias": "ln_final.bias",
    "vision_model.embeddings.class_embedding": "visual.class_embedding",
    "vision_model.embeddings.patch_embedding.weight": "visual.conv1.weight",
    "vision_model.embeddings.position_embedding.weight": "visual.positional_embedding",
    "vision_model.pre_layrnorm.weight": "visual.ln_pre.weight",
    "vision_model.pre_layrnorm.bias": "visual.ln_pre.bias",
    "vision_model.post_layernorm.weight": "visual.ln_post.weight",
    "vision_model.post_layernorm.bias": "visual.ln_post.bias",
}
_HF_TRANSPOSED = {"text_projection.weight": "text_projection", "visual_projection.weight": "visual.proj"}
_HF_LAYER = re.compile(r"^(text|vision)_model\.encoder\.layers\.(\d+)\.(.+)$")


def hf_clip_to_open_clip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A Hugging Face ``CLIPModel`` state dict with open_clip's key names (and open_clip's layout).

    Per block, ``q_proj``/``k_proj``/``v_proj`` are concatenated (in that order) into
    ``attn.in_proj_weight``/``in_proj_bias``; ``text_projection``/``visual_projection`` (Linear
    weights ``(out, in)``) become open_clip's ``(in, out)`` matrices. Keys it does not know (and
    ``position_ids``) are kept as they are, so a strict load names them.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key.endswith("embeddings.position_ids"):
            continue
        if key in _HF_REST:
            out[_HF_REST[key]] = value
            continue
        if key in _HF_TRANSPOSED:
            out[_HF_TRANSPOSED[key]] = value.t().contiguous()
            continue
        m = _HF_LAYER.match(key)
        if m is None:
            out[key] = value
            continue
        tower, layer, rest = m.groups()
        prefix = f"{'' if tower == 'text' else 'visual.'}transformer.resblocks.{layer}."
        proj = re.match(r"^self_attn\.([qkv])_proj\.(weight|bias)$", rest)
        if proj:
            qkv.setdefault((prefix, proj[2]), {})[proj[1]] = value
        elif rest in _HF_BLOCK:
            out[prefix + _HF_BLOCK[rest]] = value
        else:
            out[key] = value
    for (prefix, kind), parts in qkv.items():
        if set(parts) != {"q", "k", "v"}:  # incomplete: in_proj stays missing, and the strict load says so
            continue
        out[f"{prefix}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path, arch: str) -> None:
    """Load a converted state dict strictly; ModelError names the first key that does not fit."""
    misfit = f"--clip-weights {path} does not fit the architecture '{arch}':"
    own = model.state_dict()
    for key, value in state.items():
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            raise ModelError(f"{misfit} key '{key}' has shape {tuple(value.shape)}, expected "
                             f"{tuple(own[key].shape)}; is --clip-model right?")
    if "logit_scale" in state and state["logit_scale"].ndim != own["logit_scale"].ndim:
        state = {**state, "logit_scale": state["logit_scale"].reshape(own["logit_scale"].shape)}
    _check_fit(model, model.load_state_dict(state, strict=False), misfit)


def _check_fit(model: nn.Module, result: Any, misfit: str) -> None:
    """ModelError for the first missing, then the first unexpected key of a ``load_state_dict`` result."""
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
            f"{_FORMS_LINE}"
        ) from None
    _check_fit(model, result, misfit)


def load_clip_tokenizer(name: str) -> Any:
    """The open_clip tokenizer of architecture ``name``, built offline (ModelError if it needs a download)."""
    import open_clip

    arch = resolve_model_name(name)
    cfg = open_clip.get_model_config(arch) or {}
    if not (cfg.get("text_cfg", {}).get("hf_tokenizer_name") or "siglip" in arch.lower()):
        vocab = cfg.get("text_cfg", {}).get("vocab_size", CLIP_TOKENIZER_VOCAB)
        if not isinstance(vocab, int) or vocab < CLIP_TOKENIZER_VOCAB:  # token ids would index past the table
            raise ModelError(f"--clip-model '{name}': text_cfg.vocab_size is {vocab!r}; open_clip's tokenizer "
                             f"produces ids up to {CLIP_TOKENIZER_VOCAB - 1}, so text prompts need at least "
                             f"{CLIP_TOKENIZER_VOCAB}")
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
