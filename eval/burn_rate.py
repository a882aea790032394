"""Error-budget burn rate and the multiwindow, multi-burn-rate alert decision.

An SLO with objective ``o`` (e.g. 0.999 of requests good) has an error budget of ``1 - o``.
Over a window, the burn rate is how fast that budget is spent relative to spending it evenly
over the SLO period::

    burn_rate = (bad / total) / (1 - o)

A burn rate of 1 spends exactly the budget in the period; 14.4 spends 2 % of a 30-day budget in
one hour. An alert tier fires when the burn rate exceeds the tier's factor over *both* a long
window (enough budget spent to matter) and a short window (still burning now, so the alert
resets quickly once fixed). The default policy is the Google SRE workbook's, chapter 5
"Alerting on SLOs", section 6 (multiwindow, multi-burn-rate alerts):

=========  ===========  ============  ======
tier       long window  short window  factor
=========  ===========  ============  ======
page       1 h          5 min         14.4
page       6 h          30 min        6
ticket     3 d          6 h           1
=========  ===========  ============  ======

Comparisons are strict (``>``), as in the workbook's Prometheus rules. A window with no traffic
has no error ratio (NaN) and fires nothing: no requests spend no budget.

Two consumers share these definitions: ``cluster/alert_rules.py`` turns them into Prometheus
recording and alerting rules for the service SLOs, and the model-quality monitor evaluates them
here directly on binned counts of matured labels (labels arrive late, so Prometheus's wall-clock
windows do not fit).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

Severity = Literal["page", "ticket"]
#: Decision codes returned by :func:`alert_levels`; higher is more urgent.
LEVELS: dict[str, int] = {"none": 0, "ticket": 1, "page": 2}


@dataclass(frozen=True)
class BurnRateWindow:
    """One alerting condition: burn rate > ``factor`` over both ``long_seconds`` and ``short_seconds``."""

    severity: Severity
    long_seconds: int
    short_seconds: int
    factor: float

    def __post_init__(self) -> None:
        if not 0 < self.short_seconds < self.long_seconds:
            raise ValueError(f"need 0 < short window < long window, got {self.short_seconds} s and {self.long_seconds} s")
        if self.factor <= 0:
            raise ValueError(f"burn-rate factor must be > 0, got {self.factor}")


MINUTE, HOUR, DAY = 60, 3600, 86_400
#: SRE workbook ch. 5, table 5-8: two page conditions and one ticket condition.
MULTIWINDOW_POLICY: tuple[BurnRateWindow, ...] = (
    BurnRateWindow("page", long_seconds=1 * HOUR, short_seconds=5 * MINUTE, factor=14.4),
    BurnRateWindow("page", long_seconds=6 * HOUR, short_seconds=30 * MINUTE, factor=6.0),
    BurnRateWindow("ticket", long_seconds=3 * DAY, short_seconds=6 * HOUR, factor=1.0),
)


def error_budget(objective: float) -> float:
    """``1 - objective``: the share of events allowed to be bad."""
    if not 0.0 < objective < 1.0:
        raise ValueError(f"an SLO objective is a ratio strictly between 0 and 1, got {objective}")
    return 1.0 - objective


def burn_rate(bad: npt.ArrayLike, total: npt.ArrayLike, objective: float) -> npt.NDArray[np.float64]:
    """``(bad / total) / (1 - objective)`` elementwise; NaN where ``total`` is 0 (no traffic)."""
    bad_arr = np.asarray(bad, dtype=np.float64)
    total_arr = np.asarray(total, dtype=np.float64)
    if np.any(bad_arr < 0) or np.any(bad_arr > total_arr):
        raise ValueError("need 0 <= bad <= total for every window")
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.where(total_arr > 0, bad_arr / np.where(total_arr > 0, total_arr, 1.0), np.nan)
    return ratio / error_budget(objective)


def trailing_sums(counts: npt.ArrayLike, bins: int) -> npt.NDArray[np.float64]:
    """Sum of the last ``bins`` values ending at each position (fewer at the start of the series).

    ``out[i] = counts[max(0, i - bins + 1) : i + 1].sum()``, via one cumulative sum: O(n).
    """
    if bins < 1:
        raise ValueError(f"a window spans at least one bin, got {bins}")
    cumulative = np.concatenate(([0.0], np.cumsum(np.asarray(counts, dtype=np.float64))))
    ends = np.arange(1, cumulative.size)
    return cumulative[ends] - cumulative[np.maximum(ends - bins, 0)]


def window_burn_rates(
    bad: npt.ArrayLike, total: npt.ArrayLike, objective: float, bin_seconds: int, window_seconds: int
) -> npt.NDArray[np.float64]:
    """Burn rate over the trailing ``window_seconds`` at the end of each bin of per-bin counts."""
    if window_seconds % bin_seconds:
        raise ValueError(f"window {window_seconds} s is not a whole number of {bin_seconds} s bins")
    bins = window_seconds // bin_seconds
    return burn_rate(trailing_sums(bad, bins), trailing_sums(total, bins), objective)


def alert_levels(
    bad: npt.ArrayLike,
    total: npt.ArrayLike,
    objective: float,
    bin_seconds: int,
    policy: tuple[BurnRateWindow, ...] = MULTIWINDOW_POLICY,
) -> npt.NDArray[np.int8]:
    """The most urgent tier firing at the end of each bin, as a :data:`LEVELS` code.

    ``bad`` and ``total`` are event counts per consecutive bin of ``bin_seconds`` (e.g. matured
    predictions per 5 minutes by prediction time). A tier fires at a bin when its burn rate is
    strictly above its factor over both of its windows ending there.
    """
    bad_arr, total_arr = np.asarray(bad, dtype=np.float64), np.asarray(total, dtype=np.float64)
    if bad_arr.shape != total_arr.shape or bad_arr.ndim != 1:
        raise ValueError(f"bad and total must be 1-d and equally long, got {bad_arr.shape} and {total_arr.shape}")
    levels = np.zeros(bad_arr.size, dtype=np.int8)
    for window in policy:
        long_rate = window_burn_rates(bad_arr, total_arr, objective, bin_seconds, window.long_seconds)
        short_rate = window_burn_rates(bad_arr, total_arr, objective, bin_seconds, window.short_seconds)
        with np.errstate(invalid="ignore"):
            firing = (long_rate > window.factor) & (short_rate > window.factor)
        levels = np.maximum(levels, np.where(firing, LEVELS[window.severity], 0).astype(np.int8))
    return levels
