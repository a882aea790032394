"""Probability scores and calibration fits equal scikit-learn / scipy, plus a hand-computed ECE."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize
from sklearn.calibration import calibration_curve
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import brier_score_loss, roc_auc_score
from sklearn.metrics import log_loss as sk_log_loss

from eval.calibration import (
    acceptance_report,
    brier_score,
    ece_bootstrap_ci,
    expected_calibration_error,
    isotonic_fit,
    log_loss,
    platt_apply,
    platt_fit,
    reliability_table,
    roc_auc,
)
from eval.confidence import bootstrap_ci

RNG = np.random.default_rng(7)
P = RNG.beta(2, 2, 2000)
Y = (RNG.random(2000) < P**1.3).astype(float)


def test_ece_hand_case_with_ten_equal_width_bins() -> None:
    # bin [0.1, 0.2): p = 0.1, 0.1 → mean 0.1, labels 0, 1 → rate 0.5, gap 0.4, weight 2/5
    # bin [0.8, 0.9): p = 0.8, 0.8 → mean 0.8, labels 1, 1 → rate 1.0, gap 0.2, weight 2/5
    # bin [0.9, 1.0]: p = 1.0 (last bin is closed) → label 1, gap 0, weight 1/5
    p = np.array([0.1, 0.1, 0.8, 0.8, 1.0])
    y = np.array([0.0, 1.0, 1.0, 1.0, 1.0])
    assert expected_calibration_error(y, p) == pytest.approx(0.4 * 2 / 5 + 0.2 * 2 / 5)
    assert expected_calibration_error(y, p, n_bins=1) == pytest.approx(abs(y.mean() - p.mean()))


def test_perfectly_calibrated_predictions_have_small_ece() -> None:
    p = RNG.random(200_000)
    y = (RNG.random(200_000) < p).astype(float)
    assert expected_calibration_error(y, p) < 0.01


def test_reliability_table_matches_sklearn_calibration_curve() -> None:
    table = reliability_table(Y, P, 10)
    frac_pos, mean_pred = calibration_curve(Y, P, n_bins=10, strategy="uniform")
    filled = table.count > 0
    np.testing.assert_allclose(table.fraction_positive[filled], frac_pos)
    np.testing.assert_allclose(table.mean_predicted[filled], mean_pred)


def test_proper_scores_match_sklearn() -> None:
    assert brier_score(Y, P) == pytest.approx(brier_score_loss(Y, P))
    assert log_loss(Y, P) == pytest.approx(sk_log_loss(Y, P))
    extreme = np.array([0.0, 1.0, 1.0, 0.0])
    y = np.array([1.0, 1.0, 0.0, 0.0])
    assert log_loss(y, extreme) == pytest.approx(sk_log_loss(y, extreme))


def test_auc_matches_sklearn_including_ties() -> None:
    assert roc_auc(Y, P) == pytest.approx(roc_auc_score(Y, P))
    tied = np.round(P, 1)
    assert roc_auc(Y, tied) == pytest.approx(roc_auc_score(Y, tied))
    assert math.isnan(roc_auc(np.ones(5), np.linspace(0, 1, 5)))


def test_labels_must_be_binary() -> None:
    with pytest.raises(ValueError, match="0 and 1"):
        brier_score(np.array([0.0, np.nan]), np.array([0.2, 0.3]))


def test_isotonic_fit_matches_sklearn() -> None:
    score = np.round(RNG.normal(size=3000), 2)  # many ties
    y = (RNG.random(3000) < 1 / (1 + np.exp(-2 * score))).astype(float)
    thresholds, values = isotonic_fit(score, y)
    assert np.all(np.diff(values) >= 0)
    reference = IsotonicRegression(out_of_bounds="clip").fit(score, y)
    grid = np.linspace(-4, 4, 1001)
    np.testing.assert_allclose(np.interp(grid, thresholds, values), reference.predict(grid), atol=1e-12)


def test_platt_fit_minimises_the_smoothed_likelihood() -> None:
    score = RNG.normal(size=4000)
    y = (RNG.random(4000) < 1 / (1 + np.exp(-(1.7 * score - 0.4)))).astype(float)
    a, b = platt_fit(score, y)
    n_pos, n_neg = y.sum(), len(y) - y.sum()
    t = np.where(y == 1, (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2))

    def nll(ab: np.ndarray) -> float:
        z = ab[0] * score + ab[1]
        return float(np.sum(np.logaddexp(0, z) - t * z))

    reference = minimize(nll, x0=[0.0, 0.0], method="BFGS").x
    np.testing.assert_allclose([a, b], reference, atol=1e-4)
    assert a == pytest.approx(1.7, abs=0.15)
    np.testing.assert_allclose(platt_apply(np.array([0.0]), a, b), 1 / (1 + np.exp(-b)))


def test_acceptance_report_bundles_the_kernels() -> None:
    report = acceptance_report(Y, P)
    assert report["brier"] == pytest.approx(brier_score_loss(Y, P))
    assert report["acceptance_rate"] == pytest.approx(Y.mean())
    assert set(report) == {"ece", "brier", "log_loss", "auc", "mean_predicted", "acceptance_rate"}


@pytest.mark.parametrize(("n", "seed"), [(2, 0), (37, 1), (400, 2), (25_000, 3)])
def test_batched_ece_bootstrap_equals_the_per_resample_bootstrap(n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(float)
    p = np.clip(0.35 + 0.25 * rng.standard_normal(n), 0, 1)
    assert ece_bootstrap_ci(y, p, seed=seed) == bootstrap_ci(expected_calibration_error, (y, p), seed=seed)
    assert ece_bootstrap_ci(y, p, n_bins=3, n_resamples=17, seed=seed) == bootstrap_ci(
        lambda a, b: expected_calibration_error(a, b, n_bins=3), (y, p), n_resamples=17, seed=seed
    )
