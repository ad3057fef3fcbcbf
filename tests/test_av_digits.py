"""av-digits: FSDD recordings + same-digit handwritten images as mp4 clips, with the plain-folder manifest."""

from __future__ import annotations

import csv
import wave
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from avret.data.av_digits import (
    MANIFEST,
    MANIFEST_FIELDS,
    MARKER,
    default_fsdd_dir,
    digit_picture,
    list_recordings,
    load_digit_images,
    make_av_digits,
    plan_av_digits,
    read_av_digits,
)
from avret.data.folder import read_folder_manifest
from avret.errors import AvretError, DataError
from avret.features.decode import decode_audio, decode_frames, probe
from avret.features.extract import assign_clip_ids, list_media
from avret_cli.data import app as data_app

FSDD = default_fsdd_dir()  # $AVRET_FSDD, else ../shared/data/fsdd/recordings beside the repository
needs_fsdd = pytest.mark.skipif(not FSDD.is_dir(), reason="../shared/data/fsdd is absent")


def _fake_fsdd(root: Path, takes=(0, 5), speakers=("anna",), seconds=0.2, rate=8000) -> Path:
    """A tiny FSDD-shaped folder of synthetic 16-bit wavs (digit d = a (300 + 100 d) Hz tone)."""
    root.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    for d in range(10):
        for s in speakers:
            for k in takes:
                x = (0.3 * np.sin(2 * np.pi * (300 + 100 * d + k) * t) * 32767).astype("<i2")
                with wave.open(str(root / f"{d}_{s}_{k}.wav"), "wb") as w:
                    w.setnchannels(1)
                    w.setsampwidth(2)
                    w.setframerate(rate)
                    w.writeframes(x.tobytes())
    return root


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / MANIFEST, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# ------------------------------------------------------------------ the plan (no rendering)


@needs_fsdd
def test_full_plan_follows_fsdd_split_and_keeps_image_pools_disjoint():
    recs = list_recordings(FSDD)
    assert len(recs) == 3000
    _, labels = load_digit_images()
    plans = plan_av_digits(recs, labels, seed=0)
    assert len(plans) == 3000
    split = {p.recording.clip_id: p.recording.split for p in plans}
    assert sum(s == "test" for s in split.values()) == 300  # takes 0-4 of 6 speakers x 10 digits
    assert all((p.recording.take < 5) == (p.recording.split == "test") for p in plans)
    assert all(labels[p.image] == p.recording.digit for p in plans)  # pairing by class
    train_imgs = {p.image for p in plans if p.recording.split == "train"}
    test_imgs = {p.image for p in plans if p.recording.split == "test"}
    assert not train_imgs & test_imgs
    # Images of a (split, digit) pool are dealt round robin: use counts differ by at most one.
    for split_name in ("train", "test"):
        for d in range(10):
            used = [p.image for p in plans if p.recording.split == split_name and p.recording.digit == d]
            counts = np.unique(used, return_counts=True)[1]
            assert counts.max() - counts.min() <= 1


def test_plan_is_a_function_of_the_seed(tmp_path):
    recs = list_recordings(_fake_fsdd(tmp_path / "fsdd", takes=range(10), speakers=("anna", "bob")))
    _, labels = load_digit_images()
    a, b = plan_av_digits(recs, labels, seed=3), plan_av_digits(recs, labels, seed=3)
    assert [(p.recording.clip_id, p.image) for p in a] == [(p.recording.clip_id, p.image) for p in b]
    c = plan_av_digits(recs, labels, seed=4)
    assert [p.image for p in a] != [p.image for p in c]
    sub = plan_av_digits(recs, labels, seed=3, limit_per_class=2)
    assert len(sub) == 10 * 2 * 2  # 2 per digit in each split
    with pytest.raises(AvretError, match="limit-per-class"):
        plan_av_digits(recs, labels, seed=3, limit_per_class=0)


# ------------------------------------------------------------------ rendering real recordings


@needs_fsdd
def test_subset_renders_real_recordings_exactly_and_is_byte_deterministic(tmp_path):
    a = make_av_digits(FSDD, tmp_path / "a", seed=0, limit_per_class=1, workers=0)
    b = make_av_digits(FSDD, tmp_path / "b", seed=0, limit_per_class=1, workers=2)
    assert b.workers == 2 and b.n_clips == a.n_clips
    assert a.n_clips == 20 and a.counts == {"train": 10, "test": 10}
    out = tmp_path / "a"
    assert (out / MANIFEST).read_bytes() == (tmp_path / "b" / MANIFEST).read_bytes()
    rows = _rows(out)
    assert tuple(rows[0]) == MANIFEST_FIELDS
    for r in rows:
        assert (out / r["media"]).read_bytes() == (tmp_path / "b" / r["media"]).read_bytes()

    images, labels = load_digit_images()
    r = rows[0]
    media = out / r["media"]
    # The audio track holds the recording's exact samples (lossless, 8 kHz, no resampling).
    with wave.open(str(FSDD / f"{r['clip_id']}.wav")) as w:
        ref = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768.0
    np.testing.assert_array_equal(decode_audio(media, 8000), ref)
    info = probe(media)
    assert info.has_video and info.audio_rate == 8000 and abs(info.duration - ref.size / 8000) < 0.01
    # The picture is the recorded load_digits image of the same digit (H.264 is lossy: compare loosely).
    assert labels[int(r["image"])] == int(r["label"]) == int(r["clip_id"][0])
    frames, _ = decode_frames(media, fps=100.0, max_frames=100)
    assert len(frames) == 4
    want = digit_picture(images[int(r["image"])]).astype(float)
    for f in frames:
        got = np.asarray(f).astype(float)
        assert got.shape == (64, 64, 3) and np.abs(got - want).mean() < 4.0

    # What `features extract --media OUT/media --labels OUT/manifest.csv` needs: ids = file stems.
    ids, manifest_labels, splits = read_folder_manifest(out / MANIFEST)
    assert sorted(assign_clip_ids(list_media([out / "media"]))) == sorted(ids)
    assert set(splits) == {"train", "test"} and set(manifest_labels) == {str(d) for d in range(10)}
    assert read_av_digits(out)["pairing"].startswith("by class")


# ------------------------------------------------------------------ outputs and errors (synthetic wavs)


def test_refuses_foreign_out_and_replaces_an_earlier_output(tmp_path):
    fsdd = _fake_fsdd(tmp_path / "fsdd")
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(AvretError, match="refusing to replace"):
        make_av_digits(fsdd, user, workers=0)
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left

    out = tmp_path / "avd"
    make_av_digits(fsdd, out, seed=0, workers=0)
    first = (out / MANIFEST).read_bytes()
    make_av_digits(fsdd, out, seed=1, workers=0)  # an earlier av-digits output is replaced
    assert (out / MARKER).is_file() and read_av_digits(out)["seed"] == 1
    assert (out / MANIFEST).read_bytes() != first
    with pytest.raises(AvretError, match="which this command reads"):
        make_av_digits(fsdd, fsdd / "inside", workers=0)
    assert not (fsdd / "inside").exists()


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="directory not found"):
        make_av_digits(tmp_path / "nope", tmp_path / "out", workers=0)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no FSDD recordings"):
        make_av_digits(empty, tmp_path / "out", workers=0)
    fsdd = _fake_fsdd(tmp_path / "fsdd")
    (fsdd / "3_anna_7.wav").write_bytes(b"RIFF not a wav")
    with pytest.raises(DataError, match="3_anna_7.wav: not a readable WAV"):
        make_av_digits(fsdd, tmp_path / "out", workers=0)
    assert not (tmp_path / "out").exists()


def test_cli_make_av_digits(tmp_path):
    fsdd = _fake_fsdd(tmp_path / "fsdd" / "recordings")
    runner = CliRunner()
    out = tmp_path / "avd"
    res = runner.invoke(data_app, ["make-av-digits", "--fsdd", str(fsdd.parent), "--out", str(out),
                                   "--seed", "2", "--limit-per-class", "1", "--no-progress", "--workers", "0"])
    assert res.exit_code == 0, res.output
    assert "wrote 20 clips (10 train, 10 test)" in res.output  # --fsdd may name the folder above recordings/
    assert len(list((out / "media").glob("*.mp4"))) == 20
    user = tmp_path / "user"
    user.mkdir()
    (user / "x.txt").write_text("x")
    res = runner.invoke(data_app, ["make-av-digits", "--fsdd", str(fsdd), "--out", str(user), "--no-progress"])
    assert res.exit_code == 2
    assert res.output.strip().startswith("error: --out") and len(res.output.strip().splitlines()) == 1
