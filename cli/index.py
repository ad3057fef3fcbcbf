"""``avret index build``: embed a data set's clips and write gallery indexes."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import echo_json, require_int, user_errors
from .options import (
    DEMO_INDEX,
    DEMO_MODEL,
    DataOpt,
    ModelDatasetOpt,
    OverwriteOpt,
    SynthClipsOpt,
    SynthSeedOpt,
    dataset_of_models,
    default_path,
    inputs,
    open_dataset,
)
from .progress import status

app = typer.Typer(help="Build gallery indexes.", no_args_is_help=True)


@app.command("build")
@user_errors
def build(
    model: Path | None = typer.Option(None, "--model", help="Run or model directory [default: runs/demo/videoadviser, "
                                      "the model `make demo` distils]"),
    out: Path = typer.Option(DEMO_INDEX, "--out", help="Index root directory to write"),
    dataset: str | None = ModelDatasetOpt,
    data: Path | None = DataOpt,
    synth_clips: int | None = SynthClipsOpt,
    synth_seed: int | None = SynthSeedOpt,
    split: str = typer.Option("all", "--split", help="Clips to index: all | train | val | test"),
    modality: str = typer.Option("both", "--modality", help="Gallery modality: both | visual | audio"),
    factory: str = typer.Option("Flat", "--factory",
                                help="FAISS factory string (inner product), or 'auto': chosen for the gallery "
                                     "size and --max-memory, nprobe tuned to --target-recall"),
    max_memory: str | None = typer.Option(None, "--max-memory",
                                          help="With --factory auto: RAM the index may take when searched "
                                               "(e.g. 512MB, 4GB; powers of 1024)"),
    target_recall: float | None = typer.Option(None, "--target-recall",
                                               help="With --factory auto: recall@10 nprobe is tuned to on a "
                                                    "held-out sample (default 0.95)"),
    shards: int | None = typer.Option(None, "--shards",
                                      help="Build in this many slices in parallel and merge them into one index "
                                           "(IVF lists on disk); default one per million clips"),
    workers: int | None = typer.Option(None, "--workers", help="Shards built at once (default: CPU count)"),
    best_effort: bool = typer.Option(False, "--best-effort",
                                     help="With --factory auto: when no index within --max-memory reaches "
                                          "--target-recall, build the best one measured instead of refusing"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda | torch-cpu | torch-cuda (docs/gpu.md)"),
    precision: str = typer.Option("fp32", "--precision", help="Torch backend's gallery scan: fp32 | bf16 | fp16 "
                                  "(answers are float32-exact in all)"),
    overwrite: bool = OverwriteOpt,
) -> None:
    """Embed the chosen clips with the model's towers and index them (exact inner product by default)."""
    from avret.index.build import build_indexes, check_build_options
    from avret.io import load_model
    from avret.models.base import require_embedder
    from avret.utils.atomic import INDEX_KIND, check_output

    modalities = {"both": ("visual", "audio"), "visual": ("visual",), "audio": ("audio",)}
    if modality not in modalities:
        raise typer.BadParameter(f"--modality {modality}: expected both, visual or audio")
    check_build_options(factory, max_memory, target_recall, shards, workers, best_effort)
    model = default_path(model, DEMO_MODEL, "model")
    embedder = require_embedder(load_model(model), model)
    check_output(out, INDEX_KIND, overwrite=overwrite, reads=(model, *inputs(dataset, data)))  # before any work
    ds = open_dataset(dataset_of_models(dataset, [model], synth_clips, synth_seed), data, synth_clips, synth_seed)
    status(ds.describe())
    built = build_indexes(embedder, ds, out, split=split, modalities=modalities[modality],
                          factory=factory, device=device, progress=status, overwrite=overwrite,
                          max_memory=max_memory, target_recall=target_recall, shards=shards, workers=workers,
                          precision=precision, best_effort=best_effort)
    for mod, index in built.items():
        m = index.manifest
        typer.echo(f"wrote {out / mod}: {index.count} {mod} clips, dim {index.dim}, factory {m.factory}"
                   f"{f' in {m.shards} shards' if m.shards > 1 else ''} (built on device {index.device}, "
                   f"backend {index.backend} {index.precision})")
        if m.auto is not None:
            typer.echo(f"  auto: {m.auto['reason']}")
        if m.build is not None:
            typer.echo(f"  built in {m.build['seconds']:.1f} s ({m.build['seconds_per_million']:.1f} s per million "
                       "vectors; choosing and tuning included)")
        if m.tuning is not None:
            t = m.tuning
            met = "" if t["target_met"] else f" (target {t['target_recall']} not reachable with this index)"
            rerank = f", exact re-rank of the top {t['k']}x{t['k_factor']}" if t.get("k_factor", 1) > 1 else ""
            probe = "no lists" if t["nprobe"] is None else f"nprobe {t['nprobe']}"
            typer.echo(f"  {probe}{rerank}: recall@{t['k']} {t['recall']:.3f} on {t['sample_size']} "
                       f"held-out clips{met}")


@app.command("info")
@user_errors
def info(
    index: Path | None = typer.Argument(None, help="Index root [default: runs/demo/index, written by `make demo`]"),
    sample: int = typer.Option(10, "--sample", help="How many clip ids to show (the first ones)"),
    as_json: bool = typer.Option(False, "--json", help="Print JSON"),
) -> None:
    """What an index holds: counts, dims, factory, classes (with clip counts), model, measured recall, clip ids."""
    from collections import Counter

    from avret.index.searcher import Searcher

    require_int(sample, "--sample", minimum=0)
    root = default_path(index, DEMO_INDEX, "index")
    searcher = Searcher(root)
    out = searcher.info()
    out.pop("versions", None)
    first = next(iter(searcher.indexes.values()))
    names = searcher.class_names
    counts = Counter(int(x) for x in first.labels.tolist())
    out["class_counts"] = {names[c] if 0 <= c < len(names) else str(c): n for c, n in sorted(counts.items())}
    out["clip_ids"] = [str(c) for c in first.clip_ids[:sample].tolist()]
    for modality, ix in searcher.indexes.items():
        m = ix.manifest
        out["indexes"][modality].update(shards=m.shards, auto=m.auto, tuning=m.tuning, build=m.build)
    if as_json:
        echo_json(out)
        return
    synth = " (SYNTHETIC data)" if out["synthetic"] else ""
    typer.echo(f"index {root}: data set {out['dataset']}{synth}; model {out['model']['path']} "
               f"({out['model']['fingerprint'][:12]})")
    for modality, v in out["indexes"].items():
        line = f"  {modality}: {v['count']} clips, dim {v['dim']}, factory {v['factory']}"
        if v["tuning"]:
            t = v["tuning"]
            line += f", recall@{t['k']} {t['recall']:.3f} (target {t['target_recall']}" + \
                ("" if t["target_met"] else ", not met") + ")"
        if v["build"]:
            line += f", built in {v['build']['seconds']:.1f} s ({v['build']['seconds_per_million']:.1f} s per million)"
        typer.echo(line)
    typer.echo(f"  directions: {', '.join(out['directions'])}")
    typer.echo(f"  classes ({len(out['class_counts'])}): "
               + ", ".join(f"{c} ({n})" for c, n in out["class_counts"].items()))
    typer.echo(f"  media: {out['media']['clips']} clips with files; media queries "
               + ("accepted" if out["media"]["queries"] else "not available (no features directory recorded)"))
    if out["clip_ids"]:
        more = f" ... ({first.count} in all)" if first.count > len(out["clip_ids"]) else ""
        typer.echo(f"  clip ids: {', '.join(out['clip_ids'])}{more}")


@app.command("add")
@user_errors
def add(
    index: Path = typer.Option(..., "--index", help="Index root to grow (written by avret index build)"),
    features: Path | None = typer.Option(None, "--features", help="Features folder (avret features extract) whose "
                                         "clips to add"),
    dataset: str | None = typer.Option(None, "--dataset", help="Data set whose clips to add (vegas-synth | vegas | "
                                       "ave | a path); default: the one the index was built from"),
    data: Path | None = DataOpt,
    synth_clips: int | None = SynthClipsOpt,
    synth_seed: int | None = SynthSeedOpt,
    split: str = typer.Option("all", "--split", help="Clips to add: all | train | val | test"),
    model: Path | None = typer.Option(None, "--model", help="Model that embeds them [default: the one recorded in "
                                      "the index; it must be the model the index was built with]"),
) -> None:
    """Add clips to an index without a rebuild (rows appended; clip ids must be new); one atomic commit."""
    from avret.index.update import add_clips, open_root

    if features is not None and dataset is not None:
        raise typer.BadParameter("--features and --dataset: give one of them")
    first = next(iter(open_root(index).values())).manifest
    name = str(features) if features is not None else dataset or first.dataset or "vegas-synth"
    ds = open_dataset(name, data, synth_clips, synth_seed)
    status(f"embedding the {split} clips of {ds.name}")
    new, n_added = add_clips(index, ds, split, model=model)
    for m, ix in new.items():
        typer.echo(f"added {n_added} clips to {index / m}: {ix.count} in all")


@app.command("remove")
@user_errors
def remove(
    index: Path = typer.Option(..., "--index", help="Index root to shrink"),
    ids: Path = typer.Option(..., "--ids", help="Text file of clip ids to remove, one a line"),
) -> None:
    """Remove clips from an index without a rebuild (the rest keep their order); one atomic commit."""
    from avret.index.update import remove_ids

    try:
        wanted = [ln.strip() for ln in ids.read_text(encoding="utf-8").splitlines() if ln.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise typer.BadParameter(f"--ids {ids}: cannot read it as a text file of clip ids "
                                 f"({exc.__class__.__name__})") from None
    if not wanted:
        raise typer.BadParameter(f"--ids {ids}: no clip ids in it (one a line)")
    new = remove_ids(index, wanted)
    for m, ix in new.items():
        typer.echo(f"removed {len(set(wanted))} clips from {index / m}: {ix.count} left")
