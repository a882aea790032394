"""The Feast feature store end to end on a tiny warehouse: apply, materialize, online reads,
point-in-time-correct training frames and the shared request features."""

from __future__ import annotations

import math
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from feast.data_source import PushMode
from feature_world import (
    DORMANT_PROVIDER,
    GAP_CELL,
    GAP_END,
    GAP_PROVIDER,
    GAP_START,
    REAL_VALUED,
    FeatureWorld,
    decode_event_ts,
    write_feature_world,
)

from cluster import feature_store
from cluster.config import Settings
from contracts.features import FEATURE_GROUPS, REQUEST_FEATURES, model_features
from contracts.warehouse import MEMBER_PII_COLUMNS
from feature_repo.feature_services import FEATURE_DEFINITION_VERSION, FEATURE_SERVICES
from feature_repo.request_transform import REQUEST_INPUTS, compute_request_features
from retrain.training_set import KEY_COLUMNS, build_training_set

pytestmark = pytest.mark.integration

REDIS_SERVER = Path("/usr/bin/redis-server")


def _settings(root: Path, store_dir: str, **features: str) -> Settings:
    return Settings.model_validate(
        {"paths": {"data": str(root / "data"), "feature_store": str(root / store_dir)}, "features": features}
    )


def _latest_within_ttl(world: FeatureWorld, group_name: str, entity_id: int, at: datetime) -> pd.Series | None:
    """Brute force: the row a point-in-time join must pick, or None when nothing is fresh enough."""
    group = next(g for g in FEATURE_GROUPS if g.name == group_name)
    rows = world.features[group_name]
    rows = rows[
        (rows[group.join_key] == entity_id) & (rows["event_timestamp"] <= at) & (rows["event_timestamp"] >= at - group.ttl)
    ]
    return None if rows.empty else rows.sort_values("event_timestamp").iloc[-1]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> FeatureWorld:
    root = tmp_path_factory.mktemp("feature_world")
    return write_feature_world(root / "data")


@pytest.fixture(scope="module")
def sqlite_store(world: FeatureWorld) -> tuple[Settings, list[feature_store.MaterializationStep]]:
    settings = _settings(world.root.parent, "feature_store")
    result = feature_store.apply(settings)
    assert result.feature_definition_version == FEATURE_DEFINITION_VERSION
    steps = feature_store.materialize(settings, world.start, world.end)
    return settings, steps


@pytest.fixture(scope="module")
def training_frame(world: FeatureWorld, sqlite_store: tuple[Settings, list]) -> pd.DataFrame:
    settings, _ = sqlite_store
    return build_training_set(settings, world.root, world.start, world.end, "eta")


def _online_rows(world: FeatureWorld, providers: list[int], cell_id: int, at: datetime) -> list[dict]:
    return [
        {
            "provider_id": provider_id,
            "cell_id": cell_id,
            "region_id": (cell_id - 1) % 3 + 1,
            "job_id": "ONLINE-1",
            "job_lat": 42.2871,
            "job_lon": -71.1123,
            "request_ts": at,
            "line_of_business": "insurer",
            "service_type": "winch",
            "vehicle_class": "hovercraft",
        }
        for provider_id in providers
    ]


def test_apply_and_materialize_serve_latest_values_from_sqlite(world: FeatureWorld, sqlite_store) -> None:
    settings, steps = sqlite_store
    assert [s.group for s in steps] == [g.name for g in FEATURE_GROUPS]
    assert all(s.skipped is None for s in steps)
    store = feature_store.get_store(settings)
    providers = [1, 2, GAP_PROVIDER, DORMANT_PROVIDER]
    online = store.get_online_features(
        features=store.get_feature_service(FEATURE_SERVICES["eta"]),
        entity_rows=_online_rows(world, providers, GAP_CELL, world.end),
        full_feature_names=True,
    ).to_df()

    for group in FEATURE_GROUPS:
        for _i, row in online.iterrows():
            entity_id = int(row[group.join_key])
            expected = _latest_within_ttl(world, group.name, entity_id, world.end)
            served = row[[f"{group.name}__{f}" for f in group.features]].to_numpy(dtype=float)
            if expected is None:
                assert np.isnan(served).all(), f"{group.name} served an expired value for {entity_id}"
            else:
                np.testing.assert_allclose(served, expected[list(group.features)].to_numpy(dtype=float))
    # The dormant provider's only batch row is four days old: past the 3-day TTL, never loaded.
    dormant = online[online["provider_id"] == DORMANT_PROVIDER].iloc[0]
    assert math.isnan(dormant["provider_batch__tenure_days"])


def test_materialize_again_is_incremental(world: FeatureWorld, sqlite_store) -> None:
    settings, _ = sqlite_store
    again = feature_store.materialize(settings, world.start, world.end, groups=["cell_traffic", "region_batch"])
    assert [(s.group, s.skipped) for s in again] == [("cell_traffic", "up to date"), ("region_batch", "up to date")]


def test_training_frame_has_keys_model_features_and_no_pii(world: FeatureWorld, training_frame: pd.DataFrame) -> None:
    assert list(training_frame.columns) == list(KEY_COLUMNS) + list(model_features())
    assert len(training_frame) == len(world.candidates)
    assert not set(MEMBER_PII_COLUMNS) & set(training_frame.columns)
    member_values = set(world.requests["job_lat"]) | set(world.requests["job_lon"])
    numeric = training_frame.select_dtypes("number").to_numpy().ravel()
    assert not member_values & set(numeric.tolist())
    assert training_frame.attrs["feature_definition_version"] == FEATURE_DEFINITION_VERSION


def test_capped_training_frame_keeps_whole_jobs_deterministically(world: FeatureWorld, sqlite_store, training_frame) -> None:
    settings, _ = sqlite_store
    first = build_training_set(settings, world.root, world.start, world.end, "acceptance", max_rows=101)
    second = build_training_set(settings, world.root, world.start, world.end, "acceptance", max_rows=101)
    assert 90 <= len(first) <= 101 and first.attrs["candidate_rows"] == len(world.candidates)
    pd.testing.assert_frame_equal(first, second)
    assert (first.groupby("job_id").size() == first.groupby("job_id")["n_candidates"].first()).all()
    full = training_frame.set_index(["job_id", "provider_id"]).loc[first.set_index(["job_id", "provider_id"]).index]
    np.testing.assert_array_equal(first["distance_km"].to_numpy(), full["distance_km"].to_numpy())


def test_training_frame_is_point_in_time_correct(world: FeatureWorld, training_frame: pd.DataFrame) -> None:
    """Every stored value is the latest one at or before request_ts and within the group's TTL."""
    for group in FEATURE_GROUPS:
        encoded = next(f for f in group.features if f not in REAL_VALUED)
        column = f"{group.name}__{encoded}"
        for _, row in training_frame.iterrows():
            request_ts = row["request_ts"]
            expected = _latest_within_ttl(world, group.name, int(row[group.join_key]), request_ts)
            if expected is None:
                assert math.isnan(row[column]), f"{column} joined a value older than the TTL at {request_ts}"
                continue
            event_ts = decode_event_ts(row[column], int(row[group.join_key]))
            assert request_ts - group.ttl <= event_ts <= request_ts, f"{column} leaked {event_ts} into {request_ts}"
            assert row[column] == pytest.approx(expected[encoded])


def test_training_frame_keeps_rows_with_expired_features(world: FeatureWorld, training_frame: pd.DataFrame) -> None:
    """Rows whose provider or cell feed went quiet stay, with NaN, though later values exist."""
    in_gap = training_frame[(training_frame["request_ts"] > GAP_START + timedelta(minutes=30)) & (training_frame["request_ts"] < GAP_END)]
    gap_provider = in_gap[in_gap["provider_id"] == GAP_PROVIDER]
    assert len(gap_provider) >= 2
    assert gap_provider["provider_status__queue_depth"].isna().all()
    assert gap_provider["provider_status__provider_lat"].isna().all()
    assert gap_provider["distance_km"].isna().all()
    assert (in_gap["cell_id"] == GAP_CELL).all() and in_gap["cell_traffic__traffic_index"].isna().all()
    assert in_gap["naive_travel_min"].isna().all()
    later = world.features["provider_status"]
    assert ((later["provider_id"] == GAP_PROVIDER) & (later["event_timestamp"] > GAP_END)).any()

    last_day = training_frame[training_frame["request_ts"] > world.end - timedelta(hours=1)]
    dormant = last_day[last_day["provider_id"] == DORMANT_PROVIDER]
    assert len(dormant) >= 1 and dormant["provider_batch__rating"].isna().all()


def _haversine_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    r = 6371.0088
    p1, p2 = math.radians(lat1), math.radians(lat2)
    a = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(math.radians(lon2 - lon1) / 2) ** 2
    return 2 * r * math.asin(math.sqrt(a))


def test_request_features_match_hand_computation() -> None:
    saturday_6pm = datetime(2026, 3, 7, 18, 0, tzinfo=UTC)
    frame = pd.DataFrame(
        {
            "job_id": ["A", "A", "A", "B"],
            "job_lat": [0.0, 0.0, 0.0, 42.0],
            "job_lon": [1.0, 1.0, 1.0, -71.0],
            "request_ts": [saturday_6pm] * 3 + [datetime(2026, 3, 4, 6, 0, tzinfo=UTC)],
            "line_of_business": ["insurer", "insurer", "insurer", "martian"],
            "service_type": ["tire", "tire", "tire", None],
            "vehicle_class": ["suv", "suv", "suv", "ev"],
            "provider_lat": [0.0, 0.0, 2.0, np.nan],
            "provider_lon": [0.0, 0.0, 1.0, np.nan],
            "speed_kmh": [60.0, 1.0, 30.0, 50.0],
        }
    )
    out = compute_request_features(frame[list(REQUEST_INPUTS)])
    assert list(out.columns) == list(REQUEST_FEATURES)
    one_degree = 2 * math.pi * 6371.0088 / 360  # due east along the equator
    a = out.iloc[0]
    assert a["distance_km"] == pytest.approx(one_degree)
    assert (a["bearing_sin"], a["bearing_cos"]) == (pytest.approx(1.0), pytest.approx(0.0, abs=1e-12))
    assert a["naive_travel_min"] == pytest.approx(one_degree)  # 60 km/h: one minute per km
    assert out.iloc[1]["naive_travel_min"] == pytest.approx(one_degree / 5.0 * 60)  # 1 km/h is clipped to 5
    assert out.iloc[2]["distance_km"] == pytest.approx(_haversine_km(2.0, 1.0, 0.0, 1.0))
    assert out.iloc[2]["bearing_cos"] == pytest.approx(-1.0)  # due south
    assert (a["hour_of_day"], a["day_of_week"], a["is_weekend"]) == (18.0, 5.0, 1.0)
    assert (a["hour_sin"], a["hour_cos"]) == (pytest.approx(-1.0), pytest.approx(0.0, abs=1e-12))
    assert (a["lob_code"], a["service_code"], a["vehicle_code"]) == (1.0, 2.0, 1.0)
    assert out["candidate_rank_by_distance"].tolist()[:3] == [1.0, 1.0, 3.0]  # ties share the lower rank
    assert out["n_candidates"].tolist() == [3.0, 3.0, 3.0, 1.0]
    b = out.iloc[3]
    assert (b["lob_code"], b["service_code"], b["vehicle_code"]) == (-1.0, -1.0, 5.0)
    assert math.isnan(b["distance_km"]) and math.isnan(b["candidate_rank_by_distance"])
    assert (b["hour_of_day"], b["day_of_week"], b["is_weekend"]) == (6.0, 2.0, 0.0)


def test_training_request_features_equal_hand_computed_haversine(world: FeatureWorld, training_frame: pd.DataFrame) -> None:
    jobs = world.requests.set_index("job_id")
    checked = 0
    for _, row in training_frame.dropna(subset=["provider_status__provider_lat", "cell_traffic__speed_kmh"]).iterrows():
        job = jobs.loc[row["job_id"]]
        distance = _haversine_km(row["provider_status__provider_lat"], row["provider_status__provider_lon"], job["job_lat"], job["job_lon"])
        assert row["distance_km"] == pytest.approx(distance)
        assert row["naive_travel_min"] == pytest.approx(distance / max(row["cell_traffic__speed_kmh"], 5.0) * 60)
        assert row["hour_of_day"] == row["request_ts"].hour
        checked += 1
    assert checked > 0.9 * len(training_frame)
    ranks = training_frame.groupby("job_id")["candidate_rank_by_distance"].apply(lambda r: sorted(r.dropna()))
    assert all(r[0] == 1.0 for r in ranks if r)


def test_online_request_features_use_the_shared_function(world: FeatureWorld, sqlite_store) -> None:
    settings, _ = sqlite_store
    store = feature_store.get_store(settings)
    rows = _online_rows(world, [1, 2, 3, 4], 2, world.end)
    online = store.get_online_features(
        features=store.get_feature_service(FEATURE_SERVICES["acceptance"]), entity_rows=rows, full_feature_names=True
    ).to_df()
    inputs = pd.DataFrame(rows).assign(
        provider_lat=online["provider_status__provider_lat"].to_numpy(),
        provider_lon=online["provider_status__provider_lon"].to_numpy(),
        speed_kmh=online["cell_traffic__speed_kmh"].to_numpy(),
    )
    expected = compute_request_features(inputs[list(REQUEST_INPUTS)])
    served = online[[f"request_features__{f}" for f in REQUEST_FEATURES]].set_axis(list(REQUEST_FEATURES), axis=1)
    pd.testing.assert_frame_equal(served.reset_index(drop=True), expected.reset_index(drop=True), check_dtype=False)
    assert served["vehicle_code"].eq(-1.0).all() and served["n_candidates"].eq(4.0).all()

    # Member coordinates passed through the request view are not written anywhere in the store.
    needles = (repr(rows[0]["job_lat"]).encode(), struct.pack("<d", rows[0]["job_lat"]))
    for path in Path(feature_store.repo_path(settings)).rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert not any(n in content for n in needles), f"{path} holds a member coordinate"


def test_pushed_status_is_served_online(world: FeatureWorld, sqlite_store) -> None:
    settings, _ = sqlite_store
    store = feature_store.get_store(settings)
    group = next(g for g in FEATURE_GROUPS if g.name == "provider_status")
    pushed_at = world.end + timedelta(minutes=1)
    fresh = {f: float(i) + 0.5 for i, f in enumerate(group.features)}
    store.push(
        "provider_status_push",
        pd.DataFrame([{"provider_id": 17, "event_timestamp": pushed_at, "created_timestamp": pushed_at, **fresh}]),
        to=PushMode.ONLINE,
    )
    online = store.get_online_features(
        features=[f"provider_status:{f}" for f in group.features], entity_rows=[{"provider_id": 17}]
    ).to_dict()
    assert {f: online[f][0] for f in group.features} == fresh


def test_feature_services_carry_the_definition_version(sqlite_store) -> None:
    settings, _ = sqlite_store
    store = feature_store.get_store(settings)
    for family, name in FEATURE_SERVICES.items():
        service = store.get_feature_service(name)
        assert service.tags == {"model_family": family, "feature_definition_version": FEATURE_DEFINITION_VERSION}
        assert {p.name for p in service.feature_view_projections} == {g.name for g in FEATURE_GROUPS} | {"request_features"}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def redis_connection() -> Iterator[str]:
    if not REDIS_SERVER.exists():
        pytest.skip(f"{REDIS_SERVER} is not installed (apt-get install redis-server)")
    port = _free_port()
    server = subprocess.Popen(
        [str(REDIS_SERVER), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer on port {port}")
            time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.e2e
def test_redis_online_store_round_trip(world: FeatureWorld, redis_connection: str, tmp_path: Path) -> None:
    settings = _settings(world.root.parent, f"feature_store_redis_{tmp_path.name}", online_store="redis", redis_connection=redis_connection)
    try:
        feature_store.apply(settings)
        steps = feature_store.materialize(settings, world.start, world.end, groups=["provider_batch", "cell_traffic"])
        assert [s.group for s in steps] == ["provider_batch", "cell_traffic"]
        store = feature_store.get_store(settings)
        online = store.get_online_features(
            features=["provider_batch:rating", "cell_traffic:speed_kmh", "region_load:open_jobs"],
            entity_rows=[{"provider_id": 7, "cell_id": 4, "region_id": 1}],
            full_feature_names=True,
        ).to_dict()
        provider_row = _latest_within_ttl(world, "provider_batch", 7, world.end)
        cell_row = _latest_within_ttl(world, "cell_traffic", 4, world.end)
        assert provider_row is not None and cell_row is not None
        assert online["provider_batch__rating"][0] == provider_row["rating"]
        assert online["cell_traffic__speed_kmh"][0] == cell_row["speed_kmh"]
        assert online["region_load__open_jobs"][0] is None  # not materialized: only the groups asked for
    finally:
        shutil.rmtree(feature_store.repo_path(settings), ignore_errors=True)


def test_replica_cache_loaded_through_feast_serves_what_feast_serves(world: FeatureWorld, sqlite_store) -> None:
    """The serving cache is filled through Feast's public online API and must agree with it,
    value for value, including NaN for expired rows and the value's own event time."""
    from serve_apps.features import FeatureCache, feast_loader

    settings, _ = sqlite_store
    store = feature_store.get_store(settings)
    cache = FeatureCache(clock=lambda: world.end.timestamp())
    load = feast_loader(store, chunk_rows=2)
    entity_ids = {"provider": [1, 2, GAP_PROVIDER, DORMANT_PROVIDER], "cell": [GAP_CELL], "region": [(GAP_CELL - 1) % 3 + 1]}
    for group in FEATURE_GROUPS:
        health = cache.refresh(group, np.asarray(entity_ids[group.entity]), load)
        assert health.available, health.last_error
    providers = entity_ids["provider"]
    cached = cache.lookup(np.asarray(providers), cell_id=GAP_CELL, region_id=entity_ids["region"][0])
    online = store.get_online_features(
        features=store.get_feature_service(FEATURE_SERVICES["eta"]),
        entity_rows=_online_rows(world, providers, GAP_CELL, world.end),
        full_feature_names=True,
    ).to_df()
    stored_columns = [c for c in model_features() if "__" in c]
    np.testing.assert_allclose(cached.matrix, online[stored_columns].to_numpy(dtype=np.float32), rtol=1e-6, equal_nan=True)
