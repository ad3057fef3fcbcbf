"""Student save/load (avret's one checkpoint format), pooling/head options, distillation loss,
training protocol (through avret.train.loop.fit), ridge probe.

All on a tiny random RoBERTa (hidden 32, 2 layers, 2 heads) saved to tmp and loaded through the
same ``--encoder PATH`` code path as a real encoder.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from avret.errors import AvretError, DataError, ModelError
from avret.io import load_model
from avret.sentiment.label_files import SentimentExample
from avret.sentiment.probe import embed_texts, fit_ridge, ridge_select
from avret.sentiment.student import SentimentStudent
from avret.sentiment.student_loss import distillation_loss
from avret.sentiment.student_training import SentimentTrainConfig, linear_schedule, param_groups, train_student
from avret.sentiment.tiny import make_tiny_roberta

torch.set_num_threads(2)

POS = ["good", "great", "wonderful", "love", "nice"]
NEG = ["bad", "awful", "terrible", "hate", "boring"]
FILL = ["the", "film", "was", "really", "movie", "i", "it", "a"]


def tiny_examples(n: int = 40, seed: int = 0) -> list[SentimentExample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        pos = i % 2 == 0
        words = list(rng.choice(FILL, 3)) + [str(rng.choice(POS if pos else NEG))]
        label = float(np.round(rng.uniform(0.5, 3.0) * (1 if pos else -1), 1))
        split = "train" if i < n * 0.6 else ("dev" if i < n * 0.8 else "test")
        out.append(SentimentExample(f"u{i}", " ".join(words), label, split))
    return out


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_roberta(tmp_path_factory.mktemp("tiny_roberta"), POS + NEG + FILL)


def test_save_load_roundtrip(encoder_dir: Path, tmp_path: Path) -> None:
    m = SentimentStudent.from_encoder(encoder_dir, pooling="cls", head="mlp", head_hidden=8, max_len=16)
    texts = ["the film was good", "awful movie", "unknownword"]
    before = m.predict(texts)
    m.save_pretrained(tmp_path / "student")
    assert {p.name for p in (tmp_path / "student").iterdir()} == {"config.json", "model.safetensors", "tokenizer"}
    assert (tmp_path / "student" / "tokenizer" / "tokenizer.json").is_file()
    cfg = json.loads((tmp_path / "student" / "config.json").read_text())
    assert cfg["model_type"] == "sentiment-student" and cfg["format_version"] == 1
    assert cfg["encoder_config"]["model_type"] == "roberta" and cfg["hidden_size"] == 32
    m2 = SentimentStudent.from_pretrained(tmp_path / "student")
    assert m2.config.pooling == "cls" and m2.config.head == "mlp" and m2.config.max_len == 16
    np.testing.assert_array_equal(m2.predict(texts), before)
    m3 = load_model(tmp_path / "student")  # the one loader dispatches on model_type
    assert isinstance(m3, SentimentStudent)
    np.testing.assert_array_equal(m3.predict(texts), before)
    assert m3.fingerprint() == m.fingerprint()
    # saving the loaded model again gives the same bytes (config and weights)
    m3.save_pretrained(tmp_path / "again")
    assert m3.fingerprint() == m.fingerprint()


def _save_old_format(model: SentimentStudent, directory: Path) -> None:
    """A student directory exactly as avret wrote it before the one checkpoint format."""
    from safetensors.torch import save_model

    directory.mkdir(parents=True)
    payload = {"format": "avret-sentiment-student/1", **asdict(model.config)}
    (directory / "config.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    save_model(model, str(directory / "model.safetensors"))
    model.tokenizer.save_pretrained(str(directory))


def test_old_format_student_still_loads(encoder_dir: Path, tmp_path: Path) -> None:
    m = SentimentStudent.from_encoder(encoder_dir, head="mlp", head_hidden=8)
    texts = ["the film was good", "awful movie"]
    _save_old_format(m, tmp_path / "old")
    old = SentimentStudent.from_pretrained(tmp_path / "old")
    np.testing.assert_array_equal(old.predict(texts), m.predict(texts))
    try:  # the generic loader either loads it too or says in one line what to do
        assert isinstance(load_model(tmp_path / "old"), SentimentStudent)
    except ModelError as exc:
        assert "\n" not in str(exc)
    # an old-format directory whose weights do not fit its config: one line naming the weight
    cfg = json.loads((tmp_path / "old" / "config.json").read_text())
    (tmp_path / "old" / "config.json").write_text(json.dumps({**cfg, "head": "linear"}))
    with pytest.raises(ModelError, match="weight 'head") as exc:
        SentimentStudent.from_pretrained(tmp_path / "old")
    assert "\n" not in str(exc.value)


def test_mean_pooling_ignores_padding(encoder_dir: Path) -> None:
    m = SentimentStudent.from_encoder(encoder_dir)
    alone = m.predict(["good film"])
    batched = m.predict(["good film", "the film was really a good movie i love it"])
    assert alone[0] == pytest.approx(batched[0], abs=1e-5)


def test_broken_model_dirs(encoder_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="config.json: file not found"):
        SentimentStudent.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text('{"format": "other"}')
    with pytest.raises(ModelError, match="model_type 'None', expected 'sentiment-student'"):
        SentimentStudent.from_pretrained(tmp_path)
    with pytest.raises(ModelError, match="no config.json"):
        SentimentStudent.from_encoder(tmp_path / "nope")
    good = SentimentStudent.from_encoder(encoder_dir).save_pretrained(tmp_path / "m")
    cfg = json.loads((good / "config.json").read_text())
    for field, value, match in [("pooling", "max", "pooling"), ("max_len", "64", "field 'max_len'"),
                                ("encoder_config", {}, "encoder_config.model_type")]:
        (good / "config.json").write_text(json.dumps({**cfg, field: value}))
        with pytest.raises(ModelError, match=match) as exc:
            SentimentStudent.from_pretrained(good)
        assert "\n" not in str(exc.value)


def test_bad_pooling(encoder_dir: Path) -> None:
    with pytest.raises(ModelError, match="pooling"):
        SentimentStudent.from_encoder(encoder_dir, pooling="max")


def test_distillation_loss_formula() -> None:
    pred = torch.tensor([1.0, -1.0])
    label = torch.tensor([2.0, -1.0])
    teacher = torch.tensor([0.0, 1.0])
    # L1(pred,label) = .5 ; L1(pred,teacher) = 1.5 ; MSE(pred,teacher) = 2.5
    assert float(distillation_loss(pred, label)) == pytest.approx(0.5)
    assert float(distillation_loss(pred, label, teacher, alpha=0.5)) == pytest.approx(1.0)
    assert float(distillation_loss(pred, label, teacher, alpha=0.25, distill_loss="mse")) == pytest.approx(
        0.75 * 0.5 + 0.25 * 2.5)
    assert float(distillation_loss(pred, label, teacher, alpha=0.0)) == pytest.approx(0.5)


def test_schedule_and_param_groups(encoder_dir: Path) -> None:
    f = linear_schedule(100, 0.1)
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0) and f(100) == 0.0
    assert f(55) == pytest.approx(0.5)
    m = SentimentStudent.from_encoder(encoder_dir)
    cfg = SentimentTrainConfig(lr=1e-4, head_lr=1e-2, layer_decay=0.5)
    groups = param_groups(m, cfg)
    assert groups[-1]["lr"] == 1e-2
    lrs = sorted({g["lr"] for g in groups[:-1]})
    assert lrs[0] == pytest.approx(1e-4 * 0.5**3) and lrs[-1] == pytest.approx(1e-4)
    n = sum(len(g["params"]) for g in groups)
    assert n == len([p for p in m.parameters() if p.requires_grad])


def test_training_selects_on_dev_and_tests_once(encoder_dir: Path) -> None:
    ex = tiny_examples()
    cfg = SentimentTrainConfig(epochs=3, batch_size=8, lr=1e-3, head_lr=1e-2, seed=0, threads=2, device="cpu")
    steps: list[tuple[str, int, int]] = []
    res = train_student(ex, cfg, encoder=encoder_dir, progress=lambda *a: steps.append(a))
    dev_maes = [h["dev"]["mae"] for h in res.history]
    assert res.best_epoch == int(np.argmin(dev_maes)) + 1
    assert res.dev_metrics["mae"] == pytest.approx(min(dev_maes))
    assert res.test_metrics is not None and res.test_metrics["n"] == 8
    assert len(res.test_predictions) == 8 and len(res.epoch_seconds) == 3
    assert [h["epoch"] for h in res.history] == [1, 2, 3] and res.device == "cpu" and res.precision == "fp32"
    assert all(0 < h["train_seconds"] <= h["seconds"] for h in res.history)
    # per-step progress: 24 train rows / batch 8 = 3 steps per epoch
    assert steps[:3] == [("epoch 1/3", 1, 3), ("epoch 1/3", 2, 3), ("epoch 1/3", 3, 3)] and len(steps) == 9
    # the selected weights are the model's: re-evaluating dev reproduces the selected epoch's MAE
    dev = [e for e in ex if e.split == "dev"]
    again = np.mean(np.abs(res.model.predict([e.text for e in dev]) - np.array([e.label for e in dev])))
    assert again == pytest.approx(res.dev_metrics["mae"], abs=1e-6)


def test_same_seed_same_weights(encoder_dir: Path) -> None:
    ex = tiny_examples()
    cfg = SentimentTrainConfig(epochs=2, batch_size=8, lr=1e-3, head_lr=1e-2, seed=3, threads=2, device="cpu")
    a = train_student(ex, cfg, encoder=encoder_dir, evaluate_test=False).model.state_dict()
    b = train_student(ex, cfg, encoder=encoder_dir, evaluate_test=False).model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    c = train_student(ex, SentimentTrainConfig(**{**asdict(cfg), "seed": 4}), encoder=encoder_dir,
                      evaluate_test=False).model.state_dict()
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_bad_device_and_precision(encoder_dir: Path) -> None:
    ex = tiny_examples()
    with pytest.raises(AvretError, match="--device 'tpu'"):
        train_student(ex, SentimentTrainConfig(epochs=1, device="tpu"), encoder=encoder_dir)
    with pytest.raises(ValueError, match="precision"):
        train_student(ex, SentimentTrainConfig(epochs=1, precision="fp8"), encoder=encoder_dir)


def test_distillation_uses_teacher_and_checks_coverage(encoder_dir: Path) -> None:
    ex = tiny_examples()
    cfg = SentimentTrainConfig(epochs=1, batch_size=8, lr=1e-3, head_lr=1e-2, alpha=0.5)
    scores = {e.id: e.label * 0.5 for e in ex if e.split == "train"}
    res = train_student(ex, cfg, encoder=encoder_dir, teacher_scores=scores)
    plain = train_student(ex, SentimentTrainConfig(epochs=1, batch_size=8, lr=1e-3, head_lr=1e-2, alpha=0.0),
                          encoder=encoder_dir, teacher_scores=scores)
    assert res.history[0]["train_loss"] != pytest.approx(plain.history[0]["train_loss"])
    scores.pop("u0")
    with pytest.raises(DataError, match="no score for train id 'u0'"):
        train_student(ex, cfg, encoder=encoder_dir, teacher_scores=scores)


def test_ridge_closed_form_and_selection(encoder_dir: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 4))
    y = x @ np.array([1.0, -2.0, 0.5, 0.0]) + 3.0
    m = fit_ridge(x, y, 1e-8)
    np.testing.assert_allclose(m.predict(x), y, atol=1e-6)
    # ridge solution equals the augmented least squares with penalty rows
    alpha = 2.0
    m2 = fit_ridge(x, y, alpha)
    xc, yc = x - x.mean(0), y - y.mean()
    ref = np.linalg.lstsq(np.vstack([xc, np.sqrt(alpha) * np.eye(4)]), np.concatenate([yc, np.zeros(4)]),
                          rcond=None)[0]
    np.testing.assert_allclose(m2.coef, ref, atol=1e-8)
    sel = ridge_select(x[:30], y[:30], x[30:], y[30:], alphas=[1e-6, 1e3])
    assert sel.alpha == 1e-6 and set(sel.dev_mae) == {1e-6, 1e3}
    emb = embed_texts(["good film", "bad"], encoder=encoder_dir)
    assert emb.shape == (2, 32) and np.isfinite(emb).all()


def test_ridge_head_init_reproduces_the_probe(encoder_dir: Path) -> None:
    from avret.sentiment.student_training import init_head_by_ridge

    ex = tiny_examples()
    train = [e for e in ex if e.split == "train"]
    dev = [e for e in ex if e.split == "dev"]
    m = SentimentStudent.from_encoder(encoder_dir)
    alpha = init_head_by_ridge(m, train, dev)
    emb = embed_texts([e.text for e in train + dev], encoder=encoder_dir)
    ref = ridge_select(emb[:len(train)], np.array([e.label for e in train]), emb[len(train):],
                       np.array([e.label for e in dev]))
    assert alpha == ref.alpha
    np.testing.assert_allclose(m.predict([e.text for e in dev]), ref.predict(emb[len(train):]), atol=1e-4)
