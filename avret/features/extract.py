"""Media files -> the plain-folder feature layout (``avret.data.folder``), resumably, plus media queries.

:func:`extract_features` decodes every file (torch DataLoader workers), computes VGGish audio
features and CLIP (or Inception-v3) visual features in batches across clips (on the GPU when
present), and writes ``manifest.csv``, ``audio.npy``, ``visual.npy``, ``teacher_frames.npy``,
``teacher_mask.npy``, ``failures.json`` and ``extract_config.json`` so that
``avret.data.folder.load_folder(out_dir)`` reads the result directly.

This module is the pipeline; each concern has its own module: decoding one file
(:mod:`avret.features.decode`), the models and their cache (:mod:`avret.features.encoders`), and
the resumable shards and final folder (:mod:`avret.features.shards`). Resuming: a re-run with the
same settings skips every file already done and rebuilds the final arrays from the shards. Files
that failed are retried on the next run (they may have been fixed). Changing the models or the
frame sampling between runs is refused (the shards would mix two feature spaces).

A run is three public steps, shared with the Ray runner (:mod:`avret.features.ray_extract`):
:func:`plan_extraction` (validate, list the media, find what is not done), decoding
(:func:`decode_media_file`) and encoding groups of decoded clips (:class:`FeatureExtractor`, groups
cut by :func:`group_is_full`) stored as shards by :meth:`ExtractPlan.store_group`, then
:func:`finish_extraction` (the final folder, ``failures.json``, ``extract_config.json``).

:func:`embed_query_media` computes the clip-level feature of one query file with the same front
end and models as recorded in a features directory's ``extract_config.json``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from avret.errors import AvretError, DataError, ModelError
from avret.features import vggish_frontend as fe
from avret.features.decode import (
    MEDIA_EXTENSIONS,
    AudioStream,
    DecodedClip,
    decode_audio,
    decode_clip,
    decode_frames,
    require_tracks,
    single_torch_thread,
)
from avret.features.encoders import (
    file_fingerprint,
    get_aisfx,
    get_clip,
    get_efficientnet,
    get_inception,
    get_logmel,
    get_vggish,
)
from avret.features.shards import (
    SHARDS,
    check_settings,
    pad_frames,
    read_clips,
    read_done,
    record_settings,
    write_feature_folder,
    write_shard,
)
from avret.models.clip import resolve_model_name
from avret.utils.atomic import FEATURES_KIND, check_output, mark_output, output_kind, sweep_temporaries
from avret.utils.device import resolve_device
from avret.utils.versions import FEATURES_LIBRARIES, library_versions

EXTRACT_CONFIG = "extract_config.json"
FAILURES = "failures.json"
#: Upper bounds of the extraction settings (checked before any media is read).
MAX_FPS = 240.0
MAX_FRAMES = 10_000
MAX_BATCH = 65_536
MAX_WORKERS = 256
MAX_SECONDS = 7 * 86400.0
FORMAT_VERSION = 1
#: Seconds of a query file used by :func:`embed_query_media` by default (its first minute). Longer
#: than the clips of VEGAS / AVE / AudioSet (10 s), so such a clip is embedded exactly as
#: ``features extract`` embedded it; a longer file costs at most a minute of decoding and VGGish.
QUERY_MAX_SECONDS = 60.0

VisualKind = Literal["clip", "inception", "efficientnet-lite0"]
AudioKind = Literal["vggish", "aisfx", "logmel"]
AUDIO_ENCODERS = ("vggish", "aisfx", "logmel")
VISUAL_ENCODERS = ("clip", "inception", "efficientnet-lite0")


# --------------------------------------------------------------------------------------------- config


@dataclass
class ExtractConfig:
    """Everything that determines the features: models (local paths), frame sampling, run options.

    ``audio_encoder='vggish'`` (the default) needs ``vggish``; ``'aisfx'`` uses ``aisfx_weights``
    (None: the file of the installed ``aisfx`` wheel); ``'logmel'`` needs no weights.
    ``visual='clip'`` needs ``clip_model`` and ``clip_weights``; ``visual='inception'`` needs
    ``inception_weights``; ``visual='efficientnet-lite0'`` uses ``efficientnet_weights`` (None: the
    file of the installed wheel); with the last two, CLIP (when given) only produces the teacher
    frames (:mod:`avret.features.real_encoders` documents the real encoders). ``max_seconds``:
    use only the first that many seconds of every file (None, the default: the whole file; its
    audio is streamed, so a long file costs its VGGish examples, 25 kB per second, not its waveform).
    """

    vggish: Path | None = None
    clip_model: str | None = None
    clip_weights: Path | None = None
    vggish_pca: Path | None = None
    visual: VisualKind = "clip"
    inception_weights: Path | None = None
    inception_pca: Path | None = None
    fps: float = 1.0
    max_frames: int = 32
    batch_size: int = 64
    workers: int = 0
    device: str = "auto"
    labels: Path | None = None
    max_seconds: float | None = None
    audio_encoder: AudioKind = "vggish"
    aisfx_weights: Path | None = None
    efficientnet_weights: Path | None = None

    def __post_init__(self) -> None:
        for name in ("vggish", "clip_weights", "vggish_pca", "inception_weights", "inception_pca", "labels",
                     "aisfx_weights", "efficientnet_weights"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                setattr(self, name, Path(value))

    def validate(self) -> None:
        """Raise :class:`AvretError` (one line) for inconsistent or missing settings."""
        if self.audio_encoder not in AUDIO_ENCODERS:
            raise AvretError(f"audio encoder must be one of {', '.join(AUDIO_ENCODERS)}, got '{self.audio_encoder}'")
        if self.visual not in VISUAL_ENCODERS:
            raise AvretError(f"visual encoder must be one of {', '.join(VISUAL_ENCODERS)}, got '{self.visual}'")
        if self.audio_encoder == "vggish" and self.vggish is None:
            raise ModelError("audio encoder 'vggish' needs --vggish PATH (or choose --audio-encoder aisfx|logmel)")
        if self.audio_encoder != "vggish" and (self.vggish is not None or self.vggish_pca is not None):
            raise ModelError(f"--vggish/--vggish-pca are for --audio-encoder vggish, not '{self.audio_encoder}'")
        if self.aisfx_weights is not None and self.audio_encoder != "aisfx":
            raise ModelError(f"--aisfx-weights is for --audio-encoder aisfx, not '{self.audio_encoder}'")
        if self.efficientnet_weights is not None and self.visual != "efficientnet-lite0":
            raise ModelError(f"--efficientnet-weights is for --visual-encoder efficientnet-lite0, not '{self.visual}'")
        if self.visual != "inception" and (self.inception_weights is not None or self.inception_pca is not None):
            raise ModelError(f"--inception-weights/--inception-pca are for --visual-encoder inception, "
                             f"not '{self.visual}'")
        if self.visual == "clip" and (not self.clip_model or self.clip_weights is None):
            raise ModelError("visual='clip' needs --clip-model NAME and --clip-weights PATH")
        if self.visual == "inception" and self.inception_weights is None:
            raise ModelError("visual='inception' needs --inception-weights PATH")
        if (self.clip_model is None) != (self.clip_weights is None):
            raise ModelError("give both --clip-model and --clip-weights, or neither")
        _ = self.clip_arch  # an unknown or remote model name fails here, before any media is read
        # ranges up front: a frame rate of 1e9 would make the decoder seek forever
        if not (isinstance(self.fps, (int, float)) and 0 < self.fps <= MAX_FPS):
            raise AvretError(f"fps must be > 0 and <= {MAX_FPS:g} frames per second, got {self.fps}")
        if not 1 <= self.max_frames <= MAX_FRAMES:
            raise AvretError(f"max_frames must be in 1..{MAX_FRAMES}, got {self.max_frames}")
        if not 1 <= self.batch_size <= MAX_BATCH:
            raise AvretError(f"batch_size must be in 1..{MAX_BATCH}, got {self.batch_size}")
        if not 0 <= self.workers <= MAX_WORKERS:
            raise AvretError(f"workers must be in 0..{MAX_WORKERS}, got {self.workers}")
        if self.max_seconds is not None and not 0 < self.max_seconds <= MAX_SECONDS:
            raise AvretError(f"max_seconds must be > 0 and <= {MAX_SECONDS:g} (or None for whole files), "
                             f"got {self.max_seconds}")
        for name in ("vggish", "vggish_pca", "clip_weights", "inception_weights", "inception_pca", "aisfx_weights",
                     "efficientnet_weights"):
            p = getattr(self, name)
            if p is not None and not (p.is_file() or (name == "clip_weights" and p.is_dir())):  # HF: a folder
                raise ModelError(f"{p}: {name.replace('_', ' ')} file not found")
        if self.labels is not None and not self.labels.is_file():
            raise DataError(f"{self.labels}: labels CSV not found")

    @property
    def clip_arch(self) -> str | None:
        """The open_clip architecture name of ``clip_model`` (``ViT-B/32`` -> ``ViT-B-32``, a .json -> its stem)."""
        return resolve_model_name(self.clip_model) if self.clip_model else None

    def aisfx_path(self) -> Path:
        """The aisfx weights used: ``aisfx_weights`` or the file of the installed wheel (ModelError if none)."""
        from avret.features.real_encoders import aisfx_weights_path

        return self.aisfx_weights if self.aisfx_weights is not None else aisfx_weights_path()

    def efficientnet_path(self) -> Path:
        """The EfficientNet-Lite0 weights used: ``efficientnet_weights`` or the installed wheel's file."""
        from avret.features.real_encoders import efficientnet_weights_path

        return self.efficientnet_weights if self.efficientnet_weights is not None else efficientnet_weights_path()

    def audio_weights(self) -> Path | None:
        """The weights file of the audio encoder (None for the weight-free log-mel baseline)."""
        if self.audio_encoder == "aisfx":
            return self.aisfx_path()
        return self.vggish if self.audio_encoder == "vggish" else None

    def visual_weights(self) -> Path | None:
        """The weights file of the visual encoder."""
        if self.visual == "efficientnet-lite0":
            return self.efficientnet_path()
        return self.clip_weights if self.visual == "clip" else self.inception_weights

    @property
    def teacher(self) -> bool:
        """True when CLIP per-frame embeddings (the distillation teacher's view) are computed."""
        return self.clip_model is not None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict; paths made absolute so a features directory can be used from elsewhere."""
        out: dict[str, Any] = {}
        for k, v in asdict(self).items():
            out[k] = str(Path(v).resolve()) if isinstance(v, Path) else v
        clip_model = self.clip_model
        if clip_model and clip_model.endswith(".json") and Path(clip_model).is_file():
            out["clip_model"] = str(Path(clip_model).resolve())
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExtractConfig:
        """Inverse of :meth:`to_json` (unknown keys ignored)."""
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})

    def model_settings(self) -> dict[str, Any]:
        """The settings that change the features (models + fingerprints + sampling); must match to resume.

        ``max_seconds`` and the keys of the real encoders are listed only when they are not the default
        (VGGish, no cap), so directories extracted before they existed resume.
        """
        from avret.features.real_encoders import frontend_settings

        settings: dict[str, Any] = {
            "format": FORMAT_VERSION,
            "vggish": file_fingerprint(self.vggish) if self.vggish else None,
            "vggish_pca": file_fingerprint(self.vggish_pca) if self.vggish_pca else None,
            "visual": self.visual,
            "clip_model": self.clip_arch,
            "clip_weights": file_fingerprint(self.clip_weights) if self.clip_weights else None,
            "inception_weights": file_fingerprint(self.inception_weights) if self.inception_weights else None,
            "inception_pca": file_fingerprint(self.inception_pca) if self.inception_pca else None,
            "fps": float(self.fps),
            "max_frames": int(self.max_frames),
        }
        if self.max_seconds is not None:
            settings["max_seconds"] = float(self.max_seconds)
        if self.audio_encoder != "vggish":
            settings["audio_encoder"] = self.audio_encoder
            if self.audio_encoder == "aisfx":
                settings["aisfx_weights"] = file_fingerprint(self.aisfx_path())
            settings["audio_frontend"] = frontend_settings(self.audio_encoder)
        if self.visual == "efficientnet-lite0":
            settings["efficientnet_weights"] = file_fingerprint(self.efficientnet_path())
            settings["visual_frontend"] = frontend_settings(self.visual)
        return settings


# --------------------------------------------------------------------------------------------- media list


def list_media(sources: Sequence[str | Path]) -> list[Path]:
    """Expand directories (recursively, media extensions only) and list files (one path a line).

    A source that is a media file is taken as is; any other file is read as a list: one path per
    line, relative to the list file's folder, blank lines and ``#`` comments skipped. Duplicates
    (same resolved path) are dropped; order is sorted within a directory, as given in a list.
    """
    out: list[Path] = []
    seen: set[Path] = set()

    def add(p: Path) -> None:
        r = p.resolve()
        if r not in seen:
            seen.add(r)
            out.append(p)

    for src in sources:
        src = Path(src)
        if src.is_dir():
            for p in sorted(src.rglob("*")):
                if p.is_file() and p.suffix.lower() in MEDIA_EXTENSIONS and not p.name.startswith("."):
                    add(p)
        elif src.is_file() and src.suffix.lower() in MEDIA_EXTENSIONS:
            add(src)
        elif src.is_file():
            for line in src.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    p = Path(line)
                    add(p if p.is_absolute() else src.parent / p)
        else:
            raise DataError(f"{src}: no such media file, directory or list file")
    return out


def safe_clip_id(name: str) -> str:
    """``name`` usable as a clip id: commas and control characters (newlines, tabs) become ``_``.

    A comma would split a ``--query a,b`` clip-id list and a newline would break line-based output,
    so such an id could never be queried; surrounding white space is dropped (manifest readers strip
    it). An id that would be empty becomes ``clip``.
    """
    out = "".join("_" if ch == "," or ord(ch) < 32 or ord(ch) == 127 else ch for ch in name).strip()
    return out or "clip"


def assign_clip_ids(paths: Sequence[Path], fixed: dict[str, str] | None = None) -> list[str]:
    """clip_id = file stem; duplicated stems get ``<parent>__<stem>``, then ``-2``, ``-3``... suffixes.

    Stems are made safe first (:func:`safe_clip_id`: a file ``a,b.wav`` gets the id ``a_b``); a
    clash with another id is resolved by the suffixes. ``fixed`` maps resolved paths to ids given by
    an earlier run (kept, so resumed ids are stable).
    """
    fixed = fixed or {}
    stems: dict[str, int] = {}
    for p in paths:
        stems[safe_clip_id(p.stem)] = stems.get(safe_clip_id(p.stem), 0) + 1
    taken = {fixed[str(p.resolve())] for p in paths if str(p.resolve()) in fixed}
    ids: list[str] = []
    for p in paths:
        key = str(p.resolve())
        if key in fixed:
            ids.append(fixed[key])
            continue
        stem = safe_clip_id(p.stem)
        cid = stem if stems[stem] == 1 else safe_clip_id(f"{p.parent.name}__{stem}")
        base, n = cid, 2
        while cid in taken:
            cid, n = f"{base}-{n}", n + 1
        taken.add(cid)
        ids.append(cid)
    return ids


# --------------------------------------------------------------------------------------------- decoding


def audio_frontend(config: ExtractConfig) -> tuple[int, Callable[[Any], torch.Tensor]] | None:
    """``(sample rate, waveform -> examples)`` of the config's audio encoder; None for VGGish (streamed)."""
    if config.audio_encoder == "vggish":
        return None
    from avret.features.real_encoders import AUDIO_FRONTENDS

    return AUDIO_FRONTENDS[config.audio_encoder]


def decode_media_file(clip_id: str, path: str, config: ExtractConfig, transforms: dict[str, Callable]) -> DecodedClip:
    """Decode one file as ``features extract`` does (errors become ``.error``, see :func:`decode_clip`).

    ``transforms`` are :meth:`FeatureExtractor.transforms` (visual encoder name -> frame transform).
    Used by the DataLoader workers of :func:`extract_features` and by the Ray decode tasks
    (:mod:`avret.features.ray_extract`).
    """
    return decode_clip(clip_id, path, config.fps, config.max_frames, transforms, max_seconds=config.max_seconds,
                       audio_frontend=audio_frontend(config))


class _MediaDataset(torch.utils.data.Dataset):
    def __init__(self, items: list[tuple[str, str]], config: ExtractConfig, transforms: dict) -> None:
        self.items, self.config, self.transforms = items, config, transforms

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> DecodedClip:
        cid, path = self.items[i]
        return decode_media_file(cid, path, self.config, self.transforms)


def _identity(x: Any) -> Any:
    return x


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def audio_encoder(config: ExtractConfig, device: torch.device) -> Any:
    """The (cached) audio encoder of ``config``: ``embed(examples)`` and ``clip_feature(embeddings)``."""
    if config.audio_encoder == "aisfx":
        return get_aisfx(config.aisfx_weights, device)
    if config.audio_encoder == "logmel":
        return get_logmel()
    return get_vggish(config.vggish, config.vggish_pca, device)


def visual_encoder(config: ExtractConfig, device: torch.device) -> Any:
    """The (cached) visual encoder of ``config``: ``transform``, ``encode(pixels)``, ``clip_feature``, ``dim``."""
    if config.visual == "efficientnet-lite0":
        return get_efficientnet(config.efficientnet_weights, device)
    if config.visual == "inception":
        return get_inception(config.inception_weights, config.inception_pca, device)
    return get_clip(config.clip_model, config.clip_weights, device)


def encoder_dim(encoder: Any) -> int:
    """Feature width of an encoder (VGGish embeddings are 128-d)."""
    return int(getattr(encoder, "dim", 128))


# --------------------------------------------------------------------------------------------- report


@dataclass
class ExtractReport:
    """What a run did: counts, failures (file + one-line reason), timings."""

    out_dir: Path
    n_media: int = 0
    n_extracted: int = 0
    n_skipped: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    n_rows: int = 0
    seconds: float = 0.0
    decode_seconds: float = 0.0
    model_seconds: float = 0.0
    audio_seconds: float = 0.0
    n_frames: int = 0
    device: str = "cpu"

    @property
    def n_failed(self) -> int:
        """Files that failed in this run."""
        return len(self.failures)

    @property
    def clips_per_s(self) -> float:
        """Clips extracted per wall-clock second in this run."""
        return self.n_extracted / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict[str, Any]:
        """JSON-ready summary."""
        d = asdict(self)
        d["out_dir"] = str(self.out_dir)
        d["n_failed"] = self.n_failed
        d["clips_per_s"] = self.clips_per_s
        return d


# --------------------------------------------------------------------------------------------- extraction


class ExtractProgress:
    """Rich progress bar with clips/s, or a user callback ``(done, total)``, or nothing."""

    def __init__(self, progress: bool | Callable[[int, int], None], total: int, skipped: int) -> None:
        self.total, self.done, self.callback, self.bar = total, 0, None, None
        if callable(progress):
            self.callback = progress
        elif progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(
                TextColumn("[bold]extract[/] {task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeElapsedColumn(),
                transient=False,
            )
            desc = f"({skipped} already done)" if skipped else ""
            self.task = self.bar.add_task(desc, total=total, rate="")
            self.bar.start()
            self.t0 = time.perf_counter()

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self.callback is not None:
            self.callback(self.done, self.total)
        if self.bar is not None:
            dt = max(time.perf_counter() - self.t0, 1e-9)
            self.bar.update(self.task, advance=n, rate=f"{self.done / dt:.2f} clips/s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class FeatureExtractor:
    """The models of one extraction (audio encoder, visual encoder, CLIP teacher) on one device.

    :meth:`encode_group` turns a group of decoded clips into the arrays of one shard
    (:func:`avret.features.shards.write_shard`); groups are formed by :func:`group_is_full`.
    """

    def __init__(self, config: ExtractConfig, device: torch.device) -> None:
        self.config, self.device = config, device
        self.audio = audio_encoder(config, device)
        self.audio_dim = encoder_dim(self.audio)
        self.clip = get_clip(config.clip_model, config.clip_weights, device) if config.teacher else None
        # CLIP doubles as the visual encoder when chosen; another visual encoder is loaded on its own.
        self.visual = None if config.visual == "clip" else visual_encoder(config, device)
        self.visual_dim = self.clip.dim if self.visual is None else self.visual.dim
        self.model_seconds = 0.0

    @property
    def dims(self) -> tuple[int, int, int | None]:
        """``(audio_dim, visual_dim, teacher_dim)``; ``teacher_dim`` is None without teacher frames."""
        return self.audio_dim, self.visual_dim, self.clip.dim if self.clip is not None else None

    def transforms(self) -> dict[str, Callable]:
        """Visual encoder name -> its frame transform (what :func:`decode_media_file` needs)."""
        tf: dict[str, Callable] = {}
        if self.clip is not None:
            tf["clip"] = self.clip.transform
        if self.visual is not None:
            tf[self.config.visual] = self.visual.transform
        return tf

    def encode_group(self, group: list[DecodedClip]) -> dict[str, np.ndarray]:
        """The shard arrays of ``group`` (decoded clips without error): features, ids, paths, counts."""
        t0 = time.perf_counter()
        bs = self.config.batch_size
        counts = [c.examples.shape[0] for c in group]
        emb = self.audio.embed(torch.cat([c.examples for c in group]), bs)
        splits = np.cumsum(counts)[:-1]
        audio = np.stack([self.audio.clip_feature(e) for e in np.split(emb, splits)])
        fsplits = np.cumsum([c.n_frames for c in group])[:-1]
        arrays: dict[str, np.ndarray] = {"audio": audio}
        if self.clip is not None:
            frames = np.split(self.clip.encode(torch.cat([c.pixels["clip"] for c in group]), bs), fsplits)
            arrays["teacher_frames"], arrays["teacher_mask"] = pad_frames(frames, self.clip.dim)
            if self.config.visual == "clip":
                arrays["visual"] = np.stack([self.clip.clip_feature(f) for f in frames])
        if self.visual is not None:
            feats = self.visual.encode(torch.cat([c.pixels[self.config.visual] for c in group]), bs)
            arrays["visual"] = np.stack([self.visual.clip_feature(f) for f in np.split(feats, fsplits)])
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.model_seconds += time.perf_counter() - t0
        arrays["clip_ids"] = np.asarray([c.clip_id for c in group])
        arrays["paths"] = np.asarray([c.path for c in group])
        arrays["n_examples"] = np.asarray(counts, np.int64)
        arrays["audio_seconds"] = np.asarray([c.audio_seconds for c in group], np.float64)
        return arrays


def _read_labels(path: Path | None) -> dict[str, tuple[str, str]]:
    if path is None:
        return {}
    from avret.data.folder import read_folder_manifest

    ids, labels, splits = read_folder_manifest(path)
    return {c: (lab, sp) for c, lab, sp in zip(ids, labels, splits, strict=True)}


def group_is_full(pending: Sequence[DecodedClip], config: ExtractConfig) -> bool:
    """True when ``pending`` clips make a full group for :meth:`FeatureExtractor.encode_group`.

    A group is full at ``config.batch_size`` audio examples or sampled frames (log-mel "examples"
    are frames that pass through no network: counted as clips instead).
    """
    n_ex = len(pending) if config.audio_encoder == "logmel" else sum(c.examples.shape[0] for c in pending)
    n_fr = sum(c.n_frames for c in pending)
    return n_ex >= config.batch_size or n_fr >= config.batch_size


def failure_record(clip: DecodedClip) -> dict[str, str]:
    """The ``failures.json`` entry of a clip that failed to decode."""
    return {"path": clip.path, "clip_id": clip.clip_id, "error": str(clip.error)}


@dataclass
class ExtractPlan:
    """One run decided before any media is decoded: the media, what is still to do, the report to fill.

    Made by :func:`plan_extraction`; a runner (:func:`extract_features`, or the Ray runner of
    :mod:`avret.features.ray_extract`) decodes and encodes ``todo``, stores each group with
    :meth:`store_group`, then calls :func:`finish_extraction`.
    """

    out_dir: Path
    config: ExtractConfig
    keys: list[str]  # resolved media paths, media-list order
    todo: list[tuple[str, str]]  # (clip_id, resolved path) not done by an earlier run, media-list order
    labels: dict[str, tuple[str, str]]
    settings: dict[str, Any]
    report: ExtractReport
    t_start: float

    @property
    def shard_dir(self) -> Path:
        """``out_dir/shards``."""
        return self.out_dir / SHARDS

    def start_writing(self) -> None:
        """Record the settings in the shard folder; call once the models have loaded, before the first shard."""
        record_settings(self.shard_dir, self.settings)
        if output_kind(self.out_dir) is None:
            mark_output(self.out_dir, FEATURES_KIND)

    def store_group(self, arrays: dict[str, np.ndarray]) -> int:
        """Write one shard (arrays of :meth:`FeatureExtractor.encode_group`); returns its number of clips."""
        records = [{"path": str(p), "clip_id": str(c)} for p, c in zip(arrays["paths"], arrays["clip_ids"],
                                                                       strict=True)]
        write_shard(self.shard_dir, arrays, records)
        self.report.n_extracted += len(records)
        return len(records)


def plan_extraction(media: Sequence[str | Path], out_dir: str | Path, config: ExtractConfig) -> ExtractPlan:
    """Validate ``config``, list ``media``, check ``out_dir`` and find the files not done yet.

    Reads only, except that temporaries of a killed run are swept from the shard folder; a refused
    run (other settings, no media, an unwritable ``out_dir``) writes nothing.
    """
    t_start = time.perf_counter()
    config.validate()
    out_dir = Path(out_dir)
    shard_dir = out_dir / SHARDS
    paths = list_media(media)
    if not paths:
        where = ", ".join(map(str, media))
        raise DataError(f"no media files ({', '.join(MEDIA_EXTENSIONS)}) found in {where}")
    labels = _read_labels(config.labels)
    settings = config.model_settings()
    check_settings(shard_dir, settings)  # reads only: a refused run writes nothing
    # an earlier features folder (resumed), a new or empty one; never a user's folder or one inside the inputs;
    # a read-only or forbidden --out: one line before any media is decoded
    check_output(out_dir, FEATURES_KIND, reads=(*media, config.labels, config.clip_weights,
                                                config.vggish, config.vggish_pca))
    sweep_temporaries(shard_dir)  # shards a killed run was writing

    done = read_done(shard_dir)
    fixed = {p: rec["clip_id"] for p, rec in done.items()}
    ids = assign_clip_ids(paths, fixed)
    keys = [str(p.resolve()) for p in paths]
    todo = [(cid, key) for cid, key in zip(ids, keys, strict=True) if key not in done]
    report = ExtractReport(out_dir=out_dir, n_media=len(paths), n_skipped=len(paths) - len(todo))
    return ExtractPlan(out_dir=out_dir, config=config, keys=keys, todo=todo, labels=labels, settings=settings,
                       report=report, t_start=t_start)


def extract_features(
    media: Sequence[str | Path],
    out_dir: str | Path,
    config: ExtractConfig,
    progress: bool | Callable[[int, int], None] = False,
) -> ExtractReport:
    """Extract audio/visual features of ``media`` (files, directories or list files) into ``out_dir``.

    Bad files (no audio or video track, zero-length, corrupt) are listed with a one-line reason in
    ``out_dir/failures.json`` and in the returned report; the run goes on with the rest. Files done
    by an earlier run into the same ``out_dir`` are skipped (see module docstring). ``progress``:
    True for a rich progress bar, or a callback ``(done, total)``.
    """
    plan = plan_extraction(media, out_dir, config)
    report = plan.report
    device = resolve_device(config.device)
    report.device = str(device)

    extractor: FeatureExtractor | None = None
    if plan.todo:
        # Models first: weights that fail to load stop the run before anything is written.
        extractor = FeatureExtractor(config, device)
        plan.start_writing()
        dataset = _MediaDataset(plan.todo, config, extractor.transforms())
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=None,
            shuffle=False,
            num_workers=config.workers,
            collate_fn=_identity,
            worker_init_fn=_worker_init if config.workers > 0 else None,
            prefetch_factor=4 if config.workers > 0 else None,
        )
        bar = ExtractProgress(progress, len(plan.todo), report.n_skipped)
        pending: list[DecodedClip] = []

        def flush() -> None:
            if pending:
                bar.advance(plan.store_group(extractor.encode_group(pending)))
                pending.clear()

        try:
            for item in loader:
                report.decode_seconds += item.decode_seconds
                if item.error:
                    report.failures.append(failure_record(item))
                    bar.advance()
                    continue
                report.audio_seconds += item.audio_seconds
                report.n_frames += item.n_frames
                pending.append(item)
                if group_is_full(pending, config):
                    flush()
            flush()
        finally:
            bar.close()
        report.model_seconds = extractor.model_seconds

    return finish_extraction(plan, extractor.dims if extractor is not None else None)


def finish_extraction(plan: ExtractPlan, dims: tuple[int, int, int | None] | None) -> ExtractReport:
    """Assemble the final arrays (media-list order) from the shards; write them and the records as one unit.

    ``dims``: :attr:`FeatureExtractor.dims` when models were loaded in this run; None to read them
    from the shards (a run that had nothing to do). Returns the plan's report, completed.
    """
    config, report = plan.config, plan.report
    ids, per_clip = read_clips(plan.shard_dir, plan.keys)
    if dims is not None:
        audio_dim, visual_dim, teacher_dim = dims
    elif per_clip:
        first = next(iter(per_clip.values()))
        audio_dim = int(first["audio"].shape[0])
        visual_dim = int(first["visual"].shape[0])
        teacher_dim = int(first["frames"].shape[1]) if "frames" in first else None
    else:
        audio_dim = {"aisfx": 512, "logmel": 128}.get(config.audio_encoder, 128)  # VGGish: 128
        visual_dim, teacher_dim = 0, None
    records = {FAILURES: report.failures,
               EXTRACT_CONFIG: _extract_record(config, len(ids), report, audio_dim, visual_dim, teacher_dim)}
    done = read_done(plan.shard_dir)
    media = {done[k]["clip_id"]: done[k]["path"] for k in plan.keys if k in done}
    write_feature_folder(plan.out_dir, ids, per_clip, plan.labels, (audio_dim, visual_dim, teacher_dim), records,
                         media)
    report.n_rows = len(ids)
    report.seconds = time.perf_counter() - plan.t_start
    return report


def _real_encoder_record(name: str, weights_sha256: str | None, weights: Path | None, dim: int) -> dict[str, Any]:
    from avret.features.real_encoders import WHEELS, frontend_settings

    front = frontend_settings(name)
    return {
        "model": name,
        "name": name,
        "weights": str(weights.resolve()) if weights is not None else None,
        "weights_sha256": weights_sha256,
        "weights_package": WHEELS.get(name),
        "dim": dim,
        "pooling": front.get("pooling"),
        "frontend": front,
    }


def _extract_record(
    config: ExtractConfig, n_rows: int, report: ExtractReport, audio_dim: int, visual_dim: int,
    teacher_dim: int | None,
) -> dict[str, Any]:
    settings = config.model_settings()
    if config.audio_encoder != "vggish":
        audio = _real_encoder_record(config.audio_encoder, settings.get("aisfx_weights"),
                                     config.audio_weights(), audio_dim)
    else:
        audio = _vggish_record(config, settings)
    if config.visual == "efficientnet-lite0":
        visual = _real_encoder_record(config.visual, settings["efficientnet_weights"], config.efficientnet_path(),
                                      visual_dim)
    else:
        visual = {
            "model": config.visual,
            "name": (config.clip_arch if config.visual == "clip" and config.clip_model
                     else "torchvision inception_v3 pool" if config.visual == "inception" else None),
            "weights_sha256": settings["clip_weights" if config.visual == "clip" else "inception_weights"],
            "pca_sha256": settings["inception_pca"] if config.visual == "inception" else None,
            "dim": visual_dim,
            "pooling": ("mean of L2-normalised frame embeddings" if config.visual == "clip"
                        else "mean of frame features"),
        }
    return {
        "format": FORMAT_VERSION,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": config.to_json(),
        "audio": audio,
        "visual": visual,
        "teacher": None if teacher_dim is None else {
            "model": "clip", "name": config.clip_arch,
            "weights_sha256": settings["clip_weights"], "dim": teacher_dim,
            "frames": "L2-normalised per-frame embeddings",
        },
        "fps": config.fps,
        "max_frames": config.max_frames,
        "max_seconds": config.max_seconds,
        "counts": {"media": report.n_media, "rows": n_rows, "extracted_this_run": report.n_extracted,
                   "skipped_this_run": report.n_skipped, "failed_this_run": report.n_failed},
        "device": report.device,
        "versions": library_versions(FEATURES_LIBRARIES),
    }


def _vggish_record(config: ExtractConfig, settings: dict[str, Any]) -> dict[str, Any]:
    return {
        "model": "vggish (torchvggish layout)",
        "weights_sha256": settings["vggish"],
        "pca_sha256": settings["vggish_pca"],
        "postprocessed": config.vggish_pca is not None,
        "dequantized": "(x - 128) / 256" if config.vggish_pca is not None else None,
        "dim": 128,
        "pooling": "mean over 0.96 s examples (clips < 0.96 s zero-padded to one example)",
        "frontend": {
            "sample_rate": fe.SAMPLE_RATE, "window_samples": fe.STFT_WINDOW_SAMPLES,
            "hop_samples": fe.STFT_HOP_SAMPLES, "fft_size": fe.FFT_SIZE, "mel_bins": fe.NUM_MEL_BINS,
            "mel_hz": [fe.MEL_MIN_HZ, fe.MEL_MAX_HZ], "mel_scale": "htk", "log_offset": fe.LOG_OFFSET,
            "example_frames": fe.EXAMPLE_FRAMES,
        },
    }


# --------------------------------------------------------------------------------------------- queries


def load_extract_config(source: ExtractConfig | dict[str, Any] | str | Path) -> ExtractConfig:
    """An :class:`ExtractConfig` from itself, a dict, an ``extract_config.json`` or a features directory."""
    if isinstance(source, ExtractConfig):
        return source
    if isinstance(source, dict):
        return ExtractConfig.from_json(source.get("config", source))
    path = Path(source)
    if path.is_dir():
        path = path / EXTRACT_CONFIG
    if not path.is_file():
        raise DataError(f"{path}: not found; media queries need the extract_config.json of features extract")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or "config" not in data:
        raise DataError(f"{path}: no 'config' entry; expected the extract_config.json of `features extract`")
    cfg = ExtractConfig.from_json(data["config"])
    if cfg.audio_encoder not in AUDIO_ENCODERS or cfg.visual not in VISUAL_ENCODERS:
        raise DataError(f"{path}: unknown encoders '{cfg.audio_encoder}' / '{cfg.visual}' (written by a newer avret?)")
    # The weights must be the very files the features were extracted with (for the real encoders
    # without an explicit path: the file of the wheel installed now).
    for key, weights in (("audio", cfg.audio_weights), ("visual", cfg.visual_weights)):
        want = (data.get(key) or {}).get("weights_sha256")
        p = weights()
        if want and p is not None and p.exists() and file_fingerprint(p) != want:
            raise ModelError(f"{p}: file changed since extraction ({path} recorded {want[:19]}...)")
    return cfg


def embed_query_media(
    path: str | Path,
    modality: Literal["audio", "visual"],
    extract_config_or_dir: ExtractConfig | dict[str, Any] | str | Path,
    device: str | None = None,
    *,
    max_seconds: float | None = QUERY_MAX_SECONDS,
) -> np.ndarray:
    """Clip-level feature vector of one media file, as ``features extract`` computed it for the index.

    ``modality='audio'``: the audio encoder's clip feature (VGGish mean, aisfx mean over blocks,
    log-mel statistics) of the file's audio track (a ``.wav`` works); ``modality='visual'``: the
    visual feature (CLIP mean, Inception or EfficientNet-Lite0 mean) of its video track. Models and
    settings come from ``extract_config.json`` in a features directory (or the given config).
    ``max_seconds`` (default :data:`QUERY_MAX_SECONDS`, 60 s): only the first that many seconds of
    the file are used (decoding stops there); None uses the whole file. The extraction's own
    ``max_seconds``, when smaller, applies too. With VGGish, memory does not grow with the file's
    length: the audio is streamed chunk by chunk into a running mean of the VGGish embeddings; the
    other audio encoders decode the (capped) waveform at their rate first, exactly as extraction
    does. Only the sampled frames (at most ``max_frames``) are kept. The needed track is checked
    before anything is decoded.
    Raises DataError for a file without the needed track, ModelError for missing/changed weights.
    """
    if modality not in ("audio", "visual"):
        raise AvretError(f"modality must be 'audio' or 'visual', got '{modality}'")
    if max_seconds is not None and not max_seconds > 0:
        raise AvretError(f"max_seconds must be > 0 (or None for the whole file), got {max_seconds}")
    cfg = load_extract_config(extract_config_or_dir)
    caps = [c for c in (max_seconds, cfg.max_seconds) if c is not None]
    cap = min(caps) if caps else None
    require_tracks(path, audio=modality == "audio", video=modality == "visual")
    dev = resolve_device(device or cfg.device)
    if modality == "audio" and cfg.audio_encoder != "vggish":
        rate, frontend = audio_frontend(cfg)
        enc = audio_encoder(cfg, dev)
        with single_torch_thread():
            examples = frontend(decode_audio(path, rate, cap))
        return enc.clip_feature(enc.embed(examples, cfg.batch_size))
    if modality == "audio":
        vggish = get_vggish(cfg.vggish, cfg.vggish_pca, dev)
        total: np.ndarray | None = None
        count = 0
        with single_torch_thread():
            for examples in AudioStream(path, max_seconds=cap).examples():
                emb = vggish.embed(examples, cfg.batch_size)
                part = emb.sum(axis=0, dtype=np.float64)
                total = part if total is None else total + part
                count += len(emb)
        assert total is not None  # AudioStream yields at least one example or raises
        return vggish.clip_feature((total / count)[None, :])
    images, _ = decode_frames(path, cfg.fps, cfg.max_frames, cap)
    enc = visual_encoder(cfg, dev)
    with single_torch_thread():
        pixels = torch.stack([enc.transform(im) for im in images])
    return enc.clip_feature(enc.encode(pixels, cfg.batch_size))
