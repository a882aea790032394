"""Burn rate and the multiwindow, multi-burn-rate decision on hand-computed cases.

Every case uses 5-minute bins of 1,000 requests and a 99.9 % objective (budget 0.001), so
``b`` bad requests in a bin burn at ``b`` x. Windows: 1 h = 12 bins, 30 min = 6, 6 h = 72,
3 d = 864.
"""

from __future__ import annotations

import numpy as np
import pytest

from eval.burn_rate import LEVELS, MULTIWINDOW_POLICY, BurnRateWindow, alert_levels, burn_rate, trailing_sums, window_burn_rates

BIN = 300
OBJECTIVE = 0.999
PAGE, TICKET, NONE = LEVELS["page"], LEVELS["ticket"], LEVELS["none"]


def _series(*runs: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per-bin (bad, total) counts from runs of (bins, bad per 1,000 requests)."""
    bad = np.concatenate([np.full(bins, per_bin, dtype=float) for bins, per_bin in runs])
    return bad, np.full(bad.size, 1000.0)


def _first(levels: np.ndarray, level: int) -> int:
    return int(np.flatnonzero(levels == level)[0])


def test_burn_rate_is_error_ratio_over_budget_and_nan_without_traffic() -> None:
    rates = burn_rate([2, 0, 1000], [1000, 0, 1000], OBJECTIVE)
    assert rates[0] == pytest.approx(2.0) and rates[2] == pytest.approx(1000.0)
    assert np.isnan(rates[1])


def test_bad_outside_zero_to_total_and_objectives_outside_the_unit_interval_are_refused() -> None:
    with pytest.raises(ValueError, match="bad <= total"):
        burn_rate([5], [4], OBJECTIVE)
    with pytest.raises(ValueError, match="between 0 and 1"):
        burn_rate([0], [4], 1.0)
    with pytest.raises(ValueError, match="short window"):
        BurnRateWindow("page", long_seconds=300, short_seconds=3600, factor=14.4)


def test_trailing_sums_use_the_bins_available_at_the_start() -> None:
    assert trailing_sums([1, 2, 3, 4], 2).tolist() == [1, 3, 5, 7]
    assert trailing_sums([1, 2, 3, 4], 10).tolist() == [1, 3, 6, 10]


def test_window_burn_rate_averages_over_the_window_not_over_bins() -> None:
    # bins of 1,000 and 3,000 requests with 1 and 9 bad: (1 + 9) / 4,000 / 0.001 = 2.5
    rates = window_burn_rates([1, 9], [1000, 3000], OBJECTIVE, BIN, 2 * BIN)
    assert rates[-1] == pytest.approx(2.5)
    with pytest.raises(ValueError, match="whole number"):
        window_burn_rates([1], [10], OBJECTIVE, BIN, 450)


def test_the_policy_is_the_sre_workbook_table() -> None:
    assert [(w.severity, w.long_seconds, w.short_seconds, w.factor) for w in MULTIWINDOW_POLICY] == [
        ("page", 3600, 300, 14.4), ("page", 21600, 1800, 6.0), ("ticket", 259200, 21600, 1.0)
    ]


def test_a_fast_burn_tickets_then_pages() -> None:
    # 100 healthy bins, then 20 bad per bin (20x). After k bad bins:
    #   ticket: 3 d window 20k / (100 + k) > 1 needs k >= 6; 6 h window 20k / 72 > 1 needs k >= 4
    #   page:   1 h window 20k / 12 > 14.4 needs k >= 9; the 5 min window burns 20 > 14.4
    levels = alert_levels(*_series((100, 0), (40, 20)), OBJECTIVE, BIN)
    assert levels[:105].max() == NONE
    assert _first(levels, TICKET) == 100 + 6 - 1
    assert _first(levels, PAGE) == 100 + 9 - 1
    assert (levels[108:] == PAGE).all()


def test_a_slow_burn_tickets_and_never_pages() -> None:
    # 2 bad per bin (2x) after 100 healthy bins: never above 6 or 14.4; ticket needs
    # 2k / (100 + k) > 1 over 3 d, i.e. k >= 101 (k = 100 is exactly 1, and the test is strict).
    levels = alert_levels(*_series((100, 0), (300, 2)), OBJECTIVE, BIN)
    assert levels.max() == TICKET
    assert _first(levels, TICKET) == 100 + 101 - 1


def test_a_healthy_or_idle_service_fires_nothing() -> None:
    assert alert_levels(*_series((1000, 0.5)), OBJECTIVE, BIN).max() == NONE
    assert alert_levels(np.zeros(300), np.zeros(300), OBJECTIVE, BIN).max() == NONE


def test_a_page_resets_once_the_short_window_is_clean_and_the_ticket_stays() -> None:
    # After 30 bad bins (20x), j healthy bins: the 1 h / 5 min page stops at j = 1; the 30 min
    # window still burns 20 (6 - j) / 6 > 6 for j <= 4; the 6 h window keeps 600 / 72 = 8.3 > 1.
    levels = alert_levels(*_series((100, 0), (30, 20), (10, 0)), OBJECTIVE, BIN)
    after = levels[130:]
    assert after[:4].tolist() == [PAGE] * 4
    assert after[4:].tolist() == [TICKET] * 6
