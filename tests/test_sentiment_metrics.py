"""MOSI metrics against hand-computed small cases and scipy's Pearson correlation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import pearsonr

from avret.sentiment.metrics import json_safe, metrics_table, sentiment_metrics, weighted_f1


def test_hand_computed_case() -> None:
    labels = [-2.0, -0.4, 0.0, 1.0, 2.6]
    preds = [-1.6, 0.2, -0.2, 1.4, 3.5]
    m = sentiment_metrics(preds, labels)
    # |errors| = 0.4, 0.6, 0.2, 0.4, 0.9 -> 2.5 / 5
    assert m["mae"] == pytest.approx(0.5)
    assert m["corr"] == pytest.approx(pearsonr(preds, labels)[0])
    # has0: truth >=0: F F T T T ; preds >=0: F T F T T -> 3/5 correct
    assert m["acc2_has0"] == pytest.approx(0.6)
    # classes: False (support 2: tp 1, pred 2 -> f1 .5), True (support 3: tp 2, pred 3 -> f1 2/3)
    assert m["f1_has0"] == pytest.approx((2 * 0.5 + 3 * (2 / 3)) / 5)
    # non0 drops the true zero: truth F F T T ; preds(>0) F T T T -> 3/4
    assert m["acc2_non0"] == pytest.approx(0.75)
    # False: support 2, tp 1, predicted 1 -> f1 2/3 ; True: support 2, tp 2, predicted 3 -> 0.8
    assert m["f1_non0"] == pytest.approx((2 * (2 / 3) + 2 * 0.8) / 4)
    # acc7: clip to [-3,3], round: preds -2, 0, -0, 1, 3 vs truth -2, -0, 0, 1, 3 -> 5/5
    assert m["acc7"] == pytest.approx(1.0)
    # acc5: clip to [-2,2]: preds -2, 0, 0, 1, 2 vs truth -2, 0, 0, 1, 2 -> 5/5
    assert m["acc5"] == pytest.approx(1.0)
    assert m["n"] == 5


def test_acc7_rounding_half_to_even_and_clipping() -> None:
    m = sentiment_metrics([2.5, -4.0, 0.49], [2.0, -3.0, 1.0])
    # round(2.5) = 2 (half to even) == 2 ; clip(-4) = -3 == -3 ; round(.49) = 0 != 1
    assert m["acc7"] == pytest.approx(2 / 3)


def test_weighted_f1_matches_sklearn_definition() -> None:
    y_true = np.array([0, 0, 1, 1, 1, 1])
    y_pred = np.array([0, 1, 1, 1, 0, 1])
    # class 0: tp 1, support 2, predicted 2 -> .5; class 1: tp 3, support 4, predicted 4 -> .75
    assert weighted_f1(y_true, y_pred) == pytest.approx((2 * 0.5 + 4 * 0.75) / 6)
    # a class never predicted has F1 0
    assert weighted_f1(np.array([0, 1]), np.array([1, 1])) == pytest.approx((1 * 0 + 1 * (2 / 3)) / 2)


def test_random_corr_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    y = rng.uniform(-3, 3, 200)
    p = y + rng.normal(0, 1, 200)
    assert sentiment_metrics(p, y)["corr"] == pytest.approx(pearsonr(p, y)[0], rel=1e-9)


def test_constant_predictions_give_nan_corr_and_json_none() -> None:
    m = sentiment_metrics([0.0, 0.0, 0.0], [1.0, -1.0, 2.0])
    assert math.isnan(m["corr"])
    assert json_safe(m)["corr"] is None
    table = metrics_table({"const": m, "mean±std": {"mae": (1.0, 0.1)}})
    assert "nan" in table and "1.0000 ± 0.1000" in table


def test_length_mismatch() -> None:
    with pytest.raises(ValueError):
        sentiment_metrics([1.0], [1.0, 2.0])
