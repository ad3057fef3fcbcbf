"""MSD and MI-based cross-modal KD (``--method msd`` / ``mi-kd``): losses, saliency, phases, CLI (tiny, seeded)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from avret.data import SynthConfig, make_vegas_synth
from avret.distill.configs import MIKDConfig, MSDConfig
from avret.distill.context import MethodContext
from avret.distill.methods import METHODS, NEEDS_TEACHER, build_method
from avret.distill.mikd import MIKDLoss
from avret.distill.msd import MetaWeightLearner, MSDLoss, modality_saliency
from avret.distill.multimodal_teacher import (
    MODALITIES,
    MultimodalTeacher,
    MultimodalTeacherConfig,
    build_teacher,
    dataset_inputs,
    train_multimodal_teacher,
)
from avret.errors import ModelError
from avret.io import load_model
from avret.losses.auxiliary import Batch
from avret.losses.kd import kd_loss
from avret.losses.mi import info_nce
from avret.losses.msd_terms import modality_weights, saliency_from_logits
from avret.models.towers import AVTowers, TowerConfig
from avret.train.loop import FitResult
from avret_cli.main import app

SYNTH = ["--synth-clips", "300", "--synth-seed", "3"]
LOG3 = math.log(3.0)


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))


def test_registered_without_the_videoadviser_teacher():
    assert {"msd", "mi-kd"} <= set(METHODS)
    assert not {"msd", "mi-kd"} & NEEDS_TEACHER  # each trains its own small teacher


def test_msd_loss_hand_computed():
    t_full = torch.tensor([[LOG3, 0.0]])  # teacher posterior (0.75, 0.25)
    t_only = torch.tensor([[[0.0, 0.0], [LOG3, 0.0]]])  # only-audio (0.5, 0.5), only-visual (0.75, 0.25)
    loss = MSDLoss(t_full, t_only, 2, sample_weights=torch.tensor([[0.3, 0.7]]), temperature=1.0, weight=2.0)
    with torch.no_grad():
        for head in loss.heads.values():
            head.weight.copy_(torch.eye(2))
            head.bias.zero_()
    audio, visual = torch.tensor([[0.0, LOG3]]), torch.tensor([[LOG3, 0.0]])  # student (0.25, 0.75), (0.75, 0.25)
    value, logs = loss(Batch(torch.tensor([0]), audio, visual, torch.tensor([0])), audio, visual)
    kd_full = kl([0.75, 0.25], [0.5, 0.5])  # full student: mean logits (log3/2, log3/2) -> (0.5, 0.5)
    kd_audio = kl([0.5, 0.5], [0.25, 0.75])  # the visual term is 0: student matches the only-visual teacher
    assert value.item() == pytest.approx(2.0 * (kd_full + 0.3 * kd_audio), rel=1e-5)
    assert logs["msd_kd_visual"] == pytest.approx(0.0, abs=1e-6) and logs["msd_w_audio"] == pytest.approx(0.3)
    assert {id(p) for p in loss.parameters()} == {id(p) for p in loss.heads.parameters()}
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
    per_clip = kd_loss(s, t, 2.0, reduction="none")
    assert per_clip.shape == (5,)
    assert per_clip.mean().item() == pytest.approx(kd_loss(s, t, 2.0).item(), rel=1e-6)


def test_saliency_and_weighting_schemes_hand_computed():
    full = torch.tensor([[LOG3, 0.0], [0.0, 0.0]])
    without = torch.tensor([[[0.0, 0.0], [LOG3, 0.0]], [[0.0, 0.0], [0.0, LOG3]]])
    sal = saliency_from_logits(full, without)
    k = kl([0.75, 0.25], [0.5, 0.5])
    expected = torch.tensor([[k, 0.0], [0.0, kl([0.5, 0.5], [0.25, 0.75])]])
    assert torch.allclose(sal, expected, atol=1e-6)
    assert torch.allclose(modality_weights("uniform", sal), torch.full((2, 2), 0.5))
    inst = modality_weights("instance", sal)
    assert torch.allclose(inst, torch.eye(2), atol=1e-5)
    pop = modality_weights("population", sal)
    share = k / (k + expected[1, 1].item())
    assert torch.allclose(pop, torch.tensor([[share, 1 - share]] * 2), atol=1e-5)
    assert torch.allclose(modality_weights("instance", torch.zeros(1, 2)), torch.full((1, 2), 0.5))


def _tiny_teacher(seed: int = 0) -> tuple[MultimodalTeacher, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    teacher = MultimodalTeacher(MultimodalTeacherConfig({"audio": 4, "visual": 6, "view": 5}, num_classes=3,
                                                        hidden_dim=8))
    with torch.no_grad():
        for token in teacher.missing.values():
            token.normal_()
    gen = torch.Generator().manual_seed(seed)
    inputs = {"audio": torch.randn(16, 4, generator=gen), "visual": torch.randn(16, 6, generator=gen),
              "view": torch.randn(16, 5, generator=gen)}
    return teacher, inputs


def test_saliency_is_zero_for_a_modality_the_teacher_ignores():
    teacher, inputs = _tiny_teacher()
    sal = modality_saliency(teacher, inputs)
    assert (sal > 1e-6).all()  # a random teacher uses both modalities
    with torch.no_grad():  # visual contributes GELU(0 x + 0) = 0 whether present or "missing"
        teacher.proj["visual"][0].weight.zero_()
        teacher.proj["visual"][0].bias.zero_()
        teacher.missing["visual"].zero_()
    sal = modality_saliency(teacher, inputs)
    assert torch.allclose(sal[:, 1], torch.zeros(16), atol=1e-7)
    assert (sal[:, 0] > 1e-6).all()


@pytest.mark.parametrize("salient", [0, 1])
def test_learned_weights_move_toward_the_salient_modality(salient):
    """Labels live in one modality; the teacher restricted to the other one knows nothing."""
    gen = torch.Generator().manual_seed(salient)

    def make(n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        y = torch.randint(0, 2, (n,), generator=gen)
        x = [torch.randn(n, 4, generator=gen), torch.randn(n, 4, generator=gen)]
        x[salient][:, 0] += 2.0 * (2 * y - 1)
        return x[0], x[1], y

    audio, visual, y = make(200)
    learner = MetaWeightLearner(audio, visual, *make(100), num_classes=2, temperature=1.0, meta_lr=0.05,
                                inner_lr=0.5, val_batch=100, seed=0)
    t_full = 4.0 * torch.nn.functional.one_hot(y, 2).float()
    t_only = torch.stack([t_full, torch.zeros_like(t_full)][:: 1 if salient == 0 else -1], 1)
    loss = MSDLoss(t_full, t_only, 3, learner=learner, temperature=1.0, weight=1.0)
    assert not {id(p) for p in loss.parameters()} & {id(learner.alpha)}
    for _ in range(40):
        rows = torch.randperm(200, generator=gen)[:64]
        emb = torch.randn(64, 3, generator=gen)
        loss(Batch(rows, audio[rows], visual[rows], y[rows]), emb, emb)
    assert learner.weights()[salient] > 0.65


def test_mikd_discriminator_and_generators_update_in_their_own_phases():
    ds = make_vegas_synth(SynthConfig(n_clips=120, seed=1))
    train, val = ds.subset("train"), ds.subset("test")
    aux = build_method("mi-kd", MethodContext(train, val, None, 8, 0), MIKDConfig(hidden=16, proj_dim=8))
    assert isinstance(aux, MIKDLoss)
    towers = AVTowers(TowerConfig(audio_dim=ds.audio_dim, visual_dim=ds.visual_dim, embed_dim=8, hidden_dim=16))
    disc = list(aux.discriminator_parameters())
    gen_side = [p for p in aux.parameters() if p.requires_grad]
    assert not {id(p) for p in disc} & {id(p) for p in gen_side}
    assert {id(p) for p in aux.teacher.parameters()} <= {id(p) for p in gen_side}

    def snap(params):
        return [p.detach().clone() for p in params]

    def changed(params, before):
        return any(not torch.equal(p, b) for p, b in zip(params, before, strict=True))

    rows = torch.arange(32)
    batch = Batch(rows, torch.from_numpy(train.audio[:32]), torch.from_numpy(train.visual[:32]),
                  torch.from_numpy(train.labels[:32]))
    opt = torch.optim.AdamW(list(towers.parameters()) + gen_side, lr=1e-2)
    t0, d0, g0 = snap(towers.parameters()), snap(disc), snap(gen_side)
    teacher0 = snap(aux.teacher.parameters())
    a_emb, v_emb = towers(batch.audio, batch.visual)
    loss, logs = aux(batch, a_emb, v_emb)  # discriminator phase runs inside the call
    assert changed(disc, d0)
    assert not changed(list(towers.parameters()), t0) and not changed(gen_side, g0)
    assert {"mi_ts_bound", "mi_ta_bound", "mi_adv", "mi_disc", "mi_teacher_ce"} <= set(logs)
    d1 = snap(disc)
    opt.zero_grad()
    loss.backward()  # generator phase: the trainer's optimiser
    opt.step()
    assert changed(list(towers.parameters()), t0)
    assert changed(list(aux.teacher.parameters()), teacher0)
    assert changed(gen_side, g0)
    assert not changed(disc, d1) and all(p.grad is None for p in disc)


def test_info_nce_hand_computed():
    x = torch.eye(2)
    # logits [[1, 0], [0, 1]]: each row's CE is log(1 + e^-1), the same both directions
    assert info_nce(x, x, 1.0).item() == pytest.approx(math.log(1 + math.exp(-1)), rel=1e-6)
    y = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # mismatched pairs: CE is log(1 + e)
    assert info_nce(x, y, 1.0).item() == pytest.approx(math.log(1 + math.e), rel=1e-6)
    assert info_nce(x, x, 0.5).item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)


def test_methods_are_an_explicit_table():
    import avret.distill.methods as methods

    assert list(METHODS) == ["none", "kd", "videoadviser", "msd", "mi-kd"]
    assert NEEDS_TEACHER == {"kd", "videoadviser"}
    assert not hasattr(methods, "register")  # nothing is registered by importing a module


def test_method_modules_import_without_the_method_table():
    """msd / mi-kd take MethodContext from avret.distill.context: no cycle through methods.py."""
    code = ("import sys, avret.distill.msd, avret.distill.mikd; "
            "assert 'avret.distill.methods' not in sys.modules, 'methods imported'")
    res = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_multimodal_teacher_round_trips_through_the_checkpoint_format(tmp_path):
    teacher, inputs = _tiny_teacher()
    teacher.set_input_stats(inputs)
    path = teacher.save_pretrained(tmp_path / "mm")
    raw = json.loads((path / "config.json").read_text())
    assert raw["model_type"] == "multimodal-teacher" and raw["format_version"] == 1
    assert raw["dims"] == {"audio": 4, "visual": 6, "view": 5} and raw["hidden_dim"] == 8 and raw["num_classes"] == 3
    loaded = load_model(path)
    assert isinstance(loaded, MultimodalTeacher) and loaded.config == teacher.config
    assert loaded.fingerprint() == teacher.fingerprint()
    teacher.eval()
    for present in (MODALITIES, ("audio",), ("visual", "view")):
        assert torch.equal(loaded.predict_logits(inputs, present), teacher.predict_logits(inputs, present))
    assert torch.equal(loaded.encode(inputs), teacher.encode(inputs))
    raw["fusion"] = "mean"  # a hand-edited config is a one-line ModelError naming the field
    (path / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ModelError, match="'fusion'"):
        load_model(path)


def test_multimodal_teacher_trains_on_the_one_loop():
    ds = make_vegas_synth(SynthConfig(n_clips=200, seed=2)).with_validation_split(0.2, seed=0)
    train, val = ds.subset("train"), ds.subset("val")

    def run(seed: int) -> tuple[MultimodalTeacher, FitResult]:
        torch.manual_seed(0)
        teacher = build_teacher(train, hidden_dim=16)
        return teacher, train_multimodal_teacher(teacher, train, val, epochs=6, patience=2, seed=seed)

    (t1, r1), (t2, r2), (t3, _) = run(3), run(3), run(4)
    assert isinstance(r1, FitResult) and r1.device == "cpu" and r1.config["patience"] == 2
    assert {"train_loss", "val_ce", "val_accuracy"} <= set(r1.history[0])
    # one seed, one trajectory (batch order and modality-dropout masks); another seed, another one
    assert all(torch.equal(a, b) for a, b in zip(t1.state_dict().values(), t2.state_dict().values(), strict=True))
    assert r1.history == [{**h, "seconds": r1.history[i]["seconds"]} for i, h in enumerate(r2.history)]
    assert not torch.equal(t1.classifier.weight, t3.classifier.weight)
    # the epoch with the lowest validation cross-entropy is the one restored
    assert r1.best["val_ce"] == min(h["val_ce"] for h in r1.history)
    logits = t1.predict_logits(dataset_inputs(val))
    val_ce = torch.nn.functional.cross_entropy(logits, torch.from_numpy(val.labels).long()).item()
    assert val_ce == pytest.approx(r1.best["val_ce"], rel=1e-5) and not t1.training


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("msd_mikd")
    runner = CliRunner()
    extra = {"msd": ["--msd-teacher-epochs", "3"], "mi-kd": ["--mi-weights", "0.5,0.5,0.2"]}
    for method in ("none", "msd", "mi-kd"):
        res = runner.invoke(app, ["distill", "--method", method, "--out", str(root / method), "--epochs", "2",
                                  *extra.get(method, []), *SYNTH])
        assert res.exit_code == 0, res.output
    return root


def test_cli_runs_deploy_the_same_towers_and_record_settings(runs):
    shapes = {k: tuple(v.shape) for k, v in load_model(runs / "none").state_dict().items()}
    for method in ("msd", "mi-kd"):
        model = load_model(runs / method)
        assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
        meta = json.loads((runs / method / "run.json").read_text())
        assert meta["method"] == method
        assert not (runs / method / "teacher").exists()  # no VideoAdviser teacher is trained
    msd = json.loads((runs / "msd" / "run.json").read_text())["distill_config"]["method_config"]
    assert msd["weighting"] == "instance" and msd["teacher_epochs"] == 3 and msd["weight"] == MSDConfig.weight
    mi = json.loads((runs / "mi-kd" / "run.json").read_text())["distill_config"]["method_config"]
    assert mi["lambdas"] == [0.5, 0.5, 0.2] and mi["hidden"] == MIKDConfig.hidden


def test_cli_rejects_bad_method_settings(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["distill", "--method", "mi-kd", "--mi-weights", "1,2", "--out", str(tmp_path / "a"),
                              *SYNTH])
    assert res.exit_code == 2 and "--mi-weights" in res.stderr
    res = runner.invoke(app, ["distill", "--method", "msd", "--msd-weighting", "foo", "--out", str(tmp_path / "b"),
                              "--epochs", "1", *SYNTH])
    assert res.exit_code == 2 and "--msd-weighting 'foo'" in res.stderr
