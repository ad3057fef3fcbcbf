"""The on-disk state of ``features extract``: resumable shards, and the plain-folder result built from them.

Per-clip results go to shards (``out_dir/shards/shard-*.npz``, each written atomically) and a
``shards/done.jsonl`` list appended (and fsync'ed) after each shard; ``shards/settings.json``
records the settings that shape the features. A re-run reads ``done.jsonl`` to skip every file
already extracted (a torn last line of an interrupted run is ignored, so that clip is redone) and
refuses other settings, which would mix two feature spaces in one folder.

:func:`write_feature_folder` assembles the final ``manifest.csv``, ``audio.npy``, ``visual.npy``
and ``teacher_frames.npy`` / ``teacher_mask.npy`` (the layout :func:`avret.data.folder.load_folder`
reads), each written atomically.
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
from avret.utils.atomic import atomic_file, save_npy, write_json

SHARDS = "shards"
DONE = "done.jsonl"
SHARD_SETTINGS = "settings.json"


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
    """Record ``settings``, or raise DataError when clips were already extracted with other settings."""
    path = shard_dir / SHARD_SETTINGS
    has_done = (shard_dir / DONE).is_file() and (shard_dir / DONE).stat().st_size > 0
    if path.is_file() and has_done:
        old = json.loads(path.read_text(encoding="utf-8"))
        if old != settings:
            diff = sorted(k for k in set(old) | set(settings) if old.get(k) != settings.get(k))
            raise DataError(
                f"{shard_dir}: earlier shards were extracted with different settings ({', '.join(diff)}); "
                "use a new --out directory or delete its shards/ folder"
            )
    else:  # nothing extracted yet under other settings: (re)start with these
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
) -> None:
    """Write ``audio.npy``, ``visual.npy``, the teacher frames (or remove stale ones) and ``manifest.csv``.

    ``dims`` is ``(audio_dim, visual_dim, teacher_dim)``; ``teacher_dim=None`` means no teacher
    frames. ``labels`` maps clip ids to ``(label, split)``; other clips get an empty label, split ``test``.
    """
    audio_dim, visual_dim, teacher_dim = dims
    audio = np.zeros((len(ids), audio_dim), np.float32)
    visual = np.zeros((len(ids), visual_dim), np.float32)
    for i, cid in enumerate(ids):
        audio[i] = per_clip[cid]["audio"]
        visual[i] = per_clip[cid]["visual"]
    save_npy(out_dir / "audio.npy", audio)
    save_npy(out_dir / "visual.npy", visual)
    if teacher_dim is not None:
        frames, mask = pad_frames([per_clip[c]["frames"] for c in ids], teacher_dim)
        save_npy(out_dir / "teacher_frames.npy", frames)
        save_npy(out_dir / "teacher_mask.npy", mask)
    else:
        for name in ("teacher_frames.npy", "teacher_mask.npy"):
            (out_dir / name).unlink(missing_ok=True)

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["clip_id", "label", "split"])
    for cid in ids:
        lab, split = labels.get(cid, ("", "test"))
        writer.writerow([cid, lab, split])
    with atomic_file(out_dir / "manifest.csv", "w") as fh:
        fh.write(buf.getvalue())
