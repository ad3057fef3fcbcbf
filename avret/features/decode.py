"""Decode media files with PyAV: audio to 16 kHz mono float32, video to frames sampled at a fixed rate.

Every problem with a file (missing, zero-length, corrupt, no audio or no video track, a track
that decodes to nothing) raises :class:`avret.errors.DataError` with one line naming the file and
the problem, so a batch extraction can record it and go on with the next file.

Audio follows the VGGish reference (``vggish_input.waveform_to_examples``): channels are averaged
to mono *before* resampling; the resampler is :func:`torchaudio.functional.resample` (windowed
sinc, Kaiser window) instead of the reference's ``resampy``, so waveforms resampled from another
rate differ from the reference by the resampler's (small) filter differences; 16 kHz input is
passed through untouched.

:func:`decode_clip` decodes one file for ``features extract``: VGGish log-mel examples of its audio
and its sampled frames preprocessed by each visual encoder's transform, as a :class:`DecodedClip`
(whose ``error`` holds the one-line reason when the file is bad).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from avret.errors import AvretError, DataError

if TYPE_CHECKING:
    import torch

SAMPLE_RATE = 16_000

AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".m4a", ".aac", ".ogg", ".opus")
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")
MEDIA_EXTENSIONS = AUDIO_EXTENSIONS + VIDEO_EXTENSIONS


@dataclass
class MediaInfo:
    """What the container says about a file (durations in seconds; None where unknown)."""

    path: Path
    has_audio: bool
    has_video: bool
    duration: float | None
    audio_duration: float | None
    video_duration: float | None
    audio_rate: int | None
    video_rate: float | None


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: zero-length file")


def _open(path: Path):  # noqa: ANN202 - av container type
    import av

    _check_file(path)
    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable media file ({_short(exc)})") from None


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


def _stream_duration(stream) -> float | None:  # noqa: ANN001
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    return None


def probe(path: str | Path) -> MediaInfo:
    """Read the container header (no decoding): which tracks exist and their durations."""
    path = Path(path)
    with _open(path) as container:
        audio = container.streams.audio[0] if container.streams.audio else None
        video = container.streams.video[0] if container.streams.video else None
        return MediaInfo(
            path=path,
            has_audio=audio is not None,
            has_video=video is not None,
            duration=container.duration / 1_000_000 if container.duration else None,
            audio_duration=_stream_duration(audio) if audio is not None else None,
            video_duration=_stream_duration(video) if video is not None else None,
            audio_rate=audio.codec_context.sample_rate if audio is not None else None,
            video_rate=float(video.average_rate) if video is not None and video.average_rate else None,
        )


def decode_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decode the first audio track to a mono float32 waveform at ``sample_rate`` (values in [-1, 1]).

    Raises DataError when the file has no audio track, is corrupt, or decodes to no samples.
    """
    import av
    import torch
    import torchaudio.functional as AF

    path = Path(path)
    with _open(path) as container:
        if not container.streams.audio:
            raise DataError(f"{path}: no audio track")
        stream = container.streams.audio[0]
        # Planar float at the source rate and layout: we average channels and resample ourselves.
        resampler = av.AudioResampler(format="fltp")
        chunks: list[np.ndarray] = []
        src_rate: int | None = None
        try:
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    src_rate = src_rate or out.sample_rate
                    chunks.append(out.to_ndarray().mean(axis=0, dtype=np.float64))
            for out in resampler.resample(None):
                src_rate = src_rate or out.sample_rate
                chunks.append(out.to_ndarray().mean(axis=0, dtype=np.float64))
        except (av.FFmpegError, ValueError) as exc:
            raise DataError(f"{path}: corrupt audio track ({_short(exc)})") from None
    if not chunks or src_rate is None or sum(len(c) for c in chunks) == 0:
        raise DataError(f"{path}: audio track decodes to no samples")
    wave = np.concatenate(chunks).astype(np.float32)
    if src_rate != sample_rate:
        wave = AF.resample(torch.from_numpy(wave), src_rate, sample_rate).numpy()
    return np.ascontiguousarray(wave, dtype=np.float32)


def sample_times(duration: float | None, fps: float, max_frames: int) -> list[float] | None:
    """Target times (seconds from the first frame) for sampling at ``fps``, at most ``max_frames``.

    With a known duration: ``k / fps`` for every ``k / fps < duration``; when that is more than
    ``max_frames``, ``max_frames`` of them evenly spaced over the whole clip (so a long video is
    covered end to end, not just its start). With an unknown duration: None (the caller keeps the
    first ``max_frames`` times ``k / fps``).
    """
    if duration is None or duration <= 0:
        return None
    n = max(1, math.ceil(duration * fps - 1e-9))
    times = [k / fps for k in range(n)]
    if n > max_frames:
        idx = np.linspace(0, n - 1, max_frames).round().astype(int)
        times = [times[i] for i in idx]
    return times


def decode_frames(path: str | Path, fps: float = 1.0, max_frames: int = 32) -> tuple[list, list[float]]:
    """Decode the first video track and keep one frame per ``1 / fps`` seconds (see :func:`sample_times`).

    Returns ``(images, times)``: RGB ``PIL.Image`` frames and their times in seconds from the first
    frame. For each target time the first decoded frame at or after it is kept (each decoded frame
    at most once). Raises DataError for a missing or undecodable video track.
    """
    import av

    if fps <= 0:
        raise DataError(f"fps must be > 0, got {fps}")
    if max_frames < 1:
        raise DataError(f"max_frames must be >= 1, got {max_frames}")
    path = Path(path)
    with _open(path) as container:
        if not container.streams.video:
            raise DataError(f"{path}: no video track")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        duration = _stream_duration(stream)
        if duration is None and container.duration:
            duration = container.duration / 1_000_000
        targets = sample_times(duration, fps, max_frames)
        rate = float(stream.average_rate) if stream.average_rate else 25.0
        images: list = []
        times: list[float] = []
        t0: float | None = None
        k = 0  # index of the next target
        try:
            for i, frame in enumerate(container.decode(stream)):
                t_abs = frame.time if frame.time is not None else i / rate
                if t0 is None:
                    t0 = t_abs
                t = t_abs - t0
                next_t = targets[k] if targets is not None else k / fps
                # Tolerance of a tenth of a frame interval against rounding in pts.
                if t + 0.1 / rate >= next_t:
                    images.append(frame.to_image())
                    times.append(t)
                    # Skip every target this frame already covers.
                    while True:
                        k += 1
                        if targets is not None and k >= len(targets):
                            break
                        nt = targets[k] if targets is not None else k / fps
                        if nt > t + 0.1 / rate:
                            break
                    if (targets is not None and k >= len(targets)) or len(images) >= max_frames:
                        break
        except (av.FFmpegError, ValueError) as exc:
            if not images:
                raise DataError(f"{path}: corrupt video track ({_short(exc)})") from None
            # A truncated tail: keep the frames decoded so far.
    if not images:
        raise DataError(f"{path}: video track decodes to no frames")
    return images, times


# --------------------------------------------------------------------------------------------- one clip


@contextlib.contextmanager
def single_torch_thread() -> Iterator[None]:
    """Run the decoding-side tensor ops (resampling, log-mel, frame transforms) on one thread.

    They are small, and intra-op threading makes them much slower on a busy machine (measured on
    2 shared cores: log-mel of 10 s 17 ms vs 150 ms, resampling 8 ms vs 160 ms, one frame's
    ToTensor+Normalize 6 ms vs ~100 ms); DataLoader workers run single-threaded anyway.
    """
    import torch

    prev = torch.get_num_threads()
    if prev == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)


@dataclass
class DecodedClip:
    """One decoded file, ready for the models (or its one-line error)."""

    clip_id: str
    path: str
    examples: torch.Tensor | None = None  # (n, 96, 64) VGGish examples
    pixels: dict[str, torch.Tensor] = field(default_factory=dict)  # encoder -> (T, 3, H, W)
    n_frames: int = 0
    audio_seconds: float = 0.0
    decode_seconds: float = 0.0
    error: str | None = None


def decode_clip(
    clip_id: str,
    path: str | Path,
    fps: float,
    max_frames: int,
    transforms: dict[str, Callable[[Any], torch.Tensor]],
    audio: bool = True,
    video: bool = True,
) -> DecodedClip:
    """Decode one file into VGGish examples and preprocessed frames; errors become ``.error``."""
    import torch

    from avret.features import vggish_frontend as fe

    t0 = time.perf_counter()
    out = DecodedClip(clip_id=clip_id, path=str(path))
    try:
        with single_torch_thread():
            if audio:
                wave = decode_audio(path)
                out.audio_seconds = len(wave) / fe.SAMPLE_RATE
                out.examples = fe.waveform_to_examples(torch.from_numpy(wave))
            if video:
                images, _ = decode_frames(path, fps, max_frames)
                out.n_frames = len(images)
                out.pixels = {name: torch.stack([tf(im) for im in images]) for name, tf in transforms.items()}
    except AvretError as exc:
        out.error = str(exc)
    except Exception as exc:  # noqa: BLE001 - one bad file must not stop the run
        detail = " ".join(str(exc).split())
        out.error = f"{path}: unexpected error while decoding ({type(exc).__name__}: {detail})"
    out.decode_seconds = time.perf_counter() - t0
    if out.error:
        out.examples, out.pixels = None, {}
    return out
