"""Build gallery indexes from a retrieval model and a data set.

``avret index build`` embeds the chosen clips with the model's towers and writes an index root
holding one sub-index per gallery modality (``ROOT/visual/`` for audio→video search,
``ROOT/audio/`` for video→audio). The whole root is written atomically. ``factory="auto"`` chooses
the index for the gallery size and ``max_memory`` (checked before anything is embedded) and
``shards`` builds it in parallel slices (:mod:`avret.index.autoindex`), working inside the root's
temporary directory so the shards and on-disk lists are written on the disk the index goes to.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np

from avret.data.dataset import AVDataset
from avret.data.registry import dataset_ref
from avret.errors import AvretError, DataError, ModelError
from avret.index.autoindex import BudgetTooSmall, choose_factory, parse_size
from avret.index.searcher import MEDIA_FILE, media_table
from avret.index.store import AVIndex
from avret.models.base import Embedder
from avret.utils.atomic import INDEX_KIND, atomic_dir, check_output, mark_output, write_json


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
    max_memory: int | str | None = None,
    target_recall: float | None = None,
    shards: int | None = 1,
    workers: int | None = None,
    precision: str = "fp32",
    best_effort: bool = False,
) -> dict[str, AVIndex]:
    """Embed ``dataset``'s ``split`` with ``model`` and write one index per modality under ``out``.

    ``out`` may only replace an earlier index root unless ``overwrite``, and never the model it reads.
    ``max_memory``, ``target_recall``, ``shards`` (None: by size), ``workers`` and ``best_effort``: see
    :meth:`AVIndex.build` (without ``best_effort`` a budget no candidate reaches the target within is refused
    before anything is written).
    """
    check_build_options(factory, max_memory, target_recall, shards, workers, best_effort)
    check_output(out, INDEX_KIND, overwrite=overwrite,
                 reads=(model.path.parent if model.path and Path(model.path).name == "model" else model.path,))
    gallery = dataset.subset(split)
    if len(gallery) == 0:
        raise DataError(f"{dataset.name}: split '{split}' has no clips to index")
    if factory == "auto":  # a budget too small for this gallery is refused before anything is embedded
        try:
            choose_factory(len(gallery), model.embed_dim, None if max_memory is None else parse_size(max_memory))
        except BudgetTooSmall:
            pass  # refused after embedding, naming the smallest budget measured on the vectors (AVIndex.build)
    built: dict[str, AVIndex] = {}
    with atomic_dir(out) as tmp:
        mark_output(tmp, INDEX_KIND)
        work = tmp / ".work"
        work.mkdir()
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
                dataset=dataset_ref(dataset), factory=factory, device=device, max_memory=max_memory,
                target_recall=target_recall, shards=shards, workers=workers, workdir=work, progress=progress,
                precision=precision,
                best_effort=best_effort,
            )
            index.save(tmp / modality)
            built[modality] = index
        shutil.rmtree(work)  # what a built index still maps stays readable until it is closed
        table = media_table(list(map(str, gallery.clip_ids)), clip_media_paths(gallery), features_dir_of(dataset))
        if table:
            write_json(tmp / MEDIA_FILE, table)
    return built


def check_build_options(factory: str, max_memory: int | str | None, target_recall: float | None,
                        shards: int | None, workers: int | None, best_effort: bool = False) -> None:
    """Refuse bad ``index build`` options in one line (:class:`AvretError`) before any work is done."""
    if "idmap" in factory.lower() or "idmap" in factory.replace(" ", "").lower():
        raise AvretError(f"--factory {factory}: an IDMap takes ids of its own; avret keeps the clip ids itself "
                         "(use the factory without IDMap, e.g. Flat, IVF256,Flat or HNSW32)")
    if factory != "auto" and (max_memory is not None or target_recall is not None or best_effort):
        raise AvretError(f"--max-memory, --target-recall and --best-effort need --factory auto "
                         f"(got --factory {factory})")
    if max_memory is not None:
        parse_size(max_memory)
    if target_recall is not None and not 0 < target_recall <= 1:
        raise AvretError(f"--target-recall {target_recall}: expected a recall in (0, 1]")
    if shards is not None and shards < 1:
        raise AvretError(f"--shards {shards}: expected at least 1 (or leave it out: one shard per million clips)")
    if workers is not None and workers < 1:
        raise AvretError(f"--workers {workers}: expected at least 1")


def clip_media_paths(dataset: AVDataset) -> list[str | None]:
    """Each clip's media file when the data set knows it (folders written by ``features extract``)."""
    media = getattr(dataset, "media", None)
    return [None] * len(dataset) if media is None else [str(m) if m else None for m in media]


def features_dir_of(dataset: AVDataset) -> Path | None:
    """The features directory a folder data set came from (its extract_config.json serves media queries)."""
    src = Path(dataset.source) if getattr(dataset, "source", None) else None
    return src if src is not None and (src / "extract_config.json").is_file() else None
