"""Data-quality statistics per feature group: schema, nulls, ranges, volume and freshness.

Each is a count that adds up over time bins and segments, so the monitor folds new rows into
per-bin sums once and any window's ratio is a ratio of sums (no rescan):

- **schema**: :func:`schema_violations` lists a group's columns that are missing from a file
  or have another type than the contract's (``contracts.prediction_log.PREDICTION_LOG``).
- **nulls**: the share of a group's feature values that are missing (NaN).
- **ranges**: the share of *present* values outside the stated ``[low, high]``
  (``contracts.features.feature_range``); NaN is a null, not out of range.
- **volume**: rows in a window over rows in the same window one week earlier
  (:func:`volume_ratio`), which cancels the weekly cycle of demand.
- **freshness**: from the log's per-row ``age_s__<group>`` (how old the served value was), the
  share of rows older than the group's ``freshness_limit`` and the mean age. Near-real-time
  groups (limit minutes) and batch groups (limit hours) are evaluated apart, each against its own
  limit, because they fail apart (a feed outage vs a stopped daily pipeline).

The checks follow the data-validation practice of Breck et al., "Data Validation for Machine
Learning", SysML 2019 (schema and range constraints, distribution checks across spans), and
Schelter et al., "Automating large-scale data quality verification", VLDB 2018 (completeness
and compliance as ratios of counts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa


@dataclass(frozen=True)
class QualityCounts:
    """Per segment: feature values seen, how many were null, how many present ones out of range."""

    values: np.ndarray
    nulls: np.ndarray
    out_of_range: np.ndarray


def quality_counts(matrix: np.ndarray, low: np.ndarray, high: np.ndarray, segment: np.ndarray, n_segments: int) -> QualityCounts:
    """Null and out-of-range counts of a ``(rows, features)`` matrix, summed per segment code.

    ``low``/``high`` are per-feature bounds (inclusive); ``segment`` an integer code per row in
    ``[0, n_segments)``.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] != np.size(low) or np.size(low) != np.size(high):
        raise ValueError(f"matrix {matrix.shape} needs one low and one high bound per column, got {np.size(low)} and {np.size(high)}")
    null = np.isnan(matrix)
    with np.errstate(invalid="ignore"):
        outside = ~null & ((matrix < np.asarray(low)[None, :]) | (matrix > np.asarray(high)[None, :]))
    segment = np.asarray(segment, dtype=np.int64)
    per_row = np.full(segment.size, matrix.shape[1], dtype=np.float64)
    return QualityCounts(
        values=np.bincount(segment, weights=per_row, minlength=n_segments),
        nulls=np.bincount(segment, weights=null.sum(axis=1), minlength=n_segments),
        out_of_range=np.bincount(segment, weights=outside.sum(axis=1), minlength=n_segments),
    )


def ratio(numerator: np.ndarray | float, denominator: np.ndarray | float) -> np.ndarray:
    """``numerator / denominator``; NaN where the denominator is 0 (nothing seen, no ratio)."""
    num = np.asarray(numerator, dtype=np.float64)
    den = np.asarray(denominator, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def volume_ratio(current_rows: np.ndarray | float, week_ago_rows: np.ndarray | float) -> np.ndarray:
    """Rows now over rows in the same window one week earlier; NaN with no week-ago history."""
    return ratio(current_rows, week_ago_rows)


@dataclass(frozen=True)
class FreshnessCounts:
    """Per segment: rows with a known age, how many were older than the limit, sum of ages (s)."""

    rows: np.ndarray
    stale: np.ndarray
    age_sum_s: np.ndarray


def freshness_counts(age_s: np.ndarray, limit_s: float, segment: np.ndarray, n_segments: int) -> FreshnessCounts:
    """Freshness of one group's served values: rows, rows older than ``limit_s``, total age.

    Rows with no age (the group was missing for that row) are left out: missing values are
    counted by the null check.
    """
    age = np.asarray(age_s, dtype=np.float64)
    known = np.isfinite(age)
    segment = np.asarray(segment, dtype=np.int64)[known]
    age = age[known]
    return FreshnessCounts(
        rows=np.bincount(segment, minlength=n_segments).astype(np.float64),
        stale=np.bincount(segment, weights=(age > limit_s).astype(np.float64), minlength=n_segments),
        age_sum_s=np.bincount(segment, weights=age, minlength=n_segments),
    )


def schema_violations(actual: pa.Schema, expected: pa.Schema, columns: tuple[str, ...]) -> list[str]:
    """Each of ``columns`` missing from ``actual`` or typed differently than in ``expected``."""
    out = []
    for name in columns:
        index = actual.get_field_index(name)
        if index < 0:
            out.append(f"{name}: missing")
        elif not actual.field(index).type.equals(expected.field(name).type):
            out.append(f"{name}: {actual.field(index).type} instead of {expected.field(name).type}")
    return out
