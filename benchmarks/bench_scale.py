"""Scale-out measurements (issue 14): Ray extraction, distributed training, auto/sharded FAISS indexes.

One run measures every part against its own baseline taken in the same run:

* ``extract``: feature-extraction throughput (clips/s), single process vs Ray with 1 and 2 workers
  (:mod:`benchmarks.scale_parts.extract`; SYNTHETIC media files written for the run);
* ``train``: the towers' step time per global batch, 1 process vs 2 Gloo processes sharing the same
  global batch (:mod:`benchmarks.scale_parts.train`; SYNTHETIC features);
* ``index``: build time, peak memory, index bytes, query latency and recall@10 at 1M and 5M
  vectors, exact Flat vs the ``--factory auto`` choice under a memory budget
  (:mod:`benchmarks.scale_parts.index`; SYNTHETIC clustered vectors).

    nice python -m benchmarks.bench_scale                 # everything (~15-25 min on 2 cores)
    python -m benchmarks.bench_scale --parts index --quick

Before each part the 1-minute load average must fall below ``--max-load`` (default 1.5; the
previous part's own processes raise it, so the benchmark waits up to ``--wait`` seconds for it to
settle); a part that would start on a busy machine is refused unless ``--force``, and then flagged
in the table and the JSON. Each part's result is written as soon as it is measured, into
``benchmarks/results/bench_scale[_quick].json`` and ``.md`` (a run of some ``--parts`` replaces
those parts and keeps the others, each with its own date and load).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import time

from benchmarks._common import RESULTS_DIR, format_table, load_check, machine_info, write_results

PARTS = ("extract", "train", "index")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of: " + ",".join(PARTS))
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke run; not for the record)")
    ap.add_argument("--max-load", type=float, default=1.5)
    ap.add_argument("--force", action="store_true", help="run even when the machine is busy (flagged)")
    ap.add_argument("--wait", type=float, default=300.0, help="seconds to wait for the load to settle per part")
    args = ap.parse_args(argv)
    parts = [p for p in args.parts.split(",") if p]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise SystemExit(f"--parts: unknown {unknown}; expected some of {PARTS}")
    name = "bench_scale" + ("_quick" if args.quick else "")
    path = RESULTS_DIR / f"{name}.json"
    results: dict = {"synthetic": True, "quick": args.quick, "parts": {}}
    if path.is_file():  # keep the parts this run does not measure
        results["parts"] = {k: v for k, v in json.loads(path.read_text()).get("parts", {}).items()
                            if k in PARTS and k not in parts}
    for part in parts:
        deadline = time.monotonic() + args.wait
        while os.getloadavg()[0] > args.max_load and time.monotonic() < deadline:
            time.sleep(10)
        load = load_check(args.max_load, f"before {part}")
        if load.get("flagged") and not args.force:
            raise SystemExit(f"load {load['load_avg']} above --max-load {args.max_load}: timings would not be "
                             "comparable (wait, or --force to record them flagged)")
        mod = importlib.import_module(f"benchmarks.scale_parts.{part}")
        t0 = time.perf_counter()
        res = mod.run(quick=args.quick)
        res["seconds"] = round(time.perf_counter() - t0, 1)
        res["load_before"] = load
        res["load_after"] = load_check(math.inf, f"after {part}")
        res["machine"] = machine_info()
        results["parts"][part] = res
        print(f"\n{part}{_flag(res)}\n{format_table(res['headers'], res['rows'])}", flush=True)
        write_results(name, results)
        (RESULTS_DIR / f"{name}.md").write_text(markdown(results))
    print(f"wrote {path}")


def _flag(res: dict) -> str:
    return " (FLAGGED: load above --max-load)" if res["load_before"].get("flagged") else ""


def markdown(results: dict) -> str:
    md = [f"bench_scale{' (quick)' if results['quick'] else ''} — SYNTHETIC inputs; medians; ratios against the "
          "baseline measured in the same run", ""]
    for part in PARTS:
        res = results["parts"].get(part)
        if res is None:
            continue
        md += [f"### {part}{_flag(res)}", "", f"{res['machine'].get('timestamp_utc')}; load before "
               f"{res['load_before'].get('load_avg')}, after {res['load_after'].get('load_avg')}; {res['seconds']} s",
               "", "| " + " | ".join(map(str, res["headers"])) + " |", "|" + "---|" * len(res["headers"])]
        md += ["| " + " | ".join(map(str, r)) + " |" for r in res["rows"]]
        md += [""] + [f"- {n}" for n in res.get("notes", [])] + [""]
    return "\n".join(md)


if __name__ == "__main__":
    main()
