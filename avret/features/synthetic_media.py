"""Small synthetic media files (tone or noise audio, a square moving over a gradient) written with PyAV,
plain wavs (a tone or silence, of any length) and a small labelled media set.

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


def write_wav(path: str | Path, seconds: float, freq: float | None = None, rate: int = 16000) -> Path:
    """A mono 16-bit PCM wav: a sine tone of ``freq`` Hz (amplitude 0.3), or silence when ``freq`` is None.

    Written in 10-s blocks, so a long (e.g. one-hour) file never sits in memory whole.
    """
    import wave

    path = Path(path)
    n, block = int(seconds * rate), 10 * rate
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        for start in range(0, n, block):
            t = np.arange(start, min(n, start + block)) / rate
            sig = np.zeros_like(t) if freq is None else 0.3 * np.sin(2 * np.pi * freq * t)
            w.writeframes((sig * 32767).astype("<i2").tobytes())
    return path


def write_labelled_media(directory: str | Path, n: int = 12, n_test: int = 4) -> tuple[Path, Path]:
    """``n`` one-second mp4 clips ``c0..c{n-1}`` in ``directory/clips`` (even: a 300 Hz tone, class
    'low'; odd: noise, class 'high'; the last ``n_test`` in the test split) and ``directory/labels.csv``.

    Returns ``(media_dir, labels_csv)``.
    """
    directory = Path(directory)
    media = directory / "clips"
    media.mkdir(parents=True, exist_ok=True)
    rows = ["clip_id,label,split"]
    for i in range(n):
        low = i % 2 == 0
        write_media(media / f"c{i}.mp4", seconds=1.0, freq=300.0 if low else 2000.0, noise=not low)
        rows.append(f"c{i},{'low' if low else 'high'},{'test' if i >= n - n_test else 'train'}")
    (directory / "labels.csv").write_text("\n".join(rows) + "\n")
    return media, directory / "labels.csv"
