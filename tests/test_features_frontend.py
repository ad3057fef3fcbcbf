"""VGGish front end against an independent numpy computation, the VGGish layout, and real-media decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from avret.errors import ModelError
from avret.features import vggish_frontend as fe
from avret.features.decode import decode_audio, decode_frames, probe, sample_times
from avret.features.vggish import VGGish, VGGishEmbedder, load_pca_params, load_vggish, vggish_from_state_dict

MEDIA = Path(__file__).parents[1] / ".." / "shared" / "data" / "media"
REAL_MP4 = MEDIA / "Oz06ZWiO20M_6.mp4"
REAL_WAV = MEDIA / "03bSnISJMiM_1.wav"


# ------------------------------------------------------------------ an independent numpy reference


def _np_mel_matrix(num_bins=64, n_spec=257, sr=16000, lo=125.0, hi=7500.0):
    def mel(f):
        return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)

    spec_mel = mel(np.linspace(0.0, sr / 2, n_spec))
    edges = np.linspace(mel(lo), mel(hi), num_bins + 2)
    w = np.empty((n_spec, num_bins))
    for i in range(num_bins):
        lower, center, upper = edges[i : i + 3]
        lower_slope = (spec_mel - lower) / (center - lower)
        upper_slope = (upper - spec_mel) / (upper - center)
        w[:, i] = np.maximum(0.0, np.minimum(lower_slope, upper_slope))
    w[0, :] = 0.0
    return w


def _np_log_mel(x: np.ndarray) -> np.ndarray:
    win, hop, nfft = 400, 160, 512
    n = 1 + (len(x) - win) // hop
    frames = np.stack([x[i * hop : i * hop + win] for i in range(n)])
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(win) / win)  # periodic Hann
    spec = np.abs(np.fft.rfft(frames * window, nfft))
    return np.log(spec @ _np_mel_matrix() + 0.01)


def test_log_mel_matches_numpy_reference_on_a_sine():
    sr = 16000
    t = np.arange(int(2.3 * sr)) / sr
    rng = np.random.default_rng(0)
    x = 0.5 * np.sin(2 * np.pi * 440.0 * t) + 0.2 * np.sin(2 * np.pi * 3100.0 * t)
    x = x + 0.01 * rng.standard_normal(len(t))
    ref = _np_log_mel(x)
    got = fe.log_mel_spectrogram(torch.from_numpy(x)).numpy()
    assert got.shape == ref.shape == (1 + (len(x) - 400) // 160, 64)
    assert np.max(np.abs(got - ref)) < 1e-4
    # The 440 Hz band dominates the low bands: sanity that the spectrum is not garbage.
    assert int(np.argmax(ref.mean(0)[:20])) == int(np.argmax(got.mean(0)[:20]))

    ex = fe.waveform_to_examples(x).numpy()
    n_ex = ref.shape[0] // 96
    assert ex.shape == (n_ex, 96, 64) and ex.dtype == np.float32
    np.testing.assert_allclose(ex, ref[: n_ex * 96].reshape(n_ex, 96, 64), atol=1e-4)


def test_mel_matrix_is_the_reference_not_torchaudios_hz_triangles():
    import torchaudio.functional as AF

    ours = fe.mel_matrix().numpy()
    np.testing.assert_allclose(ours, _np_mel_matrix(), atol=1e-12)
    ta = AF.melscale_fbanks(257, 125.0, 7500.0, 64, 16000, norm=None, mel_scale="htk").numpy()
    assert np.max(np.abs(ta - ours)) > 1e-3  # why we build our own (see module docstring)


def test_short_waveform_is_padded_to_one_example():
    x = np.sin(np.arange(3000) / 5.0).astype(np.float32)
    ex = fe.waveform_to_examples(x)
    assert ex.shape == (1, 96, 64)
    padded = np.concatenate([x, np.zeros(fe.MIN_SAMPLES - len(x), np.float32)])
    np.testing.assert_allclose(ex[0].numpy(), _np_log_mel(padded.astype(np.float64)), atol=1e-4)
    assert fe.waveform_to_examples(np.zeros(fe.MIN_SAMPLES + 95 * 160, np.float32)).shape[0] == 1
    assert fe.waveform_to_examples(np.zeros(2 * fe.MIN_SAMPLES, np.float32)).shape[0] == 2


# ------------------------------------------------------------------ VGGish network


TORCHVGGISH_KEYS = {
    f"{part}.{i}.{p}"
    for part, idx in (("features", (0, 3, 6, 8, 11, 13)), ("embeddings", (0, 2, 4)))
    for i in idx
    for p in ("weight", "bias")
}


def test_real_vggish_architecture_layout_and_reload():
    torch.manual_seed(0)
    model = VGGish().eval()
    state = model.state_dict()
    assert set(state) == TORCHVGGISH_KEYS
    assert sum(v.numel() for v in state.values()) == 72_141_184
    assert tuple(state["embeddings.0.weight"].shape) == (4096, 512 * 4 * 6)
    x = torch.randn(2, 1, 96, 64)
    reloaded = vggish_from_state_dict(state)
    with torch.inference_mode():
        out = model(x)
        np.testing.assert_array_equal(out.numpy(), reloaded(x).numpy())
    assert out.shape == (2, 128) and bool((out >= 0).all())  # final ReLU as in torchvggish
    # NHWC flattening: the first linear layer sees (H, W, C) order as in the TF checkpoint.
    with torch.inference_mode():
        feat = model.features(x)
        flat = feat.permute(0, 2, 3, 1).reshape(2, -1)
        np.testing.assert_allclose(model.embeddings(flat).numpy(), out.numpy(), rtol=1e-5, atol=1e-6)


def test_vggish_file_loading_and_errors(tmp_path):
    tiny = VGGish((4, 4, 8, 8, 8, 8), (16, 16, 128))
    path = tmp_path / "vggish.pth"
    torch.save(tiny.state_dict(), path)
    emb = load_vggish(path)
    out = emb.embed(torch.randn(3, 96, 64))
    assert out.shape == (3, 128) and out.dtype == np.float32

    with pytest.raises(ModelError, match="not found"):
        load_vggish(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"features.0.weight": torch.zeros(4, 1, 3, 3)}, bad)
    with pytest.raises(ModelError, match="torchvggish layout"):
        load_vggish(bad)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="not a readable"):
        load_vggish(junk)


def test_pca_postprocess_matches_reference_formula(tmp_path):
    rng = np.random.default_rng(1)
    vecs = np.linalg.qr(rng.standard_normal((128, 128)))[0].astype(np.float32)
    means = rng.standard_normal(128).astype(np.float32)
    path = tmp_path / "pca.pth"
    torch.save({"pca_eigen_vectors": torch.from_numpy(vecs), "pca_means": torch.from_numpy(means)}, path)
    pca = load_pca_params(path)
    emb = VGGishEmbedder(VGGish((4, 4, 8, 8, 8, 8), (16, 16, 128)), pca)
    raw = rng.standard_normal((5, 128)).astype(np.float32) * 2
    got = emb.postprocess(torch.from_numpy(raw)).numpy()
    ref = np.round((np.clip((vecs @ (raw.T - means[:, None])).T, -2, 2) + 2) * 255.0 / 4.0)
    np.testing.assert_allclose(got, ref, atol=1e-3)
    assert got.min() >= 0 and got.max() <= 255
    np.testing.assert_allclose(emb.clip_feature(got), ((got - 128) / 256).mean(0), atol=1e-6)
    torch.save({"pca_eigen_vectors": torch.zeros(3, 3), "pca_means": torch.zeros(3)}, path)
    with pytest.raises(ModelError, match="expected"):
        load_pca_params(path)


def test_sample_times_cover_long_clips_evenly():
    assert sample_times(7.5, 1.0, 32) == [float(k) for k in range(8)]
    assert sample_times(2.0, 2.0, 32) == [0.0, 0.5, 1.0, 1.5]
    long = sample_times(100.0, 1.0, 5)
    assert long == [0.0, 25.0, 50.0, 74.0, 99.0]
    assert sample_times(None, 1.0, 5) is None


# ------------------------------------------------------------------ real media (skipped when absent)


@pytest.mark.skipif(not REAL_MP4.is_file(), reason="real MOSI clip not present")
def test_real_mosi_mp4_decodes_to_container_duration():
    info = probe(REAL_MP4)
    assert info.has_audio and info.has_video
    wave = decode_audio(REAL_MP4)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) / 16000 - info.audio_duration) < 0.03  # within about one AAC frame
    assert 0 < np.abs(wave).max() <= 1.0
    frames, times = decode_frames(REAL_MP4, fps=1.0, max_frames=32)
    assert abs(len(frames) - info.video_duration) <= 1
    assert times == sorted(times) and np.allclose(np.diff(times), 1.0, atol=0.05)
    assert frames[0].mode == "RGB"


@pytest.mark.skipif(not REAL_WAV.is_file(), reason="real wav not present")
def test_real_wav_decodes_to_16k_mono_with_all_samples():
    import av

    with av.open(str(REAL_WAV)) as c:
        stream = c.streams.audio[0]
        assert stream.codec_context.sample_rate == 16000
        n_samples = sum(f.samples for f in c.decode(stream))
    wave = decode_audio(REAL_WAV)
    assert wave.shape == (n_samples,) and wave.dtype == np.float32
    n_examples = ((n_samples - 400) // 160 + 1) // 96
    assert fe.waveform_to_examples(wave).shape == (n_examples, 96, 64)
