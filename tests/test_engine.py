"""The engine core: the one training loop, the one checkpoint format, and what users pay for.

Each test here guards a behaviour that a one-line bug would break silently:
* re-evaluating a saved model reproduces the validation mAP its run recorded (best-state restore);
* a distillation weight of 0 gives towers bit-identical to ``none``; the default weight does not;
* the step-2 loss lowers the relevance-regression error it targets;
* every model type round-trips through save_pretrained / from_pretrained / load_model;
* the same pipeline run twice with one seed gives identical weights; a resumed fit equals a fresh one.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from avret.data import SynthConfig, make_vegas_synth
from avret.distill.configs import VideoAdviserConfig
from avret.distill.methods import METHODS
from avret.distill.pipeline import DistillConfig, run_distillation
from avret.errors import AvretError, ModelError
from avret.io import MODEL_TYPES, load_model, read_run, verify_run
from avret.train.loop import FitConfig, fit
from avret.train.runs import train_run
from avret.train.tower_training import TrainConfig, mean_map, validation_map
from avret_cli.main import app

FAST = {"epochs": 4, "batch_size": 64, "patience": 3}


@pytest.fixture(scope="module")
def small():
    return make_vegas_synth(SynthConfig(n_clips=300, seed=3))


def _distill(ds, out, method, seed=0, teacher_from=None, **overrides):
    """A small distillation run; ``teacher_from`` reuses that run's teacher (the pipeline's resume path)."""
    import shutil

    if teacher_from is not None:
        out.mkdir(parents=True)
        shutil.copytree(teacher_from / "teacher", out / "teacher")
        shutil.copy2(teacher_from / "step1.json", out / "step1.json")
    config = METHODS[method].config(**overrides)  # the method's typed settings
    cfg = DistillConfig(method=method, teacher_epochs=2, prompt_conditioning="shared", method_config=config)
    return run_distillation(ds, out, cfg, TrainConfig(seed=seed, **FAST))


def _weights(path):
    return {k: v.clone() for k, v in load_model(path).state_dict().items()}


def _identical(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------- selection
# --------------------------------------------------------------------------- distillation weight
@pytest.fixture(scope="module")
def weight_runs(tmp_path_factory, small):
    root = tmp_path_factory.mktemp("weights")
    runs = {"va": _distill(small, root / "va", "videoadviser"), "none": _distill(small, root / "none", "none")}
    for name, method in (("va0", "videoadviser"), ("kd0", "kd")):  # same teacher, weight 0
        runs[name] = _distill(small, root / name, method, teacher_from=runs["va"], weight=0.0)
    return runs


def test_saved_towers_reproduce_the_recorded_validation_map(tmp_path, small):
    """Guards the best-state restore: the saved weights are those of the recorded best epoch."""
    cfg = TrainConfig(seed=0, epochs=8, batch_size=64, patience=8, lr=3e-3)
    run = train_run(small, tmp_path / "run", "towers", cfg)
    meta = read_run(run)
    val = small.with_validation_split(cfg.val_fraction, seed=cfg.seed).subset("val")
    again = validation_map(load_model(run), val)
    assert again == pytest.approx(meta["best_val_map"], abs=1e-9)
    assert meta["history"][meta["best_epoch"] - 1]["val_map"] == pytest.approx(meta["best_val_map"], abs=1e-12)
    # the guard is meaningful: some later epoch scored differently from the selected one
    assert any(abs(r["val_map"] - meta["best_val_map"]) > 1e-6 for r in meta["history"])


def test_saved_distilled_towers_reproduce_the_recorded_validation_map(weight_runs, small):
    run = weight_runs["va"]
    meta = read_run(run)
    val = small.with_validation_split(0.1, seed=0).subset("val")
    assert validation_map(load_model(run), val) == pytest.approx(meta["best_val_map"], abs=1e-9)


def test_fit_restores_the_best_epoch_not_the_last():
    torch.manual_seed(0)
    model = torch.nn.Linear(1, 1, bias=False)
    scores = iter([0.1, 0.9, 0.2, 0.3])  # epoch 2 is best
    snapshots = []

    def evaluate():
        snapshots.append(model.weight.detach().clone())
        return {"val": next(scores)}

    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    result = fit(model, lambda b: model(torch.ones(len(b["rows"]), 1)).sum(), 8, opt,
                 FitConfig(epochs=4, batch_size=4, device="cpu"), evaluate=evaluate, monitor="val")
    assert result.best_epoch == 2 and len(result.history) == 4
    assert torch.equal(model.weight, snapshots[1])


def test_zero_distillation_weight_gives_the_plain_student(weight_runs):
    plain = _weights(weight_runs["none"])
    assert _identical(plain, _weights(weight_runs["va0"]))
    assert _identical(plain, _weights(weight_runs["kd0"]))


@pytest.mark.parametrize("method", ["kd", "videoadviser", "msd", "mi-kd"])
def test_zero_weight_builds_no_auxiliary_graph(method):
    """Weight 0 is the plain student by construction (no term multiplied by 0, no extra parameters),
    so the bit-identity above does not hang on how a loaded machine orders floating-point sums."""
    from dataclasses import replace

    from avret.distill.context import MethodContext, TeacherOutputs
    from avret.distill.methods import build_method, method_entry
    from avret.distill.step1 import RelevanceHead

    ds = make_vegas_synth(SynthConfig(n_clips=120, seed=0))
    post = torch.softmax(torch.randn(len(ds.subset("train")), ds.num_classes), -1)
    ctx = MethodContext(ds.subset("train"), ds.subset("val"), TeacherOutputs(post.log(), post, RelevanceHead()), 8)
    assert build_method(method, ctx, replace(method_entry(method).config(), weight=0.0)) is None


def test_default_distillation_weight_changes_the_student(weight_runs):
    assert not _identical(_weights(weight_runs["none"]), _weights(weight_runs["va"]))
    # the method's default was used and is recorded, typed
    recorded = read_run(weight_runs["va"])["distill_config"]
    assert recorded["method"] == "videoadviser" and recorded["method_config"]["weight"] == VideoAdviserConfig.weight


# --------------------------------------------------------------------------- step 2
def test_step2_loss_lowers_the_relevance_error_it_targets():
    """A few gradient steps on the step-2 loss bring the student's calibrated similarity closer to r_ij."""
    from avret.distill.context import MethodContext, TeacherOutputs
    from avret.distill.methods import build_method
    from avret.distill.step1 import RelevanceHead
    from avret.train.tower_training import Batch

    ds = make_vegas_synth(SynthConfig(n_clips=120, seed=0))
    g = torch.Generator().manual_seed(0)
    post = torch.softmax(3 * torch.randn(16, ds.num_classes, generator=g), -1)
    head = RelevanceHead(init_tau=0.5)
    ctx = MethodContext(ds.subset("train"), ds.subset("val"), TeacherOutputs(post.log(), post, head), 8)
    loss_mod = build_method("videoadviser", ctx)
    audio = torch.randn(16, 8, generator=g).requires_grad_(True)
    visual = torch.randn(16, 8, generator=g).requires_grad_(True)
    rows = torch.arange(16)
    target = head.relevance_matrix(post, post).detach()

    @torch.no_grad()
    def error():
        a, v = torch.nn.functional.normalize(audio, dim=-1), torch.nn.functional.normalize(visual, dim=-1)
        return float(((loss_mod.student_relevance(a, v) - target) ** 2).mean())

    opt = torch.optim.Adam([audio, visual, *loss_mod.parameters()], lr=0.05)
    before = error()
    for _ in range(30):
        a, v = torch.nn.functional.normalize(audio, dim=-1), torch.nn.functional.normalize(visual, dim=-1)
        value, _ = loss_mod(Batch(rows, a, v, torch.zeros(16, dtype=torch.long)), a, v)
        opt.zero_grad()
        value.backward()
        opt.step()
    assert error() < 0.5 * before


# --------------------------------------------------------------------------- determinism and resume
def test_same_pipeline_twice_gives_identical_weights(tmp_path, small, weight_runs):
    a = _distill(small, tmp_path / "a", "videoadviser", seed=5)
    b = _distill(small, tmp_path / "b", "videoadviser", seed=5)
    assert _identical(_weights(a), _weights(b))
    assert _identical(load_model(a / "teacher").state_dict(), load_model(b / "teacher").state_dict())
    assert not _identical(_weights(a), _weights(weight_runs["va"]))  # seed 0: another student


def _toy_fit(checkpoint, epochs):
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Dropout(0.3), torch.nn.Linear(8, 1))
    x = torch.randn(40, 4, generator=torch.Generator().manual_seed(2))
    y = x.sum(1, keepdim=True)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=6)

    def loss_fn(b):
        return torch.nn.functional.mse_loss(model(b["x"]), b["y"])

    result = fit(model, loss_fn, {"x": x, "y": y}, opt, FitConfig(epochs=epochs, batch_size=8, seed=3,
                 device="cpu", checkpoint=checkpoint), scheduler=sched,
                 evaluate=lambda: {"val_loss": float(loss_fn({"x": x, "y": y}))}, monitor="val_loss", mode="min")
    return model, result


def test_resumed_fit_equals_an_uninterrupted_one(tmp_path):
    fresh, _ = _toy_fit(None, 6)
    _toy_fit(str(tmp_path / "state"), 3)  # "interrupted" after epoch 3
    resumed, result = _toy_fit(str(tmp_path / "state"), 6)
    assert result.resumed_from_epoch == 3 and len(result.history) == 6
    assert _identical(fresh.state_dict(), resumed.state_dict())


def test_fit_refuses_cuda_without_a_gpu_and_bad_settings():
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    if not torch.cuda.is_available():
        with pytest.raises(AvretError, match="--device 'cuda'"):
            fit(model, lambda b: model.weight.sum(), 4, opt, FitConfig(device="cuda"))
    with pytest.raises(AvretError, match="epochs"):
        fit(model, lambda b: model.weight.sum(), 4, opt, FitConfig(epochs=0, device="cpu"))


# --------------------------------------------------------------------------- the checkpoint format
def _roundtrip(model, tmp_path, *inputs, call=None):
    call = call or (lambda m, *x: m(*x))
    if isinstance(model, torch.nn.Module):
        model.eval()
    with torch.no_grad():
        before = call(model, *inputs)
    path = model.save_pretrained(tmp_path / model.model_type)
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == model.model_type and cfg["format_version"] == 1
    again = load_model(path)
    assert type(again) is type(model)
    with torch.no_grad():
        after = call(again, *inputs)
    before, after = (x if isinstance(x, (tuple, list)) else (x,) for x in (before, after))
    for b, a in zip(before, after, strict=True):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(a))
    return again


def test_towers_and_cca_round_trip(tmp_path, small):
    from avret.models.cca import CCAModel
    from avret.models.towers import AVTowers, TowerConfig

    torch.manual_seed(0)
    towers = AVTowers(TowerConfig(audio_dim=small.audio_dim, visual_dim=small.visual_dim, embed_dim=16,
                                  hidden_dim=32))
    _roundtrip(towers, tmp_path, small.audio[:7], call=lambda m, x: m.embed("audio", x))
    cca = CCAModel.fit(small.audio, small.visual, 8)
    _roundtrip(cca, tmp_path, small.visual[:7], call=lambda m, x: m.embed("visual", x))


def test_teachers_round_trip(tmp_path, small):
    from avret.distill.teacher import VideoAdviserTeacher, teacher_config_for_dataset
    from avret.models.clip import SYNTHETIC_CLIP
    from avret.sentiment.sentiment_teacher import SentimentTeacher

    torch.manual_seed(0)
    teacher = VideoAdviserTeacher(teacher_config_for_dataset(small, SYNTHETIC_CLIP, None, n_ctx=2))
    with torch.no_grad():  # move the learned parts off their initial values
        for p in teacher.trainable_parameters():
            p.add_(0.01 * torch.randn_like(p))
    frames = torch.from_numpy(small.teacher_frames[:5])
    mask = torch.from_numpy(small.teacher_mask[:5])
    _roundtrip(teacher, tmp_path, frames, mask)
    sent = SentimentTeacher.create(SYNTHETIC_CLIP, "random-init", frame_dim=12, teacher_input="text", n_ctx=2)
    x = torch.randn(4, 1, 12)
    _roundtrip(sent, tmp_path, x, torch.ones(4, 1, dtype=torch.bool))


def test_every_registered_model_type_has_a_round_trip_test():
    """A model type added to avret.io.MODEL_TYPES must get a round-trip test somewhere in tests/."""
    from pathlib import Path

    text = "".join(p.read_text() for p in Path(__file__).parent.glob("test_*.py"))
    covered = {"towers": "AVTowers(", "cca": "CCAModel.fit(", "videoadviser-teacher": "VideoAdviserTeacher(",
               "sentiment-teacher": "SentimentTeacher.create(", "multimodal-teacher": "MultimodalTeacher",
               "sentiment-student": "SentimentStudent"}
    assert set(MODEL_TYPES) == set(covered)
    for kind, marker in covered.items():
        assert marker in text and "save_pretrained" in text, kind


def test_checkpoint_errors_are_one_line(tmp_path, small):
    from avret.models.towers import AVTowers, TowerConfig

    path = AVTowers(TowerConfig(audio_dim=4, visual_dim=4, hidden_dim=8, embed_dim=4)).save_pretrained(tmp_path / "m")
    cfg = json.loads((path / "config.json").read_text())
    for field, value, match in [("model_type", "nope", "model_type 'nope'"),
                                ("hidden_dim", "8", "field 'hidden_dim'"),
                                ("hidden_dim", 10**7, "hidden_dim"),
                                ("format_version", 99, "format_version 99")]:
        (path / "config.json").write_text(json.dumps({**cfg, field: value}))
        with pytest.raises(ModelError, match=match) as exc:
            load_model(path)
        assert "\n" not in str(exc.value)
    (path / "config.json").write_text(json.dumps({"format": "avret-videoadviser", "kind": "teacher"}))
    with pytest.raises(ModelError, match="older avret"):
        load_model(path)


def test_run_files_are_checksummed(tmp_path, small):
    run = train_run(small, tmp_path / "t", "towers", TrainConfig(epochs=1, device="cpu"))
    assert verify_run(run) == []
    weights = run / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    assert verify_run(run) == ["model/model.safetensors"]


# --------------------------------------------------------------------------- the device option
def test_device_option_on_the_cli(tmp_path):
    runner = CliRunner()
    out = tmp_path / "t"
    res = runner.invoke(app, ["train", "--out", str(out), "--synth-clips", "200", "--epochs", "2",
                              "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert read_run(out)["device"] == "cpu" and "device cpu" in res.stdout
    res = runner.invoke(app, ["train", "--out", str(tmp_path / "x"), "--synth-clips", "200", "--device", "tpu"])
    assert res.exit_code == 2 and "--device 'tpu'" in res.output
    assert not (tmp_path / "x").exists()


def test_validation_metric_is_handed_in():
    """Training takes its selection metric as a callback (models/ and train/ do not own the metric)."""
    ds = make_vegas_synth(SynthConfig(n_clips=200, seed=0))
    calls = []

    def metric(a, v, labels, names):
        calls.append(len(a))
        return mean_map(a, v, labels, names)

    from avret.train.tower_training import train_towers

    train_towers(ds, config=TrainConfig(epochs=2, batch_size=64, device="cpu"), val_metric=metric)
    assert len(calls) == 2


def test_interrupted_distillation_resumes_its_towers(tmp_path, small, weight_runs):
    """A distill run killed after epoch 2 resumes from its saved state and ends where an uninterrupted run ends."""

    class Interrupt(Exception):
        pass

    def stop_after_two(epoch, _epochs, _record):
        if epoch == 2:
            raise Interrupt

    out = tmp_path / "r"
    cfg = DistillConfig(method="none", teacher_epochs=2, prompt_conditioning="shared")
    with pytest.raises(Interrupt):
        run_distillation(small, out, cfg, TrainConfig(seed=0, **FAST), progress=stop_after_two)
    assert (out / "train_state" / "train_state.pt").is_file() and not (out / "run.json").exists()
    said = []
    run_distillation(small, out, cfg, TrainConfig(seed=0, **FAST), status=said.append)
    assert any("resuming towers" in s for s in said)
    assert _identical(_weights(out), _weights(weight_runs["none"]))
    assert not (out / "train_state").exists() and verify_run(out) == []


def test_a_towers_directory_of_the_previous_format_still_loads(tmp_path):
    """Before format_version existed, towers saved the same fields with ``model_type`` inside the config."""
    from avret.models.towers import AVTowers, TowerConfig

    torch.manual_seed(0)
    towers = AVTowers(TowerConfig(audio_dim=4, visual_dim=6, hidden_dim=8, embed_dim=4))
    path = towers.save_pretrained(tmp_path / "old")
    cfg = json.loads((path / "config.json").read_text())
    del cfg["format_version"]
    (path / "config.json").write_text(json.dumps(cfg))
    x = np.random.default_rng(0).normal(size=(3, 6)).astype(np.float32)
    np.testing.assert_array_equal(load_model(path).embed("visual", x), towers.embed("visual", x))
