"""Build gallery indexes from a retrieval model and a data set.

``avret index build`` embeds the chosen clips with the model's towers and writes an index root
holding one sub-index per gallery modality (``ROOT/visual/`` for audio→video search,
``ROOT/audio/`` for video→audio). The whole root is written atomically.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from avret.data.dataset import AVDataset
from avret.data.registry import dataset_ref
from avret.errors import DataError
from avret.index.store import AVIndex
from avret.models.base import Embedder
from avret.utils.atomic import INDEX_MARKERS, atomic_dir, check_output

GALLERY_FOR = {"audio-to-video": "visual", "video-to-audio": "audio"}
QUERY_FOR = {"audio-to-video": "audio", "video-to-audio": "visual"}


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
            index = AVIndex.build(
                emb, gallery.clip_ids, gallery.labels, gallery.class_names,
                modality=modality, model_fingerprint=model.fingerprint(),
                model_path=str(Path(model.path).resolve()) if model.path else None,
                dataset=dataset_ref(dataset), factory=factory, device=device,
            )
            index.save(tmp / modality)
            built[modality] = index
    return built
