"""Media-ingest throughput: decode time and model time, shown apart, for audio (VGGish) and video (CLIP).

Run ``python -m benchmarks.bench_features`` (or ``--quick``). Media are generated (H.264 320x240
25 fps + AAC 44.1 kHz stereo, a tone and a moving square), so no data are needed. The models have
**random weights** (no downloads): the real VGGish architecture (72M parameters, torchvggish layout)
and open_clip's ``ViT-B-32`` image tower; their speed does not depend on the weights' values.

Stages (median of repeats over all clips):

* ``audio decode``: PyAV decode + downmix + resample to 16 kHz mono (audio seconds / s);
* ``audio frontend``: log-mel examples (audio seconds / s);
* ``vggish``: the network on all examples (audio seconds / s; examples of 0.96 s);
* ``video decode``: PyAV decode, sampling 1 frame/s (sampled frames / s);
* ``clip preprocess``: the open_clip eval transform of the sampled frames (frames / s);
* ``clip model``: ViT-B-32 image tower (frames / s).

Models run on the CPU, and also on the GPU when ``torch.cuda.is_available()``. Results go to
``benchmarks/results/bench_features.json``.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import machine_info, median_time, print_table, write_results


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(quick: bool = False) -> dict[str, Any]:
    """Run every stage; return the JSON payload (also printed as a table by :func:`main`)."""
    from avret.features import vggish_frontend as fe
    from avret.features.clip_frames import ClipFrameEncoder
    from avret.features.decode import decode_audio, decode_frames, single_torch_thread
    from avret.features.synthetic_media import write_media
    from avret.features.vggish import VGGish, VGGishEmbedder
    from avret.models.clip import RANDOM_INIT, load_clip

    n_clips, seconds, repeats = (2, 5.0, 2) if quick else (4, 10.0, 3)
    fps, batch = 1.0, 64
    rows: list[dict[str, Any]] = []

    def add(stage: str, device: str, n: float, unit: str, t: float, runs: list[float]) -> None:
        rows.append({"stage": stage, "device": device, "items": n, "unit": unit, "median_s": t,
                     "throughput": n / t if t > 0 else float("inf"), "runs_s": runs})

    with tempfile.TemporaryDirectory() as tmp:
        clips = [
            write_media(Path(tmp) / f"clip{i}.mp4", seconds=seconds, freq=300.0 + 100 * i, fps=25,
                        size=(320, 240))
            for i in range(n_clips)
        ]
        waves = [decode_audio(p) for p in clips]
        audio_s = sum(len(w) for w in waves) / fe.SAMPLE_RATE
        def one_thread(fn):  # noqa: ANN001, ANN202 - as extract_features decodes
            def wrapped() -> object:
                with single_torch_thread():
                    return fn()

            return wrapped

        t, runs = median_time(one_thread(lambda: [decode_audio(p) for p in clips]), repeats)
        add("audio decode (PyAV+resample, 1 thread)", "cpu", audio_s, "audio s", t, runs)
        t, runs = median_time(one_thread(lambda: [fe.waveform_to_examples(w) for w in waves]), repeats)
        add("audio frontend (log-mel, 1 thread)", "cpu", audio_s, "audio s", t, runs)
        examples = torch.cat([fe.waveform_to_examples(w) for w in waves])

        frames = [decode_frames(p, fps=fps, max_frames=32)[0] for p in clips]
        n_frames = sum(len(f) for f in frames)
        t, runs = median_time(lambda: [decode_frames(p, fps=fps, max_frames=32) for p in clips], repeats)
        add(f"video decode ({fps:g} fps sampling)", "cpu", n_frames, "frames", t, runs)

    torch.manual_seed(0)
    vggish = VGGish().eval()  # random weights, real architecture
    clip_model = load_clip("ViT-B-32", RANDOM_INIT, allow_random=True)  # seeded random weights
    clip_cpu = ClipFrameEncoder("ViT-B-32", clip_model.visual, device="cpu")
    flat = [im for fr in frames for im in fr]

    def preprocess() -> torch.Tensor:
        with single_torch_thread():  # as extract_features does (and its DataLoader workers)
            return torch.stack([clip_cpu.transform(im) for im in flat])

    t, runs = median_time(preprocess, repeats)
    add("clip preprocess (open_clip transform, 1 thread)", "cpu", n_frames, "frames", t, runs)
    pixels = torch.stack([clip_cpu.transform(im) for im in flat])

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    for dev in devices:
        emb = VGGishEmbedder(vggish, device=dev)
        enc = clip_cpu if dev.type == "cpu" else ClipFrameEncoder("ViT-B-32", clip_model.visual, device=dev)
        emb.embed(examples[:2], batch)  # warm-up
        enc.encode(pixels[:2], batch)
        _sync(dev)

        def run_vggish(emb: VGGishEmbedder = emb, dev: torch.device = dev) -> None:
            emb.embed(examples, batch)
            _sync(dev)

        def run_clip(enc: ClipFrameEncoder = enc, dev: torch.device = dev) -> None:
            enc.encode(pixels, batch)
            _sync(dev)

        t, runs = median_time(run_vggish, repeats)
        add("vggish model (random weights, 72M params)", dev.type, audio_s, "audio s", t, runs)
        t, runs = median_time(run_clip, repeats)
        add("clip model (ViT-B-32 image tower, random weights)", dev.type, n_frames, "frames", t, runs)

    return {
        "benchmark": "bench_features",
        "quick": quick,
        "media": {"clips": n_clips, "seconds_each": seconds, "video": "H.264 320x240 25 fps",
                  "audio": "AAC 44.1 kHz stereo", "sampled_fps": fps,
                  "vggish_examples": int(examples.shape[0]),
                  "frames": n_frames, "synthetic": True},
        "weights": "random (architecture timing only)",
        "repeats": repeats,
        "results": rows,
        "machine": machine_info(),
    }


def main(argv: list[str] | None = None) -> None:
    """CLI entry: run, print the table, write ``benchmarks/results/bench_features.json``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="2 clips of 5 s, 2 repeats")
    args = ap.parse_args(argv)
    payload = run(quick=args.quick)
    print_table(
        ["stage", "device", "items", "unit", "median s", "throughput /s"],
        [[r["stage"], r["device"], r["items"], r["unit"], r["median_s"], r["throughput"]]
         for r in payload["results"]],
    )
    path = write_results("bench_features", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
