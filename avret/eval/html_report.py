"""``avret eval --report DIR``: a self-contained HTML page of where a ranking succeeds and fails.

The numbers on the page (mAP, mAP@R, P@k, per-class AP, each query's AP) are the evaluator's own
(:class:`~avret.eval.retrieval.CrossModalReport`, the same object ``avret eval --json-out`` writes),
copied, never recomputed; ``report.json`` beside the page holds them exactly as ``--json-out`` does.
The plots are drawn from the same embeddings the evaluator ranked (:class:`EvalEmbeddings`):

* precision–recall curves of both directions: the mean over queries of each query's interpolated
  precision at 21 recall levels, with the spread of the per-class mean curves (min–max band);
* per-class AP bars (A→V and V→A);
* a class confusion matrix of the top-1 hits (row: the query's class, column: the top hit's);
* the cosine scores of relevant vs irrelevant audio–visual pairs (two normalised histograms);
* for each class the best and the worst query (by the evaluator's per-query AP) with their top-5
  hits, with a poster frame of each clip when its media file is known;
* with two models (``--compare A B``): their per-class AP side by side and the gain B − A.

Plots are PNGs rendered headless (matplotlib's Agg canvas, no pyplot state, no display), embedded in
the page as data URIs and also written beside it; the page loads nothing from the network.
Rankings for the plots use a float64 GEMM with ties broken by gallery index (as the evaluator's
generic path), which the plots cannot tell from the evaluator's exact tie handling.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avret.eval.evaluate import EvalEmbeddings
from avret.eval.retrieval import CrossModalReport, RetrievalMetrics

#: The report's marker file (what ``check_output`` recognises as an earlier report, and what
#: ``avret serve`` reads to link a report of its index's model).
REPORT_FILE = "report.json"
REPORT_PAGE = "index.html"
REPORT_FORMAT = "avret-eval-report"
REPORT_VERSION = 1
RECALL_LEVELS = np.linspace(0.0, 1.0, 21)
#: Working memory of one chunk of the plot rankings.
_CHUNK_BYTES = 128 * 1024**2
DIRECTIONS = (("audio_to_visual", "audio → visual", "A→V"), ("visual_to_audio", "visual → audio", "V→A"))
SYNTHETIC_NOTE = "SYNTHETIC data set: these numbers say nothing about real audio-visual retrieval."


@dataclass
class Direction:
    """What the plots need of one direction, gathered in one chunked pass over its rankings."""

    curves: np.ndarray  # (n, len(RECALL_LEVELS)) interpolated precision of each query
    top1: np.ndarray  # (n,) gallery row of each query's first hit
    top5: dict[int, np.ndarray] = field(default_factory=dict)  # query row -> its first 5 gallery rows
    scores_rel: np.ndarray | None = None  # histogram counts of relevant pair scores
    scores_irr: np.ndarray | None = None


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _chunks(n: int, m: int) -> Iterator[tuple[int, int]]:
    step = max(1, _CHUNK_BYTES // (max(1, m) * 24))
    for lo in range(0, n, step):
        yield lo, min(n, lo + step)


SCORE_BINS = np.linspace(-1.0, 1.0, 81)


def rank_direction(q: np.ndarray, g: np.ndarray, labels: np.ndarray, want_top5: set[int],
                   histogram: bool = False) -> Direction:
    """Rank ``g`` for every row of ``q`` (cosine, ties by gallery index) and keep what the plots need."""
    q, g = _unit(q), _unit(g)
    n, m = q.shape[0], g.shape[0]
    curves = np.zeros((n, RECALL_LEVELS.size))
    top1 = np.empty(n, dtype=np.int64)
    top5: dict[int, np.ndarray] = {}
    rel_hist = np.zeros(SCORE_BINS.size - 1)
    irr_hist = np.zeros(SCORE_BINS.size - 1)
    for lo, hi in _chunks(n, m):
        scores = q[lo:hi] @ g.T
        order = np.argsort(-scores, axis=1, kind="stable")
        rel = labels[order] == labels[lo:hi, None]
        top1[lo:hi] = order[:, 0]
        for i in range(hi - lo):
            if lo + i in want_top5:
                top5[lo + i] = order[i, :5].copy()
            hits = np.flatnonzero(rel[i])
            if hits.size == 0:
                continue
            prec = np.arange(1, hits.size + 1) / (hits + 1.0)
            interp = np.maximum.accumulate(prec[::-1])[::-1]
            j = np.clip(np.ceil(RECALL_LEVELS * hits.size).astype(int) - 1, 0, hits.size - 1)
            curves[lo + i] = interp[j]
        if histogram:
            same = labels[lo:hi, None] == labels[None, :]
            rel_hist += np.histogram(scores[same], SCORE_BINS)[0]
            irr_hist += np.histogram(scores[~same], SCORE_BINS)[0]
    out = Direction(curves, top1, top5)
    if histogram:
        out.scores_rel, out.scores_irr = rel_hist, irr_hist
    return out


# ------------------------------------------------------------------ plots


def _figure(w: float, h: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plot_pr(dirs: dict[str, Direction], labels: np.ndarray, class_names: list[str], title: str) -> bytes:
    fig = _figure(9, 3.8)
    for ax, (key, long, _short) in zip(fig.subplots(1, 2), DIRECTIONS, strict=True):
        d = dirs[key]
        per_class = np.stack([d.curves[labels == c].mean(axis=0) for c in np.unique(labels)])
        ax.fill_between(RECALL_LEVELS, per_class.min(axis=0), per_class.max(axis=0), color="#9bb5e6", alpha=.5,
                        label="per-class mean: min–max")
        if len(per_class) <= 20:
            for row in per_class:
                ax.plot(RECALL_LEVELS, row, color="#5577bb", lw=.6, alpha=.6)
        ax.plot(RECALL_LEVELS, d.curves.mean(axis=0), color="#123c8c", lw=2.2, label="mean over queries")
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="interpolated precision", title=long)
        ax.grid(alpha=.3)
        ax.legend(loc="upper right", fontsize=8)
    fig.suptitle(title)
    return _png(fig)


def plot_pr_compare(names: list[str], dirs: list[dict[str, Direction]], title: str) -> bytes:
    fig = _figure(9, 3.8)
    colors = ["#123c8c", "#c0392b", "#1a7f37", "#8e44ad"]
    for ax, (key, long, _s) in zip(fig.subplots(1, 2), DIRECTIONS, strict=True):
        for i, (name, d) in enumerate(zip(names, dirs, strict=True)):
            ax.plot(RECALL_LEVELS, d[key].curves.mean(axis=0), lw=2, color=colors[i % len(colors)], label=name)
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel="recall", ylabel="interpolated precision", title=long)
        ax.grid(alpha=.3)
        ax.legend(loc="upper right", fontsize=8)
    fig.suptitle(title)
    return _png(fig)


def plot_class_ap(report: CrossModalReport, class_names: list[str], title: str) -> bytes:
    a2v, v2a = report.audio_to_visual.per_class_ap, report.visual_to_audio.per_class_ap
    classes = [c for c in class_names if c in a2v or c in v2a]
    fig = _figure(max(6.0, 0.42 * len(classes) + 2), 3.8)
    ax = fig.subplots()
    x = np.arange(len(classes))
    ax.bar(x - 0.2, [100 * a2v.get(c, 0) for c in classes], 0.4, label="A→V", color="#2457c5")
    ax.bar(x + 0.2, [100 * v2a.get(c, 0) for c in classes], 0.4, label="V→A", color="#e08a1e")
    ax.axhline(100 * report.mean_map, color="#333", lw=1, ls="--", label=f"mean mAP {100 * report.mean_map:.2f}")
    ax.set_xticks(x, classes, rotation=45 if len(classes) > 8 else 0, ha="right" if len(classes) > 8 else "center")
    ax.set(ylabel="AP (%)", ylim=(0, 100), title=title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=.3)
    return _png(fig)


def plot_gain(names: list[str], reports: list[CrossModalReport], class_names: list[str], title: str) -> bytes:
    fig = _figure(max(6.0, 0.42 * len(class_names) + 2), 5.6)
    axes = fig.subplots(2, 1, sharex=True)
    x = np.arange(len(class_names))
    for ax, (key, long, _s) in zip(axes, DIRECTIONS, strict=True):
        a = np.array([getattr(reports[0], key).per_class_ap.get(c, 0.0) for c in class_names])
        b = np.array([getattr(reports[1], key).per_class_ap.get(c, 0.0) for c in class_names])
        gain = 100 * (b - a)
        ax.bar(x, gain, color=np.where(gain >= 0, "#1a7f37", "#b42318"))
        ax.axhline(0, color="#333", lw=.8)
        ax.set(ylabel="AP gain (points)", title=f"{long}: {names[1]} − {names[0]}")
        ax.grid(axis="y", alpha=.3)
    axes[-1].set_xticks(x, class_names, rotation=45 if len(class_names) > 8 else 0,
                        ha="right" if len(class_names) > 8 else "center")
    fig.suptitle(title)
    return _png(fig)


def plot_confusion(dirs: dict[str, Direction], labels: np.ndarray, class_names: list[str], title: str) -> bytes:
    k = len(class_names)
    side = min(14.0, 2.5 + 0.45 * k)
    fig = _figure(2 * side, side)
    for ax, (key, long, _s) in zip(fig.subplots(1, 2), DIRECTIONS, strict=True):
        conf = np.zeros((k, k))
        np.add.at(conf, (labels, labels[dirs[key].top1]), 1)
        frac = conf / np.maximum(conf.sum(axis=1, keepdims=True), 1)
        ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
        if k <= 15:
            for i in range(k):
                for j in range(k):
                    if conf[i, j]:
                        ax.text(j, i, f"{int(conf[i, j])}", ha="center", va="center", fontsize=8,
                                color="white" if frac[i, j] > .5 else "black")
        if k <= 40:
            ax.set_xticks(range(k), class_names, rotation=90, fontsize=8)
            ax.set_yticks(range(k), class_names, fontsize=8)
        ax.set(xlabel="class of the top-1 hit", ylabel="class of the query", title=f"{long}: top-1 hits")
    fig.suptitle(title)
    return _png(fig)


def plot_scores(d: Direction, title: str) -> bytes:
    fig = _figure(7, 3.4)
    ax = fig.subplots()
    width = np.diff(SCORE_BINS)
    for counts, name, color in ((d.scores_irr, "irrelevant pairs (other class)", "#b42318"),
                                (d.scores_rel, "relevant pairs (same class)", "#1a7f37")):
        total = counts.sum()
        ax.stairs(counts / max(total, 1) / width, SCORE_BINS, fill=True, alpha=.25, color=color)
        ax.stairs(counts / max(total, 1) / width, SCORE_BINS, lw=1.8, color=color, label=f"{name}: {int(total)}")
    used = np.flatnonzero(d.scores_irr + d.scores_rel)
    if used.size:
        ax.set_xlim(SCORE_BINS[max(used[0] - 1, 0)], SCORE_BINS[min(used[-1] + 2, SCORE_BINS.size - 1)])
    ax.set(xlabel="cosine score (audio · visual)", ylabel="density", title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=.3)
    return _png(fig)


# ------------------------------------------------------------------ posters


class Posters:
    """Tiny poster frames of clips whose media file is known, made once per clip and embedded once
    (a CSS class per clip holding the PNG as a data URI, used by every mention of the clip)."""

    def __init__(self, emb: EvalEmbeddings, prefix: str, size: int = 40) -> None:
        self.media = emb.media
        self.prefix = prefix
        self.size = size
        self._cache: dict[int, str | None] = {}

    def __call__(self, row: int) -> str | None:
        """The CSS class of ``row``'s poster, or None when its media is unknown or has no video."""
        if self.media is None:
            return None
        if row not in self._cache:
            self._cache[row] = self._make(str(self.media[row]))
        return f"{self.prefix}{row}" if self._cache[row] else None

    def css(self) -> str:
        return "".join(f".{self.prefix}{row}{{background-image:url({uri})}}" for row, uri in self._cache.items() if uri)

    def _make(self, path: str) -> str | None:
        if not path or not Path(path).is_file():
            return None
        from avret.errors import AvretError
        from avret.features.decode import decode_frames

        try:
            frames, _ = decode_frames(path, fps=2.0, max_frames=5, max_seconds=10.0)
        except (AvretError, OSError):
            return None
        if not frames:
            return None
        img = frames[len(frames) // 2].convert("RGB")
        img.thumbnail((self.size, self.size))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


# ------------------------------------------------------------------ the page


@dataclass
class ReportModel:
    """One evaluated model: its row name, where it was loaded from, its metrics and what was ranked."""

    name: str
    path: str
    report: CrossModalReport
    emb: EvalEmbeddings


def _num(key: str, value: float, pct: bool = True) -> str:
    """A table cell whose exact evaluator value travels with it (``data-key``/``data-value``)."""
    shown = f"{100 * value:.2f}" if pct else f"{value}"
    return f'<td class="num" data-key="{html.escape(key)}" data-value="{value!r}">{shown}</td>'


def _img(name: str, data: bytes, alt: str) -> str:
    return (f'<figure><img src="data:image/png;base64,{base64.b64encode(data).decode()}" alt="{html.escape(alt)}">'
            f'<figcaption>{html.escape(alt)} (<code>{html.escape(name)}</code>)</figcaption></figure>')


def _summary_table(models: list[ReportModel]) -> str:
    ks = list(models[0].report.audio_to_visual.precision_at)
    head = "".join(f"<th>{s} P@{k}</th>" for _, _, s in DIRECTIONS for k in ks)
    rows = []
    for m in models:
        cells = [_num(f"{m.name}/mean_map", m.report.mean_map)]
        for key, _l, _s in DIRECTIONS:
            met: RetrievalMetrics = getattr(m.report, key)
            cells += [_num(f"{m.name}/{key}/map", met.map), _num(f"{m.name}/{key}/map_at_r", met.map_at_r)]
        for key, _l, _s in DIRECTIONS:
            met = getattr(m.report, key)
            cells += [_num(f"{m.name}/{key}/precision_at/{k}", v) for k, v in met.precision_at.items()]
        rows.append(f"<tr><th>{html.escape(m.name)}</th>{''.join(cells)}</tr>")
    return ("<table><tr><th>model</th><th>mean mAP</th><th>A→V mAP</th><th>A→V mAP@R</th><th>V→A mAP</th>"
            f"<th>V→A mAP@R</th>{head}</tr>{''.join(rows)}</table>")


def _class_table(m: ReportModel) -> str:
    a2v, v2a = m.report.audio_to_visual.per_class_ap, m.report.visual_to_audio.per_class_ap
    rows = []
    for c in m.emb.class_names:
        if c not in a2v and c not in v2a:
            continue
        cells = "".join(_num(f"{m.name}/{key}/per_class_ap/{c}", getattr(m.report, key).per_class_ap[c])
                        if c in getattr(m.report, key).per_class_ap else "<td>–</td>" for key, _l, _s in DIRECTIONS)
        rows.append(f"<tr><th>{html.escape(c)}</th>{cells}</tr>")
    return f"<table><tr><th>class</th><th>A→V AP</th><th>V→A AP</th></tr>{''.join(rows)}</table>"


def _clip(emb: EvalEmbeddings, row: int, posters: Posters, relevant: bool | None = None) -> str:
    mark = "" if relevant is None else ('<span class="ok">✓</span>' if relevant else '<span class="bad">✗</span>')
    pic = posters(row)
    img = f'<span class="poster {pic}" role="img" aria-label="poster frame"></span>' if pic else ""
    cls = emb.class_names[int(emb.labels[row])]
    return (f'<span class="clip">{img}<span><code>{html.escape(str(emb.clip_ids[row]))}</code> {mark}'
            f'<br><small>{html.escape(cls)}</small></span></span>')


def _examples(m: ReportModel, dirs: dict[str, Direction], picks: dict[str, dict[str, tuple[int, int]]],
              posters: Posters) -> str:
    out = []
    for key, long, _s in DIRECTIONS:
        met: RetrievalMetrics = getattr(m.report, key)
        rows = []
        for c, (best, worst) in picks[key].items():
            cells = []
            for q in (best, worst):
                hits = dirs[key].top5.get(q, np.array([], dtype=np.int64))
                lab = m.emb.labels
                hit_html = "".join(_clip(m.emb, int(h), posters, bool(lab[h] == lab[q])) for h in hits)
                cells.append(f'<td>{_clip(m.emb, q, posters)}<br><small>AP</small> '
                             f'<span class="num" data-key="{html.escape(m.name)}/{key}/ap/{q}" '
                             f'data-value="{float(met.ap[q])!r}">{100 * float(met.ap[q]):.2f}</span></td>'
                             f'<td class="hits">{hit_html}</td>')
            rows.append(f"<tr><th>{html.escape(c)}</th>{''.join(cells)}</tr>")
        out.append(f"<h3>{long}: the best and the worst query of each class, with their top-5 hits</h3>"
                   "<table class='examples'><tr><th>class</th><th>best query</th><th>its top 5</th>"
                   f"<th>worst query</th><th>its top 5</th></tr>{''.join(rows)}</table>")
    return "".join(out)


def _picks(m: ReportModel) -> dict[str, dict[str, tuple[int, int]]]:
    """Per direction and class: (best, worst) query row by the evaluator's per-query AP (first on ties)."""
    out: dict[str, dict[str, tuple[int, int]]] = {}
    for key, _l, _s in DIRECTIONS:
        ap = getattr(m.report, key).ap
        out[key] = {}
        for label in np.unique(m.emb.labels):
            rows = np.flatnonzero(m.emb.labels == label)
            out[key][m.emb.class_names[int(label)]] = (int(rows[np.argmax(ap[rows])]), int(rows[np.argmin(ap[rows])]))
    return out


STYLE = """
body{font:15px/1.45 system-ui,sans-serif;color:#1d2330;max-width:1200px;margin:0 auto;padding:0 16px 40px}
h1{margin:18px 0 4px} .note{color:#5b6475} .synthetic{background:#fff4d6;border:1px solid #e8c66a;padding:8px 10px;
border-radius:6px} table{border-collapse:collapse;margin:8px 0 18px;background:#fff} th,td{border:1px solid #dde1e8;
padding:4px 8px;text-align:left;vertical-align:top} td.num,span.num{font-variant-numeric:tabular-nums;text-align:right}
figure{margin:10px 0 20px} figure img{max-width:100%;border:1px solid #eee} figcaption{color:#5b6475;font-size:13px}
.clip{display:inline-flex;gap:6px;align-items:center;margin:2px 10px 2px 0} .poster{display:inline-block;width:40px;
height:40px;background-size:cover;image-rendering:pixelated;border:1px solid #ccc;flex:none}
.ok{color:#1a7f37;font-weight:600} .bad{color:#b42318}
td.hits{min-width:320px} code{font-size:13px}
"""


def render_report(models: list[ReportModel], *, dataset: str, split: str, synthetic: bool,
                  compare: bool = False) -> tuple[str, dict[str, bytes], dict[str, Any]]:
    """The page, its PNG plots (file name -> bytes) and ``report.json`` for evaluated ``models``."""
    plots: dict[str, bytes] = {}
    body: list[str] = []
    tag = " [SYNTHETIC DATA]" if synthetic else ""
    all_dirs = []
    css: list[str] = []
    for i, m in enumerate(models):
        picks = _picks(m)
        want = {key: {q for pair in picks[key].values() for q in pair} for key, _l, _s in DIRECTIONS}
        e = m.emb
        dirs = {"audio_to_visual": rank_direction(e.audio, e.visual, e.labels, want["audio_to_visual"], True),
                "visual_to_audio": rank_direction(e.visual, e.audio, e.labels, want["visual_to_audio"])}
        all_dirs.append(dirs)
        posters = Posters(e, f"p{i + 1}_")
        p = f"m{i + 1}_"
        plots[p + "pr.png"] = plot_pr(dirs, e.labels, e.class_names, f"{m.name}: precision–recall{tag}")
        plots[p + "class_ap.png"] = plot_class_ap(m.report, e.class_names, f"{m.name}: per-class AP{tag}")
        plots[p + "confusion.png"] = plot_confusion(dirs, e.labels, e.class_names, f"{m.name}: top-1 confusions{tag}")
        plots[p + "scores.png"] = plot_scores(dirs["audio_to_visual"], f"{m.name}: pair scores{tag}")
        body.append(f"<h2 id='model-{i + 1}'>{html.escape(m.name)}</h2>"
                    f"<p class='note'>loaded from <code>{html.escape(m.path)}</code>"
                    f"{' · model ' + html.escape(e.fingerprint[:12]) if e.fingerprint else ''} · "
                    f"{e.labels.size} {split} clips per modality, {len(np.unique(e.labels))} classes</p>")
        body.append(_img(p + "pr.png", plots[p + "pr.png"], "precision–recall curves, A→V and V→A"))
        body.append(_img(p + "class_ap.png", plots[p + "class_ap.png"], "per-class AP"))
        body.append(_class_table(m))
        body.append(_img(p + "confusion.png", plots[p + "confusion.png"], "class confusion matrix of the top-1 hits"))
        body.append(_img(p + "scores.png", plots[p + "scores.png"],
                         "cosine scores of relevant vs irrelevant audio–visual pairs"))
        body.append(_examples(m, dirs, picks, posters))
        css.append(posters.css())
    if compare and len(models) == 2:
        names = [m.name for m in models]
        classes = list(models[0].emb.class_names)
        plots["compare_pr.png"] = plot_pr_compare(names, all_dirs, f"precision–recall: {names[0]} vs {names[1]}{tag}")
        plots["compare_gain.png"] = plot_gain(names, [m.report for m in models], classes, f"per-class AP gain{tag}")
        rows = []
        for c in classes:
            cells = []
            for key, _l, _s in DIRECTIONS:
                a = getattr(models[0].report, key).per_class_ap.get(c)
                b = getattr(models[1].report, key).per_class_ap.get(c)
                if a is None or b is None:
                    cells.append("<td>–</td><td>–</td><td>–</td>")
                    continue
                cells.append(_num(f"{names[0]}/{key}/per_class_ap/{c}", a)
                             + _num(f"{names[1]}/{key}/per_class_ap/{c}", b)
                             + f'<td class="num">{100 * (b - a):+.2f}</td>')
            rows.append(f"<tr><th>{html.escape(c)}</th>{''.join(cells)}</tr>")
        a_, b_ = (html.escape(n) for n in names)
        compare_html = (
            f"<h2 id='compare'>{a_} vs {b_}</h2>"
            + _img("compare_pr.png", plots["compare_pr.png"], "mean precision–recall curves of both models")
            + _img("compare_gain.png", plots["compare_gain.png"], "per-class AP gain of the second model")
            + f"<table><tr><th>class</th><th>A→V {a_}</th><th>A→V {b_}</th><th>gain</th><th>V→A {a_}</th>"
              f"<th>V→A {b_}</th><th>gain</th></tr>{''.join(rows)}</table>")
        body.insert(0, compare_html)
    title = f"avret evaluation: {dataset}, {split} split{tag}"
    note = f"<p class='synthetic'>{SYNTHETIC_NOTE}</p>" if synthetic else ""
    n_q = models[0].report.audio_to_visual.n_queries
    page = (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}{''.join(css)}</style></head><body><h1>{html.escape(title)}</h1>{note}"
            f"<p class='note'>Values in %. Every {split} clip of one modality queries all {n_q} clips of the other "
            "(cosine similarity); a hit is relevant when it has the query's class. The numbers are the evaluator's, "
            f"as <code>avret eval --json-out</code> writes them (also in <code>{REPORT_FILE}</code>).</p>"
            f"{_summary_table(models)}{''.join(body)}</body></html>")
    meta = {"format": REPORT_FORMAT, "version": REPORT_VERSION, "dataset": dataset, "synthetic": synthetic,
            "split": split, "plots": sorted(plots),
            "models": [{"name": m.name, "path": m.path, "fingerprint": m.emb.fingerprint} for m in models],
            "rows": {m.name: m.report.to_dict() for m in models}}
    return page, plots, meta


def write_report(out: str | Path, models: list[ReportModel], *, dataset: str, split: str, synthetic: bool,
                 compare: bool = False) -> Path:
    """Write ``index.html``, its PNGs and ``report.json`` into ``out`` at once (an atomic directory).

    The caller checks ``out`` with ``check_output`` first (only an earlier report is replaced).
    """
    from avret.utils.atomic import atomic_dir, json_default

    page, plots, meta = render_report(models, dataset=dataset, split=split, synthetic=synthetic, compare=compare)
    with atomic_dir(out) as tmp:
        (tmp / REPORT_PAGE).write_text(page, encoding="utf-8")
        for name, data in plots.items():
            (tmp / name).write_bytes(data)
        (tmp / REPORT_FILE).write_text(json.dumps(meta, indent=2, default=json_default) + "\n", encoding="utf-8")
    return Path(out)


__all__ = ["REPORT_FILE", "REPORT_PAGE", "ReportModel", "rank_direction", "render_report", "write_report"]
