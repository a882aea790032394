"""Confidence intervals for backtest metrics: analytic where a standard form exists, bootstrap otherwise.

A backtest slices history into (window × segment) cells, many of them small (a quiet region in
one week), so every metric is reported with an interval and its row count; a difference between
two model versions is only worth acting on if the intervals say so.

Choice per metric (all two-sided at ``level``, 95 % by default):

* means of per-row losses (MAE, bias, Brier, log loss, NDCG, member wait): normal approximation
  ``x̄ ± z·s/√n`` (central limit theorem; ``s`` with ``ddof = 1``), :func:`mean_ci`;
* proportions (interval coverage, top-1 acceptance): Wilson score interval, which stays inside
  [0, 1] and behaves at small ``n`` and rates near 0 or 1 (Wilson 1927, JASA 22:209; Brown, Cai
  & DasGupta 2001, Statistical Science 16:101), :func:`wilson_ci`;
* RMSE: the mean-CI of squared errors mapped through ``√`` (a monotone transform keeps the
  coverage of the interval it maps), :func:`rmse_ci`;
* quantiles (P90 absolute error): distribution-free order-statistic interval from the
  binomial's normal approximation (Conover 1999, *Practical Nonparametric Statistics*, §3.2),
  :func:`quantile_ci`;
* AUC: Hanley & McNeil 1982 (Radiology 143:29) standard error, :func:`auc_ci`;
* anything else (ECE): percentile bootstrap with a fixed seed (Efron & Tibshirani 1993),
  :func:`bootstrap_ci`; it resamples rows, so it is the one kernel whose cost grows with
  ``n_resamples × n``.

Every kernel is a pure function of numpy arrays and returns ``(nan, nan)`` where the interval is
undefined (fewer than two rows, one class only), because an empty cell is a state of the world.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from scipy.stats import norm

#: Two-sided confidence level of every interval unless told otherwise.
DEFAULT_LEVEL = 0.95
#: Bootstrap resamples: enough for stable 2.5 %/97.5 % percentiles at report precision.
DEFAULT_RESAMPLES = 200

Interval = tuple[float, float]
_UNDEFINED: Interval = (float("nan"), float("nan"))


@functools.cache
def _z(level: float) -> float:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return float(norm.ppf(0.5 + level / 2.0))


def mean_ci(values: np.ndarray, level: float = DEFAULT_LEVEL) -> Interval:
    """Normal-approximation interval for a mean: ``x̄ ± z_{(1+level)/2} · s / √n``, ``s`` with ddof 1."""
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size < 2:
        return _UNDEFINED
    half = _z(level) * float(np.std(x, ddof=1)) / np.sqrt(x.size)
    centre = float(np.mean(x))
    return centre - half, centre + half


def wilson_ci(successes: float, n: float, level: float = DEFAULT_LEVEL) -> Interval:
    """Wilson score interval for a proportion ``k/n``.

    ``(p̂ + z²/2n ± z·√(p̂(1−p̂)/n + z²/4n²)) / (1 + z²/n)``.
    """
    if n <= 0:
        return _UNDEFINED
    z = _z(level)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2.0 * n)) / denom
    half = z * np.sqrt(p * (1.0 - p) / n + z * z / (4.0 * n * n)) / denom
    return float(centre - half), float(centre + half)


def rmse_ci(squared_errors: np.ndarray, level: float = DEFAULT_LEVEL) -> Interval:
    """``√`` of the :func:`mean_ci` of squared errors, the lower end clipped at 0."""
    low, high = mean_ci(squared_errors, level)
    if np.isnan(low):
        return _UNDEFINED
    return float(np.sqrt(max(low, 0.0))), float(np.sqrt(high))


def quantile_ci(values: np.ndarray, q: float, level: float = DEFAULT_LEVEL) -> Interval:
    """Order-statistic interval ``(x_(l), x_(u))`` for the ``q`` quantile, 1-based ranks.

    ``l = ⌊nq − z√(nq(1−q))⌋`` and ``u = ⌈nq + z√(nq(1−q))⌉``, clipped to ``[1, n]``: the number of
    sample points below the true quantile is Binomial(n, q). Distribution-free, so it holds for
    the heavy right tail of arrival errors where a normal interval would not.
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must be in (0, 1), got {q}")
    x = np.sort(np.asarray(values, dtype=np.float64).ravel())
    n = x.size
    if n < 2:
        return _UNDEFINED
    spread = _z(level) * np.sqrt(n * q * (1.0 - q))
    lo_rank = int(np.clip(np.floor(n * q - spread), 1, n))
    hi_rank = int(np.clip(np.ceil(n * q + spread), 1, n))
    return float(x[lo_rank - 1]), float(x[hi_rank - 1])


def auc_ci(auc: float, n_positive: int, n_negative: int, level: float = DEFAULT_LEVEL) -> Interval:
    """Hanley–McNeil interval ``AUC ± z·SE``, clipped to [0, 1].

    ``SE² = (A(1−A) + (n₊−1)(Q₁−A²) + (n₋−1)(Q₂−A²)) / (n₊n₋)`` with ``Q₁ = A/(2−A)`` and
    ``Q₂ = 2A²/(1+A)``.
    """
    if n_positive < 1 or n_negative < 1 or not np.isfinite(auc):
        return _UNDEFINED
    a = float(auc)
    q1, q2 = a / (2.0 - a), 2.0 * a * a / (1.0 + a)
    var = (a * (1.0 - a) + (n_positive - 1) * (q1 - a * a) + (n_negative - 1) * (q2 - a * a)) / (n_positive * n_negative)
    half = _z(level) * np.sqrt(max(var, 0.0))
    return float(max(a - half, 0.0)), float(min(a + half, 1.0))


def bootstrap_resamples(n: int, n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Iterator[np.ndarray]:
    """Row indices of each bootstrap resample (``n`` draws with replacement), seeded.

    The one definition of the draws, so a batched bootstrap of one statistic
    (``eval.calibration.ece_bootstrap_ci``) resamples exactly the rows :func:`bootstrap_ci` does.
    """
    rng = np.random.default_rng(seed)
    for _ in range(n_resamples):
        yield rng.integers(0, n, size=n)


def percentile_interval(stats: np.ndarray, level: float = DEFAULT_LEVEL) -> Interval:
    """The ``(1−level)/2`` and ``(1+level)/2`` quantiles of bootstrap statistics, ignoring ``nan``."""
    stats = stats[np.isfinite(stats)]
    if stats.size == 0:
        return _UNDEFINED
    tail = (1.0 - level) / 2.0
    return float(np.quantile(stats, tail)), float(np.quantile(stats, 1.0 - tail))


def bootstrap_ci(
    statistic: Callable[..., float],
    arrays: Sequence[np.ndarray],
    level: float = DEFAULT_LEVEL,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """Percentile bootstrap: resample rows (the same indices across ``arrays``) ``n_resamples`` times.

    ``statistic(*resampled_arrays)`` is evaluated per resample; the interval is its
    ``(1−level)/2`` and ``(1+level)/2`` quantiles, ignoring resamples where it is ``nan``.
    Seeded, so a backtest rerun reproduces its report.
    """
    columns = [np.asarray(a) for a in arrays]
    n = columns[0].shape[0] if columns else 0
    if n < 2:
        return _UNDEFINED
    stats = np.array([statistic(*(c[idx] for c in columns)) for idx in bootstrap_resamples(n, n_resamples, seed)])
    return percentile_interval(stats, level)
