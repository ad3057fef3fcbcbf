"""avret: audio-visual retrieval with multimodal knowledge distillation.

The front door for notebooks and scripts. Every name below is imported on first use, so
``import avret`` costs no torch or faiss import (the functions are ``train_model`` and
``distill_model``, not ``train``/``distill``: those names are avret's subpackages)::

    import avret
    run = avret.train_model("vegas-synth", "runs/towers")
    index = avret.build_index(run, "runs/index")
    index.search_clip_ids("audio-to-video", ["synth_000042"], k=5)
    avret.evaluate(run).mean_map
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> (module, attribute)
_LAZY: dict[str, tuple[str, str]] = {
    # data and models
    "load_dataset": ("avret.data.registry", "load_dataset"),
    "load_model": ("avret.io", "load_model"),
    "AVDataset": ("avret.data.dataset", "AVDataset"),
    "SynthConfig": ("avret.data.synth", "SynthConfig"),
    # training and distillation
    "train_model": ("avret.api", "train_model"),
    "distill_model": ("avret.api", "distill_model"),
    "TrainConfig": ("avret.train.tower_training", "TrainConfig"),
    "DistillConfig": ("avret.distill.pipeline", "DistillConfig"),
    # indexes and search
    "build_index": ("avret.api", "build_index"),
    "open_index": ("avret.api", "open_index"),
    "Searcher": ("avret.index.searcher", "Searcher"),
    # evaluation
    "evaluate": ("avret.api", "evaluate"),
    # features from media
    "extract_features": ("avret.api", "extract_features"),
    "embed_media": ("avret.api", "embed_media"),
    "ExtractConfig": ("avret.features.extract", "ExtractConfig"),
    # errors
    "AvretError": ("avret.errors", "AvretError"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'avret' has no attribute '{name}'") from None
    value = getattr(import_module(module), attr)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from avret.api import (
        build_index,
        distill_model,
        embed_media,
        evaluate,
        extract_features,
        open_index,
        train_model,
    )
    from avret.data.dataset import AVDataset
    from avret.data.registry import load_dataset
    from avret.data.synth import SynthConfig
    from avret.distill.pipeline import DistillConfig
    from avret.errors import AvretError
    from avret.features.extract import ExtractConfig
    from avret.index.searcher import Searcher
    from avret.io import load_model
    from avret.train.tower_training import TrainConfig
