"""The plain-folder layout: users' own features as ``.npy`` files plus a manifest CSV.

Layout (all arrays row-aligned with ``manifest.csv``)::

    DIR/
      manifest.csv          clip_id,label,split   (header required; label = class name, may be empty
                            for unlabelled clips; split = train|val|test, may be empty -> test;
                            the label and split columns are optional)
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

from avret.data.dataset import SPLITS, UNLABELLED, AVDataset
from avret.errors import DataError

MANIFEST = "manifest.csv"
ARRAYS = {"audio": "audio.npy", "visual": "visual.npy"}
TEACHER_FRAMES = "teacher_frames.npy"
TEACHER_MASK = "teacher_mask.npy"
CLASSES = "classes.txt"


def dequantize(array: np.ndarray) -> np.ndarray:
    """Community uint8 features to float32: ``(x - 128) / 256``; other dtypes cast to float32."""
    if array.dtype == np.uint8:
        return (array.astype(np.float32) - 128.0) / 256.0
    return array.astype(np.float32, copy=False)


def _load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    if not path.is_file():
        raise DataError(f"{path}: file not found; expected a .npy array (plain-folder layout)")
    try:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise DataError(f"{path}: not a readable .npy array ({exc})") from None


def read_manifest(path: Path) -> tuple[list[str], list[str], list[str]]:
    """Read ``clip_id,label,split`` rows; missing label/split columns become empty strings."""
    if not path.is_file():
        raise DataError(f"{path}: file not found; expected a manifest CSV with header clip_id,label,split")
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "clip_id" not in reader.fieldnames:
            raise DataError(f"{path}: header {reader.fieldnames} has no 'clip_id' column; expected clip_id,label,split")
        ids, labels, splits = [], [], []
        for lineno, row in enumerate(reader, start=2):
            cid = (row.get("clip_id") or "").strip()
            if not cid:
                raise DataError(f"{path}: line {lineno} has an empty clip_id")
            split = (row.get("split") or "").strip() or "test"
            if split == "valid" or split == "dev":
                split = "val"
            if split not in SPLITS:
                raise DataError(f"{path}: line {lineno} has split '{split}', expected one of {list(SPLITS)}")
            ids.append(cid)
            labels.append((row.get("label") or "").strip())
            splits.append(split)
    return ids, labels, splits


def load_folder(path: str | Path, name: str | None = None) -> AVDataset:
    """Load a plain-folder data set (see module docstring)."""
    root = Path(path)
    if not root.is_dir():
        raise DataError(f"{root}: directory not found; expected a folder with manifest.csv, audio.npy, visual.npy")
    ids, label_names, splits = read_manifest(root / MANIFEST)
    if (root / CLASSES).is_file():
        class_names = [ln.strip() for ln in (root / CLASSES).read_text(encoding="utf-8").splitlines() if ln.strip()]
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
        arr = _load_npy(root / fname)
        if arr.ndim != 2 or arr.shape[0] != len(ids):
            raise DataError(
                f"{root / fname}: shape {arr.shape}, expected ({len(ids)}, D) to match {MANIFEST} rows"
            )
        arrays[key] = dequantize(arr)
    frames = mask = None
    if (root / TEACHER_FRAMES).is_file():
        frames = dequantize(_load_npy(root / TEACHER_FRAMES))
        if frames.ndim != 3 or frames.shape[0] != len(ids):
            raise DataError(f"{root / TEACHER_FRAMES}: shape {frames.shape}, expected ({len(ids)}, T, D)")
        if (root / TEACHER_MASK).is_file():
            mask = _load_npy(root / TEACHER_MASK).astype(bool)
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
    )
