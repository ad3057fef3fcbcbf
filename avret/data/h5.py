"""Community VEGAS / AVE feature files (h5).

Two key layouts circulate:

* **single-table**: ``audio_feat`` (N, Da) or (N, T, Da), ``visual_feat`` (N, Dv) or (N, T, Dv),
  ``Label_ID`` (N,), (N, 1) or one-hot (N, C), ``Train_test`` (N,) split markers;
* **pre-split**: ``audio_train``, ``visual_train``, ``lab_train``, ``audio_test``, ``visual_test``,
  ``lab_test`` (and optionally ``*_val``).

Features with a time axis are mean-pooled over time (as the community features are); ``uint8``
features are de-quantised as ``(x - 128) / 256``. Label values are mapped to ``0..C-1`` in sorted
order. ``Train_test`` may hold strings (``train``/``val``/``test``) or integer codes; with integer
codes the test code is, by default, the *minority* code (the common VEGAS split is 5,621 test of
28,103) — pass ``test_code`` to say it explicitly. Optional keys ``clip_ids``/``video_id`` and
``class_names`` are used when present.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from avret.data.dataset import AVDataset, check_numeric
from avret.data.folder import dequantize
from avret.errors import DataError
from avret.utils.arrays import check_h5_dataset

VEGAS_CLASSES = [
    "baby_cry", "chainsaw", "dog", "drum", "fireworks",
    "helicopter", "printer", "rail_transport", "snoring", "water_flowing",
]

SINGLE_TABLE_KEYS = ("audio_feat", "visual_feat", "Label_ID", "Train_test")
PRESPLIT_SPLITS = {"train": "train", "val": "val", "test": "test"}


def _read(h5, key: str, path: Path) -> np.ndarray:
    """The array stored at ``key``; a group, a link to nowhere or an unreadable dataset is a DataError."""
    import h5py

    try:
        entry = h5[key]
        if not isinstance(entry, h5py.Dataset):
            raise DataError(f"{path}: key '{key}' is a {type(entry).__name__.lower()}; expected a dataset (array)")
        check_h5_dataset(entry, f"{path}: key '{key}'")  # a huge declared dataset: refused before reading
        return np.asarray(entry[()])
    except (KeyError, TypeError, ValueError, OSError, RuntimeError, RecursionError, MemoryError) as exc:
        raise DataError(f"{path}: key '{key}' is not a readable dataset ({type(exc).__name__})") from None


def _features(h5, key: str, path: Path) -> np.ndarray:
    arr = _read(h5, key, path)
    check_numeric(arr, f"{path}: key '{key}'")
    arr = dequantize(arr)
    if arr.ndim == 3:
        arr = arr.mean(axis=1)
    if arr.ndim != 2:
        raise DataError(f"{path}: key '{key}' has shape {arr.shape}, expected (N, D) or (N, T, D)")
    return arr


def _labels(h5, key: str, path: Path) -> np.ndarray:
    arr = _read(h5, key, path)
    if arr.ndim == 2 and arr.shape[1] > 1:
        check_numeric(arr, f"{path}: key '{key}' (one-hot labels)", kinds="biuf")
        return arr.argmax(axis=1)
    arr = arr.reshape(-1)
    if not np.issubdtype(arr.dtype, np.number):
        raise DataError(f"{path}: key '{key}' has dtype {arr.dtype}, expected integer class ids")
    if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
        raise DataError(f"{path}: key '{key}' has non-integer values, expected integer class ids")
    return arr.astype(np.int64)


def _decode(values: np.ndarray, path: Path | None = None, key: str = "") -> np.ndarray:
    try:
        return np.asarray([v.decode() if isinstance(v, bytes) else str(v) for v in values.reshape(-1)])
    except UnicodeDecodeError:
        raise DataError(f"{path}: key '{key}' is not UTF-8 text; expected strings") from None


def _text(h5, key: str, path: Path, n: int | None = None) -> np.ndarray:
    """A 1-d array of strings (``clip_ids``, ``class_names``), ``n`` long when given."""
    raw = _read(h5, key, path)
    if raw.ndim > 1 and raw.size != max(raw.shape, default=0):
        raise DataError(f"{path}: key '{key}' has shape {raw.shape}; expected (N,) strings")
    values = _decode(raw, path, key)
    if n is not None and len(values) != n:
        raise DataError(f"{path}: key '{key}' has {len(values)} entries, expected {n} (one per clip, as 'audio_feat')")
    return values


def _split_markers(raw: np.ndarray, path: Path, test_code: int | None) -> np.ndarray:
    raw = raw.reshape(-1)
    if raw.dtype.kind in "SUO":
        names = np.char.lower(np.char.strip(_decode(raw, path, "Train_test").astype(str)))
        names = np.where(np.isin(names, ["valid", "dev", "validation"]), "val", names)
        bad = set(np.unique(names).tolist()) - {"train", "val", "test"}
        if bad:
            raise DataError(f"{path}: key 'Train_test' has {sorted(bad)}, expected train/val/test")
        return names
    check_numeric(raw, f"{path}: key 'Train_test'", kinds="biuf")
    if not np.all(np.isfinite(raw)) or not np.all(raw == np.round(raw)):
        raise DataError(f"{path}: key 'Train_test' has non-integer values, expected integer split codes or names")
    codes = raw.astype(np.int64)
    uniq, counts = np.unique(codes, return_counts=True)
    if len(uniq) != 2:
        raise DataError(f"{path}: key 'Train_test' has codes {uniq.tolist()}, expected two (train and test)")
    if test_code is None:
        test_code = int(uniq[np.argmin(counts)])
    elif test_code not in uniq:
        raise DataError(f"{path}: test_code {test_code} is not among the 'Train_test' codes {uniq.tolist()}")
    return np.where(codes == test_code, "test", "train")


def _class_names(h5, n_classes: int, name: str, path: Path) -> list[str]:
    if "class_names" in h5:
        return _text(h5, "class_names", path).tolist()
    if name == "vegas" and n_classes == len(VEGAS_CLASSES):
        return list(VEGAS_CLASSES)
    return [f"class_{i}" for i in range(n_classes)]


def load_h5(path: str | Path, name: str | None = None, test_code: int | None = None) -> AVDataset:
    """Read a community h5 feature file in either key layout (see module docstring)."""
    import h5py

    path = Path(path)
    name = name or path.stem
    if not path.is_file():
        raise DataError(f"{path}: file not found; expected a community h5 feature file")
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise DataError(f"{path}: not a readable HDF5 file ({exc})") from None
    with h5:
        keys = set(h5.keys())
        if set(SINGLE_TABLE_KEYS[:3]) <= keys:
            audio = _features(h5, "audio_feat", path)
            visual = _features(h5, "visual_feat", path)
            raw_labels = _labels(h5, "Label_ID", path)
            if "Train_test" in keys:
                split = _split_markers(_read(h5, "Train_test", path), path, test_code)
            else:
                split = np.full(len(audio), "test")
            n = len(audio)
            for key, arr in (("visual_feat", visual), ("Label_ID", raw_labels), ("Train_test", split)):
                if len(arr) != n:
                    raise DataError(f"{path}: key '{key}' has {len(arr)} rows, expected {n} (as 'audio_feat')")
            ids = _text(h5, "clip_ids", path, n) if "clip_ids" in keys else None
        elif {"audio_train", "visual_train", "lab_train"} <= keys or {"audio_test", "visual_test"} <= keys:
            parts_a, parts_v, parts_l, parts_s, parts_id = [], [], [], [], []
            for suffix, split_name in PRESPLIT_SPLITS.items():
                if f"audio_{suffix}" not in keys:
                    continue
                for key in (f"visual_{suffix}", f"lab_{suffix}"):
                    if key not in keys:
                        raise DataError(f"{path}: key '{key}' is missing, expected beside 'audio_{suffix}'")
                a = _features(h5, f"audio_{suffix}", path)
                v = _features(h5, f"visual_{suffix}", path)
                lab = _labels(h5, f"lab_{suffix}", path)
                for key, arr in ((f"visual_{suffix}", v), (f"lab_{suffix}", lab)):
                    if len(arr) != len(a):
                        raise DataError(f"{path}: key '{key}' has {len(arr)} rows, expected {len(a)}")
                parts_a.append(a)
                parts_v.append(v)
                parts_l.append(lab)
                parts_s.append(np.full(len(a), split_name))
                parts_id.append(np.asarray([f"{split_name}_{i:05d}" for i in range(len(a))]))
            widths_a = {p.shape[1] for p in parts_a}
            widths_v = {p.shape[1] for p in parts_v}
            if len(widths_a) > 1 or len(widths_v) > 1:
                raise DataError(f"{path}: feature widths differ between splits (audio {widths_a}, visual {widths_v})")
            audio, visual = np.concatenate(parts_a), np.concatenate(parts_v)
            raw_labels, split = np.concatenate(parts_l), np.concatenate(parts_s)
            ids = np.concatenate(parts_id)
        else:
            raise DataError(
                f"{path}: keys {sorted(keys)[:8]} match no known layout; expected "
                "audio_feat/visual_feat/Label_ID/Train_test or audio_train/visual_train/lab_train/audio_test/..."
            )
        values = np.unique(raw_labels)
        labels = np.searchsorted(values, raw_labels)
        class_names = _class_names(h5, len(values), name, path)
        if len(class_names) != len(values):
            raise DataError(f"{path}: key 'class_names' has {len(class_names)} names, expected {len(values)}")
    if ids is None:
        ids = np.asarray([f"clip_{i:05d}" for i in range(len(audio))])
    return AVDataset(
        name=name,
        clip_ids=ids,
        labels=labels,
        class_names=class_names,
        audio=audio,
        visual=visual,
        split=split,
        source=str(path),
    )
