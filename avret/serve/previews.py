"""Small pictures of indexed clips for the search page: a poster frame of a video, a spectrogram of a sound.

Made from the clip's own media file (the index's clip → path table, never a path from a request),
on first request, and cached as PNG files in the index directory (``INDEX/previews/``), each written
atomically; a read-only index keeps them in memory instead (at most :data:`MEMORY_CACHE` of them).
A cached picture is keyed by the clip id and its media file's path, size and mtime, so a clip whose
media changed gets a new one.
"""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from avret.errors import AvretError, DataError

#: Folder of the cached pictures inside the index root.
PREVIEW_DIR = "previews"
KINDS = ("poster", "spectrogram")
#: Pictures kept in memory when the index directory cannot be written.
MEMORY_CACHE = 512
#: Longest stretch of a clip decoded for its spectrogram, in seconds.
SPECTROGRAM_SECONDS = 10.0
SPECTROGRAM_SIZE = (320, 96)  # width, height in pixels
POSTER_MAX_SIDE = 320

# A perceptually ordered dark-to-bright colour ramp (viridis' end points and three stops between).
_RAMP = np.array([[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]], dtype=np.float64)


class PreviewCache:
    """PNG previews of the clips of one index root (thread-safe)."""

    def __init__(self, index_root: Path) -> None:
        self.dir = Path(index_root) / PREVIEW_DIR
        self._memory: OrderedDict[str, bytes] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, kind: str, clip_id: str, media: Path) -> bytes:
        """The PNG of ``kind`` for ``clip_id`` (whose media file is ``media``); made once, then cached.

        Raises :class:`DataError` (one line, no path) when the file has no track of that kind or
        cannot be decoded.
        """
        if kind not in KINDS:
            raise DataError(f"preview kind {kind!r}: expected one of {list(KINDS)}")
        stat = media.stat()
        key = hashlib.sha256(f"{clip_id}\0{media}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:32]
        path = self.dir / kind / f"{key}.png"
        with self._lock:
            if key + kind in self._memory:
                return self._memory[key + kind]
        if path.is_file():
            return path.read_bytes()
        data = render_poster(media) if kind == "poster" else render_spectrogram(media)
        try:
            from avret.utils.atomic import atomic_file

            with atomic_file(path, "wb") as fh:
                fh.write(data)
        except (AvretError, OSError):  # a read-only index: keep it in memory
            with self._lock:
                self._memory[key + kind] = data
                while len(self._memory) > MEMORY_CACHE:
                    self._memory.popitem(last=False)
        return data


def _png(image: object) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)  # type: ignore[attr-defined]
    return buf.getvalue()


def render_poster(media: Path) -> bytes:
    """The middle one of a few frames from the first seconds of the video track, as PNG (at most
    :data:`POSTER_MAX_SIDE` pixels a side; tiny frames are kept at their size, the page upscales them)."""
    from avret.features.decode import decode_frames

    try:
        frames, _ = decode_frames(media, fps=2.0, max_frames=5, max_seconds=10.0)
    except DataError:
        raise DataError("this clip has no decodable video track") from None
    if not frames:
        raise DataError("this clip has no decodable video frame")
    image = frames[len(frames) // 2].convert("RGB")
    image.thumbnail((POSTER_MAX_SIDE, POSTER_MAX_SIDE))
    return _png(image)


def spectrogram_image(wave: np.ndarray, sample_rate: int, size: tuple[int, int] = SPECTROGRAM_SIZE) -> np.ndarray:
    """(height, width, 3) uint8 log-magnitude spectrogram of a mono waveform (low frequencies at the bottom)."""
    width, height = size
    n_fft, hop = 512, 128
    x = np.asarray(wave, dtype=np.float64)
    if x.size < n_fft:
        x = np.pad(x, (0, n_fft - x.size))
    n_frames = 1 + (x.size - n_fft) // hop
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * np.hanning(n_fft), axis=1))  # (frames, bins)
    db = 20 * np.log10(spec + 1e-6)
    top = db.max()
    level = np.clip((db - (top - 80.0)) / 80.0, 0.0, 1.0)  # an 80 dB range below the loudest bin
    # resample to the picture size: columns = time, rows = frequency (flipped: low at the bottom)
    cols = np.linspace(0, level.shape[0] - 1, width).round().astype(int)
    rows = np.linspace(0, level.shape[1] - 1, height).round().astype(int)
    grid = level[cols][:, rows].T[::-1]
    pos = grid * (len(_RAMP) - 1)
    lo = np.floor(pos).astype(int).clip(0, len(_RAMP) - 2)
    frac = (pos - lo)[..., None]
    rgb = _RAMP[lo] * (1 - frac) + _RAMP[lo + 1] * frac
    return rgb.round().astype(np.uint8)


def render_spectrogram(media: Path) -> bytes:
    """A spectrogram PNG of the first :data:`SPECTROGRAM_SECONDS` of the audio track."""
    from PIL import Image

    from avret.features.decode import decode_audio

    rate = 16000
    try:
        wave = decode_audio(media, rate, max_seconds=SPECTROGRAM_SECONDS)
    except DataError:
        raise DataError("this clip has no decodable audio track") from None
    return _png(Image.fromarray(spectrogram_image(wave, rate)))


__all__ = ["KINDS", "PREVIEW_DIR", "PreviewCache", "render_poster", "render_spectrogram", "spectrogram_image"]
