"""Simulate a span of days into a warehouse directory: the entry point behind ``dispatchml simulate``.

Demand follows a daily profile (night trough, morning and evening peaks) and a weekly one
(weekends lighter); each hour is simulated, written and dropped before the next, so memory is
bounded by one hour of jobs whatever the span.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from contracts.features import FEATURE_GROUPS
from contracts.warehouse import CELLS, PROVIDERS, REGIONS, manifest_path, world_path
from simulator.dispatch import EVENTS_PER_JOB, simulate_hour
from simulator.history import BatchHistory
from simulator.live_state import US_PER_DAY, US_PER_HOUR
from simulator.scenarios import ActiveIncidents, Scenario
from simulator.world import World, build_world
from simulator.writer import WarehouseWriter

#: Share of a day's jobs in each UTC hour: trough at 03:00, peaks at 08:00 and 17:00.
_HOURS = np.arange(24)
HOURLY_PROFILE = 0.25 + np.exp(-(((_HOURS - 8.5) / 2.5) ** 2)) + 1.1 * np.exp(-(((_HOURS - 17.0) / 3.0) ** 2)) + 0.35 * np.exp(-(((_HOURS - 13.0) / 3.0) ** 2))
HOURLY_PROFILE = HOURLY_PROFILE / HOURLY_PROFILE.sum()
#: Monday..Sunday demand multipliers.
WEEKLY_PROFILE = np.array([1.05, 1.0, 1.0, 1.02, 1.1, 0.92, 0.85])
#: Nightly batch features are published at 02:00 UTC for the day that ended.
BATCH_PUBLISH_HOUR = 2


@dataclass
class SimulationSpec:
    out: Path
    days: int
    events_per_day: int
    seed: int
    start: date
    cells: int = 25_000
    regions: int = 40
    providers: int = 80_000
    candidates_per_job: int = 6
    scenario: Scenario = field(default_factory=Scenario)


@dataclass
class Manifest:
    seed: int
    start: str
    end: str
    days: int
    events_per_day_target: int
    world: dict[str, int]
    scenario: dict
    rows: dict[str, int]
    events: int
    jobs: int
    pending_labels: int
    dropped_pushes: dict[str, int]
    seconds: float
    #: Lifecycle events after the end of the span (not written, like pending labels).
    pending_events: int = 0

    def write(self, root: Path) -> None:
        manifest_path(root).write_text(json.dumps(asdict(self), indent=2, default=str))

    @classmethod
    def read(cls, root: Path) -> Manifest:
        return cls(**json.loads(manifest_path(root).read_text()))


def _write_world(world: World, root: Path) -> None:
    for name, frame, schema in (
        ("cells", world.cells_frame(), CELLS),
        ("regions", world.regions_frame(), REGIONS),
        ("providers", world.providers_frame(), PROVIDERS),
    ):
        path = world_path(root, name)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pandas(frame, schema=schema, preserve_index=False), path)


def jobs_in_hour(jobs_per_day: float, day_start_us: int, hour: int) -> int:
    weekday = int((day_start_us // US_PER_DAY + 3) % 7)
    return int(round(jobs_per_day * WEEKLY_PROFILE[weekday] * HOURLY_PROFILE[hour]))


def _publish_batch(history: BatchHistory, writer: WarehouseWriter, world: World, publish_us: int) -> None:
    keys_by_entity = {
        "provider": (np.arange(world.n_providers), {"region_id": world.provider_region}),
        "cell": (np.arange(world.n_cells), {"region_id": world.cell_region, "cell_id": np.arange(world.n_cells)}),
        "region": (np.arange(world.n_regions), {"region_id": np.arange(world.n_regions)}),
    }
    for g in FEATURE_GROUPS:
        if g.cadence != "batch":
            continue
        keys, cols = keys_by_entity[g.entity]
        writer.write_feature_rows(g.name, keys, np.full(len(keys), publish_us, dtype=np.int64), history.snapshot(g.name), cols)


def simulate(spec: SimulationSpec, progress: Callable[[int, int], None] | None = None) -> Manifest:
    """Write ``spec.days`` of dispatch history under ``spec.out``; returns the manifest it wrote.

    ``progress(done_hours, total_hours)`` is called after each simulated hour.
    """
    t0 = time.perf_counter()
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    world = build_world(spec.cells, spec.regions, spec.providers, spec.seed)
    _write_world(world, out)
    sim_start = datetime(spec.start.year, spec.start.month, spec.start.day, tzinfo=UTC)
    start_us = int(sim_start.timestamp() * 1_000_000)
    end_us = start_us + spec.days * US_PER_DAY
    incidents = ActiveIncidents(spec.scenario, sim_start)
    writer = WarehouseWriter(out, incidents, end_us)
    history = BatchHistory(world)
    jobs_per_day = spec.events_per_day / EVENTS_PER_JOB
    region_share = np.bincount(world.cell_region, weights=world.demand, minlength=world.n_regions)
    jobs_per_hour_region = jobs_per_day / 24.0 * region_share
    _publish_batch(history, writer, world, start_us)
    total_jobs = 0
    for d in range(spec.days):
        day_start = start_us + d * US_PER_DAY
        day = spec.start + timedelta(days=d)
        tag = day.strftime("%Y%m%d")
        seq = 0
        for h in range(24):
            n = jobs_in_hour(jobs_per_day, day_start, h)
            hour = simulate_hour(world, incidents, day_start + h * US_PER_HOUR, n, seq, tag, spec.candidates_per_job, jobs_per_hour_region)
            seq += n
            writer.write_hour(hour, day)
            history.observe(hour)
            if progress:
                progress(d * 24 + h + 1, spec.days * 24)
        total_jobs += seq
        history.close_day(day_start)
        writer.end_of_day(day + timedelta(days=1))
        if d + 1 < spec.days:
            _publish_batch(history, writer, world, day_start + US_PER_DAY + BATCH_PUBLISH_HOUR * US_PER_HOUR)
    writer.close()
    rows = dict(writer.out.rows)
    manifest = Manifest(
        seed=spec.seed,
        start=spec.start.isoformat(),
        end=(spec.start + timedelta(days=spec.days)).isoformat(),
        days=spec.days,
        events_per_day_target=spec.events_per_day,
        world={"cells": spec.cells, "regions": spec.regions, "providers": spec.providers, "candidates_per_job": spec.candidates_per_job},
        scenario=spec.scenario.model_dump(mode="json"),
        rows=rows,
        events=rows.get("dispatch/events", 0),
        jobs=total_jobs,
        pending_labels=writer.pending_labels,
        pending_events=writer.pending_events,
        dropped_pushes=dict(writer.dropped_pushes),
        seconds=round(time.perf_counter() - t0, 3),
    )
    manifest.write(out)
    return manifest
