"""Build gallery indexes from a retrieval model and a data set.

``avret index build`` embeds the chosen clips with the model's towers and writes an index root
holding one sub-index per gallery modality (``ROOT/visual/`` for audio→video search,
``ROOT/audio/`` for video→audio). The whole root is written atomically.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from avret.data.dataset import AVDataset
from avret.data.registry import dataset_ref
from avret.errors import DataError, ModelError
from avret.index.searcher import MEDIA_FILE, media_table
from avret.index.store import AVIndex
from avret.models.base import Embedder
from avret.utils.atomic import INDEX_MARKERS, atomic_dir, check_output, write_json


def build_indexes(
    model: Embedder,
    dataset: AVDataset,
    out: str | Path,
    *,
    split: str = "all",
    modalities: tuple[str, ...] = ("visual", "audio"),
    factory: str = "Flat",
    device: str = "auto",
    progress: Callable[[str], None] | None = None,
    overwrite: bool = False,
) -> dict[str, AVIndex]:
    """Embed ``dataset``'s ``split`` with ``model`` and write one index per modality under ``out``.

    ``out`` may only replace an earlier index root unless ``overwrite``, and never the model it reads.
    """
    check_output(out, "index root", INDEX_MARKERS, overwrite=overwrite,
                 reads=(model.path.parent if model.path and Path(model.path).name == "model" else model.path,))
    gallery = dataset.subset(split)
    if len(gallery) == 0:
        raise DataError(f"{dataset.name}: split '{split}' has no clips to index")
    built: dict[str, AVIndex] = {}
    with atomic_dir(out) as tmp:
        for modality in modalities:
            if progress is not None:
                progress(f"embedding {len(gallery)} {modality} clips")
            emb = model.embed(modality, gallery.features(modality))
            bad = ~np.isfinite(emb).all(axis=1)
            if bad.any():  # the features were checked finite: the weights are at fault
                raise ModelError(f"{model.path}: the model turns finite {modality} features into NaN or inf "
                                 f"embeddings (clip {str(gallery.clip_ids[int(np.flatnonzero(bad)[0])])!r}); "
                                 "expected finite weights that do not overflow")
            index = AVIndex.build(
                emb, gallery.clip_ids, gallery.labels, gallery.class_names,
                modality=modality, model_fingerprint=model.fingerprint(),
                model_path=str(Path(model.path).resolve()) if model.path else None,
                dataset=dataset_ref(dataset), factory=factory, device=device,
            )
            index.save(tmp / modality)
            built[modality] = index
        table = media_table(list(map(str, gallery.clip_ids)), _media_paths(gallery), _features_dir(dataset))
        if table:
            write_json(tmp / MEDIA_FILE, table)
    return built


def _media_paths(dataset: AVDataset) -> list[str | None]:
    """Each clip's media file when the data set knows it (folders written by ``features extract``)."""
    media = getattr(dataset, "media", None)
    return [None] * len(dataset) if media is None else [str(m) if m else None for m in media]


def _features_dir(dataset: AVDataset) -> Path | None:
    """The features directory a folder data set came from (its extract_config.json serves media queries)."""
    src = Path(dataset.source) if getattr(dataset, "source", None) else None
    return src if src is not None and (src / "extract_config.json").is_file() else None
