"""Model directories in the transformers / open_clip convention.

A model is a directory with ``config.json`` (a typed config dataclass, plus ``model_type``) and
``model.safetensors``. The *fingerprint* of a model is the sha256 of both files' bytes; an index
records the fingerprint of the model that made its embeddings and refuses queries from another.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from avret.errors import ModelError
from avret.utils.atomic import atomic_dir

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_model_dir(
    path: str | Path, config: Any, tensors: dict[str, torch.Tensor], extra_files: dict[str, str] | None = None
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ extra text files) atomically into ``path``."""
    path = Path(path)
    cfg = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    with atomic_dir(path) as tmp:
        (tmp / CONFIG_NAME).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / WEIGHTS_NAME))
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text, encoding="utf-8")
    return path


def read_config(path: str | Path) -> dict[str, Any]:
    """Read a model directory's ``config.json``; :class:`ModelError` names what is wrong."""
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"{path}: model directory not found; expected config.json + model.safetensors")
    cfg_file = path / CONFIG_NAME
    if not cfg_file.is_file():
        raise ModelError(f"{cfg_file}: file not found; expected a model config")
    try:
        return json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{cfg_file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def config_from_dict(cls: type, raw: dict[str, Any], where: Path) -> Any:
    """Build the config dataclass ``cls``; unknown or missing fields raise :class:`ModelError`."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names - {"model_type"})
    if unknown:
        raise ModelError(f"{where / CONFIG_NAME}: unknown field(s) {unknown} for {cls.__name__}")
    try:
        return cls(**{k: v for k, v in raw.items() if k in names})
    except TypeError as exc:
        raise ModelError(f"{where / CONFIG_NAME}: {exc}") from None


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read ``model.safetensors`` of a model directory."""
    weights = Path(path) / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelError(f"{weights}: file not found; expected the model weights (safetensors)")
    try:
        return load_file(str(weights))
    except Exception as exc:  # safetensors raises its own error types
        raise ModelError(f"{weights}: not a readable safetensors file ({exc})") from None


def load_state_strict(module: torch.nn.Module, tensors: dict[str, torch.Tensor], where: Path) -> None:
    """Load weights, naming the first missing/unexpected/mis-shaped key in a :class:`ModelError`."""
    own = module.state_dict()
    missing = [k for k in own if k not in tensors]
    unexpected = [k for k in tensors if k not in own]
    if missing or unexpected:
        key = (missing or unexpected)[0]
        what = "missing" if missing else "unexpected"
        raise ModelError(f"{where / WEIGHTS_NAME}: {what} weight '{key}'; the weights do not fit config.json")
    for k, v in tensors.items():
        if tuple(v.shape) != tuple(own[k].shape):
            raise ModelError(
                f"{where / WEIGHTS_NAME}: weight '{k}' has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}"
            )
    module.load_state_dict(tensors)


def fingerprint_dir(path: str | Path) -> str:
    """sha256 over the config and weights files of a model directory."""
    path = Path(path)
    h = hashlib.sha256()
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        f = path / name
        if not f.is_file():
            raise ModelError(f"{f}: file not found; cannot fingerprint the model")
        h.update(name.encode())
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()
