"""The point-in-time feature frame computed in process: Feast's historical-retrieval rule as an as-of merge.

``retrain.training_set.build_training_set`` asks Feast (``get_historical_features`` on the DuckDB
offline store, then the ``request_features`` on-demand view) for the frame training sees. That
costs seconds per call plus ~0.15 ms per row, which is most of a backtest. ``point_in_time_frame``
builds the same frame inside the calling process, from the same warehouse partitions and the same
definitions, so a backtest chunk needs no Feast round trip:

- groups, join keys and TTLs come from ``contracts.features`` (what ``feature_repo`` builds its
  Feast views from); event and created timestamp columns from ``contracts.warehouse`` (what the
  views' sources name);
- per group, each entity row gets the history row with the same join key, the largest
  ``event_timestamp <= request_ts`` and ``request_ts - event_timestamp <= ttl``, ties on the event
  time going to the largest ``created_timestamp``. This is Feast's ``point_in_time_join`` and
  ``deduplicate`` in ``feast/infra/offline_stores/ibis.py`` (``feast-dev/feast``): an inner join
  on key, ``event_ts <= entity_ts`` and ``event_ts + ttl >= entity_ts``, then ``row_number()``
  over ``event_ts desc, created_ts desc``. (Rows equal on both are the same snapshot written
  twice; Feast leaves their order to the engine, here the last one read wins.) No row: NaN;
- the request features are ``feature_repo.request_transform.compute_request_features``, the
  function the on-demand view runs, applied to the whole joined frame as Feast applies it.

``tests/integration/test_point_in_time.py`` checks the frame equals Feast's, column by column.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from contracts.features import FEATURE_GROUPS, REQUEST_FEATURES, FeatureGroup, model_features
from contracts.warehouse import CREATED_TIMESTAMP, EVENT_TIMESTAMP, TS
from feature_repo.request_transform import REQUEST_INPUTS, STORED_REQUEST_INPUTS, compute_request_features
from retrain.training_set import KEY_COLUMNS, ROW_ORDER, read_window_table, requested_entities, utc_bound


def latest_within_ttl(
    history_keys: np.ndarray,
    event_us: np.ndarray,
    created_us: np.ndarray,
    entity_keys: np.ndarray,
    request_us: np.ndarray,
    ttl_us: int,
) -> np.ndarray:
    """Per entity row, the index of its point-in-time history row, or -1 if there is none.

    The row chosen for entity ``(k, t)`` maximises ``(event_us, created_us)`` over history rows
    with key ``k``, ``event_us <= t`` and ``t - event_us <= ttl_us`` (Feast's rule, see the
    module docstring). One lexicographic sort of history and entity rows together, keyed by
    (key, time, history-before-entity, created), then a running "last history row seen": the
    entity row's candidate is the last history row before it, valid if it has the same key and
    lies within the TTL.
    """
    n_hist = len(history_keys)
    keys = np.concatenate([history_keys, entity_keys]).astype(np.int64, copy=False)
    times = np.concatenate([event_us, request_us]).astype(np.int64, copy=False)
    is_entity = np.concatenate([np.zeros(n_hist, np.int8), np.ones(len(entity_keys), np.int8)])
    created = np.concatenate([created_us, np.zeros(len(entity_keys), np.int64)]).astype(np.int64, copy=False)
    order = np.lexsort((created, is_entity, times, keys))
    positions = np.arange(len(order))
    last_history = np.maximum.accumulate(np.where(order < n_hist, positions, -1))
    entity_at = np.flatnonzero(order >= n_hist)
    candidate_at = last_history[entity_at]
    out = np.full(len(entity_keys), -1, dtype=np.int64)
    found = candidate_at >= 0
    hist = order[candidate_at[found]]
    rows = order[entity_at[found]] - n_hist
    valid = (history_keys[hist] == entity_keys[rows]) & (request_us[rows] - event_us[hist] <= ttl_us)
    out[rows[valid]] = hist[valid]
    return out


def read_group_history(data_root: Path, group: FeatureGroup, start: datetime, end: datetime) -> pa.Table:
    """Rows of ``group`` a request in ``[start, end)`` can see: event time in ``[start - ttl, end)``.

    Feature partitions are by event date, so only ``date=`` partitions of that span are read.
    """
    columns = [group.join_key, EVENT_TIMESTAMP, CREATED_TIMESTAMP, *group.features]
    return read_window_table(data_root, f"features/{group.name}", columns, start - group.ttl, end, EVENT_TIMESTAMP)


def _micros(column: pa.ChunkedArray | pd.Series) -> np.ndarray:
    """UTC microseconds since the epoch of a timestamp column (Arrow or pandas)."""
    if isinstance(column, pd.Series):
        return column.dt.tz_convert("UTC").astype("datetime64[us, UTC]").to_numpy(dtype="datetime64[us]").view(np.int64)
    return column.cast(TS).cast(pa.int64()).to_numpy()


def group_features(
    history: pa.Table, group: FeatureGroup, entity_keys: np.ndarray, request_us: np.ndarray, out: np.ndarray
) -> None:
    """Write ``group``'s values as of each request into ``out`` (``(n_entities, n_features)``), NaN where none."""
    keys = history.column(group.join_key).to_numpy().astype(np.int64, copy=False)
    event_us = _micros(history.column(EVENT_TIMESTAMP))
    created = history.column(CREATED_TIMESTAMP)
    # A missing created timestamp sorts first, as NULLs do under Feast's DESC NULLS LAST.
    created_us = np.where(created.is_null().to_numpy(zero_copy_only=False), np.iinfo(np.int64).min, _micros(created.fill_null(0)))
    index = latest_within_ttl(keys, event_us, created_us, entity_keys, request_us, int(group.ttl / timedelta(microseconds=1)))
    values = np.empty((history.num_rows + 1, len(group.features)))
    for j, name in enumerate(group.features):
        values[:-1, j] = history.column(name).to_numpy()
    values[-1] = np.nan  # index -1, "no row", lands here
    out[:] = values[index]


@dataclass(frozen=True)
class PointInTimeFeatures:
    """The frame ``build_training_set`` returns, as its key columns and one model matrix."""

    #: ``KEY_COLUMNS`` plus the request inputs (``job_lat``/``job_lon`` are member PII: use them,
    #: never keep them), one row per candidate in ``ROW_ORDER``.
    entities: pd.DataFrame
    #: ``(rows, len(model_features()))`` float64, columns in ``model_features()`` order.
    matrix: np.ndarray
    #: Candidates in the window before ``max_rows`` sampling.
    candidate_rows: int

    def frame(self) -> pd.DataFrame:
        """``KEY_COLUMNS`` then one column per model feature, PII-free, with ``build_training_set``'s attrs."""
        from feature_repo.feature_services import FEATURE_DEFINITION_VERSION  # Feast: only where a frame is asked for

        features = pd.DataFrame(self.matrix, columns=list(model_features()))
        frame = pd.concat([self.entities[list(KEY_COLUMNS)], features], axis=1)
        frame.attrs["feature_service"] = None
        frame.attrs["feature_definition_version"] = FEATURE_DEFINITION_VERSION
        frame.attrs["candidate_rows"] = self.candidate_rows
        return frame


def point_in_time_features(
    data_root: Path, start: date | datetime, end: date | datetime, max_rows: int | None = None
) -> PointInTimeFeatures:
    """Candidates requested in ``[start, end)`` and their model features as Feast would join them.

    ``max_rows`` samples whole jobs first (``retrain.job_sample.cap_rows``), as ``build_training_set`` does.
    """
    data_root = Path(data_root)
    lo, hi = utc_bound(start), utc_bound(end)
    entities, candidate_rows = requested_entities(data_root, lo, hi, max_rows)
    entities = entities.sort_values(list(ROW_ORDER), kind="stable").reset_index(drop=True)
    request_us = _micros(entities["request_ts"])

    names = model_features()
    matrix = np.empty((len(entities), len(names)))
    column = 0
    for group in FEATURE_GROUPS:
        keys = entities[group.join_key].to_numpy(dtype=np.int64)
        block = matrix[:, column : column + len(group.features)]
        group_features(read_group_history(data_root, group, lo, hi), group, keys, request_us, block)
        column += len(group.features)

    stored = {name: matrix[:, names.index(f"{g}__{name}")] for name, g in STORED_REQUEST_INPUTS.items()}
    arriving = [c for c in REQUEST_INPUTS if c not in STORED_REQUEST_INPUTS]
    request = compute_request_features(entities[arriving].assign(**stored))
    matrix[:, column:] = request[list(REQUEST_FEATURES)].to_numpy(np.float64)
    return PointInTimeFeatures(entities, matrix, candidate_rows)


def point_in_time_frame(
    data_root: Path, start: date | datetime, end: date | datetime, max_rows: int | None = None
) -> pd.DataFrame:
    """The frame ``build_training_set`` returns for ``[start, end)``, computed without Feast.

    Same rows, columns, order and ``attrs`` (``feature_definition_version``, ``candidate_rows``;
    ``feature_service`` is ``None``: no service was asked). ``max_rows`` samples whole jobs first.
    """
    return point_in_time_features(data_root, start, end, max_rows).frame()
