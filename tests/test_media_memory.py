"""Long media in bounded memory: streamed audio, a capped query, the track check before any decoding.

A query's memory must not grow with the length of the file (issue: a 1-hour silent wav peaked at
5.3 GB RSS). Generated silent wavs of 30 s and 10 min (written here, a few MB) go through the library
query path; the decoded buffer is bounded by ``max_seconds`` and the peak traced (numpy) memory of the
whole query is the same for both lengths. ``benchmarks/bench_media_rss.py`` measures the process RSS.
"""

from __future__ import annotations

import time
import tracemalloc
import wave
from pathlib import Path

import numpy as np
import pytest
import torch

from avret.errors import DataError
from avret.features import vggish_frontend as fe
from avret.features.decode import AudioStream, decode_audio, decode_clip, decode_frames
from avret.features.extract import QUERY_MAX_SECONDS, ExtractConfig, embed_query_media
from avret.features.synthetic_media import write_media, write_wav
from avret.features.vggish import VGGish


@pytest.fixture(scope="module")
def wavs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("long")
    return {"30s": write_wav(d / "q30s.wav", 30), "4min": write_wav(d / "q4min.wav", 240),
            "10min": write_wav(d / "q10min.wav", 600)}


@pytest.fixture(scope="module")
def audio_config(tmp_path_factory) -> ExtractConfig:
    """An extract config with tiny random VGGish weights (audio queries need nothing else)."""
    d = tmp_path_factory.mktemp("vggish")
    torch.manual_seed(0)
    torch.save(VGGish((4, 4, 8, 8, 8, 8), (16, 16, 128)).state_dict(), d / "vggish.pth")
    return ExtractConfig(vggish=d / "vggish.pth", device="cpu")


def _traced_peak(fn) -> int:  # noqa: ANN001
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_decode_audio_max_seconds_bounds_the_buffer(wavs):
    wave10 = decode_audio(wavs["10min"], max_seconds=5.0)
    assert wave10.shape == (5 * 16000,) and wave10.dtype == np.float32
    assert decode_audio(wavs["30s"], max_seconds=1000.0).shape == (30 * 16000,)  # a cap past the end
    with pytest.raises(DataError, match="max_seconds must be > 0"):
        decode_audio(wavs["30s"], max_seconds=0)
    # The stream hands out one chunk at a time, never more than CHUNK_SECONDS of audio.
    stream = AudioStream(wavs["10min"], chunk_seconds=10.0)
    sizes = [len(c) for c in stream]
    assert sum(sizes) == 600 * 16000 == stream.samples and max(sizes) <= 10 * 16000 + 4096  # + one frame
    per_yield = [len(e) for e in AudioStream(wavs["4min"], chunk_seconds=10.0).examples()]
    # (240 s * 16000 - 240) // 15360 complete examples; a chunk of ~10 s holds at most 11 of 0.96 s.
    assert sum(per_yield) == 249 and max(per_yield) <= 11


def test_query_memory_does_not_grow_with_the_file(wavs, audio_config):
    """Peak traced memory of a 10-min query equals that of a 30-s one (cap), and a whole 4-min file
    streamed without a cap needs no more either (numpy buffers are traced; torch's are bounded by them)."""
    embed_query_media(wavs["30s"], "audio", audio_config)  # warm-up: model cache, lazy imports
    peaks = {}
    for name, cap in (("30s", QUERY_MAX_SECONDS), ("10min", QUERY_MAX_SECONDS), ("4min", None)):
        peaks[name] = _traced_peak(
            lambda p=wavs[name], c=cap: embed_query_media(p, "audio", audio_config, max_seconds=c))
    # 10 min of 16 kHz audio as float32 alone would be 38 MB (4 min: 15 MB); the old decoder held
    # float64 chunks, their concatenation and a float32 copy (> 2.5x that).
    bound = 1.5 * peaks["30s"] + 1_000_000
    assert peaks["10min"] <= bound, peaks
    assert peaks["4min"] <= bound, peaks
    assert peaks["10min"] < 10_000_000, peaks


def test_streamed_audio_equals_the_whole_waveform(tmp_path):
    """Chunked decoding + resampling + log-mel gives the one-shot result (44.1 kHz stereo AAC input)."""
    path = write_media(tmp_path / "n.m4a", seconds=7.3, video=False, noise=True, freq=5.0)
    whole = decode_audio(path)
    stream = AudioStream(path, chunk_seconds=1.7)
    chunks = list(stream)
    assert len(chunks) > 3
    streamed = np.concatenate(chunks)
    assert streamed.shape == whole.shape
    np.testing.assert_allclose(streamed, whole, atol=1e-6)
    head = decode_audio(path, max_seconds=2.5)
    np.testing.assert_allclose(head, whole[: 40000], atol=1e-6)
    examples = torch.cat(list(AudioStream(path, chunk_seconds=1.7).examples()))
    ref = fe.waveform_to_examples(torch.from_numpy(whole))
    assert examples.shape == ref.shape == (7, 96, 64)
    torch.testing.assert_close(examples, ref, atol=1e-4, rtol=1e-5)
    # A file shorter than one example still gives one (zero-padded) example, as the whole does.
    short = write_wav(tmp_path / "short.wav", 0.3)
    assert torch.cat(list(AudioStream(short).examples())).shape == (1, 96, 64)


def test_needed_tracks_are_checked_before_decoding(wavs, audio_config, monkeypatch):
    """An audio-only file asked for video fails at once (header only), not after decoding 10 min of audio."""
    decoded: list[str] = []
    real_iter = AudioStream.__iter__

    def spy(self):  # noqa: ANN001, ANN202
        decoded.append(str(self.path))
        return real_iter(self)

    monkeypatch.setattr(AudioStream, "__iter__", spy)
    t0 = time.perf_counter()
    clip = decode_clip("q", wavs["10min"], fps=1.0, max_frames=4, transforms={})
    assert clip.error is not None and clip.error.endswith("no video track") and "\n" not in clip.error
    assert decoded == [] and time.perf_counter() - t0 < 2.0
    with pytest.raises(DataError, match="no video track"):
        embed_query_media(wavs["10min"], "visual", audio_config)
    assert decoded == []


def test_frames_respect_max_seconds(tmp_path):
    path = write_media(tmp_path / "v.mp4", seconds=3.0, fps=10)
    _, times = decode_frames(path, fps=2.0, max_frames=32)
    assert np.allclose(times, [0, 0.5, 1.0, 1.5, 2.0, 2.5])
    _, times = decode_frames(path, fps=2.0, max_frames=32, max_seconds=1.2)
    assert np.allclose(times, [0, 0.5, 1.0])
    _, times = decode_frames(path, fps=2.0, max_frames=2, max_seconds=2.0)
    assert len(times) == 2 and times[-1] < 2.0


def test_query_uses_only_the_first_max_seconds(wavs, audio_config, tmp_path):
    """The default cap (QUERY_MAX_SECONDS) is applied: a file silent for its first minute and loud after
    queries like silence; the whole file (max_seconds=None) does not (tiny random weights: small but
    clear differences)."""
    rate, path = 16000, tmp_path / "late_noise.wav"
    tone = (np.random.default_rng(0).uniform(-0.5, 0.5, 20 * rate) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.zeros(int(QUERY_MAX_SECONDS * rate), "<i2").tobytes())
        w.writeframes(tone.tobytes())
    silence = embed_query_media(wavs["30s"], "audio", audio_config)
    np.testing.assert_allclose(embed_query_media(path, "audio", audio_config), silence, atol=1e-6)
    whole = embed_query_media(path, "audio", audio_config, max_seconds=None)
    assert np.abs(whole - silence).max() > 2e-5
    # The extraction's own max_seconds applies to queries too when it is smaller.
    capped = ExtractConfig(vggish=audio_config.vggish, device="cpu", max_seconds=30.0)
    np.testing.assert_allclose(embed_query_media(path, "audio", capped, max_seconds=None), silence, atol=1e-6)
