"""End-to-end media ingest on generated media: decode, extract (resumable), failures, CLI, media queries."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from avret.data.folder import load_folder
from avret.errors import AvretError, DataError, ModelError
from avret.features.clip_frames import load_clip_frame_encoder
from avret.features.decode import decode_audio, decode_frames, probe
from avret.features.encoders import clear_model_cache
from avret.features.extract import (
    ExtractConfig,
    assign_clip_ids,
    embed_query_media,
    extract_features,
    list_media,
)
from avret.features.synthetic_media import write_labelled_media, write_media, write_wav
from avret.features.vggish import VGGish
from avret.models.clip import load_clip

# ------------------------------------------------------------------ generated media


TINY_CLIP = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8, "head_width": 32},
    "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny random-weight VGGish (real layout, reduced widths) and a tiny open_clip model, saved to files."""
    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    torch.save(VGGish((4, 4, 8, 8, 8, 8), (16, 16, 128)).state_dict(), d / "vggish.pth")
    rng = np.random.default_rng(0)
    vecs = np.linalg.qr(rng.standard_normal((128, 128)))[0] * 4
    torch.save({"pca_eigen_vectors": torch.tensor(vecs, dtype=torch.float32),
                "pca_means": torch.zeros(128)}, d / "pca.pth")
    cfg = d / "avret-tiny-frames-clip.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    torch.save(load_clip(str(cfg), None, allow_random=True).state_dict(), d / "tiny_clip.pt")
    return {"vggish": d / "vggish.pth", "pca": d / "pca.pth", "clip_cfg": cfg, "clip": d / "tiny_clip.pt"}


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    """Good, short, duplicate-named, track-less, zero-length and corrupt files."""
    d = tmp_path_factory.mktemp("media")
    write_media(d / "tone.mp4", seconds=2.0, freq=440.0)
    write_media(d / "noise.mp4", seconds=1.5, noise=True, freq=7.0)
    write_media(d / "short.mp4", seconds=0.5, freq=880.0)
    (d / "sub").mkdir()
    write_media(d / "sub" / "tone.mp4", seconds=1.2, freq=660.0)
    write_media(d / "silent_video.mp4", seconds=1.0, audio=False)
    write_media(d / "audio_only.m4a", seconds=1.0, video=False)
    (d / "empty.mp4").write_bytes(b"")
    (d / "corrupt.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    return d


def _config(models: dict[str, Path], **kw) -> ExtractConfig:
    base = dict(vggish=models["vggish"], clip_model=str(models["clip_cfg"]), clip_weights=models["clip"],
                fps=2.0, max_frames=3, batch_size=4, device="cpu")
    base.update(kw)
    return ExtractConfig(**base)


# ------------------------------------------------------------------ decoding generated media


def test_decode_generated_files(media, tmp_path):
    wav = write_media(tmp_path / "a.wav", seconds=1.25, video=False, sample_rate=16000)
    wave = decode_audio(wav)
    assert wave.shape == (20000,) and wave.dtype == np.float32
    spec = np.abs(np.fft.rfft(wave))
    assert abs(np.argmax(spec) * 16000 / len(wave) - 440) < 2  # the tone survived

    wave = decode_audio(media / "tone.mp4")  # 44.1 kHz stereo AAC -> 16 kHz mono
    assert abs(len(wave) / 16000 - 2.0) < 0.05
    frames, times = decode_frames(media / "tone.mp4", fps=2.0, max_frames=32)
    assert len(frames) == 4 and np.allclose(times, [0, 0.5, 1.0, 1.5])
    assert frames[0].size == (64, 48)
    assert probe(media / "audio_only.m4a").has_video is False

    for name, msg in [("silent_video.mp4", "no audio track"), ("empty.mp4", "zero-length"),
                      ("corrupt.mp4", "not a readable media file")]:
        with pytest.raises(DataError, match=msg) as exc:
            decode_audio(media / name)
        assert name in str(exc.value) and "\n" not in str(exc.value)
    with pytest.raises(DataError, match="no video track"):
        decode_frames(media / "audio_only.m4a")


def test_clip_ids_and_media_lists(media, tmp_path):
    paths = list_media([media])
    names = [p.relative_to(media).as_posix() for p in paths]
    assert "sub/tone.mp4" in names and "empty.mp4" in names
    ids = assign_clip_ids(paths)
    assert len(set(ids)) == len(ids)
    assert ids[names.index("tone.mp4")] == f"{media.name}__tone"
    assert ids[names.index("sub/tone.mp4")] == "sub__tone"
    lst = tmp_path / "list.txt"
    lst.write_text(f"# two files\n{media / 'tone.mp4'}\n\n{media / 'noise.mp4'}\n")
    assert [p.name for p in list_media([lst])] == ["tone.mp4", "noise.mp4"]
    with pytest.raises(DataError, match="no such media"):
        list_media([tmp_path / "nope"])


# ------------------------------------------------------------------ extraction end to end


def test_extract_end_to_end_failures_and_resume(models, media, tmp_path):
    out = tmp_path / "feats"
    cfg = _config(models)
    seen: list[tuple[int, int]] = []
    rep = extract_features([media], out, cfg, progress=lambda d, t: seen.append((d, t)))
    assert rep.n_media == 8 and rep.n_extracted == 4 and rep.n_failed == 4 and rep.n_skipped == 0
    assert seen[-1] == (8, 8)

    failures = json.loads((out / "failures.json").read_text())
    reasons = {Path(f["path"]).name: f["error"] for f in failures}
    assert set(reasons) == {"silent_video.mp4", "audio_only.m4a", "empty.mp4", "corrupt.mp4"}
    assert "no audio track" in reasons["silent_video.mp4"] and "no video track" in reasons["audio_only.m4a"]
    assert "zero-length" in reasons["empty.mp4"]
    assert all(name in reason and "\n" not in reason for name, reason in reasons.items())

    ds = load_folder(out)
    assert len(ds.clip_ids) == 4 and set(ds.clip_ids) >= {"noise", "short", "sub__tone"}
    assert ds.audio.shape == (4, 128) and ds.visual.shape == (4, 32)
    assert ds.teacher_frames.shape == (4, 3, 32)
    counts = dict(zip(ds.clip_ids, ds.teacher_mask.sum(1), strict=True))
    assert counts["short"] == 1 and counts["noise"] == 3  # 0.5 s at 2 fps -> 1; 1.5 s -> 3 (max 3)
    # visual = mean of the L2-normalised frame embeddings
    for i in range(4):
        f = ds.teacher_frames[i][ds.teacher_mask[i]]
        np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(ds.visual[i], f.mean(0), atol=1e-6)
    assert not np.allclose(ds.audio[0], ds.audio[1])

    rec = json.loads((out / "extract_config.json").read_text())
    assert rec["audio"]["dim"] == 128 and rec["visual"]["dim"] == 32 and rec["fps"] == 2.0
    assert rec["audio"]["weights_sha256"].startswith("sha256:") and rec["versions"]["torch"]
    assert rec["counts"]["rows"] == 4

    # Resume: nothing redone, the bad files tried and listed again, identical arrays.
    audio_before = np.load(out / "audio.npy")
    rep2 = extract_features([media], out, cfg)
    assert rep2.n_extracted == 0 and rep2.n_skipped == 4 and rep2.n_failed == 4
    np.testing.assert_array_equal(np.load(out / "audio.npy"), audio_before)

    # A new file: only it is extracted; the final arrays grow by one row.
    extra = tmp_path / "extra"
    extra.mkdir()
    write_media(extra / "late.mp4", seconds=1.0, freq=300.0)
    rep3 = extract_features([media, extra], out, cfg)
    assert rep3.n_extracted == 1 and rep3.n_skipped == 4
    ds3 = load_folder(out)
    assert len(ds3.clip_ids) == 5 and ds3.clip_ids[-1] == "late"
    np.testing.assert_array_equal(ds3.audio[:4], audio_before)

    # Other settings into the same directory are refused rather than mixed.
    with pytest.raises(DataError, match="different settings"):
        extract_features([media], out, _config(models, fps=1.0))

    # Media queries: same front end and models as the extraction.
    i = list(ds.clip_ids).index("noise")
    np.testing.assert_allclose(embed_query_media(media / "noise.mp4", "audio", out), ds.audio[i], atol=1e-5)
    np.testing.assert_allclose(embed_query_media(media / "noise.mp4", "visual", out), ds.visual[i], atol=1e-5)
    wav = write_media(tmp_path / "q.wav", seconds=1.0, video=False, sample_rate=16000)
    assert embed_query_media(wav, "audio", out).shape == (128,)
    with pytest.raises(DataError, match="no video track"):
        embed_query_media(wav, "visual", out)


def test_extract_with_pca_and_labels(models, media, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("clip_id,label,split\nnoise,dog,train\nshort,cat,val\n")
    out = tmp_path / "feats"
    cfg = _config(models, vggish_pca=models["pca"], labels=labels, max_frames=2)
    rep = extract_features([media / "noise.mp4", media / "short.mp4", media / "corrupt.mp4"], out, cfg)
    assert rep.n_extracted == 2 and rep.n_failed == 1
    ds = load_folder(out)
    assert list(ds.clip_ids) == ["noise", "short"] and ds.class_names == ["cat", "dog"]
    assert list(ds.split) == ["train", "val"] and list(ds.labels) == [1, 0]
    # postprocessed (0..255) then de-quantised as (x - 128) / 256
    assert ds.audio.min() >= -0.5 and ds.audio.max() < 0.5
    assert json.loads((out / "extract_config.json").read_text())["audio"]["postprocessed"] is True


def test_model_errors_are_one_line(models, media, tmp_path):
    clear_model_cache()
    with pytest.raises(ModelError, match="does not fit the architecture 'avret-tiny-frames-clip'"):
        load_clip_frame_encoder(str(models["clip_cfg"]), models["vggish"])
    with pytest.raises(ModelError, match="does not exist"):
        load_clip_frame_encoder(str(models["clip_cfg"]), tmp_path / "none.pt")
    with pytest.raises(ModelError, match="not an open_clip architecture"):
        load_clip_frame_encoder("no-such-model", models["clip"])
    with pytest.raises(ModelError, match="needs --clip-model"):
        extract_features([media], tmp_path / "o", ExtractConfig(vggish=models["vggish"]))
    bad = _config(models, clip_weights=models["vggish"])
    with pytest.raises(ModelError) as exc:
        extract_features([media / "noise.mp4"], tmp_path / "o2", bad)
    assert "\n" not in str(exc.value)
    # A failed start leaves no shards, so the corrected command may reuse the directory.
    assert extract_features([media / "noise.mp4"], tmp_path / "o2", _config(models)).n_extracted == 1


def test_device_option_is_resolved_by_the_shared_helper(models, media, tmp_path, monkeypatch):
    """--device auto|cpu|cuda goes through avret.utils.device.resolve_device (one-line AvretError)."""
    from typer.testing import CliRunner

    from avret_cli.features import app

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without a GPU
    clip = media / "noise.mp4"
    with pytest.raises(AvretError, match="--device 'cuda': torch sees no CUDA GPU") as exc:
        extract_features([clip], tmp_path / "o", _config(models, device="cuda"))
    assert "\n" not in str(exc.value)
    with pytest.raises(AvretError, match="--device 'gpu': expected one of auto, cpu, cuda"):
        extract_features([clip], tmp_path / "o", _config(models, device="gpu"))
    with pytest.raises(AvretError, match="torch sees no CUDA GPU"):
        embed_query_media(clip, "audio", _config(models), device="cuda")
    assert extract_features([clip], tmp_path / "o", _config(models, device="auto")).device == "cpu"
    res = CliRunner().invoke(app, ["extract", "--media", str(clip), "--out", str(tmp_path / "cli"), "--vggish",
                                   str(models["vggish"]), "--clip-model", str(models["clip_cfg"]), "--clip-weights",
                                   str(models["clip"]), "--device", "cuda", "--no-progress"])
    assert res.exit_code == 2 and "torch sees no CUDA GPU" in res.output


# ------------------------------------------------------------------ CLI


def test_cli_extract(models, media, tmp_path):
    from typer.testing import CliRunner

    from avret_cli.features import app

    runner = CliRunner()
    out = tmp_path / "cli_feats"
    args = ["extract", "--media", str(media / "tone.mp4"), "--media", str(media / "empty.mp4"),
            "--out", str(out), "--vggish", str(models["vggish"]), "--clip-model", str(models["clip_cfg"]),
            "--clip-weights", str(models["clip"]), "--fps", "1", "--max-frames", "4", "--workers", "1",
            "--device", "cpu", "--no-progress"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "1 extracted" in res.output and "1 failed" in res.output
    ds = load_folder(out)
    assert list(ds.clip_ids) == ["tone"] and int(ds.teacher_mask.sum()) == 2

    res = runner.invoke(app, ["extract", "--media", str(media), "--out", str(tmp_path / "x"),
                              "--vggish", str(tmp_path / "missing.pth"), "--clip-model", "ViT-B-32",
                              "--clip-weights", str(models["clip"])])
    assert res.exit_code == 2
    assert "error:" in res.output and "missing.pth" in res.output


# ------------------------------------------------------------------ Inception-v3 (optional visual)


def test_inception_features_with_pca(tmp_path, media):
    from torchvision.models import inception_v3

    from avret.features.inception import fit_pca, load_inception, save_pca

    # Random weights without torchvision's slow init: allocate on meta, then fill cheaply.
    torch.manual_seed(0)
    with torch.device("meta"):
        net = inception_v3(weights=None, aux_logits=False, init_weights=False)
    net = net.to_empty(device="cpu")
    for name, t in net.state_dict().items():
        if name.endswith("running_var") or name.endswith(".weight") and t.ndim == 1:
            t.fill_(1.0)
        elif t.ndim <= 1:
            t.zero_()
        else:
            t.normal_(0.0, 0.05)
    torch.save(net.state_dict(), tmp_path / "inception.pth")
    enc = load_inception(tmp_path / "inception.pth")
    frames, _ = decode_frames(media / "tone.mp4", fps=1.0, max_frames=1)
    assert enc.transform(frames[0]).shape == (3, 299, 299)
    # The model itself on small inputs (Inception-v3 takes >= 75 px), to keep the test fast on 2 cores.
    small = torch.randn(2, 3, 80, 80)
    feats = enc.encode(small)
    assert feats.shape == (2, 2048) and np.isfinite(feats).all()
    mean, comps = fit_pca(np.random.default_rng(0).standard_normal((8, 2048)), 4)
    save_pca(tmp_path / "pca.npz", mean, comps)
    enc_pca = load_inception(tmp_path / "inception.pth", tmp_path / "pca.npz")
    np.testing.assert_allclose(enc_pca.encode(small), (feats - mean) @ comps.T, rtol=1e-4, atol=1e-4)
    with pytest.raises(ModelError, match="does not fit"):
        torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "bad.pth")
        load_inception(tmp_path / "bad.pth")


# ------------------------------------------------------------------ extract -> train -> index -> media query


def test_cli_extract_train_index_and_search_by_wav(models, tmp_path):
    from typer.testing import CliRunner

    from avret_cli.main import app

    media, _ = write_labelled_media(tmp_path, 12)
    feats, run, index = tmp_path / "feats", tmp_path / "run", tmp_path / "index"
    runner = CliRunner()

    def ok(*args):
        res = runner.invoke(app, [str(a) for a in args])
        assert res.exit_code == 0, res.output
        return res

    ok("features", "extract", "--media", media, "--out", feats, "--vggish", models["vggish"],
       "--clip-model", models["clip_cfg"], "--clip-weights", models["clip"], "--fps", "1", "--max-frames", "2",
       "--workers", "0", "--device", "cpu", "--no-progress", "--labels", tmp_path / "labels.csv")
    ok("train", "--dataset", feats, "--out", run, "--epochs", "2")
    ok("index", "build", "--dataset", feats, "--model", run, "--out", index)
    query = write_wav(tmp_path / "query.wav", 1.5, 300.0)
    res = ok("search", "audio-to-video", "--index", index, "--query", query, "--features", feats, "-k", "3", "--json")
    hits = json.loads(res.stdout)["queries"][0]["results"]
    assert len(hits) == 3 and all(h["clip_id"].startswith("c") for h in hits)
    res = ok("search", "video-to-audio", "--index", index, "--query", media / "c1.mp4", "--features", feats, "-k", "2")
    assert "c" in res.stdout


# ------------------------------------------------------------------ failed starts, labels, clip ids


def test_failed_start_on_weights_writes_nothing(models, media, tmp_path):
    """Weights that do not load stop the run before any file (shards/settings.json included) exists."""
    bad_vggish = tmp_path / "bad_vggish.pth"
    bad_vggish.write_bytes(b"not a checkpoint")
    for cfg in (_config(models, clip_weights=models["vggish"]), _config(models, vggish=bad_vggish)):
        out = tmp_path / "never"
        with pytest.raises(ModelError) as exc:
            extract_features([media / "noise.mp4"], out, cfg)
        assert "\n" not in str(exc.value)
        assert not out.exists()
    # Into an existing directory of the user's: refused (it is no features folder), nothing new appears.
    from avret.errors import AvretError

    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "notes.txt").write_text("mine")
    with pytest.raises(AvretError, match="not an earlier features folder"):
        extract_features([media / "noise.mp4"], existing, _config(models, vggish=bad_vggish))
    assert sorted(p.name for p in existing.iterdir()) == ["notes.txt"]


def test_labels_encoding_bom_and_unsafe_clip_ids(models, tmp_path):
    from typer.testing import CliRunner

    from avret_cli.features import app

    media = tmp_path / "m"
    media.mkdir()
    write_media(media / "a,b.mp4", seconds=1.0, freq=300.0)
    write_media(media / "new\nline.mp4", seconds=1.0, freq=500.0)
    write_media(media / "plain.mp4", seconds=1.0, freq=700.0)
    base = ["extract", "--media", str(media), "--vggish", str(models["vggish"]), "--clip-model",
            str(models["clip_cfg"]), "--clip-weights", str(models["clip"]), "--fps", "1", "--max-frames", "1",
            "--device", "cpu", "--no-progress"]
    runner = CliRunner()

    # Not UTF-8: one line naming the file, exit 2, nothing written.
    latin = tmp_path / "latin1.csv"
    latin.write_bytes("clip_id,label\nplain,caf\u00e9\n".encode("latin-1"))
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "o1"), "--labels", str(latin)])
    assert res.exit_code == 2, res.output
    assert "latin1.csv" in res.output and "UTF-8" in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "o1").exists()

    # A UTF-8 BOM before the header is accepted; unsafe stems become safe, queryable clip ids.
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufeffclip_id,label,split\nplain,caf\u00e9,train\na_b,dog,train\n".encode())
    out = tmp_path / "o2"
    res = runner.invoke(app, [*base, "--out", str(out), "--labels", str(bom)])
    assert res.exit_code == 0, res.output
    ds = load_folder(out)
    assert sorted(ds.clip_ids) == ["a_b", "new_line", "plain"]
    assert dict(zip(ds.clip_ids, (ds.class_names[i] if i >= 0 else "" for i in ds.labels), strict=True)) == {
        "a_b": "dog", "new_line": "", "plain": "caf\u00e9"}
    assert len(ds.rows_of(["a_b", "new_line"])) == 2
    with open(out / "manifest.csv", newline="", encoding="utf-8") as fh:  # header + 3 records, none broken
        assert [len(r) for r in csv.reader(fh)] == [4, 4, 4, 4]


# ------------------------------------------------------------------ finalise: killed at every step

_KILL_SCRIPT = r'''
import os, signal, sys
import numpy as np
from avret.features.shards import write_feature_folder

out, which, n = sys.argv[1], sys.argv[2], int(sys.argv[3])

def clip(cid):
    k = int(cid[1:])
    return {"audio": np.full(4, k, np.float32), "visual": np.full(3, k, np.float32),
            "frames": np.full((k % 3 + 1, 2), k, np.float32)}

ids = ["c1", "c2", "c3"] if which == "old" else ["c3", "c4", "c5"]
teacher = 2 if which == "old" else None
calls = 0
if n > 0:
    def killer(real):
        def f(*a, **k):
            global calls
            calls += 1
            if calls == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return real(*a, **k)
        return f
    os.replace, os.rename, os.unlink = killer(os.replace), killer(os.rename), killer(os.unlink)
write_feature_folder(__import__("pathlib").Path(out), ids, {c: clip(c) for c in ids},
                     {c: ("x", "train") for c in ids}, (4, 3, teacher), {"failures.json": [which]})
print("done")
'''


def _check_consistent(out: Path) -> list[str] | None:
    """The clip ids under the final names when they all agree (None when manifest.csv is absent)."""
    if not (out / "manifest.csv").exists():
        return None
    ds = load_folder(out)
    ks = np.array([int(c[1:]) for c in ds.clip_ids], np.float32)
    np.testing.assert_array_equal(ds.audio, np.repeat(ks[:, None], 4, 1))
    np.testing.assert_array_equal(ds.visual, np.repeat(ks[:, None], 3, 1))
    if ds.teacher_frames is not None:
        assert ds.teacher_frames.shape[0] == len(ks) and list(ds.clip_ids) == ["c1", "c2", "c3"]
        for i, k in enumerate(ks):
            np.testing.assert_array_equal(ds.teacher_frames[i][ds.teacher_mask[i]], np.full((int(k) % 3 + 1, 2), k))
    return list(ds.clip_ids)


def test_finalise_killed_at_each_step_never_leaves_disagreeing_rows(tmp_path):
    """SIGKILL at the n-th rename/replace/unlink of the finalise step, for every n: the final names
    hold the old set, the new set, or no manifest.csv; the next writer (recovery) completes the new set."""
    import os
    import shutil
    import subprocess
    import sys

    from avret.utils.atomic import recover_commits

    script = tmp_path / "finalise.py"
    script.write_text(_KILL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    new, old = ["c3", "c4", "c5"], ["c1", "c2", "c3"]
    states = set()
    pristine = tmp_path / "old"
    subprocess.run([sys.executable, str(script), str(pristine), "old", "0"], env=env, check=True)
    assert _check_consistent(pristine) == old
    for n in range(1, 40):
        out = tmp_path / f"o{n}"
        shutil.copytree(pristine, out)
        res = subprocess.run([sys.executable, str(script), str(out), "new", str(n)], env=env, capture_output=True,
                             text=True)
        if res.returncode == 0:
            assert res.stdout.strip() == "done" and _check_consistent(out) == new
            break
        assert res.returncode == -9, res.stderr
        seen = _check_consistent(out)
        assert seen in (old, new, None)
        states.add(None if seen is None else tuple(seen))
        recover_commits(out)  # what the next `features extract` (and load_folder) does first
        assert _check_consistent(out) in (old, new)
        assert not [p.name for p in out.iterdir() if p.name.startswith(".final-")]
    else:
        pytest.fail("finalise never completed")
    assert n >= 5 and states >= {None, tuple(old), tuple(new)}, states  # every kind of interruption was hit


def test_extract_max_seconds_caps_audio_and_frames(models, media, tmp_path):
    out = tmp_path / "capped"
    rep = extract_features([media / "tone.mp4"], out, _config(models, max_seconds=1.0, max_frames=8))
    assert rep.n_extracted == 1 and rep.audio_seconds == 1.0  # the file has 2.0 s
    ds = load_folder(out)
    assert int(ds.teacher_mask.sum()) == 2  # 2 fps over the first second: t = 0, 0.5
    assert json.loads((out / "extract_config.json").read_text())["max_seconds"] == 1.0
    with pytest.raises(DataError, match=r"different settings \(max_seconds\)"):
        extract_features([media / "tone.mp4"], out, _config(models, max_frames=8))
    with pytest.raises(AvretError, match="max_seconds must be > 0"):
        extract_features([media / "tone.mp4"], out, _config(models, max_seconds=0.0))
