"""Teacher scores from the in-repo VideoAdviser sentiment teacher, and ``train --distill videoadviser``."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from avret.errors import DataError
from avret.io import read_run
from avret.sentiment.teacher_scores import teacher_scores_from_videoadviser
from avret.sentiment.tiny import make_tiny_roberta
from tests.test_sentiment_student import FILL, NEG, POS, tiny_examples

torch.set_num_threads(2)


def test_out_of_fold_scores_cover_every_row_and_record_the_input() -> None:
    ex = tiny_examples(30)
    rng = np.random.default_rng(0)
    # an embedding that carries the label, so the teacher has something to learn
    emb = rng.normal(size=(30, 12)).astype(np.float32)
    emb[:, 0] = [e.label for e in ex]
    scores, info = teacher_scores_from_videoadviser(ex, embeddings=emb, k_folds=3, epochs=2, batch_size=8,
                                                    device="cpu")
    assert set(scores) == {e.id for e in ex}
    assert all(np.isfinite(v) for v in scores.values())
    assert info["teacher_input"] == "text" and "single frame" in info["teacher_input_detail"]
    assert info["clip_weights"] == "random-init" and info["device"] == "cpu"
    assert len(info["folds"]) == 3 and sum(f["n_scored"] for f in info["folds"]) == 18
    assert {"train_oof", "dev", "test"} <= set(info["metrics"])
    json.dumps(info)  # provenance is JSON-serialisable
    with pytest.raises(DataError, match="k_folds"):
        teacher_scores_from_videoadviser(ex, embeddings=emb, k_folds=1)
    with pytest.raises(DataError, match="shape"):
        teacher_scores_from_videoadviser(ex, embeddings=emb[:5], k_folds=2)


def test_cli_distill_videoadviser(tmp_path: Path) -> None:
    from avret_cli.sentiment import app

    enc = make_tiny_roberta(tmp_path / "enc", POS + NEG + FILL)
    data = tmp_path / "label.csv"
    with open(data, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "text", "label", "mode"])
        for e in tiny_examples(24):
            w.writerow([e.id, e.text, e.label, e.split])
    run = tmp_path / "run"
    res = CliRunner().invoke(app, ["train", "--data", str(data), "--encoder", str(enc), "--epochs", "1",
                                   "--batch-size", "8", "--distill", "videoadviser", "--teacher-folds", "2",
                                   "--teacher-epochs", "1", "--device", "cpu", "--out", str(run)])
    assert res.exit_code == 0, res.output
    doc = read_run(run)
    assert doc["device"] == "cpu" and doc["method"] == "distill"
    teacher = doc["teacher"]
    assert teacher["source"] == "videoadviser" and teacher["teacher_input"] == "text"
    assert "MiniLM" in teacher["teacher_input_detail"] and teacher["alpha"] == 0.5
    assert teacher["device"] == "cpu"
    rows = list(csv.DictReader(open(run / "teacher_scores.csv")))
    assert len(rows) == 24
