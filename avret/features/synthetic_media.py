"""Small synthetic media files (tone or noise audio, a square moving over a gradient) written with PyAV.

Used by the tests and ``benchmarks/bench_features.py`` so neither needs real data: H.264 + AAC in
``.mp4`` (like the MOSI / VEGAS clips), AAC-only ``.m4a``, 16-bit PCM ``.wav``; with or without an
audio or a video track.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_media(
    path: str | Path,
    seconds: float = 2.0,
    audio: bool = True,
    video: bool = True,
    freq: float = 440.0,
    noise: bool = False,
    sample_rate: int = 44100,
    fps: int = 10,
    size: tuple[int, int] = (64, 48),
) -> Path:
    """A small file with a tone (or noise) and/or a square moving across a gradient, via PyAV."""
    import av

    path = Path(path)
    fmt = {".wav": "wav", ".m4a": "mp4"}.get(path.suffix)
    rng = np.random.default_rng(int(freq))
    with av.open(str(path), "w", format=fmt) as c:
        vs = a_s = None
        if video:
            vs = c.add_stream("libx264", rate=fps)
            vs.width, vs.height, vs.pix_fmt = size[0], size[1], "yuv420p"
        if audio:
            codec = "pcm_s16le" if path.suffix == ".wav" else "aac"
            a_s = c.add_stream(codec, rate=sample_rate)
            a_s.layout = "stereo" if path.suffix != ".wav" else "mono"
        if vs is not None:
            w, h = size
            for i in range(int(seconds * fps)):
                img = np.zeros((h, w, 3), np.uint8)
                img[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
                sq = max(4, h // 4)
                x = int(i * (w - sq) / max(1, seconds * fps - 1))
                img[h // 3 : h // 3 + sq, x : x + sq] = (255, 255, 0)
                frame = av.VideoFrame.from_ndarray(img, format="rgb24")
                for pkt in vs.encode(frame):
                    c.mux(pkt)
            for pkt in vs.encode(None):
                c.mux(pkt)
        if a_s is not None:
            n = int(seconds * sample_rate)
            t = np.arange(n) / sample_rate
            sig = 0.1 * rng.standard_normal(n) if noise else 0.4 * np.sin(2 * np.pi * freq * t)
            chans = 1 if path.suffix == ".wav" else 2
            if path.suffix == ".wav":
                data = (sig * 32767).astype(np.int16)[None, :]
                frame_fmt = "s16"
            else:
                data = np.repeat(sig[None, :], chans, axis=0).astype(np.float32)
                frame_fmt = "fltp"
            step = 1024
            for start in range(0, n, step):
                chunk = np.ascontiguousarray(data[:, start : start + step])
                frame = av.AudioFrame.from_ndarray(chunk, format=frame_fmt, layout=a_s.layout.name)
                frame.sample_rate = sample_rate
                frame.pts = start
                for pkt in a_s.encode(frame):
                    c.mux(pkt)
            for pkt in a_s.encode(None):
                c.mux(pkt)
    return path
