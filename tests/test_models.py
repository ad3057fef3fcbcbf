"""Towers and CCA: save/load, batch invariance, fingerprints, training selection, bad checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest

from avret.errors import DataError, ModelError
from avret.io import load_model, read_run
from avret.models.cca import CCAModel
from avret.models.towers import AVTowers, TowerConfig
from avret.train.runs import train_run


def test_embedding_is_the_same_alone_or_in_a_batch(tiny_run, tiny_synth):
    model = load_model(tiny_run)
    for modality in ("audio", "visual"):
        feats = tiny_synth.features(modality)[:64]
        batch = model.embed(modality, feats)
        alone = np.concatenate([model.embed(modality, feats[i : i + 1]) for i in range(len(feats))])
        np.testing.assert_allclose(alone, batch, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, rtol=1e-5)


def test_save_load_round_trip_and_fingerprint(tiny_run, tiny_synth, tmp_path):
    model = load_model(tiny_run)
    copy = model.save_pretrained(tmp_path / "copy")
    reloaded = load_model(copy)
    np.testing.assert_array_equal(model.embed("audio", tiny_synth.audio[:10]),
                                  reloaded.embed("audio", tiny_synth.audio[:10]))
    assert reloaded.fingerprint() == model.fingerprint()
    cfg = json.loads((copy / "config.json").read_text())
    assert cfg["model_type"] == "towers" and cfg["audio_dim"] == 128


def test_run_records_selection_on_val_not_test(tiny_run):
    meta = read_run(tiny_run)
    assert meta["method"] == "none" and meta["synthetic"] is True
    assert 0 <= meta["best_epoch"] < len(meta["history"])
    assert meta["best_val_map"] == max(h["val_map"] for h in meta["history"])


def test_training_is_deterministic(tiny_synth, tmp_path):
    from avret.train.tower_training import TrainConfig

    runs = [train_run(tiny_synth, tmp_path / f"r{i}", "towers", TrainConfig(epochs=2, batch_size=128))
            for i in range(2)]
    a, b = (load_model(r).embed("visual", tiny_synth.visual[:20]) for r in runs)
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_cca_recovers_a_shared_signal_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(500, 3))
    audio = z @ rng.normal(size=(3, 20)) + 0.1 * rng.normal(size=(500, 20))
    visual = z @ rng.normal(size=(3, 30)) + 0.1 * rng.normal(size=(500, 30))
    model = CCAModel.fit(audio, visual, n_components=3, reg=1e-4)
    assert model.params["canonical_corr"].min() > 0.95
    path = model.save_pretrained(tmp_path / "cca")
    again = load_model(path)
    np.testing.assert_allclose(again.embed("audio", audio[:5]), model.embed("audio", audio[:5]), rtol=1e-6)


def test_cca_run_is_selected_on_validation(tiny_synth, tmp_path):
    run = train_run(tiny_synth, tmp_path / "cca", "cca")
    sel = read_run(run)["selection"]
    assert sel["val_map"] == max(g["val_map"] for g in sel["grid"])


def test_bad_model_directories(tmp_path, tiny_run):
    with pytest.raises(ModelError, match="model directory not found"):
        load_model(tmp_path / "nothing")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"model_type": "towers", "audio_dim": 64}))
    with pytest.raises(ModelError, match="model.safetensors: file not found"):
        load_model(bad)
    (tiny_run / "model" / "model.safetensors").replace(bad / "model.safetensors")
    try:
        with pytest.raises(ModelError, match=r"weight '.*' has shape .*, expected"):
            load_model(bad)
    finally:
        (bad / "model.safetensors").replace(tiny_run / "model" / "model.safetensors")
    (bad / "config.json").write_text(json.dumps({"model_type": "transformer"}))
    with pytest.raises(ModelError, match="model_type 'transformer'"):
        load_model(bad)


def test_wrong_width_and_nan_features(tiny_run):
    model = load_model(tiny_run)
    with pytest.raises(DataError, match="width 100, expected 128"):
        model.embed("audio", np.zeros((3, 100), np.float32))
    x = np.zeros((3, 1024), np.float32)
    x[1, 5] = np.inf
    with pytest.raises(DataError, match="NaN or inf"):
        model.embed("visual", x)


def test_tower_config_shapes():
    model = AVTowers(TowerConfig(audio_dim=8, visual_dim=16, embed_dim=4, hidden_dim=12, num_layers=1))
    assert model.embed("audio", np.ones((2, 8), np.float32)).shape == (2, 4)
