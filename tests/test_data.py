"""Data sets: community h5 layouts, plain folders, vegas-synth, and their bad-input errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from avret.data import SynthConfig, dataset_ref, load_dataset, make_vegas_synth
from avret.data.folder import load_folder
from avret.data.h5 import VEGAS_CLASSES, load_h5
from avret.errors import DataError


def _write_single_table(path, n=40, uint8=True, test_code=1, time_axis=False):
    rng = np.random.default_rng(0)
    shape_a = (n, 3, 128) if time_axis else (n, 128)
    audio = rng.integers(0, 256, shape_a).astype(np.uint8) if uint8 else rng.normal(size=shape_a)
    visual = rng.normal(size=(n, 1024)).astype(np.float32)
    labels = (np.arange(n) % 10 + 1).reshape(n, 1)  # 1-based, (N, 1) as some files have
    split = np.where(np.arange(n) % 5 == 0, test_code, 1 - test_code)
    with h5py.File(path, "w") as f:
        f["audio_feat"], f["visual_feat"], f["Label_ID"], f["Train_test"] = audio, visual, labels, split
    return audio, visual, labels, split


def test_h5_single_table_dequantises_and_maps_labels(tmp_path):
    audio, visual, labels, _ = _write_single_table(tmp_path / "vegas.h5")
    ds = load_dataset("vegas", tmp_path / "vegas.h5")
    np.testing.assert_allclose(ds.audio, (audio.astype(np.float32) - 128) / 256)
    np.testing.assert_allclose(ds.visual, visual)
    assert ds.class_names == VEGAS_CLASSES
    np.testing.assert_array_equal(ds.labels, labels.reshape(-1) - 1)
    assert (ds.split == "test").sum() == 8 and (ds.split == "train").sum() == 32  # minority code = test


def test_h5_time_axis_is_mean_pooled(tmp_path):
    audio, *_ = _write_single_table(tmp_path / "t.h5", time_axis=True)
    ds = load_h5(tmp_path / "t.h5")
    np.testing.assert_allclose(ds.audio, ((audio.astype(np.float32) - 128) / 256).mean(1), rtol=1e-6)


def test_h5_presplit_layout(tmp_path):
    rng = np.random.default_rng(1)
    with h5py.File(tmp_path / "ave.h5", "w") as f:
        for split, n in (("train", 30), ("test", 15)):
            f[f"audio_{split}"] = rng.normal(size=(n, 128))
            f[f"visual_{split}"] = rng.normal(size=(n, 1024))
            f[f"lab_{split}"] = np.eye(15)[np.arange(n) % 15]  # one-hot
    ds = load_dataset("ave", tmp_path / "ave.h5")
    assert len(ds) == 45 and ds.num_classes == 15
    assert (ds.split == "test").sum() == 15 and ds.clip_ids[0] == "train_00000"
    assert ds.labels[30:].tolist() == list(range(15))


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda f: f.__delitem__("visual_feat"), "match no known layout"),
        (lambda f: (f.__delitem__("visual_feat"), f.__setitem__("visual_feat", np.zeros((39, 1024))))[1],
         "'visual_feat' has 39 rows, expected 40"),
        (lambda f: (f.__delitem__("Train_test"), f.__setitem__("Train_test", np.arange(40) % 3))[1],
         "expected two"),
    ],
)
def test_h5_bad_files_name_the_key(tmp_path, mutate, message):
    _write_single_table(tmp_path / "bad.h5")
    with h5py.File(tmp_path / "bad.h5", "a") as f:
        mutate(f)
    with pytest.raises(DataError, match=message):
        load_h5(tmp_path / "bad.h5")


def test_h5_missing_and_not_hdf5(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_h5(tmp_path / "nope.h5")
    (tmp_path / "x.h5").write_text("not hdf5")
    with pytest.raises(DataError, match="not a readable HDF5"):
        load_h5(tmp_path / "x.h5")


def test_h5_nan_features_rejected(tmp_path):
    _write_single_table(tmp_path / "nan.h5", uint8=False)
    with h5py.File(tmp_path / "nan.h5", "a") as f:
        v = f["visual_feat"][()]
        v[7, 3] = np.nan
        f["visual_feat"][...] = v
    with pytest.raises(DataError, match="'visual'.*NaN or inf.*row 7"):
        load_h5(tmp_path / "nan.h5")


def test_vegas_needs_data_path():
    with pytest.raises(DataError, match="needs --data"):
        load_dataset("vegas")


def _write_folder(root, n=12):
    root.mkdir()
    rng = np.random.default_rng(2)
    rows = ["clip_id,label,split"] + [f"c{i},{'dog' if i % 2 else 'drum'},{'test' if i < 4 else 'train'}"
                                      for i in range(n)]
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    np.save(root / "audio.npy", rng.normal(size=(n, 128)).astype(np.float32))
    np.save(root / "visual.npy", rng.normal(size=(n, 1024)).astype(np.float16))
    return root


def test_folder_layout_round_trip(tmp_path):
    root = _write_folder(tmp_path / "mine")
    ds = load_dataset(str(root))
    assert ds.class_names == ["dog", "drum"] and ds.labels[:2].tolist() == [1, 0]
    assert ds.visual.dtype == np.float32 and (ds.split == "test").sum() == 4
    assert ds.rows_of(["c3"]).tolist() == [3]
    with pytest.raises(DataError, match="clip id 'zzz' is not in"):
        ds.rows_of(["zzz"])


def test_folder_wrong_rows_and_missing_manifest(tmp_path):
    root = _write_folder(tmp_path / "mine")
    np.save(root / "audio.npy", np.zeros((5, 128), np.float32))
    with pytest.raises(DataError, match=r"audio.npy: shape \(5, 128\), expected \(12, D\)"):
        load_folder(root)
    (root / "manifest.csv").unlink()
    with pytest.raises(DataError, match="manifest.csv: file not found"):
        load_folder(root)


def test_vegas_synth_mixed_clips():
    mixed = make_vegas_synth(SynthConfig(n_clips=800, seed=3, mixed_fraction=0.5, mix_min=0.6))
    plain = make_vegas_synth(SynthConfig(n_clips=800, seed=3, mixed_fraction=0.0))
    share = mixed.meta["event_share"]
    assert 0.4 < (share < 1).mean() < 0.6 and share.min() >= 0.6  # half the clips are mixed, s in [mix_min, 1]
    assert (plain.meta["event_share"] == 1).all()
    np.testing.assert_array_equal(mixed.labels, plain.labels)  # mixing changes content, not labels or splits
    np.testing.assert_array_equal(mixed.split, plain.split)
    # the teacher view shows it: mixed clips' frames agree less with each other than unmixed clips' frames
    f = mixed.teacher_frames
    agreement = np.einsum("ntd,nsd->n", f, f) / f.shape[1] ** 2
    assert agreement[share < 0.8].mean() < agreement[share == 1].mean()


def test_vegas_synth_is_deterministic_and_vegas_shaped():
    a = make_vegas_synth(SynthConfig(n_clips=500, seed=4))
    b = make_vegas_synth(SynthConfig(n_clips=500, seed=4))
    c = make_vegas_synth(SynthConfig(n_clips=500, seed=5))
    np.testing.assert_array_equal(a.audio, b.audio)
    assert not np.array_equal(a.audio, c.audio)
    assert a.synthetic and "SYNTHETIC" in a.describe()
    assert a.audio.shape == (500, 128) and a.visual.shape == (500, 1024)
    assert a.teacher_frames.shape == (500, 8, 512)
    np.testing.assert_allclose(np.linalg.norm(a.teacher_frames, axis=-1), 1.0, rtol=1e-5)
    assert a.class_names == VEGAS_CLASSES
    assert abs((a.split == "test").mean() - 5621 / 28103) < 0.02
    # audio is de-quantised uint8: every value is k/256 within [-0.5, 0.5)
    np.testing.assert_allclose(a.audio * 256, np.round(a.audio * 256), atol=1e-4)
    assert (a.visual >= 0).all()
    # label noise only on train; test labels are the true classes
    true = a.meta["true_labels"]
    assert (a.labels[a.split == "test"] == true[a.split == "test"]).all()
    assert (a.labels[a.split == "train"] != true[a.split == "train"]).any()


def test_dataset_ref_round_trip(tmp_path):
    ds = make_vegas_synth(SynthConfig(n_clips=300, seed=2))
    again = load_dataset(dataset_ref(ds))
    np.testing.assert_array_equal(ds.visual, again.visual)


def test_validation_split_is_carved_from_train_only(tiny_synth):
    ds = tiny_synth.with_validation_split(0.2, seed=0)
    assert (ds.split[tiny_synth.split == "test"] == "test").all()
    assert (ds.split == "val").sum() > 0
    folds = [tiny_synth.kfold(3, f) for f in range(3)]
    assert sum((f.split == "test").sum() for f in folds) == len(tiny_synth)


def test_teacher_frames_paired_by_row_order_clip_id_or_folder(tmp_path):
    from avret.data.frames import attach_teacher_frames

    _write_single_table(tmp_path / "vegas.h5", n=20)
    ds = load_dataset("vegas", tmp_path / "vegas.h5")
    frames = np.random.default_rng(1).normal(size=(20, 3, 8)).astype(np.float32)
    np.save(tmp_path / "frames.npy", frames)
    by_row = attach_teacher_frames(ds, tmp_path / "frames.npy")
    np.testing.assert_array_equal(by_row.teacher_frames, frames)
    assert by_row.teacher_mask.all() and by_row.meta["teacher_frames_source"].endswith("frames.npy")
    # by clip id, in another order and with an extra clip
    order = np.random.default_rng(2).permutation(20)
    ids = np.append(ds.clip_ids[order], "extra")
    mask = np.ones((21, 3), bool)
    mask[np.flatnonzero(order == 4), 2] = False
    np.savez(tmp_path / "frames.npz", teacher_frames=np.concatenate([frames[order], frames[:1]]),
             teacher_mask=mask, clip_ids=ids)
    by_id = attach_teacher_frames(ds, tmp_path / "frames.npz")
    np.testing.assert_array_equal(by_id.teacher_frames, frames)
    assert by_id.teacher_mask.sum() == 59 and not by_id.teacher_mask[4, 2]
    # a features folder (the layout `avret features extract` writes)
    folder = tmp_path / "feats"
    folder.mkdir()
    (folder / "manifest.csv").write_text("clip_id\n" + "\n".join(ds.clip_ids[::-1]) + "\n")
    np.save(folder / "teacher_frames.npy", frames[::-1])
    np.testing.assert_array_equal(attach_teacher_frames(ds, folder).teacher_frames, frames)


@pytest.mark.parametrize("write,message", [
    (lambda p: np.save(p / "f.npy", np.zeros((19, 3, 8), np.float32)),
     r"f.npy: field 'teacher_frames' has 19 rows, expected 20"),
    (lambda p: np.save(p / "f.npy", np.zeros((20, 8), np.float32)),
     r"f.npy: field 'teacher_frames' has shape \(20, 8\), expected \(N, T, D\)"),
    (lambda p: np.savez(p / "f.npz", frames=np.zeros((20, 3, 8))), r"f.npz: key 'teacher_frames' is missing"),
    (lambda p: np.savez(p / "f.npz", teacher_frames=np.zeros((2, 3, 8)), clip_ids=np.array(["clip_00000", "x"])),
     r"f.npz: no frames for clip 'clip_00001' \(and 18 more\)"),
    (lambda p: np.savez(p / "f.npz", teacher_frames=np.zeros((20, 3, 8)), teacher_mask=np.ones((20, 2), bool)),
     r"f.npz: field 'teacher_mask' has shape \(20, 2\), expected \(20, 3\)"),
    (lambda p: (p / "f.txt").write_text("x"), r"f.txt: unknown frame file type '.txt'"),
    (lambda p: None, r"f.npy: frame file not found"),
])
def test_teacher_frames_bad_input_names_file_and_field(tmp_path, write, message):
    from avret.data.frames import attach_teacher_frames

    _write_single_table(tmp_path / "vegas.h5", n=20)
    ds = load_dataset("vegas", tmp_path / "vegas.h5")
    write(tmp_path)
    target = next((p for p in tmp_path.iterdir() if p.stem == "f"), tmp_path / "f.npy")
    with pytest.raises(DataError, match=message):
        attach_teacher_frames(ds, target)
