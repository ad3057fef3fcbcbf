"""Typed method configs: the CLI builds them, they reach the losses, run.json records them, old records read."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, fields
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from avret.data import SynthConfig, make_vegas_synth
from avret.distill.configs import KDConfig, MIKDConfig, MSDConfig, NoneConfig, VideoAdviserConfig
from avret.distill.context import MethodContext, TeacherOutputs
from avret.distill.methods import METHODS, build_method
from avret.distill.pipeline import DistillConfig, run_distillation
from avret.distill.step1 import RelevanceHead
from avret.errors import AvretError
from avret.io import load_model
from avret.losses.auxiliary import Batch
from avret.models.towers import TowerConfig
from avret.train.tower_training import TrainConfig
from avret_cli.main import app

TINY_MSD = {"teacher_epochs": 1, "teacher_hidden": 8}
TINY_MIKD = {"hidden": 8, "proj_dim": 4}


@pytest.fixture(scope="module")
def ctx():
    ds = make_vegas_synth(SynthConfig(n_clips=120, seed=2)).with_validation_split(0.2, seed=0)
    train = ds.subset("train")
    post = torch.softmax(torch.randn(len(train), ds.num_classes, generator=torch.Generator().manual_seed(0)), -1)
    return MethodContext(train, ds.subset("val"), TeacherOutputs(post.log(), post, RelevanceHead()), 8, 0)


def test_the_method_table_maps_each_name_to_a_config_class_and_builder():
    assert {name: row.config for name, row in METHODS.items()} == {
        "none": NoneConfig, "kd": KDConfig, "videoadviser": VideoAdviserConfig, "msd": MSDConfig,
        "mi-kd": MIKDConfig}
    # the classes import nothing heavy: the CLI reads their defaults without torch
    code = ("import sys; import avret.distill.configs; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.parametrize("method, config", [
    ("kd", KDConfig(weight=0.7)),
    ("videoadviser", VideoAdviserConfig(weight=0.7)),
    ("videoadviser", VideoAdviserConfig(weight=0.7, student_target="per-clip")),
    ("msd", MSDConfig(weight=0.7, **TINY_MSD)),
    ("mi-kd", MIKDConfig(weight=0.7, **TINY_MIKD)),
])
def test_weight_reaches_the_loss_from_the_typed_config(ctx, method, config):
    assert build_method(method, ctx, config).weight == 0.7
    # without a config: the method's own default, written once in its config class
    default = type(config)(**{k: v for k, v in asdict(config).items() if k != "weight"})
    assert build_method(method, ctx, default).weight == type(config).weight
    if method == "kd":  # the weight scales the term
        rows = torch.arange(4)
        emb = torch.nn.functional.normalize(torch.randn(4, 8, generator=torch.Generator().manual_seed(1)), dim=-1)
        batch = Batch(rows, emb, emb, torch.zeros(4, dtype=torch.long))
        torch.manual_seed(0)
        one = build_method("kd", ctx, KDConfig(weight=1.0))(batch, emb, emb)[0]
        torch.manual_seed(0)
        assert build_method("kd", ctx, config)(batch, emb, emb)[0].item() == pytest.approx(0.7 * one.item())


def test_every_setting_reaches_its_loss(ctx):
    kd = build_method("kd", ctx, KDConfig(temperature=2.5))
    assert kd.temperature == 2.5
    va = build_method("videoadviser", ctx, VideoAdviserConfig(relevance_loss="mse", balanced=False))
    assert (va.loss, va.balanced) == ("mse", False)
    mi = build_method("mi-kd", ctx, MIKDConfig(lambdas=(1, 2, 3), teacher_ce=0.5, disc_lr=0.01, **TINY_MIKD))
    assert mi.lambdas == (1.0, 2.0, 3.0) and mi.teacher_ce == 0.5
    assert mi.disc_opt.param_groups[0]["lr"] == 0.01 and mi.aux_model.mlp[0].out_features == 8
    msd = build_method("msd", ctx, MSDConfig(weighting="uniform", temperature=3.0, **TINY_MSD))
    assert msd.temperature == 3.0 and torch.allclose(msd.sample_weights, torch.full_like(msd.sample_weights, 0.5))


def test_a_config_of_another_method_is_refused(ctx):
    with pytest.raises(AvretError, match="'kd' takes a KDConfig, not a MSDConfig"):
        build_method("kd", ctx, MSDConfig())
    with pytest.raises(AvretError, match="--mi-weights"):
        MIKDConfig(lambdas=(1.0, 2.0))


def _distill_cli(monkeypatch, tmp_path, *args):
    """``avret distill`` up to the pipeline: the DistillConfig it hands over."""
    import avret.distill.pipeline as pipeline
    import avret.io

    seen = []
    monkeypatch.setattr(pipeline, "run_distillation", lambda ds, out, cfg, tcfg, **kw: seen.append(cfg) or out)
    monkeypatch.setattr(avret.io, "read_run", lambda run: {})
    res = CliRunner().invoke(app, ["distill", "--out", str(tmp_path / "run"), "--synth-clips", "60", *args])
    assert res.exit_code == 0, res.output
    return seen[0]


@pytest.mark.parametrize("args, want", [
    (["--method", "videoadviser"], VideoAdviserConfig()),
    (["--method", "kd"], KDConfig()),
    (["--method", "kd", "--weight", "0.7"], KDConfig(weight=0.7)),
    (["--method", "videoadviser", "--weight", "3", "--student-target", "per-clip", "--relevance-loss", "mse"],
     VideoAdviserConfig(weight=3.0, student_target="per-clip", relevance_loss="mse")),
    (["--method", "msd", "--msd-fusion", "concat", "--msd-teacher-epochs", "4", "--msd-weighting", "uniform"],
     MSDConfig(fusion="concat", teacher_epochs=4, weighting="uniform")),
    # another method's flags are not this method's settings (mi-kd has a fusion too)
    (["--method", "mi-kd", "--msd-fusion", "concat", "--mi-weights", "1,0,0.5"], MIKDConfig(lambdas=(1, 0, 0.5))),
    (["--method", "none", "--weight", "2"], NoneConfig()),
])
def test_the_cli_builds_the_typed_config(monkeypatch, tmp_path, args, want):
    cfg = _distill_cli(monkeypatch, tmp_path, *args)
    assert cfg.method_config == want and cfg.method == args[1]


def test_documented_defaults():
    # docs/videoadviser.md: the step-2 weight chosen on vegas-synth validation mAP; the others 1
    assert VideoAdviserConfig.weight == 20.0
    assert KDConfig.weight == MSDConfig.weight == MIKDConfig.weight == 1.0


def test_a_cli_flag_default_is_the_config_default():
    from typer.main import get_command

    params = {p.name: p.default for p in get_command(app).commands["distill"].params}
    assert params["weight"] is None  # omitted: the method's default
    assert params["msd_weighting"] == MSDConfig.weighting and params["msd_fusion"] == MSDConfig.fusion
    assert params["msd_teacher_epochs"] == MSDConfig.teacher_epochs
    assert params["student_target"] == VideoAdviserConfig.student_target
    assert params["relevance_loss"] == VideoAdviserConfig.relevance_loss
    assert tuple(float(x) for x in params["mi_weights"].split(",")) == MIKDConfig.lambdas


@pytest.mark.parametrize("config", [NoneConfig(), KDConfig(weight=0.5, temperature=2.0),
                                    VideoAdviserConfig(student_target="per-clip"),
                                    MSDConfig(weighting="learned"), MIKDConfig(lambdas=(1, 2, 3))])
def test_run_json_records_the_typed_config_and_reads_it_back(config):
    method = next(name for name, row in METHODS.items() if row.config is type(config))
    cfg = DistillConfig(method=method, teacher_epochs=3, method_config=config)
    record = json.loads(json.dumps(asdict(cfg)))
    assert record["method"] == method
    assert record["method_config"] == json.loads(json.dumps({f.name: getattr(config, f.name)
                                                             for f in fields(config)}))
    assert DistillConfig.from_record(record) == cfg


# The distill_config records avret wrote before typed configs (one per method).
OLD_RECORDS = {
    "videoadviser": ({"weight": None, "kd_temperature": 4.0, "student_target": "per-clip", "relevance_loss": "mse",
                      "options": {}}, VideoAdviserConfig(student_target="per-clip", relevance_loss="mse")),
    "kd": ({"weight": 0.5, "kd_temperature": 2.0, "student_target": "pairwise", "relevance_loss": "bce",
            "options": {}}, KDConfig(weight=0.5, temperature=2.0)),
    "msd": ({"weight": None, "kd_temperature": 4.0, "student_target": "pairwise", "relevance_loss": "bce",
             "options": {"msd_weighting": "population", "msd_fusion": "sum", "msd_teacher_epochs": 3,
                         "msd_teacher_hidden": 256, "msd_meta_lr": 0.02, "msd_meta_inner_lr": 0.1}},
            MSDConfig(weighting="population", teacher_epochs=3)),
    "mi-kd": ({"weight": 2.0, "kd_temperature": 4.0, "student_target": "pairwise", "relevance_loss": "bce",
               "options": {"mi_weights": [0.5, 0.5, 0.2], "mi_teacher_ce": 1.0, "mi_temperature": 0.1,
                           "mi_proj_dim": 64, "mi_hidden": 32, "mi_disc_lr": 0.001, "mi_fusion": "sum"}},
              MIKDConfig(weight=2.0, lambdas=(0.5, 0.5, 0.2), hidden=32)),
    "none": ({"weight": None, "kd_temperature": 4.0, "student_target": "pairwise", "relevance_loss": "bce",
              "options": {}}, NoneConfig()),
}


@pytest.mark.parametrize("method", list(OLD_RECORDS))
def test_old_untyped_run_json_records_still_read(method):
    old, want = OLD_RECORDS[method]
    teacher = {"clip_model": None, "clip_weights": None, "prompt_conditioning": "shared", "pooling": "mean",
               "teacher_use_audio": False, "teacher_epochs": 2, "teacher_lr": 0.002, "teacher_batch_size": 64}
    cfg = DistillConfig.from_record({"method": method, **teacher, **old})
    assert cfg == DistillConfig(method=method, **teacher, method_config=want)


def test_a_finished_run_recorded_the_old_way_is_recognised_as_finished(tmp_path):
    ds = make_vegas_synth(SynthConfig(n_clips=120, seed=2))
    tcfg = TrainConfig(epochs=1, batch_size=64, device="cpu")
    tower = TowerConfig(embed_dim=8, hidden_dim=16)
    cfg = DistillConfig(method="mi-kd", method_config=MIKDConfig(weight=2.0, lambdas=(0.5, 0.5, 0.2), hidden=32))
    run = run_distillation(ds, tmp_path / "run", cfg, tcfg, tower)
    meta = json.loads((run / "run.json").read_text())
    record = {k: v for k, v in meta["distill_config"].items() if k != "method_config"}
    meta["distill_config"] = {**record, **OLD_RECORDS["mi-kd"][0]}  # as avret wrote it before typed configs
    (run / "run.json").write_text(json.dumps(meta))
    said: list[str] = []
    before = {k: v.clone() for k, v in load_model(run).state_dict().items()}
    run_distillation(ds, run, cfg, tcfg, tower, status=said.append)
    assert any("is complete" in s for s in said), said
    # and another setting is another run
    said.clear()
    other = DistillConfig(method="mi-kd", method_config=MIKDConfig(weight=1.0, lambdas=(0.5, 0.5, 0.2), hidden=32))
    run_distillation(ds, run, other, tcfg, tower, status=said.append)
    assert any("other settings" in s for s in said), said
    assert before.keys() == load_model(run).state_dict().keys()


def test_a_record_with_a_setting_the_method_lacks_is_refused():
    with pytest.raises(AvretError, match="method 'kd' has no setting 'lambdas'"):
        DistillConfig.from_record({"method": "kd", "method_config": {"lambdas": [1, 1, 1]}})
    with pytest.raises(AvretError, match="--method 'foo'"):
        DistillConfig.from_record({"method": "foo"})


def test_weight_defaults_are_written_once():
    """The distillation defaults live in avret/distill/configs.py and nowhere else (no ``.get(key, default)``)."""
    root = Path(__file__).resolve().parents[1]
    for path in [*(root / "avret").rglob("*.py"), *(root / "cli").rglob("*.py"), *(root / "benchmarks").rglob("*.py")]:
        text = path.read_text(encoding="utf-8")
        for pattern in ('.get("weight"', ".get('weight'", '.get("kd_temperature"', "MSD_DEFAULTS", "MIKD_DEFAULTS",
                        "VIDEOADVISER_WEIGHT", "ctx.options"):
            assert pattern not in text, f"{path.relative_to(root)}: {pattern}"
