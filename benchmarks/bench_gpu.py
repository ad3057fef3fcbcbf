"""The GPU path measured: each figure beside its CPU counterpart and the hardware's limit.

    python -m benchmarks.bench_gpu --device cuda      # on the GPU machine (scripts/gpu_run.sh runs it)
    python -m benchmarks.bench_gpu --quick            # reduced sizes, CPU only: proves it runs

Figures (SYNTHETIC data and random weights throughout; speed does not depend on their values):

* **tower training** samples/s on vegas-synth, fp32 and bf16 autocast (bf16: CUDA only), an epoch
  including its validation mAP;
* **distillation** (VideoAdviser) step time: the median student epoch / its batches;
* **exact search** (Flat, inner product) over N x 128 random unit vectors, N = 1M and 10M (quick:
  20k and 100k), QPS at batch 1 and 1,024: faiss-cpu on the CPU; the torch backend
  (:mod:`avret.index.torch_flat`) fp32 and bf16 on the GPU. Limits: the bandwidth roof (bytes of
  gallery scanned per batch / 4.3 TB/s, the H200's measured bandwidth) and the compute roof
  (2 N d FLOP per query at the H200's spec 67 TFLOP/s fp32 / 790 TFLOP/s bf16 dense);
* **mAP** of 5,621 x 5,621 (quick: 1,500), both directions' ranking of one direction: numpy on the
  CPU vs torch on the GPU (goal: <= 20 ms), with a check that the metrics are identical;
* **feature extraction** clips/s (a clip = 10 preprocessed 224 x 224 frames, model time only) with
  open_clip's ViT-B-32 image tower and EfficientNet-Lite0, random weights.

GPU cells read "not run" when no CUDA device was used; nothing is estimated. The table goes to
``benchmarks/results/bench_gpu[_quick].md`` and the numbers to the ``.json`` beside it, with the
machine and its load average (figures taken above load 1.5 are flagged).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avret.utils.atomic import write_json
from benchmarks._common import RESULTS_DIR, format_table, load_check, machine_info, median_time, write_results

#: The H200's limits used for the roofs (bandwidth measured; compute: NVIDIA's dense spec).
HBM_BYTES_PER_S = 4.3e12
PEAK_FLOPS = {"fp32": 67e12, "bf16": 790e12}
NOT_RUN = "not run"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn: Callable[[], Any], device: str, repeats: int) -> float:
    def run() -> None:
        fn()
        _sync(device)

    run()  # warm-up (kernels, caches)
    return median_time(run, repeats)[0]


def _row(figure: str, unit: str, gpu: Any, cpu: Any, limit: Any, note: str = "") -> dict[str, Any]:
    return {"figure": figure, "unit": unit, "gpu": gpu, "cpu": cpu, "limit": limit, "note": note}


# ------------------------------------------------------------------------------------ training
def bench_training(gpu: str | None, quick: bool) -> list[dict[str, Any]]:
    from avret.data import SynthConfig, make_vegas_synth
    from avret.train.tower_training import TrainConfig, train_towers

    n_clips, epochs = (600, 1) if quick else (4000, 2)
    ds = make_vegas_synth(SynthConfig(n_clips=n_clips, seed=0))

    def samples_per_s(device: str, precision: str) -> float:
        cfg = TrainConfig(epochs=epochs, batch_size=256, device=device, precision=precision, patience=None)
        res = train_towers(ds, config=cfg)
        n_train = int((ds.with_validation_split(cfg.val_fraction, seed=cfg.seed).split == "train").sum())
        return n_train * epochs / res.seconds

    cpu32 = samples_per_s("cpu", "fp32")
    rows = [_row("tower training fp32", "samples/s", samples_per_s(gpu, "fp32") if gpu else NOT_RUN, cpu32, "-",
                 f"vegas-synth {n_clips} clips (SYNTHETIC), batch 256, {epochs} epoch(s) incl. validation")]
    rows.append(_row("tower training bf16 autocast", "samples/s", samples_per_s(gpu, "bf16") if gpu else NOT_RUN,
                     "n/a (bf16 autocast is CUDA only)", "-", "same run, precision bf16"))
    return rows


def bench_distill(gpu: str | None, quick: bool) -> list[dict[str, Any]]:
    from avret.data import SynthConfig, make_vegas_synth
    from avret.distill.pipeline import DistillConfig, run_distillation
    from avret.train.tower_training import TrainConfig

    n_clips, epochs = (600, 2) if quick else (2000, 3)
    ds = make_vegas_synth(SynthConfig(n_clips=n_clips, seed=0))
    batch = 256

    def step_ms(device: str) -> float:
        stamps: list[float] = []
        with tempfile.TemporaryDirectory() as tmp:
            run_distillation(ds, Path(tmp) / "run", DistillConfig(method="videoadviser", teacher_epochs=1),
                             TrainConfig(epochs=epochs, batch_size=batch, device=device, patience=None),
                             progress=lambda *_: stamps.append(time.perf_counter()))
        epochs_s = [b - a for a, b in zip(stamps, stamps[1:], strict=False)] or [float("nan")]
        n_train = int((ds.with_validation_split(0.1, seed=0).split == "train").sum())
        return 1000 * statistics.median(epochs_s) / math.ceil(n_train / batch)

    return [_row("distillation step (VideoAdviser)", "ms/step", step_ms(gpu) if gpu else NOT_RUN, step_ms("cpu"),
                 "-", f"vegas-synth {n_clips} clips (SYNTHETIC), batch {batch}; median student epoch / batches, "
                 "incl. validation")]


# ------------------------------------------------------------------------------------ search
def bench_search(gpu: str | None, quick: bool) -> list[dict[str, Any]]:
    import faiss

    from avret.index.torch_flat import TorchFlat

    d = 128
    sizes = (20_000, 100_000) if quick else (1_000_000, 10_000_000)
    repeats = 3
    rows = []
    for n in sizes:
        gen = torch.Generator(device=gpu or "cpu").manual_seed(0)
        xb = torch.randn((n, d), generator=gen, device=gpu or "cpu")
        xb /= torch.linalg.vector_norm(xb, dim=1, keepdim=True)
        xq = torch.randn((1024, d), generator=gen, device=gpu or "cpu")
        xq = (xq / torch.linalg.vector_norm(xq, dim=1, keepdim=True)).cpu().numpy()
        host = xb.cpu().numpy()
        cpu_index = faiss.IndexFlatIP(d)
        cpu_index.add(host)
        flats = {p: TorchFlat(xb, gpu, p) for p in ("fp32", "bf16")} if gpu else {}
        for batch in (1, 1024):
            q = xq[:batch]
            reps = 2 if (batch == 1024 and n >= 10_000_000) else repeats
            cpu_qps = batch / _timed(lambda q=q, ix=cpu_index: ix.search(q, 10), "cpu", reps)
            for precision in ("fp32", "bf16"):
                scan = n * d * (4 if precision == "fp32" else 2)
                roof_bw = batch / (scan / HBM_BYTES_PER_S)
                roof_flops = batch / (2.0 * n * d * batch / PEAK_FLOPS[precision])
                gpu_qps: Any = NOT_RUN
                note = ""
                if gpu:
                    flat = flats[precision]
                    gpu_qps = batch / _timed(lambda q=q, f=flat: f.search(q, 10), gpu, repeats)
                    d_ref, i_ref = cpu_index.search(q, 10)
                    d_got, i_got = flat.search(q, 10)
                    note = (f"ids equal faiss: {bool(np.array_equal(i_got, i_ref))}, "
                            f"max |score diff| {float(np.abs(d_got - d_ref).max()):.1e}, "
                            f"fp32 fallbacks {flat.fallbacks}")
                rows.append(_row(f"exact search {n:,} x {d}, batch {batch}, {precision}", "QPS", gpu_qps,
                                 cpu_qps if precision == "fp32" else "-",
                                 f"{min(roof_bw, roof_flops):,.0f} (bandwidth {roof_bw:,.0f}, "
                                 f"compute {roof_flops:,.0f})",
                                 (note + "; " if note else "") + "CPU: faiss-cpu IndexFlatIP, k=10"))
        del xb, flats, cpu_index, host
        if gpu:
            torch.cuda.empty_cache()
    return rows


# ------------------------------------------------------------------------------------ mAP
def bench_map(gpu: str | None, quick: bool) -> list[dict[str, Any]]:
    from avret.eval.retrieval import retrieval_metrics

    n, d, classes = (1500, 128, 10) if quick else (5621, 128, 10)
    rng = np.random.default_rng(0)
    labels = rng.integers(0, classes, n)
    centres = rng.standard_normal((classes, d))
    a = centres[labels] + 1.5 * rng.standard_normal((n, d))
    v = centres[labels] + 1.5 * rng.standard_normal((n, d))
    repeats = 3
    cpu = retrieval_metrics(a, labels, v, labels, device="cpu")
    cpu_ms = 1000 * _timed(lambda: retrieval_metrics(a, labels, v, labels, device="cpu"), "cpu", repeats)
    gpu_ms: Any = NOT_RUN
    note = f"{n} x {n}, d={d}, {classes} classes (SYNTHETIC clusters), one direction, mAP {cpu.map:.4f}"
    if gpu:
        got = retrieval_metrics(a, labels, v, labels, device="cuda")
        gpu_ms = 1000 * _timed(lambda: retrieval_metrics(a, labels, v, labels, device="cuda"), gpu, repeats)
        note += f"; GPU metrics identical to CPU: {bool(np.array_equal(got.ap, cpu.ap))}"
    return [_row(f"mAP {n:,} x {n:,}", "ms", gpu_ms, cpu_ms, "goal <= 20 ms (GPU)", note)]


# ------------------------------------------------------------------------------------ extraction
def bench_extraction(gpu: str | None, quick: bool) -> list[dict[str, Any]]:
    from avret.features.clip_frames import ClipFrameEncoder
    from avret.features.real_encoders import EfficientNetLite0, EfficientNetLite0Encoder
    from avret.models.clip import RANDOM_INIT, load_clip

    frames_per_clip = 10
    n_clips = 2 if quick else 64
    torch.manual_seed(0)
    pixels = torch.randn((n_clips * frames_per_clip, 3, 224, 224))
    clip_visual = load_clip("ViT-B-32", RANDOM_INIT, allow_random=True).visual
    lite = EfficientNetLite0()
    rows = []
    for name, make in (("CLIP ViT-B-32 image tower", lambda dev: ClipFrameEncoder("ViT-B-32", clip_visual, dev)),
                       ("EfficientNet-Lite0", lambda dev: EfficientNetLite0Encoder(lite, dev))):
        per_device = {}
        for dev in ["cpu"] + ([gpu] if gpu else []):
            enc = make(dev)
            t = _timed(lambda enc=enc: enc.encode(pixels, 64), dev, 2)
            per_device[dev] = n_clips / t
        rows.append(_row(f"extraction {name}", "clips/s", per_device.get(gpu, NOT_RUN) if gpu else NOT_RUN,
                         per_device["cpu"], "-", f"random weights; {frames_per_clip} frames/clip, batch 64, "
                         f"model time only ({n_clips} clips)"))
    return rows


#: In order of importance: a run cut short by the device's time limit keeps the first ones.
SECTIONS = {"search": bench_search, "map": bench_map, "training": bench_training, "distill": bench_distill,
            "extraction": bench_extraction}


def run(device: str, quick: bool, sections: list[str],
        save: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Run ``sections``; ``save(payload)`` after each one, so a run cut short keeps what it measured."""
    gpu = None
    if device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("bench_gpu: --device cuda but torch sees no CUDA GPU")
        gpu = "cuda"
    load_before = load_check(label="before")
    rows: list[dict[str, Any]] = []
    errors: dict[str, str] = {}

    def payload(load_after: dict[str, Any], done: bool) -> dict[str, Any]:
        return {
            "benchmark": "bench_gpu",
            "quick": quick,
            "complete": done,
            "device": gpu or "cpu",
            "gpu_used": gpu is not None,
            "synthetic": True,
            "limits": {"hbm_bytes_per_s": HBM_BYTES_PER_S, "peak_flops": PEAK_FLOPS},
            "rows": rows,
            "errors": errors,
            "load": {"before": load_before, "after": load_after,
                     "flagged": bool(load_before.get("flagged") or load_after.get("flagged"))},
            "machine": machine_info(),
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
        }

    for name in sections:
        t0 = time.perf_counter()
        try:
            got = SECTIONS[name](gpu, quick)
        except Exception as exc:  # one failing section must not lose the others' numbers
            errors[name] = f"{type(exc).__name__}: {exc}"
            print(f"bench_gpu: section {name} failed: {errors[name]}", flush=True)
            continue
        rows += got
        print(f"bench_gpu: {name} done in {time.perf_counter() - t0:.1f} s", flush=True)
        if save is not None:
            save(payload({"load_avg": list(os.getloadavg()), "flagged": False}, False))
    return payload(load_check(label="after"), True)


def table(payload: dict[str, Any]) -> str:
    head = ["figure", "unit", f"GPU ({payload['device'] if payload['gpu_used'] else 'none'})", "CPU", "H200 limit",
            "note"]
    body = format_table(head, [[r["figure"], r["unit"], r["gpu"], r["cpu"], r["limit"], r["note"]]
                               for r in payload["rows"]])
    m = payload["machine"]
    partial = "" if payload.get("complete", True) else " (PARTIAL: the run was still going)"
    lines = [f"# bench_gpu{' (quick, reduced sizes)' if payload['quick'] else ''}{partial}", "",
             f"SYNTHETIC data, random weights. Machine: {m.get('cpu_model', '?')}, {m.get('cpu_count')} CPUs, "
             f"GPU: {m.get('cuda_device', 'none')}; torch {m.get('torch', '?')}. Load average before/after: "
             f"{payload['load']['before'].get('load_avg')} / {payload['load']['after'].get('load_avg')}"
             f"{' (FLAGGED: above 1.5, CPU figures not comparable)' if payload['load']['flagged'] else ''}.", "",
             "```", body, "```"]
    if payload["errors"]:
        lines += ["", "Sections that failed: " + "; ".join(f"{k}: {v}" for k, v in payload["errors"].items())]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    ap.add_argument("--quick", action="store_true", help="reduced sizes (CPU proof that it runs)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated, of {','.join(SECTIONS)}")
    ap.add_argument("--out", type=Path, default=None,
                    help="write the .json and .md into this folder instead of benchmarks/results/")
    args = ap.parse_args(argv)
    sections = [s for s in args.sections.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise SystemExit(f"bench_gpu: unknown section(s) {sorted(unknown)}; expected {list(SECTIONS)}")
    name = "bench_gpu_quick" if args.quick else "bench_gpu"

    def save(payload: dict[str, Any]) -> None:
        text = table(payload)
        if args.out is None:
            write_results(name, payload)
            (RESULTS_DIR / f"{name}.md").write_text(text, encoding="utf-8")
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            write_json(args.out / f"{name}.json", payload)
            (args.out / f"{name}.md").write_text(text, encoding="utf-8")

    payload = run(args.device, args.quick, sections, save)
    save(payload)
    print(table(payload), flush=True)


if __name__ == "__main__":
    main()
