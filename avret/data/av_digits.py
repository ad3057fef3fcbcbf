"""av-digits: an AV-MNIST-style audio-visual data set rendered from real recordings and real images.

Each clip is one mp4 per recording of the Free Spoken Digit Dataset (FSDD): its **audio track is
the recording itself** (8 kHz mono, stored losslessly as ALAC, so decoding gives back the WAV's
exact samples; no resampling here — ``features extract`` resamples to each encoder's rate), and its
**picture is a handwritten digit of the same class** from scikit-learn's bundled ``load_digits``
(1,797 real 8x8 images of 0–16 ink levels), upscaled bicubically to ``size`` x ``size`` RGB (white
ink on black) and shown, unchanged, in ``frames`` video frames spread evenly over the recording
(H.264, yuv420p).

**The pairing is by class, as in AV-MNIST, not by recording**: the spoken "3" and the written "3"
of a clip come from different people; a clip's picture says nothing about its recording beyond
the digit. Retrieval across modalities is therefore class-level (same digit = relevant).

Splits: train/test follow FSDD's official split (takes 0–4 of every speaker and digit are test,
takes 5–49 train). The images are split too: per digit, a seeded 20 % of ``load_digits``'s images
form the test pool and the rest the train pool, and a clip only takes an image from its own
split's pool, so no test recording and no test image is ever seen in training. Within a (split,
digit), images are dealt to the recordings (sorted by speaker and take) from a seeded permutation
of the pool, round robin, so every image of a pool is used equally often (±1).

Determinism: everything is a function of the recordings and ``seed`` (NumPy's ``SeedSequence``);
the same seed gives a byte-identical ``manifest.csv`` and the same image for every clip (the mp4
bytes too, on the same PyAV/FFmpeg build). ``limit_per_class=N`` keeps a seeded N recordings per
digit in each split (a small subset for tests).

Output (written atomically; an existing ``out_dir`` is replaced only if it is an earlier
av-digits output or empty)::

    OUT/
      manifest.csv     clip_id,label,split,media,speaker,take,image
                       (label = the digit "0".."9"; media = path relative to OUT; image = index
                       into sklearn.datasets.load_digits(); read by `features extract --labels`)
      media/<clip_id>.mp4   clip_id = the FSDD file stem, e.g. 3_jackson_12
      av_digits.json   settings, counts, licence and credit (marks OUT as an av-digits output)
      CREDITS.txt      licence and attribution of the derived material

Licence and credit: the recordings are the Free Spoken Digit Dataset (FSDD), Z. Jackson et al.,
CC BY-SA 4.0; the images are scikit-learn's copy of the UCI "Optical Recognition of Handwritten
Digits" test set (E. Alpaydin, C. Kaynak; CC BY 4.0). av-digits is derived from both and is
shared under CC BY-SA 4.0; keep the credit line in anything made from it.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import time
import wave
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from avret.data.locations import shared_data_dir, where_from
from avret.errors import AvretError, DataError
from avret.utils.atomic import check_output

FSDD_ENV = "AVRET_FSDD"
FSDD_PATTERN = re.compile(r"^([0-9])_([A-Za-z]+)_([0-9]+)\.wav$")
TEST_TAKES = range(0, 5)  # FSDD's official split: takes 0-4 are test
IMAGE_TEST_FRACTION = 0.2
DEFAULT_FRAMES = 4
DEFAULT_SIZE = 64
MANIFEST = "manifest.csv"
MEDIA_DIR = "media"
MARKER = "av_digits.json"
CREDITS = "CREDITS.txt"
MARKERS = (MARKER,)
FORMAT_VERSION = 1
MANIFEST_FIELDS = ("clip_id", "label", "split", "media", "speaker", "take", "image")
CREDIT_LINE = (
    "av-digits (CC BY-SA 4.0) is derived from the Free Spoken Digit Dataset (FSDD), Z. Jackson et al., "
    "CC BY-SA 4.0, https://github.com/Jakobovski/free-spoken-digit-dataset, and from the UCI Optical "
    "Recognition of Handwritten Digits data (E. Alpaydin, C. Kaynak; CC BY 4.0) as bundled by scikit-learn "
    "(sklearn.datasets.load_digits). Audio and pictures are paired by digit class, not by recording."
)


@dataclass(frozen=True)
class Recording:
    """One FSDD recording: ``{digit}_{speaker}_{take}.wav``."""

    path: Path
    digit: int
    speaker: str
    take: int

    @property
    def clip_id(self) -> str:
        return self.path.stem

    @property
    def split(self) -> str:
        return "test" if self.take in TEST_TAKES else "train"


@dataclass(frozen=True)
class ClipPlan:
    """One av-digits clip: its recording and the index of its picture in ``load_digits()``."""

    recording: Recording
    image: int

    @property
    def media(self) -> str:
        return f"{MEDIA_DIR}/{self.recording.clip_id}.mp4"


@dataclass
class AVDigitsReport:
    """What :func:`make_av_digits` wrote, and how long it took."""

    out_dir: Path
    n_clips: int
    counts: dict[str, int]
    seconds: float
    workers: int
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------- inputs


def default_fsdd_dir() -> Path:
    """``$AVRET_FSDD`` when set, else ``fsdd/recordings`` in the shared data directory
    (:func:`avret.data.locations.shared_data_dir`: ``$AVRET_DATA`` or ``../shared/data`` from the working directory)."""
    env = os.environ.get(FSDD_ENV)
    if env:
        return Path(env)
    return shared_data_dir() / "fsdd" / "recordings"


def resolve_fsdd_dir(path: str | Path | None) -> Path:
    """The folder holding the FSDD wavs: ``path`` itself or its ``recordings/`` sub-folder."""
    root = Path(path) if path is not None else default_fsdd_dir()
    if not root.is_dir():
        how = "--fsdd" if path is not None else f"the default ({where_from()}; or set {FSDD_ENV})"
        raise DataError(f"--fsdd {root}: directory not found; expected the FSDD recordings folder; {root} is "
                        f"{how}; pass --fsdd DIR")
    if (root / "recordings").is_dir() and not any(FSDD_PATTERN.match(p.name) for p in root.glob("*.wav")):
        root = root / "recordings"
    return root


def list_recordings(fsdd_dir: str | Path | None = None) -> list[Recording]:
    """Every ``{digit}_{speaker}_{take}.wav`` of the FSDD folder, sorted by (digit, speaker, take)."""
    root = resolve_fsdd_dir(fsdd_dir)
    recs = []
    for p in root.iterdir():
        m = FSDD_PATTERN.match(p.name)
        if m and p.is_file():
            recs.append(Recording(path=p, digit=int(m.group(1)), speaker=m.group(2), take=int(m.group(3))))
    if not recs:
        raise DataError(f"{root}: no FSDD recordings ({{digit}}_{{speaker}}_{{take}}.wav) found")
    recs.sort(key=lambda r: (r.digit, r.speaker, r.take))
    return recs


def load_digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's handwritten digits: ``(images (1797, 8, 8) float64 in 0..16, labels (1797,))``.

    Reads the ``digits.csv.gz`` that scikit-learn bundles (what ``load_digits`` reads) without
    importing scikit-learn (importing it costs seconds); falls back to ``load_digits`` itself.
    """
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("scikit-learn is not installed; av-digits needs its bundled handwritten digits "
                        "(sklearn.datasets.load_digits)")
    csv_gz = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    if csv_gz.is_file():
        with gzip.open(csv_gz, "rt", encoding="utf-8") as fh:
            data = np.loadtxt(fh, delimiter=",", dtype=np.float64)
        return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int)
    from sklearn.datasets import load_digits  # pragma: no cover - another layout of scikit-learn

    digits = load_digits()  # pragma: no cover
    return np.asarray(digits.images), np.asarray(digits.target)  # pragma: no cover


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """``(int16 mono samples, sample rate)`` of a 16-bit PCM wav; DataError (one line) otherwise."""
    try:
        with wave.open(str(path), "rb") as w:
            channels, width, rate, n = w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()
            raw = w.readframes(n)
    except (wave.Error, EOFError, OSError) as exc:
        raise DataError(f"{path}: not a readable WAV file ({exc or type(exc).__name__})") from None
    if width != 2:
        raise DataError(f"{path}: {8 * width}-bit samples, expected 16-bit PCM (FSDD)")
    pcm = np.frombuffer(raw, dtype="<i2")
    if channels > 1:
        pcm = pcm.reshape(-1, channels).mean(axis=1).round().astype(np.int16)
    if pcm.size == 0:
        raise DataError(f"{path}: no samples")
    return pcm, rate


# --------------------------------------------------------------------------------------------- plan


def split_image_pools(labels: np.ndarray, seed: int) -> dict[tuple[str, int], np.ndarray]:
    """Disjoint train/test image pools per digit: a seeded ``IMAGE_TEST_FRACTION`` of each digit is test."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    pools: dict[tuple[str, int], np.ndarray] = {}
    for digit in range(10):
        idx = np.flatnonzero(labels == digit)
        idx = idx[rng.permutation(idx.size)]
        n_test = max(1, int(round(IMAGE_TEST_FRACTION * idx.size)))
        pools[("test", digit)] = np.sort(idx[:n_test])
        pools[("train", digit)] = np.sort(idx[n_test:])
    return pools


def plan_av_digits(
    recordings: Sequence[Recording], labels: np.ndarray, seed: int = 0, limit_per_class: int | None = None
) -> list[ClipPlan]:
    """Pick the recordings (all, or a seeded ``limit_per_class`` per digit and split) and their images."""
    if limit_per_class is not None and limit_per_class < 1:
        raise AvretError(f"--limit-per-class must be >= 1, got {limit_per_class}")
    pools = split_image_pools(labels, seed)
    rng_subset = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    rng_deal = np.random.default_rng(np.random.SeedSequence([seed, 2]))
    plans: list[ClipPlan] = []
    for split in ("train", "test"):
        for digit in range(10):
            group = [r for r in recordings if r.digit == digit and r.split == split]
            if limit_per_class is not None and len(group) > limit_per_class:
                keep = np.sort(rng_subset.permutation(len(group))[:limit_per_class])
                group = [group[i] for i in keep]
            pool = pools[(split, digit)]
            order = pool[rng_deal.permutation(pool.size)]
            plans += [ClipPlan(rec, int(order[k % order.size])) for k, rec in enumerate(group)]
    plans.sort(key=lambda c: (c.recording.digit, c.recording.speaker, c.recording.take))
    return plans


def manifest_bytes(plans: Sequence[ClipPlan]) -> bytes:
    """The manifest CSV (``MANIFEST_FIELDS``), exactly as written."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(MANIFEST_FIELDS)
    for c in plans:
        r = c.recording
        writer.writerow([r.clip_id, str(r.digit), r.split, c.media, r.speaker, r.take, c.image])
    return buf.getvalue().encode("utf-8")


# --------------------------------------------------------------------------------------------- render


def digit_picture(image: np.ndarray, size: int = DEFAULT_SIZE) -> np.ndarray:
    """An 8x8 ``load_digits`` image (0..16) as a ``(size, size, 3)`` uint8 RGB picture (bicubic upscale)."""
    from PIL import Image

    grey = np.clip(np.asarray(image, dtype=np.float64) * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    big = Image.fromarray(grey).resize((size, size), Image.Resampling.BICUBIC)
    return np.ascontiguousarray(np.repeat(np.asarray(big)[:, :, None], 3, axis=2))


def render_clip(wav_path: str | Path, out_path: str | Path, picture: np.ndarray, frames: int = DEFAULT_FRAMES) -> float:
    """Write one mp4: the wav's samples as ALAC audio, ``picture`` as ``frames`` H.264 frames. Returns seconds."""
    import av

    pcm, rate = read_wav(Path(wav_path))
    n = pcm.size
    frames = max(1, min(frames, n))  # strictly increasing frame times even for a tiny recording
    tb = Fraction(1, rate)
    with av.open(str(out_path), "w", format="mp4") as container:
        video = container.add_stream("libx264", rate=Fraction(max(1, frames) * rate, n))
        video.width, video.height = int(picture.shape[1]), int(picture.shape[0])
        video.pix_fmt = "yuv420p"
        video.codec_context.time_base = tb
        video.options = {"preset": "ultrafast", "crf": "12", "threads": "1"}
        audio = container.add_stream("alac", rate=rate)
        audio.layout = "mono"
        audio.format = "s16p"
        for i in range(frames):
            vf = av.VideoFrame.from_ndarray(picture, format="rgb24")
            vf.pts, vf.time_base = (i * n) // frames, tb
            for packet in video.encode(vf):
                container.mux(packet)
        for packet in video.encode(None):
            container.mux(packet)
        af = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16p", layout="mono")
        af.sample_rate, af.pts, af.time_base = rate, 0, tb
        for packet in audio.encode(af):
            container.mux(packet)
        for packet in audio.encode(None):
            container.mux(packet)
    return n / rate


def _render_batch(jobs: list[tuple[str, str, np.ndarray]], frames: int, size: int) -> list[float]:
    return [render_clip(wav, out, digit_picture(img, size), frames) for wav, out, img in jobs]


# --------------------------------------------------------------------------------------------- build


def make_av_digits(
    fsdd_dir: str | Path | None,
    out_dir: str | Path,
    seed: int = 0,
    frames: int = DEFAULT_FRAMES,
    size: int = DEFAULT_SIZE,
    limit_per_class: int | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> AVDigitsReport:
    """Render av-digits (see module docstring) from the FSDD folder into ``out_dir``, atomically.

    ``workers``: rendering processes (default: the CPU count, at most 8; 0 or 1 render in-process).
    ``progress(done, total)`` is called as clips are written. Refuses (one line, nothing written) an
    ``out_dir`` that is a file, a directory of other files, or inside the FSDD folder.
    """
    from avret.utils.atomic import atomic_dir, write_json

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    if frames < 1:
        raise AvretError(f"--frames must be >= 1, got {frames}")
    if size < 16 or size % 2:
        raise AvretError(f"--size must be an even number >= 16 (H.264 yuv420p), got {size}")
    fsdd = resolve_fsdd_dir(fsdd_dir)
    check_output(out_dir, "av-digits data set", MARKERS, overwrite=overwrite, reads=(fsdd,))
    recordings = list_recordings(fsdd)
    images, labels = load_digit_images()
    plans = plan_av_digits(recordings, labels, seed, limit_per_class)
    workers = min(os.cpu_count() or 1, 8) if workers is None else max(0, int(workers))
    total = len(plans)
    seconds_audio = 0.0
    with atomic_dir(out_dir) as tmp:
        (tmp / MEDIA_DIR).mkdir()
        jobs = [(str(c.recording.path), str(tmp / c.media), images[c.image]) for c in plans]
        chunk = 25
        batches = [jobs[i : i + chunk] for i in range(0, total, chunk)]
        done = 0
        if workers <= 1:
            for batch in batches:
                seconds_audio += sum(_render_batch(batch, frames, size))
                done += len(batch)
                if progress is not None:
                    progress(done, total)
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # fork: workers run PyAV and PIL only (never torch), and a caller's script needs no
            # `if __name__ == "__main__"` guard (spawn would re-run it in every worker).
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
            with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
                futures = [pool.submit(_render_batch, b, frames, size) for b in batches]
                for fut, batch in zip(futures, batches, strict=True):
                    seconds_audio += sum(fut.result())
                    done += len(batch)
                    if progress is not None:
                        progress(done, total)
        (tmp / MANIFEST).write_bytes(manifest_bytes(plans))
        (tmp / CREDITS).write_text(CREDIT_LINE + "\n", encoding="utf-8")
        counts = {s: sum(c.recording.split == s for c in plans) for s in ("train", "test")}
        pools = split_image_pools(labels, seed)
        write_json(tmp / MARKER, {
            "format": FORMAT_VERSION,
            "kind": "av-digits",
            "seed": seed,
            "frames": frames,
            "size": size,
            "limit_per_class": limit_per_class,
            "fsdd_dir": str(fsdd.resolve()),
            "n_clips": total,
            "counts": counts,
            "image_pools": {s: int(sum(pools[(s, d)].size for d in range(10))) for s in ("train", "test")},
            "images_used": {s: len({c.image for c in plans if c.recording.split == s}) for s in ("train", "test")},
            "audio_seconds": round(seconds_audio, 3),
            "audio": "the FSDD recording's samples, 8 kHz mono, ALAC (lossless)",
            "video": f"{frames} H.264 frames of one {size}x{size} load_digits image of the same digit",
            "pairing": "by class (as AV-MNIST), not by recording",
            "split": "FSDD official: takes 0-4 test, 5-49 train; disjoint image pools per split",
            "credit": CREDIT_LINE,
        })
    return AVDigitsReport(out_dir=out_dir, n_clips=total, counts=counts, seconds=time.perf_counter() - t0,
                          workers=workers, extra={"audio_seconds": seconds_audio})


def read_av_digits(path: str | Path) -> dict[str, Any]:
    """The ``av_digits.json`` record of an av-digits output folder (DataError if it is not one)."""
    p = Path(path) / MARKER
    if not p.is_file():
        raise DataError(f"{path}: no {MARKER}; expected a folder written by `avret data make-av-digits`")
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
