"""Online features on the hot path: a replica-local, columnar copy of the Feast online store.

Why not call Feast per request: measured here, ``get_online_features`` for one entity row of
240 features takes p50 9 ms / p99 52 ms on SQLite, and 20 rows 40-60 ms, which alone spends the
120 ms budget at a few hundred QPS on two cores. Feast stays the source of truth (definitions,
materialization, pushes); each router replica keeps the latest row per entity of every feature
group in numpy arrays, refreshed in the background through Feast's public
``get_online_features`` in bulk (~130K-300K values/s here), so a request costs one array gather
per group and never waits on the store.

Freshness is per value: every row keeps the ``event_timestamp`` it was written with, and a
lookup classifies each (candidate, group) as

- ``ok``: age within the group's ``freshness_limit``;
- ``stale``: older than that but within the TTL; served as last-known-good, flagged;
- ``missing``: no value, or older than the TTL; NaN, exactly as Feast (and so training) would
  give, and flagged;
- ``store_unavailable``: the last refresh of this group failed; the value (within its TTL) is
  served from the last-known-good copy and flagged with the reason.

When the store is down the cache keeps serving what it has; nothing here raises into a request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from typing import TYPE_CHECKING

import numpy as np

from contracts.features import FEATURE_GROUPS, FeatureGroup

if TYPE_CHECKING:
    from feast import FeatureStore

US = 1_000_000


class FeatureStatus(IntEnum):
    OK = 0
    STALE = 1
    MISSING = 2
    STORE_UNAVAILABLE = 3

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class GroupSnapshot:
    """Latest value per entity of one group: sorted keys, float32 values, event times (UTC us).

    Immutable: a refresh builds a new snapshot and swaps the reference, so readers never lock.
    """

    keys: np.ndarray
    values: np.ndarray
    event_us: np.ndarray

    @classmethod
    def empty(cls, n_features: int) -> GroupSnapshot:
        return cls(np.zeros(0, np.int64), np.zeros((0, n_features), np.float32), np.zeros(0, np.int64))

    def gather(self, entity_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(values [n, f] with NaN rows for unknown entities, event_us [n] with -1 for unknown)."""
        n = len(entity_ids)
        if len(self.keys) == 0:
            return np.full((n, self.values.shape[1]), np.nan, np.float32), np.full(n, -1, np.int64)
        pos = np.searchsorted(self.keys, entity_ids)
        pos_c = np.minimum(pos, len(self.keys) - 1)
        found = self.keys[pos_c] == entity_ids
        values = self.values[pos_c]
        values[~found] = np.nan
        return values, np.where(found, self.event_us[pos_c], -1)

    def merged(self, keys: np.ndarray, values: np.ndarray, event_us: np.ndarray) -> GroupSnapshot:
        """This snapshot with ``keys`` upserted, keeping for each key the newer event time."""
        all_keys = np.concatenate([self.keys, keys.astype(np.int64)])
        all_values = np.concatenate([self.values, values.astype(np.float32)])
        all_event = np.concatenate([self.event_us, event_us.astype(np.int64)])
        # Newest per key: sort by key then event time, keep the last of each key.
        order = np.lexsort((all_event, all_keys))
        k = all_keys[order]
        last = np.r_[k[1:] != k[:-1], True]
        keep = order[last]
        return GroupSnapshot(all_keys[keep], all_values[keep], all_event[keep])


@dataclass
class GroupHealth:
    """What the last refresh of a group did; ``last_error`` is kept for /readyz and metrics."""

    refreshed_at: float | None = None
    last_success_at: float | None = None
    last_error: str | None = None
    failures: int = 0
    rows: int = 0
    seconds: float = 0.0

    @property
    def available(self) -> bool:
        return self.last_error is None


@dataclass(frozen=True)
class CandidateFeatures:
    """Stored features for one job's candidates, in ``model_features()`` order (request features
    excluded), plus per-group status codes and ages for the response, log and metrics."""

    matrix: np.ndarray
    status: dict[str, np.ndarray]
    age_s: dict[str, np.ndarray]

    def degraded_groups(self) -> dict[str, FeatureStatus]:
        """The worst status per group over the candidates, for groups that are not all ``ok``."""
        out: dict[str, FeatureStatus] = {}
        for name, codes in self.status.items():
            worst = int(codes.max()) if len(codes) else 0
            if worst != FeatureStatus.OK:
                out[name] = FeatureStatus(worst)
        return out


Loader = Callable[[FeatureGroup, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


class FeatureCache:
    """Replica-local latest values of every feature group, with per-value freshness."""

    def __init__(self, groups: Sequence[FeatureGroup] = FEATURE_GROUPS, clock: Callable[[], float] = time.time) -> None:
        self.groups = tuple(groups)
        self.clock = clock
        self._snapshots = {g.name: GroupSnapshot.empty(len(g.features)) for g in self.groups}
        self.health = {g.name: GroupHealth() for g in self.groups}
        self._lock = threading.Lock()

    def snapshot(self, group: str) -> GroupSnapshot:
        return self._snapshots[group]

    def replace(self, group: str, keys: np.ndarray, values: np.ndarray, event_us: np.ndarray) -> None:
        """Install a full load of ``group`` (keys need not be sorted)."""
        order = np.argsort(keys, kind="stable")
        snap = GroupSnapshot(keys[order].astype(np.int64), values[order].astype(np.float32), event_us[order].astype(np.int64))
        self._snapshots[group] = snap

    def upsert(self, group: str, keys: np.ndarray, values: np.ndarray, event_us: np.ndarray) -> None:
        """Apply pushed rows; older pushes never overwrite newer values."""
        with self._lock:
            self._snapshots[group] = self._snapshots[group].merged(keys, values, event_us)

    def refresh(self, group: FeatureGroup, entity_ids: np.ndarray, loader: Loader) -> GroupHealth:
        """Reload ``group`` for ``entity_ids`` through ``loader``; on failure keep last-known-good.

        The exception is recorded (and so counted and visible), not raised: the request path
        must go on serving from the copy it has.
        """
        health = self.health[group.name]
        started = self.clock()
        t0 = time.perf_counter()
        try:
            keys, values, event_us = loader(group, entity_ids)
        except Exception as exc:  # noqa: BLE001 - any store failure means "keep serving the cache"
            health.refreshed_at = started
            health.failures += 1
            health.last_error = f"{type(exc).__name__}: {exc}"[:300]
            health.seconds = time.perf_counter() - t0
            return health
        present = event_us >= 0
        with self._lock:
            merged = self._snapshots[group.name].merged(keys[present], values[present], event_us[present])
            self._snapshots[group.name] = merged
        health.refreshed_at = health.last_success_at = started
        health.last_error = None
        health.rows = int(present.sum())
        health.seconds = time.perf_counter() - t0
        return health

    def lookup(self, provider_ids: np.ndarray, cell_id: int, region_id: int, now: float | None = None) -> CandidateFeatures:
        """Every stored group for one job's candidates; the job's cell and region are shared."""
        now_us = int((self.clock() if now is None else now) * US)
        n = len(provider_ids)
        keys_for = {
            "provider": np.asarray(provider_ids, dtype=np.int64),
            "cell": np.full(n, cell_id, np.int64),
            "region": np.full(n, region_id, np.int64),
        }
        blocks, status, ages = [], {}, {}
        for g in self.groups:
            values, event_us = self._snapshots[g.name].gather(keys_for[g.entity])
            age_us = np.where(event_us >= 0, now_us - event_us, np.iinfo(np.int64).max)
            expired = age_us > int(g.ttl.total_seconds() * US)
            values[expired] = np.nan
            code = np.where(expired, FeatureStatus.MISSING, np.where(age_us > int(g.freshness_limit.total_seconds() * US), FeatureStatus.STALE, FeatureStatus.OK))
            if not self.health[g.name].available:
                # Served from the last-known-good copy while the store is down: usable, flagged.
                code = np.where(code == FeatureStatus.MISSING, code, FeatureStatus.STORE_UNAVAILABLE)
            blocks.append(values)
            status[g.name] = code.astype(np.int8)
            ages[g.name] = np.where(event_us >= 0, age_us / US, np.nan).astype(np.float32)
        return CandidateFeatures(np.concatenate(blocks, axis=1), status, ages)


@dataclass
class EntityCatalogue:
    """Which entity ids exist per entity type: what a full refresh asks the store for."""

    ids: dict[str, np.ndarray] = field(default_factory=dict)

    def of(self, entity: str) -> np.ndarray:
        return self.ids.get(entity, np.zeros(0, np.int64))


def with_deadline(loader: Loader, seconds: float) -> Loader:
    """``loader`` that gives up after ``seconds``: a slow store then counts as down.

    Store clients retry and wait on connection timeouts far longer than a refresh period, which
    would leave the cache silently ageing. The call runs on one worker thread per group; if it
    overruns, ``TimeoutError`` is raised (recorded by ``FeatureCache.refresh``) and the next
    refresh waits on the same call rather than piling up new ones.
    """
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import TimeoutError as FutureTimeout

    pool = ThreadPoolExecutor(max_workers=len(FEATURE_GROUPS), thread_name_prefix="feature-load")
    pending: dict[str, object] = {}

    def load(group: FeatureGroup, entity_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        future = pending.get(group.name)
        if future is None or future.done():
            future = pending[group.name] = pool.submit(loader, group, entity_ids)
        try:
            return future.result(timeout=seconds)
        except FutureTimeout:
            raise TimeoutError(f"feature store did not answer for {group.name} within {seconds:.1f} s") from None

    return load


def feast_loader(store: FeatureStore, chunk_rows: int = 20_000) -> Loader:
    """A ``Loader`` over Feast's public ``get_online_features``, in chunks of entity rows.

    It asks for event timestamps too, so freshness is the value's own (Feast returns them in
    whole seconds; 0 means the entity has no row).
    """
    from feast.online_response import TIMESTAMP_POSTFIX

    def load(group: FeatureGroup, entity_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        refs = [f"{group.name}:{f}" for f in group.features]
        ts_column = group.features[0] + TIMESTAMP_POSTFIX
        keys_out, values_out, event_out = [], [], []
        for start in range(0, len(entity_ids), chunk_rows):
            chunk = np.asarray(entity_ids[start : start + chunk_rows], dtype=np.int64)
            rows = [{group.join_key: int(k)} for k in chunk]
            response = store.get_online_features(features=refs, entity_rows=rows).to_dict(include_event_timestamps=True)
            values = np.column_stack(
                [np.asarray([np.nan if v is None else v for v in response[f]], dtype=np.float64) for f in group.features]
            )
            seconds = np.asarray(response[ts_column], dtype=np.int64)
            keys_out.append(chunk)
            values_out.append(values.astype(np.float32))
            event_out.append(np.where(seconds > 0, seconds * US, -1))
        if not keys_out:
            return np.zeros(0, np.int64), np.zeros((0, len(group.features)), np.float32), np.zeros(0, np.int64)
        return np.concatenate(keys_out), np.concatenate(values_out), np.concatenate(event_out)

    return load
