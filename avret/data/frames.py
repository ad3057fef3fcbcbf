"""Pair a data set with per-frame teacher embeddings kept in another file.

The community VEGAS / AVE h5 files hold only the students' features (VGGish, Inception); the
VideoAdviser teacher needs per-frame CLIP embeddings of the same clips. They come from a separate
file, given as ``--frames PATH``:

* ``.npy``: ``(N, T, D)`` float array, one row per clip **in the data set's row order**;
* ``.npz`` or ``.h5``/``.hdf5``: key ``teacher_frames`` ``(N, T, D)``, optional ``teacher_mask``
  ``(N, T)`` (True where a frame exists) and optional ``clip_ids`` ``(N,)``: with ids the rows are
  matched by clip id (in any order; extra clips are ignored), without them by row order;
* a folder written by ``avret features extract`` (``manifest.csv`` + ``teacher_frames.npy`` [+
  ``teacher_mask.npy``]): matched by the manifest's clip ids.

Every clip of the data set needs frames; a clip without any (all-False mask) is allowed and gets
the teacher's uniform posterior.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from avret.data.dataset import AVDataset, check_finite, check_numeric
from avret.errors import DataError
from avret.utils.arrays import check_h5_dataset, check_npz_file

EXPECTED = ("expected a .npy (N, T, D) array, an .npz/.h5 file with key 'teacher_frames', "
            "or a folder from 'avret features extract'")


def _read(path: Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(frames, mask or None, clip ids or None) from ``path``."""
    from avret.data.folder import MANIFEST, TEACHER_FRAMES, TEACHER_MASK, load_npy, read_folder_manifest

    if path.is_dir():
        if not (path / TEACHER_FRAMES).is_file():
            raise DataError(f"{path}: folder has no {TEACHER_FRAMES}; {EXPECTED}")
        ids, _, _ = read_folder_manifest(path / MANIFEST)
        mask = load_npy(path / TEACHER_MASK, "a (N, T) bool mask", kinds="biu") \
            if (path / TEACHER_MASK).is_file() else None
        return load_npy(path / TEACHER_FRAMES, "an (N, T, D) array"), mask, np.asarray(ids)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return load_npy(path, "an (N, T, D) array of teacher frames"), None, None
    if suffix == ".npz":
        import zipfile

        check_npz_file(path)  # a member header claiming more than it holds: refused before any allocation
        try:
            with np.load(path, allow_pickle=False) as data:
                return _from_mapping(path, data, list(data.keys()))
        except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            reason = "it holds pickled objects" if "Object arrays" in str(exc) or "pickle" in str(exc) else \
                "not an .npz file, or truncated"
            raise DataError(f"{path}: not a readable .npz file ({reason}); {EXPECTED}") from None
    if suffix in (".h5", ".hdf5"):
        import h5py

        try:
            h5 = h5py.File(path, "r")
        except OSError as exc:
            raise DataError(f"{path}: not a readable HDF5 file ({exc})") from None
        with h5:
            return _from_mapping(path, h5, list(h5.keys()))
    raise DataError(f"{path}: unknown frame file type '{suffix}'; {EXPECTED}")


def _value(path: Path, data, key: str) -> np.ndarray:
    """``data[key]`` of an .npz or h5 file as an array; a group or an unreadable entry is a DataError."""
    try:
        entry = data[key]
        if hasattr(entry, "keys"):  # an h5 group
            raise DataError(f"{path}: key '{key}' is a group; expected a dataset (array)")
        check_h5_dataset(entry, f"{path}: key '{key}'")
        return np.asarray(entry[()])
    except (TypeError, ValueError, OSError, KeyError, RuntimeError, RecursionError, MemoryError) as exc:
        reason = "it holds pickled objects" if "Object arrays" in str(exc) else type(exc).__name__
        raise DataError(f"{path}: key '{key}' is not a readable array ({reason})") from None


def _from_mapping(path: Path, data, keys: list[str]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    if "teacher_frames" not in keys:
        raise DataError(f"{path}: key 'teacher_frames' is missing (keys: {sorted(keys)[:8]}); {EXPECTED}")
    frames = _value(path, data, "teacher_frames")
    check_numeric(frames, f"{path}: field 'teacher_frames'")
    mask = _value(path, data, "teacher_mask") if "teacher_mask" in keys else None
    if mask is not None:
        check_numeric(mask, f"{path}: field 'teacher_mask'", kinds="biu")
    ids = None
    if "clip_ids" in keys:
        raw = _value(path, data, "clip_ids")
        texts = raw.dtype.kind != "O" or all(isinstance(v, (bytes, str)) for v in raw.reshape(-1).tolist())
        if raw.ndim != 1 or raw.dtype.kind not in "SUiuO" or not texts:
            raise DataError(f"{path}: field 'clip_ids' has shape {raw.shape} and dtype {raw.dtype}; "
                            "expected (N,) strings")
        try:
            ids = np.asarray([v.decode() if isinstance(v, bytes) else str(v) for v in raw])
        except UnicodeDecodeError:
            raise DataError(f"{path}: field 'clip_ids' is not UTF-8 text; expected (N,) strings") from None
    return frames, mask, ids


def attach_teacher_frames(dataset: AVDataset, path: str | Path) -> AVDataset:
    """``dataset`` with ``teacher_frames``/``teacher_mask`` read from ``path`` (module docstring)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: frame file not found; {EXPECTED}")
    frames, mask, ids = _read(path)
    if frames.ndim != 3 or 0 in frames.shape[1:]:
        raise DataError(f"{path}: field 'teacher_frames' has shape {frames.shape}, expected (N, T, D)")
    check_finite(frames, f"{path}: field 'teacher_frames'")
    if mask is not None and mask.shape != frames.shape[:2]:
        raise DataError(f"{path}: field 'teacher_mask' has shape {mask.shape}, expected {frames.shape[:2]}")
    if ids is None:
        if len(frames) != len(dataset):
            raise DataError(f"{path}: field 'teacher_frames' has {len(frames)} rows, expected {len(dataset)} "
                            f"(one per clip of {dataset.source or dataset.name}, in its order), or give clip_ids")
        rows = np.arange(len(frames))
    else:
        if len(ids) != len(frames):
            raise DataError(f"{path}: field 'clip_ids' has {len(ids)} entries, expected {len(frames)}")
        if len(set(ids.tolist())) != len(ids):
            raise DataError(f"{path}: field 'clip_ids' has duplicates; expected unique clip ids")
        where = {clip: i for i, clip in enumerate(ids.tolist())}
        missing = [c for c in dataset.clip_ids.tolist() if c not in where]
        if missing:
            raise DataError(f"{path}: no frames for clip '{missing[0]}' (and {len(missing) - 1} more); "
                            "expected frames for every clip of the data set")
        rows = np.asarray([where[c] for c in dataset.clip_ids.tolist()])
    return replace(
        dataset,
        teacher_frames=frames[rows].astype(np.float32),
        teacher_mask=None if mask is None else mask[rows].astype(bool),
        meta={**dataset.meta, "teacher_frames_source": str(path.resolve())},
    )
