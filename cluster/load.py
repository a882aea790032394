"""Steady, bounded load on the scoring service: realistic jobs and an open-loop request schedule.

``job_bodies`` makes score requests from the world (demand-weighted cells, candidates from the
cell's region); ``push_features`` writes near-real-time and daily features for the world's
entities so those jobs take the full path. ``run_load`` sends a fixed number of requests at a
fixed rate to a loopback URL (open loop: request ``i`` leaves at ``i / rate`` whatever the
answers do, so a slow service cannot slow the offered load and hide its own latency, the
coordinated-omission trap) and records every answer. Used by the fault drills
(``cluster/drills.py``) and the load benchmark (``bench/serve_load.py``).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pandas as pd

from cluster.config import Settings
from contracts.features import group
from contracts.scoring import SCORE_PATH
from contracts.warehouse import world_path

CANDIDATES = 8
NEAR_REAL_TIME_GROUPS = ("cell_traffic", "region_load", "provider_status")
BATCH_GROUPS = ("cell_batch", "region_batch", "provider_batch")


def push_features(
    settings: Settings, regions: Sequence[int] | None = None, at: datetime | None = None, groups: Sequence[str] = NEAR_REAL_TIME_GROUPS + BATCH_GROUPS
) -> None:
    """Write ``groups`` for every cell, region and provider of ``regions`` (all if None), stamped ``at``.

    Near-real-time groups go through Feast's push sources, as the live feed would; daily groups
    are written straight to the online store (the simulated history ended before the batch TTL).
    """
    from feast.data_source import PushMode

    from cluster.feature_store import get_store

    store = get_store(settings)
    stamp = pd.Timestamp(at or datetime.now(UTC))
    cells = pd.read_parquet(world_path(settings.paths.data, "cells"))
    providers = pd.read_parquet(world_path(settings.paths.data, "providers"))
    if regions is not None:
        cells, providers = cells[cells.region_id.isin(regions)], providers[providers.region_id.isin(regions)]
    keys = {"cell": cells.cell_id.to_numpy(), "region": np.unique(cells.region_id), "provider": providers.provider_id.to_numpy()}
    for name in groups:
        g = group(name)
        ids = np.asarray(keys[g.entity])
        frame = pd.DataFrame({g.join_key: ids, "event_timestamp": stamp, "created_timestamp": stamp, **{f: np.ones(len(ids)) for f in g.features}})
        if name == "provider_status":
            home = cells.set_index("cell_id").reindex(providers.home_cell_id)
            frame["provider_lat"], frame["provider_lon"] = home.center_lat.to_numpy(), home.center_lon.to_numpy()
            frame["on_shift"], frame["queue_depth"] = 1.0, 0.0
        if name == "cell_traffic":
            frame["speed_kmh"], frame["traffic_index"] = 40.0, 1.3
        if g.cadence == "batch":
            store.write_to_online_store(name, frame)
        else:
            store.push(f"{name}_push", frame, to=PushMode.ONLINE)


@dataclass(frozen=True)
class Job:
    """One score request body and the region it is in (drills compare regions)."""

    body: str
    region_id: int
    n_candidates: int


def job_bodies(settings: Settings, n: int, seed: int = 1, regions: Sequence[int] | None = None, prefix: str = "BENCH") -> list[Job]:
    """``n`` jobs at demand-weighted cells of ``regions`` (all if None), ``CANDIDATES`` providers each.

    Job ids are ``<prefix>-<i>``; ``requested_at`` is now (a job is refused a few minutes off).
    The member is a synthetic id, never a real one.
    """
    rng = np.random.default_rng(seed)
    cells = pd.read_parquet(world_path(settings.paths.data, "cells"))
    providers = pd.read_parquet(world_path(settings.paths.data, "providers"))
    if regions is not None:
        cells = cells[cells.region_id.isin(regions)]
    by_region = providers.groupby("region_id").provider_id.apply(np.asarray).to_dict()
    busy = cells.sample(n=n, replace=True, weights=cells.demand_weight, random_state=seed)
    now = datetime.now(UTC).isoformat()
    jobs = []
    for i, cell in enumerate(busy.itertuples()):
        pool = by_region.get(cell.region_id, providers.provider_id.to_numpy())
        chosen = rng.choice(pool, size=min(CANDIDATES, len(pool)), replace=False)
        body = json.dumps({
            "job_id": f"{prefix}-{i:06d}",
            "requested_at": now,
            "line_of_business": ["auto_club", "insurer", "oem", "fleet"][i % 4],
            "service_type": "tow",
            "vehicle": {"vehicle_class": "car"},
            "location": {"lat": cell.center_lat + rng.uniform(-0.01, 0.01), "lon": cell.center_lon + rng.uniform(-0.01, 0.01)},
            "member": {"member_id": f"M{rng.integers(1e9):09d}"},
            "candidates": [{"provider_id": int(p)} for p in chosen],
        })
        jobs.append(Job(body, int(cell.region_id), len(chosen)))
    return jobs


@dataclass(frozen=True)
class Answer:
    """What one request got: when it left (seconds since the run started), how long it took."""

    sent_s: float
    latency_s: float
    status: int
    region_id: int
    n_candidates: int
    request_id: str | None = None
    arm: str | None = None
    degraded: bool = False
    #: ``(component, reason)`` of every degradation: ``("cell_traffic", "stale")``, ...
    flags: frozenset[tuple[str, str]] = frozenset()
    versions: tuple[tuple[str, str | None], ...] = ()

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def reasons(self) -> frozenset[str]:
        return frozenset(reason for _, reason in self.flags)

    @property
    def components(self) -> frozenset[str]:
        return frozenset(component for component, _ in self.flags)


async def _send(client, url: str, job: Job, started: float) -> Answer:
    import httpx

    sent = time.monotonic()
    try:
        response = await client.post(url, content=job.body, headers={"content-type": "application/json"})
    except httpx.HTTPError:
        return Answer(sent - started, time.monotonic() - sent, 0, job.region_id, job.n_candidates)
    latency = time.monotonic() - sent
    if response.status_code != 200:
        return Answer(sent - started, latency, response.status_code, job.region_id, job.n_candidates)
    body = response.json()
    return Answer(
        sent - started, latency, 200, job.region_id, job.n_candidates, body["request_id"], body["arm"], bool(body["degraded"]),
        frozenset((d["component"], d["reason"]) for d in body["degradations"]), tuple(sorted(body["model_versions"].items())),
    )


async def run_load(
    base_url: str, jobs: Sequence[Job], rate: float, timeout_s: float = 10.0, started: float | None = None, offsets: Sequence[float] | None = None
) -> list[Answer]:
    """Send ``jobs`` to ``POST {base_url}/v1/dispatch/score`` at ``rate`` per second, open loop.

    Bounded: ``len(jobs)`` requests, each with ``timeout_s``; the run ends by itself after
    ``len(jobs) / rate + timeout_s`` seconds at most. A transport error or timeout is an answer
    with status 0. ``started`` (a ``time.monotonic()`` value, the same clock in every process of
    this machine) lets a caller share the clock and start the schedule later. ``offsets``
    (seconds after ``started``, non-decreasing, one per job) replaces the fixed rate by a
    schedule: a replay sends each job when its simulated request time comes.
    """
    if offsets is not None and len(offsets) != len(jobs):
        raise ValueError(f"{len(offsets)} offsets for {len(jobs)} jobs")
    import httpx

    if not base_url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        raise ValueError(f"load goes to loopback only, not {base_url}")
    url = base_url + SCORE_PATH
    limits = httpx.Limits(max_connections=256, max_keepalive_connections=64)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
        t0 = time.monotonic() if started is None else started
        tasks = []
        for i, job in enumerate(jobs):
            delay = t0 + (i / rate if offsets is None else offsets[i]) - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(_send(client, url, job, t0)))
        return list(await asyncio.gather(*tasks))


class LoadProcess:
    """``run_load`` in a process of its own, started once and reused.

    A drill injects faults from its own process (pushing features, loading models, killing
    actors); in that process those would hold the GIL and delay the client's event loop, and
    the delay would be measured as service latency. Here the client has a core to itself.
    """

    def __init__(self) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_serve_loads, args=(child,), name="load-generator", daemon=True)
        self._process.start()

    def start(self, base_url: str, jobs: Sequence[Job], rate: float, started: float, timeout_s: float = 10.0, offsets: Sequence[float] | None = None) -> None:
        """Begin a run whose schedule starts at ``started`` (``time.monotonic()``)."""
        self._conn.send((base_url, list(jobs), rate, started, timeout_s, None if offsets is None else list(offsets)))

    def answers(self) -> list[Answer]:
        """The answers of the run begun last; blocks until it ends."""
        result = self._conn.recv()
        if isinstance(result, BaseException):
            raise result
        return result

    def close(self) -> None:
        self._conn.send(None)
        self._process.join(10)
        if self._process.is_alive():
            self._process.terminate()


def _serve_loads(conn) -> None:
    while (request := conn.recv()) is not None:
        base_url, jobs, rate, started, timeout_s, offsets = request
        try:
            conn.send(asyncio.run(run_load(base_url, jobs, rate, timeout_s, started, offsets)))
        except Exception as exc:  # noqa: BLE001 - handed to the caller, who raises it
            conn.send(exc)


def percentile_ms(answers: Sequence[Answer], q: float = 99.0) -> float:
    """The ``q``-th percentile latency of ``answers`` in ms (NaN if none)."""
    if not answers:
        return float("nan")
    return float(np.percentile([a.latency_s for a in answers], q) * 1000.0)
