"""The replica-local feature cache: freshness per value, last-known-good through store failures,
and pushes that never let an older value overwrite a newer one."""

from datetime import timedelta

import numpy as np
import pytest

from contracts.features import CELL_TRAFFIC, FEATURE_GROUPS, PROVIDER_BATCH, model_features
from serve_apps.features import US, FeatureCache, FeatureStatus

NOW = 1_772_409_600.0  # 2026-03-02T00:00:00Z


def _rows(keys: list[int], value: float, age: timedelta, n_features: int) -> tuple[np.ndarray, ...]:
    k = np.asarray(keys, np.int64)
    return k, np.full((len(k), n_features), value, np.float32), np.full(len(k), int((NOW - age.total_seconds()) * US))


def _loader_returning(rows: tuple[np.ndarray, ...]):
    return lambda group, ids: rows


def _failing_loader(group, ids):
    raise ConnectionError("feature store unreachable")


@pytest.fixture()
def cache() -> FeatureCache:
    return FeatureCache(clock=lambda: NOW)


def test_lookup_matrix_follows_model_feature_order(cache: FeatureCache) -> None:
    for i, g in enumerate(FEATURE_GROUPS):
        cache.refresh(g, np.arange(3), _loader_returning(_rows([0, 1, 2], float(i), timedelta(0), len(g.features))))
    found = cache.lookup(np.array([0, 2]), cell_id=1, region_id=1)
    stored = [c for c in model_features() if "__" in c]
    assert found.matrix.shape == (2, len(stored))
    for i, g in enumerate(FEATURE_GROUPS):
        columns = [j for j, c in enumerate(stored) if c.startswith(g.name + "__")]
        assert np.all(found.matrix[:, columns] == i)


def test_status_is_ok_then_stale_then_missing_with_age(cache: FeatureCache) -> None:
    limit, ttl = CELL_TRAFFIC.freshness_limit, CELL_TRAFFIC.ttl
    for age, expected in ((limit / 2, FeatureStatus.OK), (limit + (ttl - limit) / 2, FeatureStatus.STALE), (ttl * 2, FeatureStatus.MISSING)):
        c = FeatureCache(clock=lambda: NOW)
        c.refresh(CELL_TRAFFIC, np.arange(2), _loader_returning(_rows([1], 3.0, age, len(CELL_TRAFFIC.features))))
        found = c.lookup(np.array([5]), cell_id=1, region_id=0)
        assert found.status["cell_traffic"][0] == expected
        assert found.age_s["cell_traffic"][0] == pytest.approx(age.total_seconds(), abs=1)
        traffic = found.matrix[0, : len(FEATURE_GROUPS[0].features)]
        assert np.isfinite(traffic).sum() == 0  # provider_batch never loaded: NaN, not zeros


def test_expired_values_are_nan_like_feast_would_serve(cache: FeatureCache) -> None:
    cache.refresh(PROVIDER_BATCH, np.arange(1), _loader_returning(_rows([0], 7.0, PROVIDER_BATCH.ttl * 2, len(PROVIDER_BATCH.features))))
    found = cache.lookup(np.array([0]), cell_id=0, region_id=0)
    assert found.status["provider_batch"][0] == FeatureStatus.MISSING
    assert np.isnan(found.matrix[0, : len(PROVIDER_BATCH.features)]).all()


def test_store_failure_keeps_last_known_good_and_flags_it() -> None:
    clock = [NOW]
    cache = FeatureCache(clock=lambda: clock[0])
    cache.refresh(CELL_TRAFFIC, np.arange(1), _loader_returning(_rows([4], 9.0, timedelta(0), len(CELL_TRAFFIC.features))))
    clock[0] += CELL_TRAFFIC.freshness_limit.total_seconds() + 60
    health = cache.refresh(CELL_TRAFFIC, np.arange(1), _failing_loader)
    assert health.failures == 1 and "unreachable" in (health.last_error or "")
    found = cache.lookup(np.array([0]), cell_id=4, region_id=0)
    assert found.status["cell_traffic"][0] == FeatureStatus.STORE_UNAVAILABLE
    start = sum(len(g.features) for g in FEATURE_GROUPS[:3])
    assert found.matrix[0, start] == 9.0  # last-known-good value still served
    clock[0] = NOW  # even a fresh value is flagged while the store is down
    assert cache.lookup(np.array([0]), cell_id=4, region_id=0).status["cell_traffic"][0] == FeatureStatus.STORE_UNAVAILABLE
    cache.refresh(CELL_TRAFFIC, np.arange(1), _loader_returning(_rows([4], 10.0, timedelta(0), len(CELL_TRAFFIC.features))))
    assert cache.lookup(np.array([0]), cell_id=4, region_id=0).status["cell_traffic"][0] == FeatureStatus.OK


def test_an_older_push_never_overwrites_a_newer_value(cache: FeatureCache) -> None:
    n = len(CELL_TRAFFIC.features)
    cache.upsert("cell_traffic", *_rows([1, 2], 5.0, timedelta(minutes=1), n))
    cache.upsert("cell_traffic", *_rows([1], 4.0, timedelta(minutes=5), n))
    cache.upsert("cell_traffic", *_rows([2], 6.0, timedelta(seconds=10), n))
    snap = cache.snapshot("cell_traffic")
    assert snap.keys.tolist() == [1, 2]
    assert snap.values[:, 0].tolist() == [5.0, 6.0]


def test_degraded_groups_report_the_worst_status(cache: FeatureCache) -> None:
    cache.refresh(PROVIDER_BATCH, np.arange(2), _loader_returning(_rows([0], 1.0, timedelta(0), len(PROVIDER_BATCH.features))))
    found = cache.lookup(np.array([0, 1]), cell_id=0, region_id=0)
    worst = found.degraded_groups()
    assert worst["provider_batch"] == FeatureStatus.MISSING
    assert set(worst) == {g.name for g in FEATURE_GROUPS}


def test_a_store_that_hangs_counts_as_down_after_the_deadline() -> None:
    import threading

    from serve_apps.features import with_deadline

    release = threading.Event()

    def hanging(group, ids):
        release.wait(5)
        return _rows([1], 2.0, timedelta(0), len(group.features))

    cache = FeatureCache(clock=lambda: NOW)
    health = cache.refresh(CELL_TRAFFIC, np.arange(1), with_deadline(hanging, 0.05))
    assert not health.available and "within" in (health.last_error or "")
    release.set()
    health = cache.refresh(CELL_TRAFFIC, np.arange(1), with_deadline(lambda g, i: _rows([1], 2.0, timedelta(0), len(g.features)), 1.0))
    assert health.available
