"""Kernels of eval/labels.py, eval/estimation.py, eval/skew.py and the PIT in eval/calibration.py."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm, wasserstein_distance

from contracts.prediction_log import MODEL_FEATURES
from eval.calibration import brier_score, log_loss, pit_from_quantiles, pit_histogram
from eval.estimation import (
    IntervalLossEstimator,
    acceptance_estimate,
    expected_accuracy,
    expected_brier,
    expected_log_loss,
    realized_acceptance,
)
from eval.labels import completeness_age_s, completeness_watermark, join_labels, matured, maturity_curve
from eval.skew import feature_skew, mismatch_mask, normalized_wasserstein, served_ahead, skew_report

T0 = datetime(2026, 3, 2, 12, tzinfo=UTC)


def test_maturity_curve_counts_only_predictions_old_enough_to_show_their_label() -> None:
    # Four predictions: labelled after 60 s, 120 s, never, and one only 30 s old (censored).
    delay = np.array([60.0, 120.0, np.inf, np.inf])
    age = np.array([600.0, 600.0, 600.0, 30.0])
    share, n = maturity_curve(delay, age, np.array([0.0, 60.0, 120.0, 700.0]))
    assert n.tolist() == [4, 3, 3, 0]
    np.testing.assert_allclose(share[:3], [0.0, 1 / 3, 2 / 3])
    assert np.isnan(share[3])


def test_completeness_age_is_the_delay_quantile_of_fully_observed_labels() -> None:
    rng = np.random.default_rng(3)
    delay = rng.exponential(600.0, 10_000)
    delay[::4] = np.inf  # a quarter never get a label: that must not move the answer
    age = np.full(delay.size, 86_400.0)
    got = completeness_age_s(delay, age, 0.95, horizon_s=43_200.0)
    assert got == pytest.approx(-600.0 * np.log(0.05), rel=0.05)
    assert completeness_age_s(delay, np.zeros_like(age), 0.95) == float("inf")


def _log_and_labels() -> tuple[pd.DataFrame, pd.DataFrame]:
    log = pd.DataFrame({"job_id": ["J1", "J1", "J2"], "provider_id": [1, 2, 1], "requested_at": [T0, T0, T0 + timedelta(hours=1)]})
    labels = pd.DataFrame(
        {
            "job_id": ["J1", "J1", "J1", "J2", "J1"],
            "provider_id": [1, 1, 1, 1, 2],
            "label_type": ["arrival_minutes", "arrival_minutes", "accepted", "arrival_minutes", "accepted"],
            "value": [30.0, 33.0, 1.0, 12.0, 0.0],
            "request_ts": [T0, T0, T0, T0 + timedelta(hours=1), T0],
            "known_at": [T0 + timedelta(minutes=50), T0 + timedelta(hours=5), T0 + timedelta(minutes=1), T0 + timedelta(hours=9), T0 + timedelta(minutes=2)],
            "revision": [0, 1, 0, 0, 0],
            "source": ["gps", "manual_override", "provider_response", "gps", "provider_response"],
        }
    )
    return log, labels


def test_join_takes_the_latest_revision_known_and_dates_the_label_by_its_first_revision() -> None:
    log, labels = _log_and_labels()
    joined = join_labels(log, labels, T0 + timedelta(hours=6))
    assert joined["arrival_minutes"].iloc[0] == 33.0, "the correction known by as_of wins"
    assert np.isnan(joined["arrival_minutes"].iloc[1]), "no arrival for a candidate who declined"
    assert joined["arrival_minutes_known_at"].iloc[0] == T0 + timedelta(minutes=50)
    assert np.isnan(joined["arrival_minutes"].iloc[2]), "known after as_of"
    assert joined["accepted"].tolist()[:2] == [1.0, 0.0]
    earlier = join_labels(log, labels, T0 + timedelta(hours=1))
    assert earlier["arrival_minutes"].iloc[0] == 30.0


def test_watermark_keeps_only_cohorts_whose_labels_have_come() -> None:
    rng = np.random.default_rng(5)
    n = 4000
    requested = pd.Series(T0 + pd.to_timedelta(rng.uniform(0, 48 * 3600, n), unit="s"))
    delay = pd.to_timedelta(rng.exponential(1200.0, n), unit="s")
    as_of = T0 + timedelta(hours=48)
    known = (requested + delay).where(requested + delay <= as_of)
    joined = pd.DataFrame({"requested_at": requested, "arrival_minutes_known_at": known})
    watermark = completeness_watermark(joined, as_of, "arrival_minutes", completeness=0.95)
    expected = as_of - timedelta(seconds=-1200.0 * np.log(0.05))
    assert abs((watermark - expected).total_seconds()) < 300
    old = matured(joined, watermark)
    assert (joined.loc[old, "arrival_minutes_known_at"].notna().mean()) > 0.95


def test_cbpe_expectations_match_monte_carlo_labels_drawn_from_the_probabilities() -> None:
    rng = np.random.default_rng(11)
    p = rng.beta(2, 3, 200_000)
    y = (rng.random(p.size) < p).astype(float)
    estimate, realized = acceptance_estimate(p), realized_acceptance(y, p)
    for metric in ("brier", "log_loss", "accuracy", "acceptance_rate"):
        assert estimate[metric] == pytest.approx(realized[metric], abs=0.005), metric
    assert realized["brier"] == brier_score(y, p) and realized["log_loss"] == log_loss(y, p)


def test_cbpe_hand_computed_case() -> None:
    p = np.array([0.2, 0.5, 0.9])
    assert expected_brier(p) == pytest.approx((0.16 + 0.25 + 0.09) / 3)
    assert expected_accuracy(p) == pytest.approx((0.8 + 0.5 + 0.9) / 3)
    h = lambda q: -(q * np.log(q) + (1 - q) * np.log(1 - q))  # noqa: E731
    assert expected_log_loss(p) == pytest.approx(np.mean([h(0.2), h(0.5), h(0.9)]))


def test_interval_loss_estimator_follows_heteroscedastic_error_and_a_covariate_shift() -> None:
    rng = np.random.default_rng(2)
    sigma = rng.uniform(1.0, 10.0, 50_000)
    eta = rng.uniform(10, 60, sigma.size)
    low, high = eta - 1.2816 * sigma, eta + 1.2816 * sigma
    arrival = eta + sigma * rng.standard_normal(sigma.size)
    estimator = IntervalLossEstimator().fit(low, high, arrival, eta)
    wide = sigma > 7  # a shifted mix: only the uncertain jobs
    got = estimator.estimate(low[wide], high[wide])
    assert got["mae"] == pytest.approx(np.mean(np.abs(arrival[wide] - eta[wide])), rel=0.03)
    assert got["rmse"] == pytest.approx(np.sqrt(np.mean((arrival[wide] - eta[wide]) ** 2)), rel=0.03)
    # Concept drift (arrivals 30% later, same intervals) is invisible to it, by construction:
    # the estimate is a function of the intervals only.
    later = eta * 1.3 + sigma * rng.standard_normal(sigma.size)
    assert np.mean(np.abs(later - eta)) > 2 * estimator.estimate(low, high)["mae"]


def test_pit_is_the_normal_cdf_inside_the_knots_and_uniform_for_a_calibrated_forecast() -> None:
    levels = np.array([0.1, 0.5, 0.9])
    knots = np.tile(norm.ppf(levels), (3, 1))
    np.testing.assert_allclose(pit_from_quantiles(np.array([norm.ppf(0.1), 0.0, norm.ppf(0.9)]), knots, levels), levels)
    assert pit_from_quantiles(np.array([-100.0, 100.0]), knots[:2], levels).tolist() == [0.0, 1.0]
    rng = np.random.default_rng(4)
    y = rng.standard_normal(100_000)
    pit = pit_from_quantiles(y, np.tile(norm.ppf(levels), (y.size, 1)), levels)
    assert np.mean(pit <= 0.1) == pytest.approx(0.1, abs=0.005) and np.mean(pit <= 0.9) == pytest.approx(0.9, abs=0.005)
    edges, density = pit_histogram(pit, 10)
    assert edges.tolist() == pytest.approx(np.linspace(0, 1, 11).tolist()) and density.mean() == pytest.approx(1.0)


def test_pit_refuses_misaligned_knots() -> None:
    with pytest.raises(ValueError, match="knots"):
        pit_from_quantiles(np.zeros(3), np.zeros((2, 3)), np.array([0.1, 0.5, 0.9]))


def test_mismatch_tolerates_float32_noise_and_quanta_and_matches_nan_to_nan() -> None:
    offline = np.array([52.0, 1.0, np.nan, np.nan, 10.0, 3.0])
    served = np.array([np.float32(52.0 * (1 + 3e-7)), 1.0, np.nan, 4.0, 10.0 * 0.621, 4.0])
    assert mismatch_mask(served, offline).tolist() == [False, False, False, True, True, True]
    assert mismatch_mask(served, offline, absolute_tolerance=1.0).tolist()[-1] is False


def test_feature_skew_reads_a_unit_bug_as_its_factor() -> None:
    rng = np.random.default_rng(8)
    offline = rng.uniform(10, 90, 1000)
    served = offline.copy()
    served[:600] *= 0.621
    stats = feature_skew(served, offline)
    assert stats["mismatch_rate"] == pytest.approx(0.6)
    assert stats["mismatch_ratio"] == pytest.approx(0.621)
    assert stats["wasserstein_norm"] == pytest.approx(wasserstein_distance(offline, served) / np.std(offline))
    assert normalized_wasserstein(offline, offline) == 0.0


def test_rows_served_a_value_from_after_their_request_are_left_out_of_skew() -> None:
    rows = 40
    log = pd.DataFrame({
        "job_id": [f"j{i}" for i in range(rows)], "provider_id": np.arange(rows), "requested_at": pd.Timestamp("2026-01-05", tz="UTC"),
        "region_id": 1, "feature__cell_traffic__speed_kmh": np.full(rows, 40.0, np.float32),
        "age_s__cell_traffic": np.where(np.arange(rows) < 10, -30.0, 60.0), "age_s__provider_status": 5.0,
    })
    # The first ten were served the next push (stamped 30 s after their request): another value.
    log.loc[:9, "feature__cell_traffic__speed_kmh"] = 55.0
    assert served_ahead(log).tolist() == [True] * 10 + [False] * 30
    offline = log[["job_id", "provider_id", "requested_at"]].rename(columns={"requested_at": "request_ts"})
    for name in MODEL_FEATURES:
        offline[name] = 40.0 if name == "cell_traffic__speed_kmh" else np.nan
    report = skew_report(log, offline, features=["cell_traffic__speed_kmh"])
    assert report.loc[0, "served_ahead"] == 10 and report.loc[0, "n"] == 30
    assert report.loc[0, "mismatch_rate"] == 0.0 and not report.loc[0, "skewed"]
