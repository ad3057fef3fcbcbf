"""THE checkpoint format and THE run-directory layout of avret.

Every model avret saves — the retrieval towers, the CCA baseline, the VideoAdviser teacher, the
MSD/MI-KD multimodal teacher, the sentiment student and the sentiment teacher — is a directory::

    MODEL/
      config.json        {"model_type": ..., "format_version": 1, <the typed config's fields>}
      model.safetensors  the weights (no pickle anywhere)
      [extra files]      e.g. a text encoder's tokenizer

written by one :meth:`PretrainedMixin.save_pretrained` and read by one
:meth:`PretrainedMixin.from_pretrained`; :func:`load_model` reads ``model_type`` and dispatches to
the class registered for it in :data:`MODEL_TYPES`, as transformers' Auto classes do (the table is
explicit and imported lazily, so this module depends on no model code). The *fingerprint* of a
model is the sha256 of its config and weights; an index records it and refuses another model.

Every command that trains writes one run-directory layout::

    RUN/
      run.json           format_version, command, method, model_type, seed, data set, device,
                         configs, selection (best epoch, validation metric), metrics, history,
                         timings, library versions, and the sha256 of every file of the run
      model/             the deployed model (a MODEL directory as above)
      [teacher/ ...]     what the run also trained (a teacher, step-1 results, predictions)

:func:`load_model` accepts ``RUN`` or ``RUN/model``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import types
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors.torch import load_file, save_file

from avret.errors import ModelError
from avret.utils.atomic import (
    RUN_KIND,
    SENTIMENT_RUN_KIND,
    TEMP_MARKER,
    atomic_dir,
    json_default,
    recover_output,
)
from avret.utils.versions import library_versions, utc_timestamp

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
RUN_FILE = "run.json"
MODEL_DIR = "model"
RESERVED_KEYS = ("model_type", "format_version")

# model_type -> "module:Class". Explicit, like transformers' auto mappings; imported on demand.
MODEL_TYPES: dict[str, str] = {
    "towers": "avret.models.towers:AVTowers",
    "cca": "avret.models.cca:CCAModel",
    "videoadviser-teacher": "avret.distill.teacher:VideoAdviserTeacher",
    "multimodal-teacher": "avret.distill.multimodal_teacher:MultimodalTeacher",
    "sentiment-student": "avret.sentiment.student:SentimentStudent",
    "sentiment-teacher": "avret.sentiment.sentiment_teacher:SentimentTeacher",
}

# Formats of avret before the one checkpoint format, and how to re-create such a directory.
LEGACY_FORMATS = {
    "avret-videoadviser": "re-run the `avret distill` (or `avret sentiment train --teacher ...`) command that "
                          "made it: its teacher is retrained and saved in the current format",
    "avret-sentiment-student/1": "`avret sentiment eval/predict` still read it; re-create it in the current format "
                                 "with `avret sentiment train ... --out RUN`",
}


# ------------------------------------------------------------------------------------------ configs
def config_to_dict(config: Any) -> dict[str, Any]:
    """A config dataclass (or mapping) as a JSON-able dict."""
    if dataclasses.is_dataclass(config):
        return dataclasses.asdict(config)
    return dict(config)


def _type_ok(value: Any, hint: Any) -> bool:
    """A conservative check of a JSON value against a dataclass field's type hint."""
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple) or hint in (list, tuple):
        return isinstance(value, (list, tuple))
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True


def config_from_dict(cls: type, raw: Mapping[str, Any], where: Path | str) -> Any:
    """Build the config dataclass ``cls`` from ``raw``; unknown, missing or mistyped fields → ModelError."""
    if not isinstance(raw, Mapping):
        raise ModelError(f"{where}: expected a JSON object with the fields of {cls.__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names - set(RESERVED_KEYS))
    if unknown:
        raise ModelError(f"{where}: unknown field '{unknown[0]}' for {cls.__name__}")
    for name, value in raw.items():
        if name in names and not _type_ok(value, hints.get(name, Any)):
            raise ModelError(f"{where}: field '{name}' is {value!r}; expected {hints[name]}")
    try:
        config = cls(**{k: v for k, v in raw.items() if k in names})
    except TypeError as exc:
        raise ModelError(f"{where}: {exc}") from None
    validate = getattr(config, "validate", None)
    if callable(validate):
        try:
            validate()
        except ModelError:
            raise
        except (ValueError, TypeError) as exc:
            raise ModelError(f"{where}: {exc}") from None
    return config


def read_config(path: str | Path) -> dict[str, Any]:
    """``config.json`` of a model directory as a dict; one-line ModelError for anything wrong."""
    path = Path(path)
    if not path.is_dir():
        raise ModelError(f"{path}: model directory not found; expected config.json + model.safetensors")
    cfg_file = path / CONFIG_NAME
    if not cfg_file.is_file():
        raise ModelError(f"{cfg_file}: file not found; expected a model config")
    try:
        raw = json.loads(cfg_file.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ModelError(f"{cfg_file}: not UTF-8 text; expected a JSON model config") from None
    except json.JSONDecodeError as exc:
        raise ModelError(f"{cfg_file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(raw, dict):
        raise ModelError(f"{cfg_file}: expected a JSON object, got {type(raw).__name__}")
    legacy = raw.get("format")
    if isinstance(legacy, str) and legacy in LEGACY_FORMATS:
        raise ModelError(f"{cfg_file}: written by an older avret (format '{legacy}'); {LEGACY_FORMATS[legacy]}")
    version = raw.get("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelError(f"{cfg_file}: format_version {version!r}; this avret reads up to {FORMAT_VERSION}")
    return raw


# ------------------------------------------------------------------------------------------ weights
def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """``model.safetensors`` of a model directory (on the CPU)."""
    weights = Path(path) / WEIGHTS_NAME
    if not weights.is_file():
        raise ModelError(f"{weights}: file not found; expected the model weights (safetensors)")
    try:
        return load_file(str(weights), device="cpu")
    except Exception as exc:  # safetensors raises its own error types
        raise ModelError(f"{weights}: not a readable safetensors file ({type(exc).__name__})") from None


def check_state(expected: Mapping[str, torch.Tensor], tensors: Mapping[str, torch.Tensor], where: Path) -> None:
    """ModelError naming the first missing / unexpected / mis-shaped weight."""
    missing = [k for k in expected if k not in tensors]
    unexpected = [k for k in tensors if k not in expected]
    if missing or unexpected:
        key = (missing or unexpected)[0]
        what = "missing" if missing else "unexpected"
        raise ModelError(f"{where / WEIGHTS_NAME}: {what} weight '{key}'; the weights do not fit config.json")
    for k, v in tensors.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise ModelError(
                f"{where / WEIGHTS_NAME}: weight '{k}' has shape {tuple(v.shape)}, expected {tuple(expected[k].shape)}"
            )
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise ModelError(f"{where / WEIGHTS_NAME}: weight '{k}' holds NaN or inf; expected finite weights")


def fingerprint_dir(path: str | Path) -> str:
    """sha256 over the config and weights files of a model directory."""
    path = Path(path)
    h = hashlib.sha256()
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        f = path / name
        if not f.is_file():
            raise ModelError(f"{f}: file not found; cannot fingerprint the model")
        h.update(name.encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 of one file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------ the mixin
class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for every avret model (see the module docstring).

    A model class sets ``model_type`` (a key of :data:`MODEL_TYPES`) and ``config_class`` (a
    dataclass) and keeps its config in ``self.config``. Hooks a class may override:

    * :meth:`weights_for_save` / :meth:`load_weights` — which tensors are the model's own weights
      (default: the whole ``state_dict``; a teacher over a frozen CLIP keeps only its own);
    * :meth:`from_config` — build an untrained model from the config (extra keyword arguments of
      :meth:`from_pretrained`, e.g. a local CLIP weights path, arrive here);
    * :meth:`save_extra_files` — files beside the weights (a tokenizer).
    """

    model_type: ClassVar[str]
    config_class: ClassVar[type]
    config: Any
    path: Path | None = None
    _fingerprint: str | None = None

    # --- hooks
    def weights_for_save(self) -> dict[str, torch.Tensor]:
        return dict(self.state_dict())  # type: ignore[attr-defined]

    def load_weights(self, tensors: Mapping[str, torch.Tensor], where: Path) -> None:
        check_state(self.weights_for_save(), tensors, where)
        self.load_state_dict(dict(tensors), strict=False)  # type: ignore[attr-defined]

    @classmethod
    def from_config(cls, config: Any, path: Path | None = None, **kwargs: Any) -> Any:
        return cls(config, **kwargs)

    def save_extra_files(self, directory: Path) -> None:
        return None

    # --- the format
    def save_pretrained(self, path: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` (+ extra files) atomically into ``path``."""
        path = Path(path)
        doc = {"model_type": self.model_type, "format_version": FORMAT_VERSION, **config_to_dict(self.config)}
        with atomic_dir(path) as tmp:
            (tmp / CONFIG_NAME).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
            tensors = {k: v.detach().cpu().contiguous() for k, v in self.weights_for_save().items()}
            save_file(tensors, str(tmp / WEIGHTS_NAME))
            self.save_extra_files(tmp)
        self.path = path
        self._fingerprint = fingerprint_dir(path)
        return path

    @classmethod
    def from_pretrained(cls, path: str | Path, *, map_location: str | torch.device = "cpu", **kwargs: Any) -> Any:
        """Load a directory written by :meth:`save_pretrained` (ModelError names what does not fit)."""
        path = Path(path)
        raw = read_config(path)
        if raw.get("model_type") != cls.model_type:
            raise ModelError(
                f"{path / CONFIG_NAME}: model_type '{raw.get('model_type')}', expected '{cls.model_type}'"
            )
        config = config_from_dict(cls.config_class, raw, path / CONFIG_NAME)
        model = cls.from_config(config, path=path, **kwargs)
        model.load_weights(load_tensors(path), path)
        if isinstance(model, torch.nn.Module):
            model.to(map_location)
            model.eval()
        model.path = path
        return model

    def fingerprint(self) -> str:
        """sha256 of the saved config + weights (the model must have been saved or loaded)."""
        if self._fingerprint is None:
            if self.path is None:
                raise ModelError("fingerprint() needs a saved model; call save_pretrained first")
            self._fingerprint = fingerprint_dir(self.path)
        return self._fingerprint


def model_class(model_type: str, where: Path | str = "config.json") -> type:
    """The class registered for ``model_type`` in :data:`MODEL_TYPES`."""
    if model_type not in MODEL_TYPES:
        raise ModelError(f"{where}: model_type '{model_type}', expected one of {sorted(MODEL_TYPES)}")
    module, name = MODEL_TYPES[model_type].split(":")
    return getattr(importlib.import_module(module), name)


def model_dir(path: str | Path) -> Path:
    """``path`` itself when it is a model directory, ``path/model`` when it is a run directory."""
    path = Path(path)
    recover_output(path)  # a writer killed between its two renames left the old output aside
    if path.is_dir() and not (path / CONFIG_NAME).exists() and (path / MODEL_DIR / CONFIG_NAME).exists():
        return path / MODEL_DIR
    return path


def load_model(path: str | Path, **kwargs: Any) -> Any:
    """Load any avret model directory (or run directory) by the ``model_type`` in its config.json."""
    path = model_dir(path)
    raw = read_config(path)
    return model_class(str(raw.get("model_type")), path / CONFIG_NAME).from_pretrained(path, **kwargs)


# ------------------------------------------------------------------------------------------ run directories
def run_files(run: Path) -> dict[str, str]:
    """sha256 of every file of a run directory (relative path → hex), ``run.json`` excluded."""
    return {str(f.relative_to(run)): file_sha256(f) for f in sorted(run.rglob("*"))
            if f.is_file() and f.name not in (RUN_FILE, TEMP_MARKER)}


def write_run(out: str | Path, model: Any, metadata: Mapping[str, Any],
              extra: Callable[[Path], None] | None = None) -> Path:
    """Write a run directory atomically: ``model/`` + whatever ``extra`` writes + ``run.json``.

    ``run.json`` gets the format version, the model's type and fingerprint, library versions and
    the sha256 of every file, so that a complete run can be told from a damaged one
    (:func:`verify_run`).
    """
    out = Path(out)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp / MODEL_DIR)
        if extra is not None:
            extra(tmp)
        kind = SENTIMENT_RUN_KIND if model.model_type.startswith("sentiment") else RUN_KIND  # run.json says it
        doc = {"kind": kind, "format_version": FORMAT_VERSION, "model_type": model.model_type,
               "created_at": utc_timestamp(), "versions": library_versions(), **metadata,
               "model_fingerprint": model.fingerprint(), "files": run_files(tmp)}
        (tmp / RUN_FILE).write_text(json.dumps(doc, indent=2, default=json_default) + "\n", encoding="utf-8")
    model.path = out / MODEL_DIR
    return out


def read_run(path: str | Path) -> dict[str, Any]:
    """``run.json`` of a run directory (``RUN`` or ``RUN/model``)."""
    path = Path(path)
    for run in (path, path.parent):
        f = run / RUN_FILE
        if f.is_file():
            try:
                doc = json.loads(f.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                raise ModelError(f"{f}: not valid JSON; expected a run file written by avret") from None
            if not isinstance(doc, dict):
                raise ModelError(f"{f}: expected a JSON object; not a run file written by avret")
            return doc
    raise ModelError(f"{path / RUN_FILE}: file not found; expected a run directory written by avret")


def verify_run(path: str | Path) -> list[str]:
    """The files of a run whose bytes differ from ``run.json``'s record (empty: the run is intact)."""
    path = Path(path)
    recorded = read_run(path).get("files")
    if not isinstance(recorded, dict):
        return [RUN_FILE]
    bad = []
    for rel, digest in recorded.items():
        f = path / rel
        if not f.is_file() or file_sha256(f) != digest:
            bad.append(rel)
    return bad
