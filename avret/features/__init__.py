"""Media ingest: audio/video files -> VGGish audio features and CLIP (or Inception-v3) frame embeddings.

Modules: ``decode`` (PyAV decoding, one file at a time), ``vggish_frontend`` (the reference log-mel
front end), ``vggish`` (the network, torchvggish layout), ``clip_frames`` (the open_clip image tower,
loaded by :mod:`avret.models.clip`), ``inception`` (optional torchvision Inception-v3), ``encoders``
(the models of a run and their cache), ``shards`` (resumable shards and the final folder),
``extract`` (the batched extraction pipeline, and media queries). See ``docs/features.md``.
"""

from avret.features.extract import (
    ExtractConfig,
    ExtractReport,
    embed_query_media,
    extract_features,
    list_media,
    load_extract_config,
)

__all__ = [
    "ExtractConfig",
    "ExtractReport",
    "embed_query_media",
    "extract_features",
    "list_media",
    "load_extract_config",
]
