"""ETA error kernels equal scikit-learn's, and the per-segment helper applies them per group."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from eval.metrics import (
    abs_error_quantile,
    bias,
    eta_report,
    interval_coverage,
    mae,
    mean_interval_width,
    p90_abs_error,
    per_segment,
    pinball_loss,
    rmse,
)

RNG = np.random.default_rng(11)
Y = RNG.gamma(3.0, 10.0, 500)
PRED = Y + RNG.normal(2.0, 6.0, 500)


def test_point_errors_match_sklearn() -> None:
    assert mae(Y, PRED) == pytest.approx(skm.mean_absolute_error(Y, PRED))
    assert rmse(Y, PRED) == pytest.approx(skm.root_mean_squared_error(Y, PRED))
    for alpha in (0.1, 0.5, 0.9):
        assert pinball_loss(Y, PRED, alpha) == pytest.approx(skm.mean_pinball_loss(Y, PRED, alpha=alpha))


def test_hand_computed_case() -> None:
    y = np.array([10.0, 20.0, 30.0, 40.0])
    pred = np.array([12.0, 18.0, 30.0, 50.0])  # errors +2, −2, 0, +10
    assert mae(y, pred) == 3.5
    assert bias(y, pred) == 2.5
    assert rmse(y, pred) == pytest.approx(math.sqrt((4 + 4 + 0 + 100) / 4))
    # |errors| sorted 0, 2, 2, 10; type-7 quantile at 0.9 → position 2.7 → 2 + 0.7·8
    assert p90_abs_error(y, pred) == pytest.approx(7.6)
    assert abs_error_quantile(y, pred, 0.5) == pytest.approx(2.0)


def test_interval_coverage_counts_closed_interval() -> None:
    y = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    low = np.array([1.0, 0.0, 3.5, 0.0, 0.0])
    high = np.array([2.0, 1.0, 4.0, 4.0, 10.0])
    assert interval_coverage(y, low, high) == pytest.approx(3 / 5)  # rows 0 (edge), 3 (edge), 4
    assert mean_interval_width(low, high) == pytest.approx(np.mean(high - low))


def test_empty_input_is_nan_and_misaligned_input_raises() -> None:
    assert math.isnan(mae([], []))
    assert math.isnan(interval_coverage([], [], []))
    with pytest.raises(ValueError, match="aligned"):
        mae([1.0, 2.0], [1.0])


def test_per_segment_applies_the_report_to_each_group() -> None:
    frame = pd.DataFrame(
        {
            "region_id": np.repeat([3, 1], 250),
            "y": Y,
            "eta": PRED,
            "low": PRED - 8,
            "high": PRED + 8,
        }
    )
    out = per_segment(frame, "region_id", eta_report, ["y", "eta", "low", "high"])
    assert list(out) == ["1", "3"]
    assert out["3"]["mae"] == pytest.approx(mae(Y[:250], PRED[:250]))
    assert out["1"]["interval_coverage"] == pytest.approx(interval_coverage(Y[250:], PRED[250:] - 8, PRED[250:] + 8))
    assert out["1"]["n"] == 250
    assert per_segment(frame, "region_id", eta_report, ["y", "eta", "low", "high"], min_rows=251) == {}
    with pytest.raises(KeyError, match="cohort"):
        per_segment(frame, "cohort", eta_report, ["y", "eta", "low", "high"])
