"""A tiny deterministic warehouse for feature-store tests, written per ``contracts.warehouse``.

Four days, 20 providers, 10 cells, 3 regions. Every stored feature value encodes where it came
from, so a test can read any joined value back to its row:

    value = entity_id * 1e6 + minutes since WORLD_START of event_timestamp + feature_index / 1000

except the three inputs of the request view (``provider_lat``, ``provider_lon``,
``speed_kmh``), which hold plausible coordinates and speeds. Batch groups have one snapshot per
entity per day at 01:00; near-real-time groups one every 10 minutes. Holes make TTLs bite:
``DORMANT_PROVIDER`` has ``provider_batch`` on day 0 only, and ``provider_status`` for
``GAP_PROVIDER`` and ``cell_traffic`` for ``GAP_CELL`` stop between ``GAP_START`` and
``GAP_END``. Jobs are placed inside those holes on purpose.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from contracts.features import FEATURE_GROUPS, LINES_OF_BUSINESS, SERVICE_TYPES, VEHICLE_CLASSES, FeatureGroup
from contracts.warehouse import CANDIDATES, FEATURE_SCHEMAS, REQUESTS, feature_dir, partition_dir

WORLD_START = datetime(2026, 3, 2, tzinfo=UTC)  # a Monday
DAYS = 4
PROVIDERS = tuple(range(1, 21))
CELLS = tuple(range(1, 11))
REGIONS = (1, 2, 3)
NRT_STEP = timedelta(minutes=10)
BATCH_HOUR = timedelta(hours=1)
DORMANT_PROVIDER = 19
GAP_PROVIDER = 5
GAP_CELL = 3
GAP_START = WORLD_START + timedelta(days=2, hours=8)
GAP_END = WORLD_START + timedelta(days=2, hours=12)
JOBS_PER_DAY = 30
CANDIDATES_PER_JOB = 4
REAL_VALUED = ("provider_lat", "provider_lon", "speed_kmh")


def region_of(cell_id: int) -> int:
    return (cell_id - 1) % len(REGIONS) + 1


def encoded_value(entity_id: int, event_ts: datetime, feature_index: int) -> float:
    minutes = (event_ts - WORLD_START).total_seconds() / 60.0
    return entity_id * 1e6 + minutes + feature_index / 1000.0


def decode_event_ts(value: float, entity_id: int) -> datetime:
    """Event timestamp of the row an encoded feature value came from."""
    minutes = np.floor(value - entity_id * 1e6 + 1e-9)
    return WORLD_START + timedelta(minutes=float(minutes))


def _real_value(name: str, entity_id: int, event_ts: datetime) -> float:
    step = int((event_ts - WORLD_START) / NRT_STEP)
    if name == "provider_lat":
        return 42.20 + 0.013 * (entity_id % 9) + 0.0007 * (step % 11)
    if name == "provider_lon":
        return -71.20 + 0.011 * (entity_id % 7) - 0.0005 * (step % 13)
    return 8.0 + 6.0 * ((entity_id + step) % 9)  # speed_kmh, 8..56


def _snapshot_times(group: FeatureGroup) -> list[datetime]:
    if group.cadence == "batch":
        return [WORLD_START + timedelta(days=d) + BATCH_HOUR for d in range(DAYS)]
    steps = int(timedelta(days=DAYS) / NRT_STEP)
    return [WORLD_START + i * NRT_STEP for i in range(steps)]


def _entities(group: FeatureGroup) -> tuple[int, ...]:
    return {"provider": PROVIDERS, "cell": CELLS, "region": REGIONS}[group.entity]


def _skipped(group: FeatureGroup, entity_id: int, event_ts: datetime) -> bool:
    if group.name == "provider_batch" and entity_id == DORMANT_PROVIDER:
        return event_ts >= WORLD_START + timedelta(days=1)
    in_gap = GAP_START < event_ts < GAP_END
    if group.name == "provider_status" and entity_id == GAP_PROVIDER:
        return in_gap
    if group.name == "cell_traffic" and entity_id == GAP_CELL:
        return in_gap
    return False


def feature_frame(group: FeatureGroup) -> pd.DataFrame:
    """The group's whole offline history as the upstream pipeline would write it."""
    rows = []
    for event_ts in _snapshot_times(group):
        for entity_id in _entities(group):
            if _skipped(group, entity_id, event_ts):
                continue
            row = {
                group.join_key: entity_id,
                "event_timestamp": event_ts,
                "created_timestamp": event_ts + timedelta(minutes=2),
            }
            for i, name in enumerate(group.features):
                row[name] = (
                    _real_value(name, entity_id, event_ts)
                    if name in REAL_VALUED
                    else encoded_value(entity_id, event_ts, i)
                )
            rows.append(row)
    return pd.DataFrame(rows)


def _job_times(rng: np.random.Generator) -> list[datetime]:
    times = []
    for day in range(DAYS):
        seconds = np.sort(rng.integers(0, 86_400, size=JOBS_PER_DAY))
        times += [WORLD_START + timedelta(days=day, seconds=int(s), microseconds=int(s) % 997) for s in seconds]
    # Inside the status/traffic holes (more than 30 minutes after the last value)...
    times.append(GAP_START + timedelta(hours=1, minutes=7))
    times.append(GAP_START + timedelta(hours=2, minutes=31))
    # ...and late on the last day, when the dormant provider's batch row is past its 3-day TTL.
    times.append(WORLD_START + timedelta(days=DAYS - 1, hours=23, minutes=10))
    return sorted(times)


def requests_and_candidates(seed: int = 11) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    requests, candidates = [], []
    for n, request_ts in enumerate(_job_times(rng)):
        job_id = f"J{n:05d}"
        in_gap = GAP_START < request_ts < GAP_END
        cell_id = GAP_CELL if in_gap else int(rng.choice(CELLS))
        providers = [int(p) for p in rng.choice(PROVIDERS, size=CANDIDATES_PER_JOB, replace=False)]
        if in_gap and GAP_PROVIDER not in providers:
            providers[0] = GAP_PROVIDER
        if request_ts > WORLD_START + timedelta(days=DAYS - 1, hours=23) and DORMANT_PROVIDER not in providers:
            providers[0] = DORMANT_PROVIDER
        lob = LINES_OF_BUSINESS[n % len(LINES_OF_BUSINESS)]
        service = SERVICE_TYPES[n % len(SERVICE_TYPES)]
        vehicle = VEHICLE_CLASSES[n % len(VEHICLE_CLASSES)]
        requests.append(
            {
                "job_id": job_id,
                "request_ts": request_ts,
                "member_id": f"M{n:06d}",
                "member_name": f"Member {n}",
                "member_phone": f"+1-555-{n:04d}",
                "job_lat": 42.25 + 0.01 * float(rng.random()) * 10,
                "job_lon": -71.15 + 0.01 * float(rng.random()) * 10,
                "cell_id": cell_id,
                "region_id": region_of(cell_id),
                "line_of_business": lob,
                "service_type": service,
                "vehicle_class": vehicle,
                "weather": "clear",
                "n_candidates": CANDIDATES_PER_JOB,
            }
        )
        for index, provider_id in enumerate(providers):
            candidates.append(
                {
                    "job_id": job_id,
                    "provider_id": provider_id,
                    "request_ts": request_ts,
                    "cell_id": cell_id,
                    "region_id": region_of(cell_id),
                    "line_of_business": lob,
                    "service_type": service,
                    "vehicle_class": vehicle,
                    "provider_cohort": "fleet" if provider_id % 2 else "independent",
                    "candidate_index": index,
                    "n_candidates": CANDIDATES_PER_JOB,
                }
            )
    return pd.DataFrame(requests), pd.DataFrame(candidates)


def _write_partitioned(frame: pd.DataFrame, schema: pa.Schema, root: Path, table: str, ts_column: str) -> None:
    days = frame[ts_column].map(lambda ts: ts.date())
    for day, part in frame.groupby(days):
        out = partition_dir(root, table, day)
        out.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pandas(part, schema=schema, preserve_index=False), out / "part-0.parquet")


@dataclass
class FeatureWorld:
    root: Path
    features: dict[str, pd.DataFrame] = field(default_factory=dict)
    requests: pd.DataFrame = field(default_factory=pd.DataFrame)
    candidates: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def start(self) -> datetime:
        return WORLD_START

    @property
    def end(self) -> datetime:
        return WORLD_START + timedelta(days=DAYS)

    @property
    def days(self) -> list[date]:
        return [(WORLD_START + timedelta(days=d)).date() for d in range(DAYS)]


def write_feature_world(root: Path) -> FeatureWorld:
    """Write the world under ``root`` and return the frames it wrote."""
    world = FeatureWorld(root=Path(root))
    for group in FEATURE_GROUPS:
        frame = feature_frame(group)
        world.features[group.name] = frame
        table = str(feature_dir(Path(""), group.name))
        _write_partitioned(frame, FEATURE_SCHEMAS[group.name], world.root, table, "event_timestamp")
    world.requests, world.candidates = requests_and_candidates()
    _write_partitioned(world.requests, REQUESTS, world.root, "raw/requests", "request_ts")
    _write_partitioned(world.candidates, CANDIDATES, world.root, "dispatch/candidates", "request_ts")
    return world
