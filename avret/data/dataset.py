"""One in-memory interface for every audio-visual data set avret reads.

Community h5 files, a user's folder of ``.npy`` features and the synthetic ``vegas-synth``
generator all produce an :class:`AVDataset`: row-aligned clip ids, integer labels, class names,
audio and visual feature matrices, a split per clip, and optionally a *teacher view* (a sequence
of per-frame embeddings, e.g. CLIP image embeddings) used only during distillation.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from avret.errors import DataError

SPLITS = ("train", "val", "test")
UNLABELLED = -1


@dataclass
class AVDataset:
    """Row-aligned features and metadata of an audio-visual data set.

    Attributes:
        name: short name used in reports (``vegas``, ``vegas-synth``, a folder name, ...).
        clip_ids: ``(N,)`` unique string ids.
        labels: ``(N,)`` int64 class indices into ``class_names``; ``-1`` for unlabelled clips.
        class_names: class names, index = label.
        audio: ``(N, Da)`` float32 audio features (e.g. VGGish 128-d, mean-pooled over time).
        visual: ``(N, Dv)`` float32 visual features (e.g. Inception-v3 1024-d).
        split: ``(N,)`` one of ``train``/``val``/``test`` per clip.
        teacher_frames: optional ``(N, T, Dt)`` float32 per-frame teacher-view embeddings.
        teacher_mask: optional ``(N, T)`` bool, True where a frame is present.
        synthetic: True for generated data; reports must label such numbers synthetic.
        source: where the data came from (path or generator spec), for run metadata.
        media: optional ``(N,)`` str path of each clip's media file ("" when unknown); folders
            written by ``avret features extract`` have it, and ``index build`` records it for serving.
    """

    name: str
    clip_ids: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    audio: np.ndarray
    visual: np.ndarray
    split: np.ndarray
    teacher_frames: np.ndarray | None = None
    teacher_mask: np.ndarray | None = None
    synthetic: bool = False
    source: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    media: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.clip_ids = np.asarray(self.clip_ids).astype(str)
        self.labels = np.asarray(self.labels, dtype=np.int64)
        self.audio = np.ascontiguousarray(self.audio, dtype=np.float32)
        self.visual = np.ascontiguousarray(self.visual, dtype=np.float32)
        self.split = np.asarray(self.split).astype(str)
        if self.media is not None:
            self.media = np.asarray(self.media).astype(str)
        if self.teacher_frames is not None:
            self.teacher_frames = np.ascontiguousarray(self.teacher_frames, dtype=np.float32)
            if self.teacher_mask is None:
                self.teacher_mask = np.ones(self.teacher_frames.shape[:2], dtype=bool)
            self.teacher_mask = np.asarray(self.teacher_mask, dtype=bool)
        self.validate()

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise :class:`DataError` naming the field when the arrays do not fit together."""
        n = len(self.clip_ids)
        where = self.source or self.name
        for fname in ("labels", "split", "media"):
            if getattr(self, fname) is not None and getattr(self, fname).shape != (n,):
                raise DataError(f"{where}: field '{fname}' has shape {getattr(self, fname).shape}, expected ({n},)")
        for fname in ("audio", "visual"):
            arr = getattr(self, fname)
            if arr.ndim != 2 or arr.shape[0] != n:
                raise DataError(f"{where}: field '{fname}' has shape {arr.shape}, expected ({n}, D)")
            check_finite(arr, f"{where}: field '{fname}'")
        if self.teacher_frames is not None:
            tf = self.teacher_frames
            if tf.ndim != 3 or tf.shape[0] != n:
                raise DataError(f"{where}: field 'teacher_frames' has shape {tf.shape}, expected ({n}, T, D)")
            if self.teacher_mask is None or self.teacher_mask.shape != tf.shape[:2]:
                raise DataError(f"{where}: field 'teacher_mask' does not match teacher_frames {tf.shape[:2]}")
            check_finite(tf, f"{where}: field 'teacher_frames'")
        if len(set(self.clip_ids.tolist())) != n:
            raise DataError(f"{where}: field 'clip_ids' has duplicates; clip ids must be unique")
        bad = set(np.unique(self.split).tolist()) - set(SPLITS)
        if bad:
            raise DataError(f"{where}: field 'split' has {sorted(bad)}, expected one of {list(SPLITS)}")
        if n and (self.labels.max(initial=-1) >= len(self.class_names) or self.labels.min(initial=0) < -1):
            raise DataError(
                f"{where}: field 'labels' out of range [-1, {len(self.class_names) - 1}]"
            )

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return len(self.clip_ids)

    @property
    def audio_dim(self) -> int:
        return int(self.audio.shape[1])

    @property
    def visual_dim(self) -> int:
        return int(self.visual.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def features(self, modality: str) -> np.ndarray:
        """The feature matrix of ``audio`` or ``visual``."""
        if modality not in ("audio", "visual"):
            raise DataError(f"modality '{modality}': expected 'audio' or 'visual'")
        return self.audio if modality == "audio" else self.visual

    def take(self, rows: np.ndarray) -> AVDataset:
        """A new data set holding only ``rows`` (indices or a boolean mask), in that order."""
        rows = np.asarray(rows)
        return replace(
            self,
            clip_ids=self.clip_ids[rows],
            labels=self.labels[rows],
            audio=self.audio[rows],
            visual=self.visual[rows],
            split=self.split[rows],
            teacher_frames=None if self.teacher_frames is None else self.teacher_frames[rows],
            teacher_mask=None if self.teacher_mask is None else self.teacher_mask[rows],
            meta=dict(self.meta),
            media=None if self.media is None else self.media[rows],
        )

    def subset(self, split: str) -> AVDataset:
        """Clips of one split (``train``, ``val``, ``test``), or all clips for ``all``."""
        if split == "all":
            return self
        if split not in SPLITS:
            raise DataError(f"split '{split}': expected one of {list(SPLITS) + ['all']}")
        return self.take(self.split == split)

    def rows_of(self, clip_ids: list[str]) -> np.ndarray:
        """Row indices of the given clip ids; :class:`DataError` names the first unknown one."""
        lookup = {cid: i for i, cid in enumerate(self.clip_ids.tolist())}
        rows = []
        for cid in clip_ids:
            if cid not in lookup:
                raise DataError(f"clip id '{cid}' is not in data set '{self.name}' ({len(self)} clips)")
            rows.append(lookup[cid])
        return np.asarray(rows, dtype=np.int64)

    def with_validation_split(self, fraction: float = 0.1, seed: int = 0) -> AVDataset:
        """Carve a stratified validation split out of ``train`` (never out of ``test``).

        A data set that already has ``val`` clips is returned unchanged.
        """
        if (self.split == "val").any():
            return self
        rng = np.random.default_rng(seed)
        split = self.split.copy()
        train_rows = np.flatnonzero(split == "train")
        for label in np.unique(self.labels[train_rows]):
            rows = train_rows[self.labels[train_rows] == label]
            n_val = int(round(fraction * len(rows)))
            if len(rows) > 1 and n_val == 0:
                n_val = 1
            split[rng.permutation(rows)[:n_val]] = "val"
        return replace(self, split=split, meta=dict(self.meta))

    def kfold(self, k: int, fold: int, seed: int = 0) -> AVDataset:
        """Re-split all clips into ``k`` stratified folds; fold ``fold`` becomes ``test``."""
        if not 0 <= fold < k or k < 2:
            raise DataError(f"fold {fold} of k={k}: expected k >= 2 and 0 <= fold < k")
        rng = np.random.default_rng(seed)
        split = np.full(len(self), "train", dtype=object)
        for label in np.unique(self.labels):
            rows = rng.permutation(np.flatnonzero(self.labels == label))
            split[np.array_split(rows, k)[fold]] = "test"
        return replace(self, split=split.astype(str), meta=dict(self.meta))

    def describe(self) -> str:
        """One line: name, size, dims, splits; marked SYNTHETIC when generated."""
        counts = ", ".join(f"{s} {int((self.split == s).sum())}" for s in SPLITS if (self.split == s).any())
        tag = " [SYNTHETIC]" if self.synthetic else ""
        return (
            f"{self.name}{tag}: {len(self)} clips, {self.num_classes} classes, "
            f"audio {self.audio_dim}-d, visual {self.visual_dim}-d ({counts})"
        )


def check_numeric(array: np.ndarray, what: str, kinds: str = "fiu") -> None:
    """Raise :class:`DataError` unless ``array`` holds real numbers (dtype kinds ``kinds``: float, int, uint).

    Strings, bytes, objects, complex numbers and structured records are refused before any cast
    could fail with a traceback or silently drop an imaginary part.
    """
    if not isinstance(array, np.ndarray) or array.dtype.kind not in kinds or array.dtype.fields is not None:
        dtype = array.dtype if isinstance(array, np.ndarray) else type(array).__name__
        raise DataError(f"{what} has dtype {dtype}; expected real numbers")


def check_finite(array: np.ndarray, what: str) -> None:
    """Raise :class:`DataError` when ``array`` holds NaN or inf, naming the first bad row."""
    finite = np.isfinite(array)
    if not finite.all():
        flat = finite.reshape(len(array), -1).all(axis=1) if array.ndim > 1 else finite
        row = int(np.flatnonzero(~flat)[0])
        raise DataError(f"{what} has NaN or inf values (first at row {row}); expected finite numbers")


def check_width(array: np.ndarray, expected: int, what: str) -> None:
    """Raise :class:`DataError` when ``array``'s last dimension is not ``expected``."""
    if array.ndim < 1 or array.shape[-1] != expected:
        raise DataError(f"{what} has width {array.shape[-1] if array.ndim else 0}, expected {expected}")
