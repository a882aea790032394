"""Data-quality counts on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from contracts.features import FEATURE_GROUPS, feature_range
from eval.data_quality import freshness_counts, quality_counts, ratio, schema_violations, volume_ratio


def test_quality_counts_nulls_and_ranges_per_segment() -> None:
    matrix = np.array([[1.0, np.nan], [5.0, 0.5], [-1.0, 2.0]])
    q = quality_counts(matrix, low=np.array([0.0, 0.0]), high=np.array([4.0, 1.0]), segment=np.array([0, 0, 1]), n_segments=3)
    assert q.values.tolist() == [4.0, 2.0, 0.0]
    assert q.nulls.tolist() == [1.0, 0.0, 0.0]
    # segment 0: 5.0 > 4 (the NaN is a null, not out of range); segment 1: -1 < 0 and 2 > 1.
    assert q.out_of_range.tolist() == [1.0, 2.0, 0.0]
    assert np.isnan(ratio(q.nulls, q.values)[2])


def test_freshness_counts_and_volume_ratio() -> None:
    f = freshness_counts(np.array([30.0, 700.0, np.nan, 900.0]), 600.0, np.array([0, 0, 0, 1]), 2)
    assert f.rows.tolist() == [2.0, 1.0] and f.stale.tolist() == [1.0, 1.0] and f.age_sum_s.tolist() == [730.0, 900.0]
    assert volume_ratio(50, 100) == pytest.approx(0.5)
    assert np.isnan(volume_ratio(50, 0))


def test_schema_violations_name_missing_and_mistyped_columns() -> None:
    expected = pa.schema([("a", pa.float32()), ("b", pa.string()), ("c", pa.int64())])
    actual = pa.schema([("a", pa.float64()), ("c", pa.int64())])
    assert schema_violations(actual, expected, ("a", "b", "c")) == ["a: double instead of float", "b: missing"]


def test_every_stored_feature_has_a_stated_range() -> None:
    for g in FEATURE_GROUPS:
        for f in g.features:
            low, high = feature_range(f"{g.name}__{f}")
            assert low < high
    assert feature_range("provider_batch__accept_rate_7d") == (0.0, 1.0)
    assert feature_range("cell_traffic__speed_kmh")[0] > 0
