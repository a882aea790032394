"""The in-process point-in-time frame (``retrain.point_in_time``) equals Feast's, column by column.

The world is ``feature_world``'s (TTL holes, a dormant provider) plus rows that sit exactly on
Feast's boundaries: a provider-status snapshot rewritten at the same event time with a later
and an earlier ``created_timestamp`` (the later write must win), jobs requested exactly at a
snapshot's event time (``event_timestamp <= request_ts`` includes it), exactly one TTL after the
last value before a hole (``event_timestamp + ttl >= request_ts`` keeps it) and one microsecond
later (expired). Both frames come from the same warehouse: Feast's through
``build_training_set`` (DuckDB offline store plus the on-demand request view), ours without it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from feature_world import (
    DORMANT_PROVIDER,
    GAP_PROVIDER,
    GAP_START,
    WORLD_START,
    FeatureWorld,
    feature_frame,
    write_feature_world,
)

from cluster import feature_store
from cluster.config import Settings
from contracts.features import PROVIDER_BATCH, PROVIDER_STATUS, model_features
from contracts.warehouse import CANDIDATES, FEATURE_SCHEMAS, REQUESTS, partition_dir
from retrain.point_in_time import latest_within_ttl, point_in_time_frame
from retrain.training_set import KEY_COLUMNS, build_training_set

pytestmark = pytest.mark.integration

REWRITTEN_PROVIDER = 7
REWRITE_AT = WORLD_START + timedelta(days=1, hours=3)


def _boundary_jobs() -> list[tuple[str, datetime, list[int]]]:
    last_status_before_gap = GAP_START  # the hole is strictly after GAP_START
    dormant_last_batch = WORLD_START + timedelta(hours=1)  # feature_world's BATCH_HOUR on day 0
    return [
        ("B-AT-EVENT", REWRITE_AT, [REWRITTEN_PROVIDER, 2, 3]),
        ("B-AT-TTL", last_status_before_gap + PROVIDER_STATUS.ttl, [GAP_PROVIDER, 4]),
        ("B-PAST-TTL", last_status_before_gap + PROVIDER_STATUS.ttl + timedelta(microseconds=1), [GAP_PROVIDER, 6]),
        ("B-BATCH-AT-TTL", dormant_last_batch + PROVIDER_BATCH.ttl, [DORMANT_PROVIDER, 8]),
        ("B-BATCH-PAST-TTL", dormant_last_batch + PROVIDER_BATCH.ttl + timedelta(microseconds=1), [DORMANT_PROVIDER, 9]),
    ]


def _write_part(frame: pd.DataFrame, schema: pa.Schema, root: Path, table: str, day: datetime, name: str) -> None:
    """An extra file in a date partition, next to the one ``feature_world`` wrote."""
    out = partition_dir(root, table, day.date())
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), out / f"part-{name}.parquet")


def _add_boundary_rows(world: FeatureWorld) -> None:
    history = feature_frame(PROVIDER_STATUS)
    snapshot = history[(history["provider_id"] == REWRITTEN_PROVIDER) & (history["event_timestamp"] == REWRITE_AT)]
    assert len(snapshot) == 1
    later, earlier = snapshot.copy(), snapshot.copy()
    later["created_timestamp"] += timedelta(minutes=5)
    earlier["created_timestamp"] -= timedelta(minutes=1)
    features = list(PROVIDER_STATUS.features)
    later[features] += 0.25
    earlier[features] -= 0.25
    _write_part(pd.concat([later, earlier]), FEATURE_SCHEMAS[PROVIDER_STATUS.name], world.root, f"features/{PROVIDER_STATUS.name}", REWRITE_AT, "rewrite")

    for job_id, at, providers in _boundary_jobs():
        request = world.requests.iloc[[0]].assign(job_id=job_id, request_ts=at, n_candidates=len(providers))
        candidates = pd.concat([world.candidates.iloc[[0]]] * len(providers), ignore_index=True).assign(
            job_id=job_id, request_ts=at, provider_id=providers, candidate_index=range(len(providers)), n_candidates=len(providers)
        )
        _write_part(request, REQUESTS, world.root, "raw/requests", at, job_id)
        _write_part(candidates, CANDIDATES, world.root, "dispatch/candidates", at, job_id)


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, pd.DataFrame]:
    root = tmp_path_factory.mktemp("point_in_time")
    world = write_feature_world(root / "data")
    _add_boundary_rows(world)
    settings = Settings.model_validate({"paths": {"data": str(world.root), "feature_store": str(root / "feature_store")}})
    feature_store.apply(settings)
    feast = build_training_set(settings, world.root, world.start, world.end, "eta")
    ours = point_in_time_frame(world.root, world.start, world.end)
    return feast, ours


def test_frame_equals_feast_historical_retrieval_column_by_column(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    feast, ours = frames
    assert list(ours.columns) == list(feast.columns) == list(KEY_COLUMNS) + list(model_features())
    assert len(ours) == len(feast)
    for column in KEY_COLUMNS:
        assert (ours[column].astype(str).to_numpy() == feast[column].astype(str).to_numpy()).all(), column
    mismatched = []
    for column in model_features():
        a, b = ours[column].to_numpy(np.float64), feast[column].to_numpy(np.float64)
        if not (np.array_equal(np.isnan(a), np.isnan(b)) and np.allclose(a, b, rtol=1e-12, atol=1e-9, equal_nan=True)):
            mismatched.append(column)
    assert not mismatched, mismatched
    assert ours.attrs["feature_definition_version"] == feast.attrs["feature_definition_version"]
    assert ours.attrs["candidate_rows"] == feast.attrs["candidate_rows"]


def test_the_boundary_rows_are_exercised(frames: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    """The equality above covers the tie and TTL rules only if the boundary rows land as intended."""
    _, ours = frames
    lat = "provider_status__provider_lat"

    def value(job_id: str, provider_id: int, column: str = lat) -> float:
        return float(ours.loc[(ours["job_id"] == job_id) & (ours["provider_id"] == provider_id), column].iloc[0])

    rewritten = feature_frame(PROVIDER_STATUS)
    original = rewritten.loc[(rewritten["provider_id"] == REWRITTEN_PROVIDER) & (rewritten["event_timestamp"] == REWRITE_AT), "provider_lat"]
    assert value("B-AT-EVENT", REWRITTEN_PROVIDER) == pytest.approx(float(original.iloc[0]) + 0.25)
    assert np.isfinite(value("B-AT-TTL", GAP_PROVIDER)) and np.isnan(value("B-PAST-TTL", GAP_PROVIDER))
    batch = "provider_batch__tenure_days"
    assert np.isfinite(value("B-BATCH-AT-TTL", DORMANT_PROVIDER, batch)) and np.isnan(value("B-BATCH-PAST-TTL", DORMANT_PROVIDER, batch))


def test_latest_within_ttl_against_brute_force() -> None:
    rng = np.random.default_rng(3)
    keys = rng.integers(0, 5, 400)
    event = rng.integers(0, 1_000, 400)
    created = rng.integers(0, 3, 400)
    entity_keys, request = rng.integers(0, 6, 300), rng.integers(0, 1_100, 300)
    got = latest_within_ttl(keys, event, created, entity_keys, request, ttl_us=40)
    for i, (k, t) in enumerate(zip(entity_keys, request, strict=True)):
        ok = np.flatnonzero((keys == k) & (event <= t) & (t - event <= 40))
        if len(ok) == 0:
            assert got[i] == -1
            continue
        best = max((event[j], created[j]) for j in ok)
        assert got[i] >= 0 and (event[got[i]], created[got[i]]) == best
