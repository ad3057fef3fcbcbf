"""Decode media files with PyAV: audio to 16 kHz mono float32, video to frames sampled at a fixed rate.

Every problem with a file (missing, zero-length, corrupt, no audio or no video track, a track
that decodes to nothing) raises :class:`avret.errors.DataError` with one line naming the file and
the problem, so a batch extraction can record it and go on with the next file.

Audio follows the VGGish reference (``vggish_input.waveform_to_examples``): channels are averaged
to mono *before* resampling; the resampler is :func:`torchaudio.functional.resample` (windowed
sinc, Kaiser window) instead of the reference's ``resampy``, so waveforms resampled from another
rate differ from the reference by the resampler's (small) filter differences; 16 kHz input is
passed through untouched.

Memory does not grow with the file's length where it need not: :class:`AudioStream` decodes,
down-mixes and resamples the audio chunk by chunk (:class:`StreamResampler` gives exactly the
one-shot resampler's samples), ``max_seconds`` stops decoding early (queries use the first minute by
default, see :data:`avret.features.extract.QUERY_MAX_SECONDS`), :func:`decode_frames` keeps only the
sampled frames, and :func:`require_tracks` checks the needed tracks from the container header before
anything is decoded.

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


#: Seconds of source audio decoded before each processing step of the stream (resampling, log-mel).
CHUNK_SECONDS = 10.0


class StreamResampler:
    """Resample a waveform fed in chunks exactly as :func:`torchaudio.functional.resample` of the whole.

    torchaudio's windowed-sinc resampler computes output block ``b`` (``new // gcd`` samples) from
    the input samples ``[b * o - width, b * o + o + width)`` (``o = orig // gcd``). Each chunk is
    therefore resampled with ``ctx`` (a multiple of ``o``, more than ``width``) input samples of
    context on both sides and only the output blocks whose input lies fully inside it are kept, so
    the concatenated output equals the one-shot result (up to float rounding), while memory stays
    at one chunk.
    """

    def __init__(self, orig_freq: int, new_freq: int, lowpass_filter_width: int = 6, rolloff: float = 0.99) -> None:
        g = math.gcd(int(orig_freq), int(new_freq))
        self.orig_freq, self.new_freq = int(orig_freq), int(new_freq)
        self.o, self.n = self.orig_freq // g, self.new_freq // g
        width = math.ceil(lowpass_filter_width * self.o / (min(self.o, self.n) * rolloff))
        self.ctx = self.o * (math.ceil((width + 1) / self.o) + 1)
        self.buf = np.zeros(0, np.float32)
        self.buf_start = 0  # global input index of buf[0]
        self.blocks_done = 0  # output blocks emitted so far
        self.length = 0  # input samples fed so far

    def _resample(self, x: np.ndarray) -> np.ndarray:
        import torch
        import torchaudio.functional as AF

        return AF.resample(torch.from_numpy(np.ascontiguousarray(x)), self.orig_freq, self.new_freq).numpy()

    def _emit(self, end_block: int | None) -> np.ndarray:
        """Output blocks ``blocks_done .. end_block`` (None: to the end of the input, which has ended)."""
        b0 = self.blocks_done
        left = min(self.ctx, b0 * self.o)
        start = b0 * self.o - left
        lo = start - self.buf_start
        if end_block is None:
            chunk = self.buf[lo:]
            out = self._resample(chunk)[(left // self.o) * self.n:]
            target = self.target_length() - b0 * self.n
            out = out[:target]
            self.blocks_done = math.ceil(self.length / self.o)
        else:
            hi = end_block * self.o + self.ctx - self.buf_start
            out = self._resample(self.buf[lo:hi])[(left // self.o) * self.n:(left // self.o + end_block - b0) * self.n]
            self.blocks_done = end_block
        # Keep only what the next blocks need (their left context).
        keep_from = max(0, self.blocks_done * self.o - self.ctx)
        self.buf = self.buf[keep_from - self.buf_start:]
        self.buf_start = keep_from
        return np.ascontiguousarray(out, dtype=np.float32)

    def target_length(self) -> int:
        """Output length for the input so far, rounded as torchaudio does (``ceil`` of a float32)."""
        import torch

        return int(torch.ceil(torch.as_tensor(self.n * self.length / self.o)))

    def feed(self, x: np.ndarray) -> np.ndarray:
        """Add input samples; return the output that is final so far (may be empty)."""
        if self.orig_freq == self.new_freq:
            self.length += len(x)
            return np.asarray(x, np.float32)
        self.buf = np.concatenate([self.buf, np.asarray(x, np.float32)])
        self.length += len(x)
        end_block = (self.length - self.ctx) // self.o
        if end_block <= self.blocks_done:
            return np.zeros(0, np.float32)
        return self._emit(end_block)

    def flush(self) -> np.ndarray:
        """The rest of the output once the input has ended."""
        if self.orig_freq == self.new_freq or self.length == 0:
            return np.zeros(0, np.float32)
        return self._emit(None)


class AudioStream:
    """The first audio track of a file as a stream of 16 kHz (``sample_rate``) mono float32 chunks.

    Memory is bounded by one chunk (:data:`CHUNK_SECONDS` of source audio), whatever the file's
    length; ``max_seconds`` stops decoding after that many seconds of output (None: the whole
    track). The track is checked when the stream is created (``no audio track`` is raised before
    anything is decoded). The samples equal :func:`decode_audio`'s: channels averaged to mono, then
    :class:`StreamResampler` (= :func:`torchaudio.functional.resample` of the whole waveform).
    ``samples`` counts the output samples produced so far.
    """

    def __init__(self, path: str | Path, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None,
                 chunk_seconds: float = CHUNK_SECONDS) -> None:
        if max_seconds is not None and not max_seconds > 0:
            raise DataError(f"max_seconds must be > 0, got {max_seconds}")
        self.path, self.sample_rate, self.max_seconds = Path(path), int(sample_rate), max_seconds
        self.chunk_seconds = chunk_seconds
        self.samples = 0
        with _open(self.path) as container:  # fail fast on a missing track, before any decoding
            if not container.streams.audio:
                raise DataError(f"{self.path}: no audio track")

    @property
    def seconds(self) -> float:
        """Seconds of audio produced so far."""
        return self.samples / self.sample_rate

    def __iter__(self) -> Iterator[np.ndarray]:
        import av

        path = self.path
        limit = None if self.max_seconds is None else max(1, round(self.max_seconds * self.sample_rate))
        with _open(path) as container:
            stream = container.streams.audio[0]
            # Planar float at the source rate and layout: we average channels and resample ourselves.
            resampler = av.AudioResampler(format="fltp")
            rs: StreamResampler | None = None
            pending: list[np.ndarray] = []
            n_pending = 0
            src_limit: int | None = None  # source samples needed for `limit` output samples
            n_src = 0

            def process(final: bool) -> np.ndarray:
                nonlocal pending, n_pending
                x = (np.concatenate(pending).astype(np.float32) if pending else np.zeros(0, np.float32))
                pending, n_pending = [], 0
                out = rs.feed(x) if rs is not None else x
                if final and rs is not None:
                    out = np.concatenate([out, rs.flush()])
                return out

            def frames() -> Iterator[Any]:
                for frame in container.decode(stream):
                    yield from resampler.resample(frame)
                yield from resampler.resample(None)

            done = False
            try:
                for out in frames():
                    if rs is None:
                        rs = StreamResampler(out.sample_rate, self.sample_rate)
                        if limit is not None:
                            blocks = math.ceil(limit / rs.n)
                            src_limit = blocks * rs.o + rs.ctx
                    mono = out.to_ndarray().mean(axis=0, dtype=np.float64)
                    if src_limit is not None and n_src + len(mono) >= src_limit:
                        mono = mono[: src_limit - n_src]
                        done = True
                    n_src += len(mono)
                    pending.append(mono)
                    n_pending += len(mono)
                    if done:
                        break
                    if n_pending >= self.chunk_seconds * out.sample_rate:
                        yield from self._emit(process(final=False), limit)
                        if limit is not None and self.samples >= limit:
                            return
            except (av.FFmpegError, ValueError) as exc:
                raise DataError(f"{path}: corrupt audio track ({_short(exc)})") from None
            if rs is None:
                raise DataError(f"{path}: audio track decodes to no samples")
            yield from self._emit(process(final=True), limit)
        if self.samples == 0:
            raise DataError(f"{path}: audio track decodes to no samples")

    def _emit(self, out: np.ndarray, limit: int | None) -> Iterator[np.ndarray]:
        if limit is not None:
            out = out[: max(0, limit - self.samples)]
        if len(out):
            self.samples += len(out)
            yield out

    def examples(self) -> Iterator[torch.Tensor]:
        """VGGish log-mel examples ``(n, 96, 64)`` of the stream, chunk by chunk (see ``iter_examples``)."""
        from avret.features.vggish_frontend import iter_examples

        return iter_examples(iter(self))


def decode_audio(path: str | Path, sample_rate: int = SAMPLE_RATE, max_seconds: float | None = None) -> np.ndarray:
    """Decode the first audio track to a mono float32 waveform at ``sample_rate`` (values in [-1, 1]).

    ``max_seconds``: keep only the first that many seconds (decoding stops there, so a long file
    costs no more than that); None: the whole track (memory grows with its length: stream long
    files with :class:`AudioStream` instead). Raises DataError when the file has no audio track, is
    corrupt, or decodes to no samples.
    """
    chunks = list(AudioStream(path, sample_rate, max_seconds))
    return np.ascontiguousarray(np.concatenate(chunks), dtype=np.float32)


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


def decode_frames(
    path: str | Path, fps: float = 1.0, max_frames: int = 32, max_seconds: float | None = None
) -> tuple[list, list[float]]:
    """Decode the first video track and keep one frame per ``1 / fps`` seconds (see :func:`sample_times`).

    Returns ``(images, times)``: RGB ``PIL.Image`` frames and their times in seconds from the first
    frame. For each target time the first decoded frame at or after it is kept (each decoded frame
    at most once); only the kept frames are held (at most ``max_frames``), every other decoded frame
    is dropped at once. ``max_seconds``: use only the first that many seconds of the track (the
    targets are spread over them and decoding stops there). Raises DataError for a missing or
    undecodable video track.
    """
    import av

    if fps <= 0:
        raise DataError(f"fps must be > 0, got {fps}")
    if max_frames < 1:
        raise DataError(f"max_frames must be >= 1, got {max_frames}")
    if max_seconds is not None and not max_seconds > 0:
        raise DataError(f"max_seconds must be > 0, got {max_seconds}")
    path = Path(path)
    with _open(path) as container:
        if not container.streams.video:
            raise DataError(f"{path}: no video track")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        duration = _stream_duration(stream)
        if duration is None and container.duration:
            duration = container.duration / 1_000_000
        if max_seconds is not None and duration is not None:
            duration = min(duration, max_seconds)
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
                if max_seconds is not None and t >= max_seconds and images:
                    break
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
    examples: torch.Tensor | None = None  # the audio encoder's examples, e.g. (n, 96, 64) for VGGish
    pixels: dict[str, torch.Tensor] = field(default_factory=dict)  # encoder -> (T, 3, H, W)
    n_frames: int = 0
    audio_seconds: float = 0.0
    decode_seconds: float = 0.0
    error: str | None = None


def require_tracks(path: str | Path, audio: bool = False, video: bool = False) -> MediaInfo:
    """:func:`probe` ``path`` and raise DataError (one line) when a needed track is missing.

    Reads the container header only, so a file without the needed track fails at once, however long.
    """
    info = probe(path)
    if audio and not info.has_audio:
        raise DataError(f"{info.path}: no audio track")
    if video and not info.has_video:
        raise DataError(f"{info.path}: no video track")
    return info


def decode_clip(
    clip_id: str,
    path: str | Path,
    fps: float,
    max_frames: int,
    transforms: dict[str, Callable[[Any], torch.Tensor]],
    audio: bool = True,
    video: bool = True,
    max_seconds: float | None = None,
    audio_frontend: tuple[int, Callable[[np.ndarray], torch.Tensor]] | None = None,
) -> DecodedClip:
    """Decode one file into audio examples and preprocessed frames; errors become ``.error``.

    Both needed tracks are checked (:func:`require_tracks`) before anything is decoded.
    ``audio_frontend``: None for VGGish, whose audio is streamed (:class:`AudioStream`): the clip
    holds its log-mel examples (25 kB per second of audio), never the whole waveform. Otherwise
    ``(sample_rate, waveform -> examples)`` (``avret.features.real_encoders.AUDIO_FRONTENDS``): the
    waveform is decoded at that rate (the whole of it, or its first ``max_seconds``) and turned into
    that encoder's examples. ``max_seconds``: use only the first that many seconds (None: all).
    """
    import torch

    t0 = time.perf_counter()
    out = DecodedClip(clip_id=clip_id, path=str(path))
    try:
        with single_torch_thread():
            require_tracks(path, audio=audio, video=video)
            if audio and audio_frontend is None:
                stream = AudioStream(path, max_seconds=max_seconds)
                out.examples = torch.cat(list(stream.examples()))
                out.audio_seconds = stream.seconds
            elif audio:
                rate, frontend = audio_frontend
                wave = decode_audio(path, rate, max_seconds)
                out.examples = frontend(wave)
                out.audio_seconds = len(wave) / rate
            if video:
                images, _ = decode_frames(path, fps, max_frames, max_seconds)
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
