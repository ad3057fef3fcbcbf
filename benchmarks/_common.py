"""Shared helpers for the benchmarks: timing, machine info, result files and tables.

Every benchmark reports the median of several repeats (robust to a noisy shared machine), records
the machine it ran on, and writes its numbers atomically to ``benchmarks/results/<name>.json`` so
a crashed run never leaves a half-written result behind.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from avret.utils.atomic import write_json

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def median_time(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, list[float]]:
    """Call ``fn()`` ``repeats`` times; return (median seconds, every run's seconds).

    The median rather than the mean, so one run slowed by another process does not skew it.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    times: list[float] = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), times


def machine_info() -> dict[str, Any]:
    """Describe the machine and library versions, so results from different runs can be compared."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "timestamp_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    try:
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        info["cpu_affinity"] = None
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal"):
                    info["mem_total_gb"] = round(int(line.split()[1]) / 1024**2, 1)
                    break
    except OSError:
        pass
    try:
        import numpy as np

        info["numpy"] = np.__version__
    except ImportError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
        info["cuda_available"] = bool(torch.cuda.is_available())
        if torch.cuda.is_available():
            info["cuda_device"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def write_results(name: str, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus machine info if absent) to ``benchmarks/results/<name>.json`` atomically."""
    payload = dict(payload)
    payload.setdefault("benchmark", name)
    payload.setdefault("machine", machine_info())
    path = RESULTS_DIR / f"{name}.json"
    write_json(path, payload)
    return path


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Render rows as a plain-text, column-aligned table (floats to 4 significant digits)."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    table = [[str(h) for h in headers]] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(headers))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(table[0], widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    for r in table[1:]:
        lines.append(" | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)))
    return "\n".join(lines)


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print :func:`format_table` of ``headers`` and ``rows`` to stdout."""
    print(format_table(headers, rows), flush=True)


def load_check(max_load: float = 1.5, label: str = "") -> dict[str, Any]:
    """Print and return the 1/5/15-minute load averages; ``flagged`` when the 1-minute one exceeds ``max_load``.

    Timings taken on a busy machine are not comparable: benchmarks record this next to their numbers
    and say so in their table.
    """
    try:
        one, five, fifteen = os.getloadavg()
    except (AttributeError, OSError):
        return {"load_avg": None, "flagged": False}
    flagged = one > max_load
    note = f"  ** FLAGGED: load above {max_load}; timings are not comparable **" if flagged else ""
    print(f"load average{(' ' + label) if label else ''}: {one:.2f} {five:.2f} {fifteen:.2f} "
          f"on {os.cpu_count()} cores{note}", flush=True)
    return {"load_avg": [round(one, 2), round(five, 2), round(fifteen, 2)], "flagged": flagged,
            "max_load": max_load}
