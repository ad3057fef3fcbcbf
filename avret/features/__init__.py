"""Media ingest: audio/video files -> VGGish audio features and CLIP (or Inception-v3) frame embeddings.

Modules: ``decode`` (PyAV decoding), ``vggish_frontend`` (the reference log-mel front end),
``vggish`` (the network, torchvggish layout), ``clip_frames`` (open_clip image tower),
``inception`` (optional torchvision Inception-v3), ``extract`` (batched, resumable extraction into
the plain-folder layout, and media queries). See ``docs/features.md``.
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
