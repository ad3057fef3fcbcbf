"""Step 2 losses, the method registry, and distillation runs end to end (tiny, seeded)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from avret.data import SynthConfig, make_vegas_synth
from avret.distill.configs import VideoAdviserConfig
from avret.distill.context import MethodContext, TeacherOutputs
from avret.distill.methods import METHODS, build_method
from avret.distill.step1 import RelevanceHead
from avret.errors import AvretError
from avret.io import load_model
from avret.losses.auxiliary import Batch
from avret.losses.kd import LogitKDLoss, kd_loss
from avret.losses.relevance import PairwiseRelevanceLoss
from avret_cli.main import app

SYNTH = ["--synth-clips", "300", "--synth-seed", "3"]
RUN_ARGS = [*SYNTH, "--teacher-epochs", "2", "--prompts", "shared", "--epochs", "3"]


def test_kd_loss_hand_computed():
    t = torch.tensor([[math.log(3.0), 0.0]])  # teacher posterior (0.75, 0.25) at T=1
    s = torch.tensor([[0.0, 0.0]])  # student (0.5, 0.5)
    expected = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kd_loss(s, t, 1.0).item() == pytest.approx(expected, rel=1e-6)
    assert kd_loss(t, t, 4.0).item() == pytest.approx(0.0, abs=1e-7)
    # T^2 scaling: at T=2 the softened posteriors are (sqrt3, 1)/(sqrt3+1)
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    expected2 = 4 * (p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5))
    assert kd_loss(s, t, 2.0).item() == pytest.approx(expected2, rel=1e-5)  # float32


def test_pairwise_relevance_loss_hand_computed():
    post = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    loss = PairwiseRelevanceLoss(post, lambda a, b: a @ b.T, weight=2.0, balanced=False, loss="mse")
    with torch.no_grad():
        loss.bias.fill_(0.0)
        loss.log_temp.fill_(0.0)
    audio = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    visual = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    batch = Batch(torch.tensor([0, 1]), audio, visual, torch.tensor([0, 1]))
    value, _ = loss(batch, audio, visual)
    sim = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    target = torch.eye(2)
    err = (torch.sigmoid(sim) - target) ** 2
    assert value.item() == pytest.approx(2.0 * err.mean().item(), rel=1e-6)
    loss.balanced = True  # relevant pairs (diagonal) and irrelevant pairs each weigh one half
    value, _ = loss(batch, audio, visual)
    expected = 2.0 * 0.5 * (err.diagonal().mean() + err[~torch.eye(2, dtype=bool)].mean())
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.balanced, loss.loss = False, "bce"  # cross-entropy of the calibrated similarity against r_ij
    value, _ = loss(batch, audio, visual)
    q = torch.sigmoid(sim)
    bce = -(target * q.log() + (1 - target) * (1 - q).log())
    assert value.item() == pytest.approx(2.0 * bce.mean().item(), rel=1e-5)


def test_pairwise_relevance_loss_rejects_unknown_loss():
    with pytest.raises(AvretError, match="relevance loss 'l1'"):
        PairwiseRelevanceLoss(torch.eye(2), lambda a, b: a @ b.T, weight=1.0, balanced=True, loss="l1")


def test_registry_and_gradients_reach_only_training_heads():
    assert {"none", "kd", "videoadviser"} <= set(METHODS)
    ds = make_vegas_synth(SynthConfig(n_clips=100))
    ctx = MethodContext(ds.subset("train"), ds.subset("test"), None, 4)
    assert build_method("none", ctx) is None
    with pytest.raises(AvretError, match="--method 'foo'"):
        build_method("foo", ctx)
    post = torch.softmax(torch.randn(6, 3, generator=torch.Generator().manual_seed(0)), -1)
    ctx.teacher = TeacherOutputs(post.log(), post, RelevanceHead())
    kd = build_method("kd", ctx)
    assert isinstance(kd, LogitKDLoss)
    emb = torch.nn.functional.normalize(torch.randn(3, 4), dim=-1).requires_grad_(True)
    value, _ = kd(Batch(torch.tensor([0, 2, 4]), emb, emb, torch.tensor([0, 1, 2])), emb, emb)
    value.backward()
    assert emb.grad is not None and kd.audio_head.weight.grad is not None
    per_clip = build_method("videoadviser", ctx, VideoAdviserConfig(student_target="per-clip"))
    assert per_clip.targets.shape == (6, 3) and float(per_clip.targets.max()) <= 1.0 + 1e-6


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    runner = CliRunner()
    for method in ("none", "videoadviser"):
        res = runner.invoke(app, ["distill", "--method", method, "--out", str(root / method), *RUN_ARGS])
        assert res.exit_code == 0, res.output
    return root


def test_distilled_towers_have_the_same_parameters_and_cost(runs):
    plain, distilled = load_model(runs / "none"), load_model(runs / "videoadviser")
    shapes = {k: tuple(v.shape) for k, v in plain.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in distilled.state_dict().items()}
    assert (runs / "videoadviser" / "teacher" / "config.json").is_file()
    meta = json.loads((runs / "videoadviser" / "run.json").read_text())
    assert meta["method"] == "videoadviser" and "tau" in meta["teacher"]


def test_reused_teacher_gives_the_same_student_as_a_fresh_one(tmp_path):
    import shutil

    fresh, resumed = tmp_path / "fresh", tmp_path / "resumed"
    args = ["distill", "--method", "kd", *RUN_ARGS]
    assert CliRunner().invoke(app, [*args, "--out", str(fresh)]).exit_code == 0
    resumed.mkdir()
    shutil.copytree(fresh / "teacher", resumed / "teacher")  # the teacher is reused, not retrained
    shutil.copy2(fresh / "step1.json", resumed / "step1.json")
    res = CliRunner().invoke(app, [*args, "--out", str(resumed)])
    assert res.exit_code == 0 and "reusing teacher" in res.output
    a, b = load_model(fresh).state_dict(), load_model(resumed).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_distill_then_eval_from_the_cli(runs):
    res = CliRunner().invoke(app, ["eval", "--model", str(runs / "videoadviser"), *SYNTH])
    assert res.exit_code == 0, res.output
    assert "SYNTHETIC" in res.stdout


def test_rerun_of_a_finished_run_is_a_no_op(runs):
    before = (runs / "none" / "model" / "model.safetensors").stat().st_mtime_ns
    res = CliRunner().invoke(app, ["distill", "--method", "none", "--out", str(runs / "none"), *RUN_ARGS])
    assert res.exit_code == 0 and "nothing to do" in res.output
    assert (runs / "none" / "model" / "model.safetensors").stat().st_mtime_ns == before
    # other settings into the same directory train again instead of silently keeping the old run
    res = CliRunner().invoke(app, ["distill", "--method", "none", "--out", str(runs / "none"), *RUN_ARGS[:-1], "2"])
    assert res.exit_code == 0 and "other settings" in res.output


def test_random_clip_refused_for_real_data(tmp_path):
    folder = tmp_path / "real"
    folder.mkdir()
    rows = ["clip_id,label,split"] + [f"c{i},{'a' if i % 2 else 'b'},train" for i in range(20)]
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    rng = np.random.default_rng(0)
    np.save(folder / "audio.npy", rng.normal(size=(20, 8)).astype(np.float32))
    np.save(folder / "visual.npy", rng.normal(size=(20, 8)).astype(np.float32))
    np.save(folder / "teacher_frames.npy", rng.normal(size=(20, 2, 16)).astype(np.float32))
    res = CliRunner().invoke(app, ["distill", "--method", "videoadviser", "--dataset", str(folder),
                                   "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "--clip-weights is required for real data" in res.stderr


@pytest.mark.parametrize("flag,value", [("--relevance-loss", "l1"), ("--student-target", "both")])
def test_bad_step2_option_is_refused_before_teacher_training(tmp_path, flag, value):
    out = tmp_path / "r"
    res = CliRunner().invoke(app, ["distill", *SYNTH, "--out", str(out), flag, value])
    assert res.exit_code == 2 and f"{flag} '{value}': expected" in res.stderr
    assert not out.exists()  # nothing trained, nothing written


def test_saved_teacher_reloads_in_a_fresh_process(runs):
    import subprocess
    import sys

    code = ("from avret.distill.teacher import VideoAdviserTeacher as T; "
            f"t = T.from_pretrained({str(runs / 'videoadviser' / 'teacher')!r}); print(len(t.config.class_names))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-500:]
    assert out.stdout.strip() == "10"


def test_distill_on_a_community_h5_paired_with_frames_then_eval(tmp_path):
    """The acceptance path for real data: community-layout h5 + frame embeddings + local CLIP weights."""
    import h5py

    from tests.fixtures_clip import make_tiny_clip

    synth = make_vegas_synth(SynthConfig(n_clips=300, seed=3))
    with h5py.File(tmp_path / "vegas.h5", "w") as f:  # single-table layout; uint8 audio like the community files
        f["audio_feat"] = np.clip(np.round(synth.audio * 256 + 128), 0, 255).astype(np.uint8)
        f["visual_feat"] = synth.visual
        f["Label_ID"] = synth.labels.reshape(-1, 1)
        f["Train_test"] = (synth.split == "test").astype(np.int64)
    np.save(tmp_path / "frames.npy", synth.teacher_frames)
    clip_name, clip_weights = make_tiny_clip(tmp_path)
    run = tmp_path / "run"
    args = ["distill", "--method", "videoadviser", "--dataset", "vegas", "--data", str(tmp_path / "vegas.h5"),
            "--clip-model", clip_name, "--clip-weights", clip_weights,
            "--teacher-epochs", "2", "--prompts", "shared", "--epochs", "3"]
    res = CliRunner().invoke(app, [*args, "--out", str(run), "--frames", str(tmp_path / "frames.npy")])
    assert res.exit_code == 0, res.output
    meta = json.loads((run / "run.json").read_text())
    assert meta["method"] == "videoadviser" and meta["teacher"]["teacher_key"]["frames"].endswith("frames.npy")
    res = CliRunner().invoke(app, ["eval", "--model", str(run), "--dataset", "vegas", "--data",
                                   str(tmp_path / "vegas.h5")])
    assert res.exit_code == 0, res.output
    assert "SYNTHETIC" not in res.stdout and "mean" in res.stdout
    # index build and eval default to the data set the run was trained on (the h5), not vegas-synth
    res = CliRunner().invoke(app, ["index", "build", "--model", str(run), "--out", str(tmp_path / "idx")])
    assert res.exit_code == 0, res.output
    assert "300 visual clips" in res.stdout
    res = CliRunner().invoke(app, ["eval", "--model", str(run)])
    assert res.exit_code == 0 and "SYNTHETIC" not in res.stdout and "60 queries per direction" in res.stdout
    # without frames: a one-line error that says how to pair them
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "r2")])
    assert res.exit_code == 2 and "has no teacher view" in res.stderr and "--frames" in res.stderr
    assert not (tmp_path / "r2").exists()
