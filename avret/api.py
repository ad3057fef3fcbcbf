"""The notebook-level functions behind ``import avret``: each accepts paths or objects and calls the library.

Every function here is a thin adapter over the one place that does the work (named in its docstring),
so the command line and Python reach the same code. ``avret/__init__.py`` exposes these names lazily:
``import avret`` imports neither torch nor faiss; the first call of a function does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - types only
    from avret.data.dataset import AVDataset
    from avret.distill.pipeline import DistillConfig
    from avret.eval.retrieval import CrossModalReport
    from avret.features.extract import ExtractConfig, ExtractReport
    from avret.index.searcher import Searcher
    from avret.train.tower_training import TrainConfig



def _dataset(dataset: AVDataset | str | Path, data: str | Path | None = None) -> AVDataset:
    from avret.data.dataset import AVDataset
    from avret.data.registry import load_dataset

    if isinstance(dataset, AVDataset):
        return dataset
    return load_dataset(str(dataset), data)


def _model(model: Any) -> Any:
    from avret.io import load_model

    return load_model(model) if isinstance(model, (str, Path)) else model


def train_model(
    dataset: AVDataset | str | Path,
    out: str | Path,
    *,
    model_type: str = "towers",
    config: TrainConfig | None = None,
    overwrite: bool = False,
) -> Path:
    """Train towers (or fit CCA, ``model_type="cca"``) on ``dataset``'s train split; write the run ``out``.

    ``dataset``: an :class:`~avret.data.dataset.AVDataset`, a name (``"vegas-synth"``) or a path (an
    ``.h5`` file or a features folder). Model selection uses a validation split carved from train.
    Same as ``avret train``; see :func:`avret.train.runs.train_run`. Returns the run directory.
    """
    from avret.train.runs import train_run

    return train_run(_dataset(dataset), out, model_type, config, overwrite=overwrite)


def distill_model(
    dataset: AVDataset | str | Path,
    out: str | Path,
    *,
    method: str = "videoadviser",
    config: DistillConfig | None = None,
    train_config: TrainConfig | None = None,
    overwrite: bool = False,
) -> Path:
    """Teacher → step 1 → step 2 into the towers with ``method``; write (or resume) the run ``out``.

    ``method``: ``none``, ``kd``, ``videoadviser``, ``msd`` or ``mi-kd``; ``config`` (a
    :class:`~avret.distill.pipeline.DistillConfig`) overrides the method's settings. Same as
    ``avret distill``; see :func:`avret.distill.pipeline.run_distillation`. Returns the run directory.
    """
    from dataclasses import replace

    from avret.distill.pipeline import DistillConfig, run_distillation

    cfg = replace(config, method=method) if config is not None else DistillConfig(method=method)
    return run_distillation(_dataset(dataset), out, cfg, train_config, overwrite=overwrite)


def build_index(
    model: Any,
    out: str | Path,
    *,
    dataset: AVDataset | str | Path | None = None,
    split: str = "all",
    factory: str = "Flat",
    overwrite: bool = False,
    **options: Any,
) -> Searcher:
    """Embed a data set with ``model`` (a run/model directory or a loaded model), index it under ``out``.

    ``dataset`` defaults to the one the model's run was trained on. ``options``: ``max_memory``,
    ``target_recall``, ``shards``, ``workers``, ``device`` (see
    :func:`avret.index.build.build_indexes`). Same as ``avret index build``. Returns the opened index.
    """
    from avret.index.build import build_indexes
    from avret.index.searcher import Searcher
    from avret.train.runs import recorded_dataset

    if dataset is None:
        recorded = recorded_dataset(model) if isinstance(model, (str, Path)) else None
        if recorded is None:
            from avret.errors import AvretError

            raise AvretError("build_index: pass dataset=...; the model's run records no data set")
        dataset = recorded
    build_indexes(_model(model), _dataset(dataset), out, split=split, factory=factory, overwrite=overwrite,
                  **options)
    return Searcher(out)


def open_index(root: str | Path, **options: Any) -> Searcher:
    """Open an index root written by ``avret index build`` once, for many searches.

    Returns a :class:`~avret.index.searcher.Searcher`: ``search_clip_ids``, ``search_features``,
    ``search_media`` (a wav/mp4 query: the features directory recorded at build time is used) and
    ``search``. ``options`` are the Searcher's (``model``, ``device``, ``features``, ``media_root``).
    """
    from avret.index.searcher import Searcher

    return Searcher(root, **options)


def evaluate(
    model: Any,
    dataset: AVDataset | str | Path | None = None,
    *,
    split: str = "test",
) -> CrossModalReport:
    """A→V, V→A and mean mAP (+ per-class AP, P@k, mAP@R) of ``model`` on ``dataset``'s ``split``.

    The field's protocol: every item of one modality queries the whole split of the other, cosine,
    relevant = same class, AP over the full ranking. ``dataset`` defaults to the model's own data set.
    Same as ``avret eval``; see :func:`avret.eval.evaluate.evaluate_model`.
    """
    from avret.eval.evaluate import evaluate_model
    from avret.train.runs import recorded_dataset

    if dataset is None:
        recorded = recorded_dataset(model) if isinstance(model, (str, Path)) else None
        if recorded is None:
            from avret.errors import AvretError

            raise AvretError("evaluate: pass dataset=...; the model's run records no data set")
        dataset = recorded
    return evaluate_model(_model(model), _dataset(dataset), split)


def extract_features(
    media: str | Path | Sequence[str | Path],
    out: str | Path,
    config: ExtractConfig | None = None,
    **settings: Any,
) -> ExtractReport:
    """Media files (or folders, or list files) → a features folder that every command reads as a data set.

    ``config`` or keyword ``settings`` (the fields of :class:`~avret.features.extract.ExtractConfig`,
    e.g. ``audio_encoder="logmel", visual_encoder="efficientnet-lite0"``). Resumable; bad files are
    listed in ``out/failures.json``. Same as ``avret features extract``.
    """
    from avret.features.extract import ExtractConfig
    from avret.features.extract import extract_features as run

    cfg = config if config is not None else ExtractConfig(**settings)
    cfg.validate()
    sources = [media] if isinstance(media, (str, Path)) else list(media)
    return run(sources, out, cfg)


def embed_media(path: str | Path, modality: str, features: str | Path | ExtractConfig) -> Any:
    """The clip-level feature vector of one media file, as ``features extract`` computes it for an index.

    ``modality``: ``"audio"`` or ``"visual"``; ``features``: the features directory (its
    ``extract_config.json`` names the encoders) or an ExtractConfig. Feed the result to a model's
    ``embed`` or to ``Searcher.search_features``. See :func:`avret.features.extract.embed_query_media`.
    """
    from avret.features.extract import embed_query_media

    return embed_query_media(path, modality, features)  # type: ignore[arg-type]
