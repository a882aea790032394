"""Point and interval error kernels for the ETA model, and a per-segment report helper.

Every kernel is a pure function of numpy arrays of equal length. They return ``nan`` for empty
input rather than raising, because a segment with no matured labels is an expected state of the
world (a quiet region on a holdout day), not a bug; callers report the row count next to it.
Inputs must be finite: the training and backtest code drops rows with unknown labels before
calling, since a NaN label means "not observed", not "zero error".

``per_segment`` is the one place where pandas enters: it groups a frame by a segment column and
applies a report function (a dict of kernels) to each group's numpy columns. Ray Data jobs in
``eval/`` map the same report functions over blocks; nothing here depends on Ray.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import pandas as pd

ArrayLike = np.ndarray | Sequence[float]

#: A report maps named numpy columns to named scalar metrics, e.g. :func:`eta_report`.
Report = Callable[..., Mapping[str, float]]


def _pair(y_true: ArrayLike, y_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(y_true, dtype=np.float64).ravel()
    b = np.asarray(y_pred, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"y_true has {a.size} values but y_pred has {b.size}; pass aligned arrays")
    return a, b


def mae(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean absolute error, ``(1/n) Σ |ŷᵢ − yᵢ|``.

    Matches ``sklearn.metrics.mean_absolute_error``. Reported in minutes; the unit dispatchers
    and members feel, and robust to the long right tail of arrival times.
    """
    y, p = _pair(y_true, y_pred)
    return float(np.mean(np.abs(p - y))) if y.size else float("nan")


def rmse(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Root mean squared error, ``sqrt((1/n) Σ (ŷᵢ − yᵢ)²)``.

    Matches ``sklearn.metrics.root_mean_squared_error``. Kept next to MAE because the gap between
    the two shows how much of the error sits in a few very late arrivals.
    """
    y, p = _pair(y_true, y_pred)
    return float(np.sqrt(np.mean((p - y) ** 2))) if y.size else float("nan")


def bias(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """Mean signed error, ``(1/n) Σ (ŷᵢ − yᵢ)``: positive means the model promises late arrivals.

    A negative bias is the costly direction for the business: members are told an ETA the
    provider then misses.
    """
    y, p = _pair(y_true, y_pred)
    return float(np.mean(p - y)) if y.size else float("nan")


def abs_error_quantile(y_true: ArrayLike, y_pred: ArrayLike, q: float = 0.9) -> float:
    """The ``q`` quantile of ``|ŷᵢ − yᵢ|`` (numpy's default linear interpolation, Hyndman & Fan type 7).

    With ``q = 0.9`` this is "the error nine jobs in ten stay within", the figure the operations
    team quotes to members.
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    y, p = _pair(y_true, y_pred)
    return float(np.quantile(np.abs(p - y), q)) if y.size else float("nan")


def p90_abs_error(y_true: ArrayLike, y_pred: ArrayLike) -> float:
    """90th percentile absolute error; see :func:`abs_error_quantile`."""
    return abs_error_quantile(y_true, y_pred, 0.9)


def interval_coverage(y_true: ArrayLike, low: ArrayLike, high: ArrayLike) -> float:
    """Empirical coverage ``(1/n) Σ 1[lowᵢ ≤ yᵢ ≤ highᵢ]`` (closed interval).

    For a nominal 80 % interval this should be ≈ 0.8 on held-out data; split-conformal
    guarantees ≥ the nominal level in expectation under exchangeability (Romano, Patterson &
    Candès 2019, "Conformalized Quantile Regression", NeurIPS).
    """
    y, lo = _pair(y_true, low)
    _, hi = _pair(y_true, high)
    return float(np.mean((lo <= y) & (y <= hi))) if y.size else float("nan")


def mean_interval_width(low: ArrayLike, high: ArrayLike) -> float:
    """Mean of ``highᵢ − lowᵢ``: coverage is only worth having if the interval stays narrow."""
    lo, hi = _pair(low, high)
    return float(np.mean(hi - lo)) if lo.size else float("nan")


def pinball_loss(y_true: ArrayLike, y_pred: ArrayLike, alpha: float) -> float:
    """Quantile (pinball) loss ``(1/n) Σ max(α(yᵢ − ŷᵢ), (α − 1)(yᵢ − ŷᵢ))`` (Koenker & Bassett 1978).

    Matches ``sklearn.metrics.mean_pinball_loss``; scores the interval ends on their own.
    """
    y, p = _pair(y_true, y_pred)
    diff = y - p
    return float(np.mean(np.maximum(alpha * diff, (alpha - 1.0) * diff))) if y.size else float("nan")


def eta_report(
    y_true: np.ndarray, eta_minutes: np.ndarray, eta_low: np.ndarray, eta_high: np.ndarray
) -> dict[str, float]:
    """The ETA model's offline scorecard: point error, bias and interval quality."""
    return {
        "mae": mae(y_true, eta_minutes),
        "rmse": rmse(y_true, eta_minutes),
        "bias": bias(y_true, eta_minutes),
        "p90_abs_error": p90_abs_error(y_true, eta_minutes),
        "interval_coverage": interval_coverage(y_true, eta_low, eta_high),
        "interval_width": mean_interval_width(eta_low, eta_high),
    }


def per_segment(
    frame: pd.DataFrame,
    segment: str,
    report: Report,
    columns: Sequence[str],
    min_rows: int = 1,
) -> dict[str, dict[str, float]]:
    """Apply ``report`` to each value of ``segment``: ``{segment value: {metric: value, "n": rows}}``.

    ``columns`` name the frame columns passed positionally to ``report`` as numpy arrays, so the
    kernels stay pandas-free. Segment values become strings so the result serialises to JSON
    (model metadata) unchanged. Segments with fewer than ``min_rows`` rows are left out: a
    metric on three jobs is noise that would trip a per-segment gate.
    """
    missing = [c for c in (segment, *columns) if c not in frame.columns]
    if missing:
        raise KeyError(f"per_segment needs columns {missing}, which the frame does not have")
    out: dict[str, dict[str, float]] = {}
    for value, group in frame.groupby(segment, sort=True, observed=True, dropna=True):
        if len(group) < min_rows:
            continue
        metrics = dict(report(*(group[c].to_numpy(dtype=np.float64) for c in columns)))
        metrics["n"] = float(len(group))
        out[str(value)] = metrics
    return out
