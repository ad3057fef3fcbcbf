"""The plain-folder layout: users' own features as ``.npy`` files plus a manifest CSV.

Layout (all arrays row-aligned with ``manifest.csv``)::

    DIR/
      manifest.csv          clip_id,label,split   (header required; label = class name, may be empty
                            for unlabelled clips; split = train|val|test, may be empty -> test;
                            the label and split columns are optional; an optional 4th column
                            ``media`` holds each clip's media file, as features extract writes it)
      audio.npy             (N, Da) float32/float16, or uint8 de-quantised as (x - 128) / 256
      visual.npy            (N, Dv) same rules
      teacher_frames.npy    optional (N, T, Dt) per-frame teacher-view embeddings (e.g. CLIP frames)
      teacher_mask.npy      optional (N, T) bool, True where a frame exists (default: all True)
      classes.txt           optional class order, one name per line (default: sorted label names)

``avret features extract`` writes this layout, and ``index build``, ``eval`` and ``distill`` read it.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from avret.data.dataset import SPLITS, UNLABELLED, AVDataset, check_numeric
from avret.errors import DataError
from avret.utils.arrays import check_npy_file
from avret.utils.atomic import recover_commits
from avret.utils.csvfile import csv_errors

MANIFEST = "manifest.csv"
ARRAYS = {"audio": "audio.npy", "visual": "visual.npy"}
TEACHER_FRAMES = "teacher_frames.npy"
TEACHER_MASK = "teacher_mask.npy"
CLASSES = "classes.txt"
MEDIA_COLUMN = "media"


def dequantize(array: np.ndarray) -> np.ndarray:
    """Community uint8 features to float32: ``(x - 128) / 256``; other dtypes cast to float32."""
    if array.dtype == np.uint8:
        return (array.astype(np.float32) - 128.0) / 256.0
    return array.astype(np.float32, copy=False)


def load_npy(path: Path, what: str = "a .npy array (plain-folder layout)", mmap: bool = False,
             kinds: str = "fiu") -> np.ndarray:
    """A numeric ``.npy`` array (never unpickled); one-line :class:`DataError` for anything else.

    Refused: a missing file, pickled objects, a file that is not ``.npy`` (or is truncated), and
    arrays of strings, complex numbers or records (dtype kinds outside ``kinds``).
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found; expected {what}")
    check_npy_file(path)  # a header claiming more than the file holds: refused before any allocation
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        reason = "it holds pickled objects" if "Object arrays" in str(exc) or "pickle" in str(exc) else \
            "not a .npy file, or truncated"
        raise DataError(f"{path}: not a readable .npy array ({reason}); expected {what}") from None
    check_numeric(arr, str(path), kinds)
    return arr


def _bad_clip_id(cid: str) -> str | None:
    """Why ``cid`` could never be queried (a comma splits ``--query a,b``; control characters), or None."""
    if "," in cid:
        return "a comma"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in cid):
        return "a newline or another control character"
    return None


def read_folder_manifest(path: Path) -> tuple[list[str], list[str], list[str]]:
    """Read ``clip_id,label,split`` rows; missing label/split columns become empty strings.

    UTF-8 (a byte-order mark is accepted). Refused with one line naming the file and line: other
    encodings, malformed CSV, more fields than the header, an empty clip id, a clip id holding a
    comma or a control character (it could never be queried), an unknown split.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found; expected a manifest CSV with header clip_id,label,split")
    ids, labels, splits = [], [], []
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        lineno, end = 1, 1
        with csv_errors(path, "a UTF-8 manifest CSV (clip_id,label,split)", lambda: lineno):
            if reader.fieldnames is None or "clip_id" not in reader.fieldnames:
                raise DataError(f"{path}: header {reader.fieldnames} has no 'clip_id' column; "
                                "expected clip_id,label,split")
            for row in reader:
                lineno, end = end + 1, reader.line_num  # the line the record starts on
                if None in row:
                    raise DataError(f"{path}: line {lineno} has more fields than the header's "
                                    f"{len(reader.fieldnames)}; quote a value that holds a comma")
                cid = (row.get("clip_id") or "").strip()
                if not cid:
                    raise DataError(f"{path}: line {lineno} has an empty clip_id")
                why = _bad_clip_id(cid)
                if why:
                    raise DataError(f"{path}: line {lineno} has clip_id {cid!r} holding {why}; "
                                    "expected ids without commas or control characters (they could not be queried)")
                split = (row.get("split") or "").strip() or "test"
                if split == "valid" or split == "dev":
                    split = "val"
                if split not in SPLITS:
                    raise DataError(f"{path}: line {lineno} has split '{split}', expected one of {list(SPLITS)}")
                label = (row.get("label") or "").strip()
                if _bad_clip_id(label.replace(",", "")):  # commas are fine in a class name, control characters not
                    raise DataError(f"{path}: line {lineno} has label {label!r} holding a control character (a NUL?); "
                                    "expected a printable class name")
                ids.append(cid)
                labels.append(label)
                splits.append(split)
    return ids, labels, splits


def read_media_column(path: Path) -> list[str] | None:
    """The optional ``media`` column of a manifest (each clip's media file, written by ``features extract``).

    Relative paths are taken relative to the manifest's folder; an empty cell means unknown.
    Returns None when the manifest has no such column. Call after :func:`read_folder_manifest` has checked the file.
    """
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or MEDIA_COLUMN not in reader.fieldnames:
            return None
        out = []
        for row in reader:
            cell = (row.get(MEDIA_COLUMN) or "").strip()
            out.append(str((path.parent / cell).resolve()) if cell else "")
    return out


def read_class_names(path: Path) -> list[str]:
    """``classes.txt``: one unique class name per non-empty line, UTF-8."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason}); expected one class name per line") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    names = [ln.strip() for ln in text.splitlines() if ln.strip()]
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(f"{path}: class '{name}' is listed twice; expected unique class names")
        seen.add(name)
    return names


def load_folder(path: str | Path, name: str | None = None) -> AVDataset:
    """Load a plain-folder data set (see module docstring)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: directory not found; expected a folder with manifest.csv, audio.npy, visual.npy")
    recover_commits(root)  # a features extract killed while installing its files: finish its commit
    ids, label_names, splits = read_folder_manifest(root / MANIFEST)
    if (root / CLASSES).is_file():
        class_names = read_class_names(root / CLASSES)
    else:
        class_names = sorted({lab for lab in label_names if lab})
    index = {c: i for i, c in enumerate(class_names)}
    labels = []
    for cid, lab in zip(ids, label_names, strict=True):
        if lab and lab not in index:
            raise DataError(f"{root / MANIFEST}: clip '{cid}' has label '{lab}', which is not in {root / CLASSES}")
        labels.append(index[lab] if lab else UNLABELLED)
    arrays = {}
    for key, fname in ARRAYS.items():
        arr = load_npy(root / fname)
        if arr.ndim != 2 or arr.shape[0] != len(ids):
            raise DataError(
                f"{root / fname}: shape {arr.shape}, expected ({len(ids)}, D) to match {MANIFEST} rows"
            )
        arrays[key] = dequantize(arr)
    frames = mask = None
    if (root / TEACHER_FRAMES).is_file():
        frames = dequantize(load_npy(root / TEACHER_FRAMES))
        if frames.ndim != 3 or frames.shape[0] != len(ids):
            raise DataError(f"{root / TEACHER_FRAMES}: shape {frames.shape}, expected ({len(ids)}, T, D)")
        if (root / TEACHER_MASK).is_file():
            mask = load_npy(root / TEACHER_MASK, kinds="biu").astype(bool)
    return AVDataset(
        name=name or root.name,
        clip_ids=np.asarray(ids),
        labels=np.asarray(labels),
        class_names=class_names,
        audio=arrays["audio"],
        visual=arrays["visual"],
        split=np.asarray(splits),
        teacher_frames=frames,
        teacher_mask=mask,
        source=str(root),
        media=read_media_column(root / MANIFEST),
    )
