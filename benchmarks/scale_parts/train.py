"""The towers' training step time: 1 process vs 2 Gloo processes sharing one global batch (CPU).

Every configuration trains the same towers (default :class:`~avret.models.towers.TowerConfig`) with
:func:`avret.train.tower_training.train_towers` on SYNTHETIC features (vegas-synth) and the same global
batch of ``GLOBAL_BATCH`` clips: one process with batch ``GLOBAL_BATCH``, or two processes
(:func:`avret.train.distributed.spawn_local`, Gloo) with ``GLOBAL_BATCH / 2`` each, whose embeddings
are all-gathered with gradients and whose gradients are averaged every step. A callback stamps the
end of every optimiser step; the time of a step is the gap to the previous stamp of the same epoch
(so validation and start-up are not counted). Reported: the median milliseconds per global batch
and the samples per second it gives. The cores are shared fairly: one process uses every core's
thread, two processes half each (and one process with half the threads is shown for reference).
On a 2-core CPU machine two processes cannot beat one much: what this measures here is the cost of
the collectives; the gain is on several GPUs or nodes.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

GLOBAL_BATCH = 256
HEADERS = ["processes", "threads/process", "batch/process", "global batch", "steps", "median ms/global batch",
           "samples/s", "vs 1 process"]


def _settings(quick: bool) -> dict[str, Any]:
    return {"n_clips": 2000 if quick else 6000, "epochs": 3}


def _measure(rank: int, settings: dict[str, Any], batch_size: int, out: str | None) -> dict[str, Any]:
    """Train once; return (and on rank 0 write to ``out``) the step times of this process."""
    import torch

    from avret.data import SynthConfig, make_vegas_synth
    from avret.train.loop import Callback
    from avret.train.tower_training import TrainConfig, train_towers

    class Stamps(Callback):
        def __init__(self) -> None:
            self.gaps: list[float] = []
            self.last: tuple[int, float] | None = None

        def on_batch_end(self, state: Any, step: int, n_steps: int) -> None:
            now = time.perf_counter()
            if self.last is not None and self.last[0] == state.epoch:
                self.gaps.append(now - self.last[1])
            self.last = (state.epoch, now)

    ds = make_vegas_synth(SynthConfig(n_clips=settings["n_clips"], seed=0))
    stamps = Stamps()
    cfg = TrainConfig(epochs=settings["epochs"], batch_size=batch_size, device="cpu", seed=0, patience=100)
    res = train_towers(ds, config=cfg, callbacks=[stamps])
    record = {"world_size": res.world_size, "threads": torch.get_num_threads(), "batch_size": batch_size,
              "step_seconds": stamps.gaps, "best_val_map": res.best_val_map}
    if out is not None and rank == 0:
        Path(out).write_text(json.dumps(record), encoding="utf-8")
    return record


def _one_process(settings: dict[str, Any], threads: int) -> dict[str, Any]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _measure(0, settings, GLOBAL_BATCH, None)
    finally:
        torch.set_num_threads(before)


def _two_processes(settings: dict[str, Any], threads: int) -> dict[str, Any]:
    from avret.train.distributed import spawn_local

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rank0.json"
        spawn_local(_measure, 2, settings, GLOBAL_BATCH // 2, str(out), threads=threads)
        return json.loads(out.read_text(encoding="utf-8"))


def run(quick: bool = False) -> dict[str, Any]:
    """Measure and return ``{"rows", "headers", "records"}`` (see the module docstring)."""
    settings = _settings(quick)
    cores = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))
    half = max(1, cores // 2)
    runs = [("1 process", _one_process(settings, cores)), ("1 process, half the threads",
                                                          _one_process(settings, half)),
            ("2 Gloo processes", _two_processes(settings, half))]
    base = None
    rows, records = [], []
    for label, rec in runs:
        median = statistics.median(rec["step_seconds"])
        if base is None:
            base = median
        procs = rec["world_size"]
        row = [procs, rec["threads"], rec["batch_size"], procs * rec["batch_size"], len(rec["step_seconds"]),
               round(1000 * median, 2), round(procs * rec["batch_size"] / median, 1), round(base / median, 2)]
        rows.append(row)
        records.append({"label": label, **dict(zip(HEADERS, row, strict=True)), "best_val_map": rec["best_val_map"],
                        "synthetic": True, **settings, "device": "cpu", "backend": "gloo" if procs > 1 else None})
    notes = [f"SYNTHETIC features (vegas-synth, {settings['n_clips']} clips), default towers, CPU, Gloo; "
             "median of the in-epoch step gaps (validation and start-up excluded)",
             f"{cores} cores: 1 process uses {cores} threads, 2 processes {half} each; "
             "on a shared 2-core machine this measures the collectives' cost, not a speed-up"]
    return {"rows": rows, "headers": HEADERS, "records": records, "notes": notes}


if __name__ == "__main__":
    from benchmarks._common import print_table

    result = run(quick=True)
    print_table(result["headers"], result["rows"])
