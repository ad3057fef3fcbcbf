"""Plain-text tables of retrieval results, for the CLI, the README and the benchmarks.

Kept apart from the metric code so that formatting choices never touch the numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from avret.eval.retrieval import CrossModalReport, RetrievalMetrics

SYNTHETIC_NOTE = "SYNTHETIC data set: these numbers say nothing about real audio-visual retrieval."


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], align_left: int = 1) -> list[str]:
    """Column-aligned lines; the first ``align_left`` columns are left-aligned, the rest right."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells: Sequence[str]) -> str:
        parts = [
            str(c).ljust(w) if i < align_left else str(c).rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return " | ".join(parts).rstrip()

    return [line(headers), "-+-".join("-" * w for w in widths), *(line(r) for r in rows)]


def format_map_table(rows: dict[str, CrossModalReport], *, title: str = "", synthetic: bool = False) -> str:
    """Table ``method | A->V mAP | V->A mAP | mean`` (mAP in percent, 2 decimals), one row per method.

    With ``synthetic=True`` the title and a footer state that the data set is synthetic, so a
    pasted table can never be mistaken for a result on real data.
    """
    head = title.strip()
    if synthetic:
        head = f"{head} [SYNTHETIC DATA]" if head else "[SYNTHETIC DATA]"
    body = [
        [
            name,
            f"{100 * rep.audio_to_visual.map:.2f}",
            f"{100 * rep.visual_to_audio.map:.2f}",
            f"{100 * rep.mean_map:.2f}",
        ]
        for name, rep in rows.items()
    ]
    lines = [head] if head else []
    lines += _table(["method", "A->V mAP", "V->A mAP", "mean"], body)
    if rows:
        first = next(iter(rows.values()))
        n_q = first.audio_to_visual.n_queries
        n_g = first.audio_to_visual.n_gallery
        lines.append(f"mAP in %, {n_q} queries per direction against {n_g} gallery items, cosine similarity.")
    if synthetic:
        lines.append(SYNTHETIC_NOTE)
    return "\n".join(lines)


def _direction_lines(name: str, m: RetrievalMetrics) -> list[str]:
    lines = [
        f"{name}: mAP {100 * m.map:.2f}  mAP@R {100 * m.map_at_r:.2f}  "
        f"({m.n_queries} queries, {m.n_gallery} gallery items, "
        f"{m.n_without_relevant} queries without a relevant item)",
        "  " + "  ".join(f"P@{k} {100 * v:.2f}" for k, v in m.precision_at.items()),
    ]
    return lines


def format_details(report: CrossModalReport) -> str:
    """Per-class AP of both directions, then precision@k and mAP@R of each (values in percent)."""
    a2v, v2a = report.audio_to_visual, report.visual_to_audio
    classes = list(dict.fromkeys([*a2v.per_class_ap, *v2a.per_class_ap]))

    def cell(d: dict[str, float], c: str) -> str:
        return f"{100 * d[c]:.2f}" if c in d else "-"

    body = [[c, cell(a2v.per_class_ap, c), cell(v2a.per_class_ap, c)] for c in classes]
    lines = ["Per-class AP (%)"]
    lines += _table(["class", "A->V AP", "V->A AP"], body)
    lines.append("")
    lines += _direction_lines("audio->visual", a2v)
    lines += _direction_lines("visual->audio", v2a)
    lines.append(f"mean mAP (A->V, V->A): {100 * report.mean_map:.2f}")
    return "\n".join(lines)
