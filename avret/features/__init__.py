"""Media ingest: audio/video files -> VGGish audio features and CLIP (or Inception-v3) frame embeddings.

Modules: ``decode`` (PyAV decoding, one file at a time; audio streamed in bounded memory),
``vggish_frontend`` (the reference log-mel front end), ``vggish`` (the network, torchvggish layout),
``clip_frames`` (the open_clip image tower, loaded by :mod:`avret.models.clip`), ``inception``
(optional torchvision Inception-v3), ``encoders`` (the models of a run and their cache), ``shards``
(resumable shards and the final folder), ``extract`` (the batched extraction pipeline, and media
queries). See ``docs/features.md``.

The names below are imported on first use, so ``import avret.features.shards`` (or ``decode``)
does not pull in the whole pipeline.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = [
    "QUERY_MAX_SECONDS",
    "ExtractConfig",
    "ExtractReport",
    "embed_query_media",
    "extract_features",
    "list_media",
    "load_extract_config",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("avret.features.extract"), name)
    raise AttributeError(f"module 'avret.features' has no attribute {name!r}")
