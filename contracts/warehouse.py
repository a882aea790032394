"""Tables of the dispatch warehouse: names, Arrow schemas and where they sit under a data root.

In production these tables come from the dispatch event bus and the data warehouse; here the
simulator writes them. Every consumer (Feast sources, training, backtests, monitors) reads them
through this module so a column or path is defined once.

Layout under a data root (all parquet, Hive-partitioned by UTC date ``date=YYYY-MM-DD``)::

    world/cells.parquet, world/regions.parquet, world/providers.parquet   static entities
    raw/requests/date=D/       job requests as received: the only table with member PII
    dispatch/candidates/date=D one row per (job, candidate provider), PII-free
    dispatch/events/date=D/    lifecycle events: offer, accept, decline, reassign, arrival, ...
    labels/date=D/             outcomes, partitioned by the date they became *known*
    features/<group>/date=D/   feature-group snapshots, ``event_timestamp`` per row
    manifest.json              what was simulated: seed, span, scenarios, counts
"""

from __future__ import annotations

from datetime import date
from enum import StrEnum
from pathlib import Path

import pyarrow as pa

from contracts.features import FEATURE_GROUPS, FeatureGroup

TS = pa.timestamp("us", tz="UTC")
#: Columns of every feature-group table: when the value held (Feast's ``timestamp_field``) and when
#: it was written (``created_timestamp_column``, the tie-break between rows of the same event time).
EVENT_TIMESTAMP = "event_timestamp"
CREATED_TIMESTAMP = "created_timestamp"

#: Columns holding raw member PII. They may exist only in ``raw/requests``; a scan test checks
#: that no other artifact carries them or their values.
MEMBER_PII_COLUMNS: tuple[str, ...] = ("member_id", "member_name", "member_phone", "job_lat", "job_lon")


class EventType(StrEnum):
    REQUEST = "request"
    OFFER = "offer"
    ACCEPT = "accept"
    DECLINE = "decline"
    REASSIGN = "reassign"
    ARRIVAL = "arrival"
    CANCEL = "cancel"
    OVERRIDE = "override"


class LabelType(StrEnum):
    ARRIVAL_MINUTES = "arrival_minutes"
    ACCEPTED = "accepted"


class LabelSource(StrEnum):
    GPS = "gps"
    PROVIDER_RESPONSE = "provider_response"
    MANUAL_OVERRIDE = "manual_override"
    CORRECTION = "correction"


REQUESTS = pa.schema(
    [
        ("job_id", pa.string()),
        ("request_ts", TS),
        ("member_id", pa.string()),
        ("member_name", pa.string()),
        ("member_phone", pa.string()),
        ("job_lat", pa.float64()),
        ("job_lon", pa.float64()),
        ("cell_id", pa.int64()),
        ("region_id", pa.int64()),
        ("line_of_business", pa.string()),
        ("service_type", pa.string()),
        ("vehicle_class", pa.string()),
        ("weather", pa.string()),
        ("n_candidates", pa.int32()),
    ]
)

CANDIDATES = pa.schema(
    [
        ("job_id", pa.string()),
        ("provider_id", pa.int64()),
        ("request_ts", TS),
        ("cell_id", pa.int64()),
        ("region_id", pa.int64()),
        ("line_of_business", pa.string()),
        ("service_type", pa.string()),
        ("vehicle_class", pa.string()),
        ("provider_cohort", pa.string()),
        ("candidate_index", pa.int32()),
        ("n_candidates", pa.int32()),
    ]
)

EVENTS = pa.schema(
    [
        ("event_id", pa.string()),
        ("job_id", pa.string()),
        ("provider_id", pa.int64()),
        ("event_type", pa.string()),
        ("event_ts", TS),
        ("cell_id", pa.int64()),
        ("region_id", pa.int64()),
        ("line_of_business", pa.string()),
    ]
)

LABELS = pa.schema(
    [
        ("job_id", pa.string()),
        ("provider_id", pa.int64()),
        ("label_type", pa.string()),
        ("value", pa.float64()),
        ("request_ts", TS),
        ("known_at", TS),
        ("revision", pa.int32()),
        ("source", pa.string()),
    ]
)

CELLS = pa.schema(
    [
        ("cell_id", pa.int64()),
        ("region_id", pa.int64()),
        ("row", pa.int32()),
        ("col", pa.int32()),
        ("center_lat", pa.float64()),
        ("center_lon", pa.float64()),
        ("urban_index", pa.float64()),
        ("demand_weight", pa.float64()),
    ]
)

REGIONS = pa.schema([("region_id", pa.int64()), ("region_name", pa.string()), ("n_cells", pa.int32())])

PROVIDERS = pa.schema(
    [
        ("provider_id", pa.int64()),
        ("home_cell_id", pa.int64()),
        ("region_id", pa.int64()),
        ("provider_cohort", pa.string()),
        ("tenure_band", pa.string()),
        ("fleet_band", pa.string()),
        ("rating_tier", pa.string()),
        ("capacity", pa.int32()),
    ]
)

TABLES: dict[str, pa.Schema] = {
    "raw/requests": REQUESTS,
    "dispatch/candidates": CANDIDATES,
    "dispatch/events": EVENTS,
    "labels": LABELS,
}


def feature_schema(g: FeatureGroup) -> pa.Schema:
    """Schema of a feature group's offline table: join key, event and created timestamps, features."""
    fields = [(g.join_key, pa.int64()), (EVENT_TIMESTAMP, TS), (CREATED_TIMESTAMP, TS)]
    fields += [(f, pa.float64()) for f in g.features]
    return pa.schema(fields)


FEATURE_SCHEMAS: dict[str, pa.Schema] = {g.name: feature_schema(g) for g in FEATURE_GROUPS}


def table_dir(root: Path, table: str) -> Path:
    """Directory of a partitioned table (``raw/requests``, ``labels``, ``features/cell_traffic``...)."""
    return Path(root) / table


def feature_dir(root: Path, group_name: str) -> Path:
    return Path(root) / "features" / group_name


def partition_dir(root: Path, table: str, day: date) -> Path:
    return table_dir(root, table) / f"date={day.isoformat()}"


def world_path(root: Path, name: str) -> Path:
    """``world/cells.parquet`` and friends: the static entity tables."""
    return Path(root) / "world" / f"{name}.parquet"


def manifest_path(root: Path) -> Path:
    return Path(root) / "manifest.json"
