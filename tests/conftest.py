"""Shared fixtures: small seeded data sets and a trained tiny model, built once per session."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One intra-op thread, here and in every subprocess a test starts: the tests that promise bit-identical
# results (weight 0 = the plain student, resume = uninterrupted, 1 process = 2 processes) then hold on a
# loaded machine too, where multi-threaded kernels may split their work differently from run to run;
# on 2 busy cores one thread is also the faster choice.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _status_lines_held_for_the_whole_command(monkeypatch):
    """Status lines are held until a command ends (not just its first 5 s): the one-line-error contract
    is then tested on what the command does, not on how fast a loaded machine ran it."""
    from avret_cli import progress

    monkeypatch.setattr(progress, "HOLD_SECONDS", 3600.0)


@pytest.fixture(scope="session")
def tiny_synth():
    from avret.data import SynthConfig, make_vegas_synth

    return make_vegas_synth(SynthConfig(n_clips=600, seed=1))


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_synth):
    """A towers run trained for a few epochs on the tiny synthetic set."""
    from avret.train.runs import train_run
    from avret.train.tower_training import TrainConfig

    out = tmp_path_factory.mktemp("runs") / "towers"
    return train_run(tiny_synth, out, "towers", TrainConfig(epochs=4, batch_size=128, seed=0))
