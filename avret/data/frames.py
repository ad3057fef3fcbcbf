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

from avret.data.dataset import AVDataset
from avret.errors import DataError

EXPECTED = ("expected a .npy (N, T, D) array, an .npz/.h5 file with key 'teacher_frames', "
            "or a folder from 'avret features extract'")


def _read(path: Path) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(frames, mask or None, clip ids or None) from ``path``."""
    if path.is_dir():
        from avret.data.folder import MANIFEST, TEACHER_FRAMES, TEACHER_MASK, read_manifest

        if not (path / TEACHER_FRAMES).is_file():
            raise DataError(f"{path}: folder has no {TEACHER_FRAMES}; {EXPECTED}")
        ids, _, _ = read_manifest(path / MANIFEST)
        mask = np.load(path / TEACHER_MASK, allow_pickle=False) if (path / TEACHER_MASK).is_file() else None
        return np.load(path / TEACHER_FRAMES, allow_pickle=False), mask, np.asarray(ids)
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return np.load(path, allow_pickle=False), None, None
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as data:
            return _from_mapping(path, data, list(data.keys()))
    if suffix in (".h5", ".hdf5"):
        import h5py

        try:
            with h5py.File(path, "r") as h5:
                return _from_mapping(path, h5, list(h5.keys()))
        except OSError as exc:
            raise DataError(f"{path}: not a readable HDF5 file ({exc})") from None
    raise DataError(f"{path}: unknown frame file type '{suffix}'; {EXPECTED}")


def _from_mapping(path: Path, data, keys: list[str]) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    if "teacher_frames" not in keys:
        raise DataError(f"{path}: key 'teacher_frames' is missing (keys: {sorted(keys)[:8]}); {EXPECTED}")
    frames = np.asarray(data["teacher_frames"][()])
    mask = np.asarray(data["teacher_mask"][()]) if "teacher_mask" in keys else None
    ids = None
    if "clip_ids" in keys:
        raw = np.asarray(data["clip_ids"][()]).reshape(-1)
        ids = np.asarray([v.decode() if isinstance(v, bytes) else str(v) for v in raw])
    return frames, mask, ids


def attach_teacher_frames(dataset: AVDataset, path: str | Path) -> AVDataset:
    """``dataset`` with ``teacher_frames``/``teacher_mask`` read from ``path`` (module docstring)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: frame file not found; {EXPECTED}")
    frames, mask, ids = _read(path)
    if frames.ndim != 3:
        raise DataError(f"{path}: field 'teacher_frames' has shape {frames.shape}, expected (N, T, D)")
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
