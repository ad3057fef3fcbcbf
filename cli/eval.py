"""``avret eval``: audio→visual, visual→audio and mean mAP, plus per-class AP, P@k and mAP@R."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import user_errors
from .options import DEMO_MODEL, DataOpt, SynthClipsOpt, SynthSeedOpt, dataset_of_models, default_path, open_dataset
from .progress import flush_status, progress_bar, result, status


@user_errors
def evaluate(
    dataset: str | None = typer.Option(None, "--dataset",
                                       help="vegas-synth | vegas | ave | mosi | mosei | a path (.h5 or folder); "
                                       "default: the data set the first --model run was trained on"),
    data: Path | None = DataOpt,
    model: list[Path] = typer.Option([], "--model", help="Run/model directories (repeatable) "
                                     "[default: runs/demo/videoadviser, the model `make demo` distils]"),
    split: str = typer.Option("test", "--split"),
    synth_clips: int | None = SynthClipsOpt,
    synth_seed: int | None = SynthSeedOpt,
    details: bool = typer.Option(False, "--details", help="Per-class AP, P@k and mAP@R (and, in --json-out, "
                                 "every query's AP with the query ids)"),
    json_out: Path | None = typer.Option(None, "--json-out", help="Write all metrics as JSON here (a new file or "
                                         "an earlier eval report; another file only with --overwrite)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --json-out even if it is not an earlier "
                                   "eval report (never a symlink, a FIFO/device or a file inside a --model)"),
    report: Path | None = typer.Option(None, "--report", help="Write an HTML report with plots into this directory "
                                       "(precision-recall, per-class AP, confusions, best/worst queries)"),
    compare: tuple[Path, Path] | None = typer.Option(None, "--compare", help="Two runs A B to put side by side "
                                                     "(instead of --model; with --report: per-class gain)"),
    device: str = typer.Option("auto", "--device", help="Where the score matrix is ranked: auto (a CUDA GPU when "
                               "torch sees one) | cpu | cuda | torch-cpu; the metrics are the same (docs/gpu.md)"),
) -> None:
    """Evaluate cross-modal retrieval: every test clip of one modality queries all of the other."""
    from avret.eval.report import format_details, format_map_table
    from avret.eval.retrieval import torch_device
    from avret.experiment import evaluate_paths
    from avret.io import RUN_FILE, load_model, read_run
    from avret.utils.atomic import REPORT_KIND, check_report_out, write_json

    if compare and all(c is not None for c in compare):
        if model:
            raise typer.BadParameter("give either --model (repeatable) or --compare A B, not both")
        model = list(compare)
    if report is not None:
        from avret.eval.html_report import REPORT_FILE
        from avret.utils.atomic import check_output

        if dataset in ("mosi", "mosei"):
            raise typer.BadParameter(f"--report: not available for --dataset {dataset}")
        # Only an earlier report (or a new or empty directory) may be replaced, so a model or run
        # directory never is; a report may live inside the run it reports (RUN/report, where
        # avret serve looks for it), which changes nothing of that run's files.
        check_output(report, "evaluation report", (REPORT_FILE,))
    kept: list | None = [] if report is not None else None
    if json_out is not None:  # before any work: never a model's file, a user's file, a symlink or a FIFO
        check_report_out(json_out, overwrite=overwrite,
                         reads=tuple(model) or (default_path(None, DEMO_MODEL, "model"),))
    if dataset in ("mosi", "mosei"):
        from .sentiment import eval_dataset_command

        if data is None or not model:
            raise typer.BadParameter(f"--dataset {dataset} needs --data PATH and --model RUN")
        eval_dataset_command(dataset, data, model[0], json_out, overwrite)
        return
    model = model or [default_path(None, DEMO_MODEL, "model")]  # evaluating never trains: train does
    for m in model:  # a broken model or run.json is a one-line error before any data is read or progress shown
        load_model(m)
        if (m / RUN_FILE).is_file():
            read_run(m)
    ranked_on = torch_device(device) or "cpu"  # a bad --device is refused before any data is read
    ds = open_dataset(dataset_of_models(dataset, model, synth_clips, synth_seed), data, synth_clips, synth_seed)
    status(ds.describe())
    with progress_bar("eval queries") as update:
        rows = evaluate_paths(model, ds, split, progress=lambda d, n: update(d, n), keep=kept, device=device)
    flush_status()
    title = (f"{ds.name} {split} split: {int((ds.split == split).sum())} clips per modality "
             f"(ranked on device {ranked_on})")
    typer.echo(format_map_table(rows, title=title, synthetic=ds.synthetic))
    if details:
        for name, rep in rows.items():
            typer.echo(f"\n{name}\n{format_details(rep)}")
    if json_out is not None:
        record = {"kind": REPORT_KIND, "dataset": ds.name, "synthetic": ds.synthetic, "split": split,
                  "device": ranked_on,
                  "rows": {name: rep.to_dict(include_ap=details) for name, rep in rows.items()}}
        if details:  # the per-query AP lists ("ap") follow this order of query clip ids
            record["query_ids"] = ds.subset(split).clip_ids.tolist()
        write_json(json_out, record)
        result(f"wrote {json_out}")
    if report is not None and kept is not None:
        from avret.eval.html_report import ReportModel, write_report

        paths = [str(m) for m in model]
        entries = [ReportModel(name, path, rep, emb)
                   for (name, rep), path, emb in zip(rows.items(), paths, kept, strict=True)]
        status("drawing the report")
        write_report(report, entries, dataset=ds.name, split=split, synthetic=ds.synthetic, compare=bool(compare))
        result(f"wrote {report}/index.html")
