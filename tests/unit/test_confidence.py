"""Confidence-interval kernels: hand-computed cases, scipy where it has the same interval, coverage."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from eval.calibration import expected_calibration_error
from eval.confidence import auc_ci, bootstrap_ci, mean_ci, quantile_ci, rmse_ci, wilson_ci


def test_mean_ci_is_the_normal_interval() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    half = stats.norm.ppf(0.975) * np.std(x, ddof=1) / math.sqrt(5)
    assert mean_ci(x) == pytest.approx((3.0 - half, 3.0 + half), rel=1e-12)
    assert all(math.isnan(v) for v in mean_ci(np.array([1.0])))


def test_wilson_hand_case_and_edges() -> None:
    # 8 of 10 at 95 %: the textbook (0.4902, 0.9433)
    low, high = wilson_ci(8, 10)
    assert (round(low, 4), round(high, 4)) == (0.4902, 0.9433)
    low, high = wilson_ci(0, 20)
    assert low == pytest.approx(0.0, abs=1e-12) and 0 < high < 0.2
    assert all(math.isnan(v) for v in wilson_ci(0, 0))


def test_rmse_ci_is_the_square_root_of_the_mse_interval() -> None:
    sq = np.array([1.0, 4.0, 9.0, 16.0])
    low, high = mean_ci(sq)
    assert rmse_ci(sq) == pytest.approx((math.sqrt(max(low, 0.0)), math.sqrt(high)))


def test_quantile_ci_order_statistics_hand_case() -> None:
    # n = 100, q = 0.5: n·q ± 1.96·√25 = 50 ± 9.8 -> ranks 40 and 60
    assert quantile_ci(np.arange(1.0, 101.0), 0.5) == (40.0, 60.0)
    # n = 100, q = 0.9: 90 ± 1.96·3 = 90 ± 5.88 -> ranks 84 and 96
    assert quantile_ci(np.arange(1.0, 101.0)[::-1], 0.9) == (84.0, 96.0)


def test_auc_ci_hanley_mcneil_hand_case() -> None:
    # A = 0.8, n+ = n- = 50: Q1 = 0.8/1.2, Q2 = 1.28/1.8
    a, q1, q2 = 0.8, 0.8 / 1.2, 1.28 / 1.8
    se = math.sqrt((a * (1 - a) + 49 * (q1 - a * a) + 49 * (q2 - a * a)) / 2500)
    z = stats.norm.ppf(0.975)
    assert auc_ci(0.8, 50, 50) == pytest.approx((0.8 - z * se, 0.8 + z * se), rel=1e-12)
    assert all(math.isnan(v) for v in auc_ci(float("nan"), 0, 10))


def test_bootstrap_is_seeded_and_brackets_the_statistic() -> None:
    rng = np.random.default_rng(3)
    y = (rng.random(400) < 0.4).astype(float)
    p = np.clip(0.4 + 0.2 * rng.standard_normal(400), 0, 1)
    first = bootstrap_ci(expected_calibration_error, (y, p), seed=1)
    assert first == bootstrap_ci(expected_calibration_error, (y, p), seed=1)
    assert first[0] <= expected_calibration_error(y, p) <= first[1]


def test_mean_ci_covers_the_true_mean_at_about_its_level() -> None:
    rng = np.random.default_rng(7)
    hits = 0
    for _ in range(400):
        low, high = mean_ci(rng.exponential(2.0, size=200))
        hits += low <= 2.0 <= high
    assert 0.91 <= hits / 400 <= 0.98
