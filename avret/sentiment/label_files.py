"""Reading sentiment data sets in the MMSA ``label.csv`` layout (CMU-MOSI, CMU-MOSEI).

MMSA ships one ``label.csv`` per data set with a transcript, a regression label in [-3, 3] and a
split per utterance. Two variants exist in the wild and both are read here:

* ``id,text,label,mode`` (one id column), and
* ``video_id,clip_id,text,label,...,mode`` (the id is ``f"{video_id}_{clip_id}"``).

Split names ``train``, ``dev`` (or ``valid``/``val``, normalised to ``dev``) and ``test`` are
accepted. Every bad row is a :class:`~avret.errors.DataError` naming the file, the line number
and the field, so a user can fix the file instead of reading a traceback.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from avret.data.locations import shared_data_dir, where_from
from avret.errors import DataError
from avret.utils.csvfile import csv_errors, require_regular_file

SPLITS = ("train", "dev", "test")
SPLIT_ALIASES = {"train": "train", "dev": "dev", "valid": "dev", "val": "dev", "validation": "dev",
                 "test": "test"}
LABEL_MIN, LABEL_MAX = -3.0, 3.0
DATASETS = ("mosi", "mosei")


LABEL_CSV = "a UTF-8 MMSA label.csv (id,text,label,mode)"
SCORES_CSV = "a UTF-8 teacher score CSV: id,score"

@dataclass(frozen=True)
class SentimentExample:
    """One utterance: unique id, transcript, regression label in [-3, 3], split train/dev/test."""

    id: str
    text: str
    label: float
    split: str


def default_data_path(dataset: str = "mosi") -> Path:
    """The shared copy of a data set's ``label.csv``: ``<shared data>/<dataset>/label.csv``
    (:func:`avret.data.locations.shared_data_dir`: ``$AVRET_DATA`` or ``../shared/data`` from the working directory)."""
    return shared_data_dir() / dataset / "label.csv"


def resolve_label_csv(data: str | Path | None, dataset: str = "mosi") -> Path:
    """Turn a user path (a ``label.csv`` or a folder holding one; None = shared default) into a file."""
    path = default_data_path(dataset) if data is None else Path(data).expanduser()
    if path.is_dir():
        path = path / "label.csv"
    if not path.is_file():
        how = "" if data is not None else f" (the default: {where_from()}; or pass --data)"
        raise DataError(f"{path}: no such file{how}; expected an MMSA label.csv with columns "
                        "id|video_id,clip_id, text, label, mode")
    return path


def load_label_csv(path: str | Path) -> list[SentimentExample]:
    """Read an MMSA ``label.csv`` into examples, validating every row.

    Raises:
        DataError: missing file or column, a row without text, a label that is not a number in
            [-3, 3], an unknown split, or a duplicate id, naming the file, line and field.
    """
    path = require_regular_file(path, LABEL_CSV)
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    with fh:
        with csv_errors(path, LABEL_CSV):
            return _read_label_rows(path, fh)


def _read_label_rows(path: Path, fh) -> list[SentimentExample]:
    """The body of :func:`load_label_csv` once the file is open."""
    reader = csv.DictReader(fh)
    fields = [f.strip() for f in (reader.fieldnames or [])]
    reader.fieldnames = fields
    if "id" in fields:
        id_cols: tuple[str, ...] = ("id",)
    elif "video_id" in fields and "clip_id" in fields:
        id_cols = ("video_id", "clip_id")
    else:
        raise DataError(f"{path}: header {fields or '(empty)'} has no 'id' column and no "
                        "'video_id,clip_id' columns (expected the MMSA label.csv layout)")
    for col in ("text", "label", "mode"):
        if col not in fields:
            raise DataError(f"{path}: header {fields} has no '{col}' column "
                            "(expected the MMSA label.csv layout: id,text,label,mode)")
    examples: list[SentimentExample] = []
    seen: dict[str, int] = {}
    with csv_errors(path, LABEL_CSV, lambda: reader.line_num):
        for row in reader:
            line = reader.line_num
            if None in row:
                raise DataError(f"{path}: line {line}: more fields than the header's {len(fields)}")
            values = [row.get(c) for c in id_cols]
            if any(v is None or not v.strip() for v in values):
                missing = [c for c, v in zip(id_cols, values, strict=True) if v is None or not v.strip()]
                raise DataError(f"{path}: line {line}: field '{missing[0]}' is empty (expected an id)")
            ex_id = "_".join(v.strip() for v in values if v is not None)
            text = row.get("text")
            if text is None or not text.strip():
                raise DataError(f"{path}: line {line}: field 'text' is empty (expected a transcript)")
            label = _parse_label(row.get("label"), path, line)
            raw_split = (row.get("mode") or "").strip()
            split = SPLIT_ALIASES.get(raw_split.lower())
            if split is None:
                raise DataError(f"{path}: line {line}: field 'mode' is {raw_split!r} "
                                "(expected train, dev|valid or test)")
            if ex_id in seen:
                raise DataError(f"{path}: line {line}: id {ex_id!r} repeats line {seen[ex_id]} "
                                "(expected unique ids)")
            seen[ex_id] = line
            examples.append(SentimentExample(ex_id, text.strip(), label, split))
    if not examples:
        raise DataError(f"{path}: no data rows (expected an MMSA label.csv with at least one row)")
    return examples


def _parse_label(raw: str | None, path: Path, line: int) -> float:
    try:
        value = float((raw or "").strip())
    except ValueError:
        raise DataError(f"{path}: line {line}: field 'label' is {raw!r} "
                        f"(expected a number in [{LABEL_MIN:g}, {LABEL_MAX:g}])") from None
    if not math.isfinite(value) or not LABEL_MIN <= value <= LABEL_MAX:
        raise DataError(f"{path}: line {line}: field 'label' is {raw!r} "
                        f"(expected a number in [{LABEL_MIN:g}, {LABEL_MAX:g}])")
    return value


def by_split(examples: Iterable[SentimentExample], split: str) -> list[SentimentExample]:
    """The examples of one split (``valid``/``val`` are accepted as ``dev``)."""
    want = SPLIT_ALIASES.get(split.lower())
    if want is None:
        raise DataError(f"unknown split {split!r} (expected train, dev|valid or test)")
    return [e for e in examples if e.split == want]


def require_splits(examples: Sequence[SentimentExample], path: str | Path,
                   splits: Sequence[str] = SPLITS) -> None:
    """Raise a DataError when one of ``splits`` has no rows (training needs train and dev)."""
    for s in splits:
        if not any(e.split == s for e in examples):
            raise DataError(f"{path}: no rows with mode '{s}' (expected train, dev|valid and test rows)")


def read_lines(path: str | Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file (``predict --file``)."""
    path = require_regular_file(path, "a UTF-8 text file, one text per line")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read as UTF-8 text ({exc})") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip()]


def read_teacher_scores(path: str | Path) -> dict[str, float]:
    """Read a teacher score file: CSV with header ``id,score`` (one finite float per id)."""
    path = require_regular_file(path, "a teacher score CSV: id,score")
    try:
        fh = open(path, newline="", encoding="utf-8-sig")
    except OSError as exc:
        raise DataError(f"{path}: cannot read teacher scores ({exc.strerror or exc})") from None
    scores: dict[str, float] = {}
    with fh:
        reader = csv.DictReader(fh)
        with csv_errors(path, SCORES_CSV):
            fields = [f.strip() for f in (reader.fieldnames or [])]
        reader.fieldnames = fields
        if "id" not in fields or "score" not in fields:
            raise DataError(f"{path}: header {fields or '(empty)'} lacks 'id' and 'score' "
                            "(expected a teacher score CSV: id,score)")
        with csv_errors(path, SCORES_CSV, lambda: reader.line_num):
            for row in reader:
                line = reader.line_num
                ex_id = (row.get("id") or "").strip()
                if not ex_id:
                    raise DataError(f"{path}: line {line}: field 'id' is empty (expected an utterance id)")
                raw = row.get("score")
                try:
                    value = float((raw or "").strip())
                except ValueError:
                    value = math.nan
                if not math.isfinite(value):
                    raise DataError(f"{path}: line {line}: field 'score' is {raw!r} "
                                    "(expected a finite number)")
                if ex_id in scores:
                    raise DataError(f"{path}: line {line}: id {ex_id!r} appears twice "
                                    "(expected one score per id)")
                scores[ex_id] = value
    if not scores:
        raise DataError(f"{path}: no teacher scores (expected rows id,score)")
    return scores


def check_teacher_coverage(scores: dict[str, float], examples: Sequence[SentimentExample],
                           source: str | Path) -> None:
    """Every train-split example must have a teacher score; name the first missing id."""
    train = [e for e in examples if e.split == "train"]
    missing = [e.id for e in train if e.id not in scores]
    if missing:
        raise DataError(f"{source}: no teacher score for train id {missing[0]!r} ({len(missing)} of "
                        f"{len(train)} train ids missing; expected id,score rows covering the train split)")


def write_teacher_scores(path: str | Path, scores: dict[str, float]) -> None:
    """Write ``id,score`` rows atomically (the format :func:`read_teacher_scores` reads)."""
    from avret.utils.atomic import atomic_file

    with atomic_file(path, "w") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["id", "score"])
        for k, v in scores.items():
            w.writerow([k, repr(float(v))])
