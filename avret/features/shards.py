"""The on-disk state of ``features extract``: resumable shards, and the plain-folder result built from them.

Per-clip results go to shards (``out_dir/shards/shard-*.npz``, each written atomically) and a
``shards/done.jsonl`` list appended (and fsync'ed) after each shard; ``shards/settings.json``
records the settings that shape the features. A re-run reads ``done.jsonl`` to skip every file
already extracted (a torn last line of an interrupted run is ignored, so that clip is redone) and
refuses other settings, which would mix two feature spaces in one folder. ``settings.json`` is
written only once the models have loaded (:func:`record_settings`), so a run refused for its
weights leaves nothing behind.

:func:`write_feature_folder` assembles the final ``manifest.csv``, ``audio.npy``, ``visual.npy``,
``teacher_frames.npy`` / ``teacher_mask.npy`` (the layout :func:`avret.data.folder.load_folder`
reads) and the run's JSON records **as one unit** (:func:`avret.utils.atomic.commit_files`): every
file is written and fsynced in a staging directory, which is renamed to ``.final-commit-<pid>-*``
(the commit point). The files are then moved to their final names, ``manifest.csv`` last, after the
old ``manifest.csv`` has been removed first. A process killed at any point therefore leaves either
the old complete set, the new complete set, or (while the commit is applied) **no**
``manifest.csv`` -- never a manifest whose rows disagree with ``audio.npy`` / ``visual.npy``.
:func:`avret.utils.atomic.recover_commits`, called by the next writer and by
:func:`avret.data.folder.load_folder`, finishes a commit of a dead process.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from avret.errors import DataError
from avret.utils.atomic import atomic_file, commit_files, json_default, write_json

SHARDS = "shards"
DONE = "done.jsonl"
SHARD_SETTINGS = "settings.json"
MANIFEST = "manifest.csv"
#: Every file :func:`write_feature_folder` installs or removes (``manifest.csv`` is handled last).
FINAL_ARRAYS = ("audio.npy", "visual.npy", "teacher_frames.npy", "teacher_mask.npy")


def read_done(shard_dir: Path) -> dict[str, dict[str, Any]]:
    """``resolved media path -> {"path", "clip_id", "shard"}`` of every clip whose shard exists."""
    done: dict[str, dict[str, Any]] = {}
    path = shard_dir / DONE
    if not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line from an interrupted run: that clip is simply redone
        if (shard_dir / rec.get("shard", "")).is_file():
            done[rec["path"]] = rec
    return done


def check_settings(shard_dir: Path, settings: dict[str, Any]) -> None:
    """Raise DataError when clips were already extracted into ``shard_dir`` with other settings.

    Reads only (nothing is created); :func:`record_settings` writes them once the run can start.
    """
    path = shard_dir / SHARD_SETTINGS
    has_done = (shard_dir / DONE).is_file() and (shard_dir / DONE).stat().st_size > 0
    if path.is_file() and has_done:
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            old = {"settings.json": "unreadable"}
        if old != settings:
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise DataError(
                f"{shard_dir}: earlier shards were extracted with different settings ({', '.join(diff)}); "
                "use a new --out directory or delete its shards/ folder"
            )


def record_settings(shard_dir: Path, settings: dict[str, Any]) -> None:
    """Create ``shard_dir`` and record ``settings`` in it (after :func:`check_settings` accepted them)."""
    path = shard_dir / SHARD_SETTINGS
    shard_dir.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        try:
            if json.loads(path.read_text(encoding="utf-8")) == settings:
                return
        except (json.JSONDecodeError, UnicodeDecodeError):
            pass
    write_json(path, settings)


def write_shard(shard_dir: Path, arrays: dict[str, np.ndarray], records: list[dict[str, Any]]) -> str:
    """Write one shard atomically, then append its clips (``path``, ``clip_id``) to the done list.

    Returns the shard's file name (also stored in each appended record).
    """
    name = f"shard-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}.npz"
    with atomic_file(shard_dir / name, "wb") as fh:
        np.savez(fh, **arrays)
    with open(shard_dir / DONE, "a", encoding="utf-8") as fh:
        for rec in records:
            fh.write(json.dumps({**rec, "shard": name}) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return name


def pad_frames(frames: list[np.ndarray], dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-clip ``(T_i, dim)`` frame embeddings -> zero-padded ``(N, T, dim)`` float32 and ``(N, T)`` mask."""
    t = max([len(f) for f in frames] + [1])
    out = np.zeros((len(frames), t, dim), np.float32)
    mask = np.zeros((len(frames), t), bool)
    for i, f in enumerate(frames):
        out[i, : len(f)] = f
        mask[i, : len(f)] = True
    return out, mask


def read_clips(shard_dir: Path, keys: list[str]) -> tuple[list[str], dict[str, dict[str, np.ndarray]]]:
    """The done clips among ``keys`` (resolved media paths), in that order, and their arrays.

    Returns ``(clip_ids, per_clip)`` where ``per_clip[clip_id]`` has ``audio``, ``visual`` and, when
    teacher frames were extracted, ``frames`` (its unpadded ``(T_i, D)`` frame embeddings).
    """
    done = read_done(shard_dir)
    rows = [done[k] for k in keys if k in done]
    by_shard: dict[str, list[str]] = {}
    for rec in rows:
        by_shard.setdefault(rec["shard"], []).append(rec["clip_id"])
    per_clip: dict[str, dict[str, np.ndarray]] = {}
    for shard, wanted in by_shard.items():
        with np.load(shard_dir / shard, allow_pickle=False) as z:
            index = {str(c): i for i, c in enumerate(z["clip_ids"])}
            data = {k: z[k] for k in z.files}
        for cid in wanted:
            i = index[cid]
            clip = {"audio": data["audio"][i], "visual": data["visual"][i]}
            if "teacher_frames" in data:
                clip["frames"] = data["teacher_frames"][i][data["teacher_mask"][i]]
            per_clip[cid] = clip
    return [rec["clip_id"] for rec in rows], per_clip


def write_feature_folder(
    out_dir: Path,
    ids: list[str],
    per_clip: dict[str, dict[str, np.ndarray]],
    labels: dict[str, tuple[str, str]],
    dims: tuple[int, int, int | None],
    records: dict[str, Any] | None = None,
    media: dict[str, str] | None = None,
) -> None:
    """Write ``audio.npy``, ``visual.npy``, the teacher frames (or remove stale ones) and ``manifest.csv``.

    ``media`` maps clip ids to their media file, written as the manifest's ``media`` column.

    ``dims`` is ``(audio_dim, visual_dim, teacher_dim)``; ``teacher_dim=None`` means no teacher
    frames. ``labels`` maps clip ids to ``(label, split)``; other clips get an empty label, split
    ``test``. ``records`` (file name -> JSON-ready object, e.g. ``failures.json``) are written with
    them. Everything is installed as one unit (see the module docstring).
    """
    audio_dim, visual_dim, teacher_dim = dims
    audio = np.zeros((len(ids), audio_dim), np.float32)
    visual = np.zeros((len(ids), visual_dim), np.float32)
    for i, cid in enumerate(ids):
        audio[i] = per_clip[cid]["audio"]
        visual[i] = per_clip[cid]["visual"]
    arrays = {"audio.npy": audio, "visual.npy": visual}
    if teacher_dim is not None:
        frames, mask = pad_frames([per_clip[c]["frames"] for c in ids], teacher_dim)
        arrays.update({"teacher_frames.npy": frames, "teacher_mask.npy": mask})
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["clip_id", "label", "split", *(["media"] if media is not None else [])])
    for cid in ids:
        lab, split = labels.get(cid, ("", "test"))
        writer.writerow([cid, lab, split, *([media.get(cid, "")] if media is not None else [])])
    with commit_files(out_dir, last=MANIFEST, remove=FINAL_ARRAYS) as stage:
        for name, arr in arrays.items():
            np.save(stage / name, arr)
        (stage / MANIFEST).write_text(buf.getvalue(), encoding="utf-8")
        for name, obj in (records or {}).items():
            (stage / name).write_text(json.dumps(obj, indent=2, default=json_default) + "\n", encoding="utf-8")
