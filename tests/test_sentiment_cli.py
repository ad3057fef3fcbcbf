"""``avret sentiment train | eval | predict`` through typer's CliRunner, on a tiny random RoBERTa.

``train`` writes avret's one run-directory layout: ``RUN/model/`` + ``RUN/run.json`` (+ predictions).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from avret.errors import DataError
from avret.io import load_model, read_run, verify_run
from avret.sentiment.student import SentimentStudent
from avret.sentiment.tiny import make_tiny_roberta
from avret_cli.sentiment import app, eval_dataset_command
from tests.test_sentiment_student import FILL, NEG, POS, tiny_examples

torch.set_num_threads(2)
runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sentcli")
    enc = make_tiny_roberta(root / "encoder", POS + NEG + FILL)
    data = root / "label.csv"
    with open(data, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["video_id", "clip_id", "text", "label", "mode"])
        for e in tiny_examples(30):
            vid, clip = e.id[:1], e.id[1:]
            w.writerow([vid, clip, e.text, e.label, "valid" if e.split == "dev" else e.split])
    run = root / "run"
    res = runner.invoke(app, ["train", "--data", str(data), "--encoder", str(enc), "--epochs", "2",
                              "--batch-size", "8", "--lr", "1e-3", "--device", "cpu", "--out", str(run)])
    assert res.exit_code == 0, res.output
    assert f"wrote {run} (device cpu)" in res.stdout
    return {"root": root, "enc": enc, "data": data, "run": run, "train_output": Path(res.output)}


def test_train_writes_the_run_layout(setup: dict[str, Path]) -> None:
    run = setup["run"]
    assert {p.name for p in run.iterdir()} == {"model", "run.json", "test_predictions.csv"}
    assert {p.name for p in (run / "model").iterdir()} == {"config.json", "model.safetensors", "tokenizer"}
    doc = read_run(run)
    assert doc["command"] == "sentiment train" and doc["method"] == "finetune"
    assert doc["model_type"] == "sentiment-student" and doc["format_version"] == 1
    assert doc["device"] == "cpu" and doc["precision"] == "fp32" and doc["seed"] == 0
    assert doc["train_config"]["epochs"] == 2 and doc["train_config"]["device"] == "cpu"
    assert doc["teacher"] is None and doc["dataset"] == "mosi" and doc["data"] == str(setup["data"])
    assert doc["best_epoch"] in (1, 2) and len(doc["history"]) == 2 and len(doc["epoch_seconds"]) == 2
    best = doc["history"][doc["best_epoch"] - 1]
    assert doc["metrics"]["dev"]["mae"] == best["dev"]["mae"]
    assert doc["metrics"]["dev"]["mae"] == min(h["dev"]["mae"] for h in doc["history"])
    assert doc["metrics"]["test"]["n"] == 6 and "selection" in doc
    assert set(doc["files"]) >= {"model/config.json", "model/model.safetensors", "model/tokenizer/tokenizer.json",
                                 "test_predictions.csv"}
    assert verify_run(run) == []
    assert not list(setup["root"].glob(".run.tmp-*"))
    # RUN and RUN/model both load, and reproduce the single test evaluation's predictions
    rows = list(csv.DictReader(open(setup["data"])))
    test = {f"{r['video_id']}_{r['clip_id']}": r["text"] for r in rows if r["mode"] == "test"}
    saved = {r["id"]: float(r["prediction"]) for r in csv.DictReader(open(run / "test_predictions.csv"))}
    assert set(saved) == set(test)
    for path in (run, run / "model"):
        model = load_model(path)
        assert isinstance(model, SentimentStudent)
        preds = model.predict(list(test.values()))
        assert preds == pytest.approx([saved[k] for k in test], abs=1e-5)
    assert SentimentStudent.from_pretrained(run).fingerprint() == doc["model_fingerprint"]


def test_eval_and_json(setup: dict[str, Path]) -> None:
    out = setup["root"] / "eval.json"
    saved = read_run(setup["run"])["metrics"]["test"]
    for model in (setup["run"], setup["run"] / "model"):
        res = runner.invoke(app, ["eval", "--model", str(model), "--data", str(setup["data"]),
                                  "--json", str(out)])
        assert res.exit_code == 0, res.output
        assert "MAE" in res.output and "Acc-7" in res.output
        doc = json.loads(out.read_text())
        assert doc["split"] == "test"
        assert doc["metrics"]["mae"] == pytest.approx(saved["mae"], rel=1e-5)
    res = runner.invoke(app, ["eval", "--model", str(setup["run"]), "--data", str(setup["data"]),
                              "--split", "valid"])
    assert res.exit_code == 0, res.output


def test_eval_dataset_command(setup: dict[str, Path], tmp_path: Path) -> None:
    res = eval_dataset_command("mosi", setup["data"], setup["run"], tmp_path / "m.json")
    assert res["dataset"] == "mosi" and (tmp_path / "m.json").is_file()
    with pytest.raises(DataError, match="expected one of mosi, mosei"):
        eval_dataset_command("imdb", setup["data"], setup["run"], None)


def test_predict_args_and_file(setup: dict[str, Path], tmp_path: Path) -> None:
    res = runner.invoke(app, ["predict", "--model", str(setup["run"]), "good film", "awful movie"])
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 2 and lines[0].endswith("\tgood film")
    float(lines[0].split("\t")[0])
    f = tmp_path / "lines.txt"
    f.write_text("good\n\nbad\nnice film\n")
    res = runner.invoke(app, ["predict", "--model", str(setup["run"] / "model"), "--file", str(f)])
    assert res.exit_code == 0 and len(res.output.strip().splitlines()) == 3


def test_distill_from_teacher_file(setup: dict[str, Path]) -> None:
    scores = setup["root"] / "scores.csv"
    rows = list(csv.DictReader(open(setup["data"])))
    train_ids = [f"{r['video_id']}_{r['clip_id']}" for r in rows if r["mode"] == "train"]
    scores.write_text("id,score\n" + "".join(f"{i},0.5\n" for i in train_ids))
    run = setup["root"] / "run_kd"
    res = runner.invoke(app, ["train", "--data", str(setup["data"]), "--encoder", str(setup["enc"]),
                              "--epochs", "1", "--batch-size", "8", "--teacher-scores", str(scores),
                              "--alpha", "0.3", "--out", str(run)])
    assert res.exit_code == 0, res.output
    doc = read_run(run)
    assert doc["teacher"]["source"] == "file" and doc["teacher"]["alpha"] == 0.3 and doc["method"] == "distill"
    assert (run / "teacher_scores.csv").is_file() and "teacher_scores.csv" in doc["files"]
    # a missing train id is a one-line error, exit 2, nothing written
    scores.write_text("id,score\n" + "".join(f"{i},0.5\n" for i in train_ids[1:]))
    bad_run = setup["root"] / "run_bad"
    res = runner.invoke(app, ["train", "--data", str(setup["data"]), "--encoder", str(setup["enc"]),
                              "--teacher-scores", str(scores), "--out", str(bad_run)])
    assert res.exit_code == 2
    assert f"no teacher score for train id '{train_ids[0]}'" in res.output
    assert not bad_run.exists()


def test_user_errors_exit_2(setup: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "label.csv"
    bad.write_text("id,text,label,mode\na,hello,9,train\n")
    res = runner.invoke(app, ["train", "--data", str(bad), "--encoder", str(setup["enc"]),
                              "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "line 2" in res.output and "'label'" in res.output
    assert not (tmp_path / "r").exists()
    res = runner.invoke(app, ["eval", "--model", str(tmp_path), "--data", str(setup["data"])])
    assert res.exit_code == 2 and "config.json: file not found" in res.output
    res = runner.invoke(app, ["train", "--data", str(setup["data"]), "--encoder", str(tmp_path / "none"),
                              "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "no config.json" in res.output
    res = runner.invoke(app, ["predict", "--model", str(setup["run"])])
    assert res.exit_code == 2 and "no texts" in res.output
    res = runner.invoke(app, ["train", "--data", str(setup["data"]), "--distill", "magic",
                              "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "--distill" in res.output
    res = runner.invoke(app, ["train", "--data", str(setup["data"]), "--encoder", str(setup["enc"]),
                              "--device", "tpu", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "--device 'tpu'" in res.output and len(res.output.strip().splitlines()) == 1
    res = runner.invoke(app, ["train", "--data", str(setup["data"]), "--encoder", str(setup["enc"]),
                              "--precision", "fp8", "--out", str(tmp_path / "r")])
    assert res.exit_code == 2 and "precision" in res.output
    assert not (tmp_path / "r").exists()
