"""Typed settings of the distillation methods: one dataclass per method, every default written once.

This module imports nothing heavy (no torch), so the CLI shows these defaults without importing
torch. The method table (:data:`avret.distill.methods.METHODS`) maps each ``--method`` name to its
config class and builder; a builder receives its own config, typed, and reads nothing else.

``run.json`` records the config under ``distill_config.method_config`` (its fields, the defaults
included, so a defaulted ``--weight`` is recorded as the value used). :func:`config_from_record`
reads it back, and also reads the untyped records of avret before typed configs (``weight``,
``kd_temperature``, ``student_target``, ``relevance_loss`` next to an ``options`` dict of
``msd_*`` / ``mi_*`` keys).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from avret.errors import AvretError


@dataclass(frozen=True)
class NoneConfig:
    """``--method none``: the towers' own retrieval objective only; nothing to set."""


@dataclass(frozen=True)
class KDConfig:
    """``--method kd``: Hinton logit KD from the VideoAdviser teacher through training-only heads."""

    weight: float = 1.0  # --weight
    temperature: float = 4.0


@dataclass(frozen=True)
class VideoAdviserConfig:
    """``--method videoadviser``: step 2, regress the teacher's step-1 relevance."""

    # chosen on vegas-synth *validation* mAP (docs/videoadviser.md)
    weight: float = 20.0  # --weight
    student_target: str = "pairwise"  # --student-target: pairwise | per-clip
    relevance_loss: str = "bce"  # --relevance-loss (pairwise only): bce | mse
    balanced: bool = True  # pairwise: relevant and irrelevant pairs weigh one half each


@dataclass(frozen=True)
class MSDConfig:
    """``--method msd``: saliency-weighted multimodal KD (see :mod:`avret.distill.msd`)."""

    weight: float = 1.0  # --weight
    temperature: float = 4.0  # KD temperature
    weighting: str = "instance"  # --msd-weighting: uniform | population | instance | learned
    fusion: str = "sum"  # --msd-fusion: sum | concat
    teacher_epochs: int = 30  # --msd-teacher-epochs
    teacher_hidden: int = 256
    meta_lr: float = 0.02
    meta_inner_lr: float = 0.1


@dataclass(frozen=True)
class MIKDConfig:
    """``--method mi-kd``: MI-based cross-modal KD with a training-only modality (see :mod:`avret.distill.mikd`)."""

    weight: float = 1.0  # --weight
    lambdas: tuple[float, float, float] = (0.5, 0.5, 0.1)  # --mi-weights: l1,l2,l3
    teacher_ce: float = 1.0
    temperature: float = 0.1
    proj_dim: int = 64
    hidden: int = 256
    disc_lr: float = 1e-3
    fusion: str = "sum"

    def __post_init__(self) -> None:
        object.__setattr__(self, "lambdas", parse_lambdas(self.lambdas))


#: VideoAdviser's step-2 targets (``--student-target``).
STUDENT_TARGETS = ("pairwise", "per-clip")

MethodConfig = NoneConfig | KDConfig | VideoAdviserConfig | MSDConfig | MIKDConfig

def parse_lambdas(value: Any) -> tuple[float, float, float]:
    """``--mi-weights`` as three non-negative floats (a list/tuple or a ``"l1,l2,l3"`` string)."""
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else []
    try:
        out = tuple(float(x) for x in items)
    except (TypeError, ValueError):
        out = ()
    if len(out) != 3 or any(not math.isfinite(x) or x < 0 for x in out):
        raise AvretError(f"--mi-weights '{value}': expected three non-negative numbers 'l1,l2,l3'")
    return out  # type: ignore[return-value]


def field_names(cls: type[Any]) -> tuple[str, ...]:
    """The settings a config class has."""
    return tuple(f.name for f in fields(cls))


def configure(cls: type[Any], **given: Any) -> MethodConfig:
    """A ``cls`` config: its defaults, with the settings in ``given`` that are not ``None`` and that it has.

    For the CLI, whose flags are shared by several methods (``--weight``) or belong to one: a flag
    the chosen method does not have is not used, and an omitted one (``None``) keeps the default.
    """
    names = field_names(cls)
    return cls(**{k: v for k, v in given.items() if v is not None and k in names})


def check_config(config: MethodConfig) -> None:
    """Refuse a bad ``--weight`` and bad VideoAdviser step-2 settings (before any training)."""
    weight = getattr(config, "weight", None)
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float))
                               or not (math.isfinite(weight) and weight >= 0)):
        raise AvretError(f"--weight {weight}: expected a finite number >= 0")
    if isinstance(config, VideoAdviserConfig):
        from avret.losses.relevance import RELEVANCE_LOSSES  # torch: only when a run starts

        if config.student_target not in STUDENT_TARGETS:
            raise AvretError(f"--student-target '{config.student_target}': expected 'pairwise' or 'per-clip'")
        if config.relevance_loss not in RELEVANCE_LOSSES:
            raise AvretError(f"--relevance-loss '{config.relevance_loss}': expected one of "
                             f"{', '.join(RELEVANCE_LOSSES)}")


# a key of the untyped records (top level or ``options``) -> (config class, field)
_LEGACY_KEYS: dict[str, tuple[tuple[type[Any], str], ...]] = {
    "weight": ((KDConfig, "weight"), (VideoAdviserConfig, "weight"), (MSDConfig, "weight"), (MIKDConfig, "weight")),
    "kd_temperature": ((KDConfig, "temperature"), (MSDConfig, "temperature")),
    "student_target": ((VideoAdviserConfig, "student_target"),),
    "relevance_loss": ((VideoAdviserConfig, "relevance_loss"),),
    "balanced": ((VideoAdviserConfig, "balanced"),),
    **{f"msd_{name}": ((MSDConfig, name),) for name in ("weighting", "fusion", "teacher_epochs", "teacher_hidden",
                                                         "meta_lr", "meta_inner_lr")},
    "mi_weights": ((MIKDConfig, "lambdas"),),
    **{f"mi_{name}": ((MIKDConfig, name),) for name in ("teacher_ce", "temperature", "proj_dim", "hidden",
                                                        "disc_lr", "fusion")},
}


def config_from_record(record: dict[str, Any], cls: type[Any]) -> MethodConfig:
    """The ``cls`` config of a ``run.json`` ``distill_config`` record, typed (``method_config``) or untyped (older).

    Raises :class:`AvretError` for settings ``cls`` does not have (in a typed record).
    """
    method = record.get("method")
    typed = record.get("method_config")
    if isinstance(typed, dict):
        given = dict(typed)
    else:  # before typed configs: top-level weight / kd_temperature / step-2 keys, plus an options dict
        flat = {k: v for k, v in record.items() if k in ("weight", "kd_temperature", "student_target",
                                                         "relevance_loss")}
        flat.update(record.get("options") or {})
        given = {}
        for key, value in flat.items():
            for owner, name in _LEGACY_KEYS.get(key, ()):
                if owner is cls and value is not None:
                    given[name] = value
    unknown = sorted(set(given) - set(field_names(cls)))
    if unknown:
        raise AvretError(f"distill_config: method '{method}' has no setting '{unknown[0]}'; "
                         f"expected some of {', '.join(field_names(cls)) or '(none)'}")
    return cls(**given)
