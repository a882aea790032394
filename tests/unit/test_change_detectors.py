"""Page-Hinkley and ADWIN: hand-computed steps, a detected mean shift within a bounded delay, and
no alarm on a long stationary stream (fixed seeds)."""

from __future__ import annotations

import numpy as np
import pytest

from eval.adwin import ADWIN
from eval.page_hinkley import PageHinkley


def test_page_hinkley_hand_computed_steps() -> None:
    ph = PageHinkley(min_instances=1, delta=0.0, threshold=1.5, alpha=1.0, mode="up")
    # x = 0, 0, 3: means 0, 0, 1; deviations 0, 0, 2; U = 0, 0, 2; min U = 0 -> 2 > 1.5 on the third.
    assert not ph.update(0.0) and not ph.update(0.0)
    assert ph.sum_increase_ == 0.0
    assert ph.update(3.0)
    assert ph.detections_ == 1 and ph.n_ == 0, "a detection resets the detector"


def test_page_hinkley_mode_down_ignores_increases() -> None:
    up = np.r_[np.zeros(50), np.full(50, 5.0)]
    assert PageHinkley(threshold=10.0, mode="down").update_many(up).size == 0
    assert PageHinkley(threshold=10.0, mode="down").update_many(-up).size > 0


@pytest.mark.parametrize("detector", [lambda: PageHinkley(delta=0.1, threshold=50.0), lambda: ADWIN(delta=0.002)])
def test_mean_shift_is_detected_within_a_bounded_delay(detector) -> None:
    rng = np.random.default_rng(11)
    change = 2_000
    stream = np.r_[rng.normal(0.0, 1.0, change), rng.normal(1.0, 1.0, 2_000)]
    found = detector().update_many(stream)
    after = found[found >= change]
    assert after.size and after[0] - change < 300, found
    assert (found < change).sum() == 0, found


@pytest.mark.parametrize("detector", [lambda: PageHinkley(delta=0.1, threshold=50.0), lambda: ADWIN(delta=0.002)])
def test_no_alarm_on_a_long_stationary_stream(detector) -> None:
    stream = np.random.default_rng(5).normal(0.0, 1.0, 50_000)
    assert detector().update_many(stream).size == 0


def test_adwin_window_statistics_match_numpy_and_shrink_after_a_change() -> None:
    rng = np.random.default_rng(3)
    adwin = ADWIN()
    values = rng.normal(2.0, 0.5, 1_000)
    adwin.update_many(values)
    assert adwin.width_ == 1_000
    assert adwin.estimation_ == pytest.approx(values.mean())
    assert adwin.variance_ == pytest.approx(values.var(), rel=1e-9)
    assert sum(len(row) for row in adwin.rows_) <= adwin.max_buckets * len(adwin.rows_), "exponential histogram bounds the buckets"
    adwin.update_many(rng.normal(6.0, 0.5, 500))
    assert adwin.detections_ >= 1 and adwin.width_ < 1_500
    assert adwin.estimation_ > 5.0, "the old values were dropped"


def test_detectors_refuse_non_finite_values() -> None:
    with pytest.raises(ValueError):
        PageHinkley().update(float("nan"))
    with pytest.raises(ValueError):
        ADWIN().update(float("inf"))
