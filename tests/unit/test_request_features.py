"""The numpy request-feature kernel agrees with pandas' definition of rank and count per job."""

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from feature_repo.request_transform import rank_min_within

distances = st.one_of(st.floats(0, 50, allow_nan=False), st.just(np.nan), st.sampled_from([1.0, 2.0, 3.0]))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), distances), min_size=1, max_size=40))
def test_rank_min_within_equals_pandas_groupby_rank_min(rows: list[tuple[int, float]]) -> None:
    groups = np.array([g for g, _ in rows])
    values = np.array([v for _, v in rows], dtype=np.float64)
    expected = pd.Series(values).groupby(groups).rank(method="min").to_numpy()
    np.testing.assert_array_equal(rank_min_within(groups, values), expected)
