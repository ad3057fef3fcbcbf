"""MOSI/MOSEI regression metrics, computed exactly as MMSA does (so numbers compare with papers).

* ``mae``: mean absolute error; ``corr``: Pearson correlation of predictions and labels.
* ``acc2_has0`` / ``f1_has0``: negative (< 0) vs non-negative (>= 0), over all rows.
* ``acc2_non0`` / ``f1_non0``: negative vs positive (> 0), over rows whose true label is not 0.
* F1 is sklearn's ``average="weighted"``: per-class F1 weighted by true support.
* ``acc7``: predictions and labels clipped to [-3, 3] then rounded (``np.round``: half to even),
  accuracy of equal integers; ``acc5`` the same with [-2, 2].
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

METRIC_NAMES = ("mae", "corr", "acc2_has0", "f1_has0", "acc2_non0", "f1_non0", "acc7", "acc5")
METRIC_LABELS = {
    "mae": "MAE", "corr": "Corr", "acc2_has0": "Acc-2 (has0)", "f1_has0": "F1 (has0)",
    "acc2_non0": "Acc-2 (non0)", "f1_non0": "F1 (non0)", "acc7": "Acc-7", "acc5": "Acc-5",
}


def weighted_f1(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """sklearn ``f1_score(y_true, y_pred, average="weighted")`` for any discrete labels.

    Classes are those present in either array; a class never predicted has F1 0; weights are the
    true supports (so a class absent from ``y_true`` has weight 0).
    """
    y_true = np.asarray(y_true)
    y_pred = np.asarray(y_pred)
    if y_true.size == 0:
        return math.nan
    total = 0.0
    for c in np.union1d(y_true, y_pred):
        tp = float(np.sum((y_true == c) & (y_pred == c)))
        support = float(np.sum(y_true == c))
        predicted = float(np.sum(y_pred == c))
        denom = support + predicted
        f1 = 2.0 * tp / denom if denom > 0 else 0.0
        total += support * f1
    return total / float(y_true.size)


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation; NaN when either side is constant (undefined)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.size < 2 or np.std(a) == 0 or np.std(b) == 0:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def multiclass_acc(preds: np.ndarray, truth: np.ndarray) -> float:
    """Fraction of rows whose rounded prediction equals the rounded truth (MMSA)."""
    return float(np.mean(np.round(preds) == np.round(truth)))


def sentiment_metrics(preds: Sequence[float] | np.ndarray,
                      labels: Sequence[float] | np.ndarray) -> dict[str, float]:
    """All MOSI/MOSEI metrics of regression predictions against labels in [-3, 3]."""
    p = np.asarray(preds, dtype=np.float64).reshape(-1)
    t = np.asarray(labels, dtype=np.float64).reshape(-1)
    if p.shape != t.shape:
        raise ValueError(f"predictions {p.shape} and labels {t.shape} differ in length")
    if p.size == 0:
        raise ValueError("no predictions to score")
    out: dict[str, float] = {}
    out["mae"] = float(np.mean(np.abs(p - t)))
    out["corr"] = pearson(p, t)
    bt, bp = t >= 0, p >= 0
    out["acc2_has0"] = float(np.mean(bt == bp))
    out["f1_has0"] = weighted_f1(bt, bp)
    nz = t != 0
    if nz.any():
        nt, npred = t[nz] > 0, p[nz] > 0
        out["acc2_non0"] = float(np.mean(nt == npred))
        out["f1_non0"] = weighted_f1(nt, npred)
    else:
        out["acc2_non0"] = math.nan
        out["f1_non0"] = math.nan
    out["acc7"] = multiclass_acc(np.clip(p, -3, 3), np.clip(t, -3, 3))
    out["acc5"] = multiclass_acc(np.clip(p, -2, 2), np.clip(t, -2, 2))
    out["n"] = int(p.size)
    return out


def json_safe(metrics: dict[str, Any]) -> dict[str, Any]:
    """Replace NaN/inf by None so the result is strict JSON."""
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out[k] = json_safe(v)
        elif isinstance(v, float) and not math.isfinite(v):
            out[k] = None
        else:
            out[k] = v
    return out


def metrics_table(rows: dict[str, dict[str, Any]], names: Sequence[str] = METRIC_NAMES) -> str:
    """A plain-text table: one row per named result, one column per metric (4 decimals).

    A value may be a float or a ``(mean, std)`` pair, printed ``mean ± std``.
    """

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, (tuple, list)):
            return f"{v[0]:.4f} ± {v[1]:.4f}"
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.4f}"
        return str(v)

    headers = ["model"] + [METRIC_LABELS.get(n, n) for n in names]
    table = [headers] + [[name] + [cell(r.get(n)) for n in names] for name, r in rows.items()]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    lines = [" | ".join(c.ljust(w) for c, w in zip(table[0], widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    for row in table[1:]:
        lines.append(" | ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:],
                                                                                        strict=True)]))
    return "\n".join(lines)
