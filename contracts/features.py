"""The feature catalogue: every feature group, its entity, cadence, TTL and columns.

Feast is the source of truth for *how* features are served and joined; this catalogue is the
data contract between the upstream pipelines (the simulator stands in for them) and the ML
system. ``feature_repo`` builds its Feast views from it and the simulator writes exactly these
columns, so a column is named in one place only.

Groups come in two cadences, monitored apart because they fail apart: ``batch`` groups are
recomputed once a day from history (a stopped pipeline makes them stale by days), and
``near_real_time`` groups are pushed by the minute (a feed outage makes them stale by minutes).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

Cadence = Literal["batch", "near_real_time"]
EntityName = Literal["provider", "cell", "region"]

#: Join key column per entity, as it appears in every table and in Feast.
ENTITY_KEYS: dict[str, str] = {"provider": "provider_id", "cell": "cell_id", "region": "region_id"}

SERVICE_TYPES: tuple[str, ...] = ("tow", "jumpstart", "tire", "lockout", "fuel", "winch")
LINES_OF_BUSINESS: tuple[str, ...] = ("auto_club", "insurer", "oem", "fleet")
VEHICLE_CLASSES: tuple[str, ...] = ("car", "suv", "van", "truck", "motorcycle", "ev")
HOUR_BUCKETS: tuple[str, ...] = ("h00_04", "h04_08", "h08_12", "h12_16", "h16_20", "h20_24")
HOURS: tuple[str, ...] = tuple(f"h{h:02d}" for h in range(24))


@dataclass(frozen=True)
class FeatureGroup:
    """One Feast feature view: a set of columns keyed by one entity and updated together.

    ``ttl`` bounds how far back a point-in-time join may look; ``freshness_limit`` is how old a
    value may be before serving treats the group as stale and degrades.
    """

    name: str
    entity: EntityName
    cadence: Cadence
    ttl: timedelta
    freshness_limit: timedelta
    features: tuple[str, ...]
    description: str

    @property
    def join_key(self) -> str:
        return ENTITY_KEYS[self.entity]


def _provider_batch_features() -> tuple[str, ...]:
    static = ("tenure_days", "fleet_size", "rating", "capacity")
    windows = tuple(
        f"{metric}_{w}"
        for metric in ("accept_rate", "late_rate", "cancel_rate", "mean_eta_error_min", "jobs_completed")
        for w in ("7d", "30d")
    )
    per_service = tuple(
        f"{metric}_{s}_30d" for s in SERVICE_TYPES for metric in ("accept_rate", "mean_arrival_min", "late_rate")
    )
    per_bucket = tuple(f"{metric}_{b}_30d" for b in HOUR_BUCKETS for metric in ("accept_rate", "mean_arrival_min"))
    per_lob = tuple(f"accept_rate_{lob}_30d" for lob in LINES_OF_BUSINESS)
    per_vehicle = tuple(f"accept_rate_{v}_30d" for v in VEHICLE_CLASSES)
    return static + windows + per_service + per_bucket + per_lob + per_vehicle + ("accept_rate_1d", "reassign_rate_30d")


def _cell_batch_features() -> tuple[str, ...]:
    static = ("urban_index", "road_density", "provider_density_30d", "cancel_rate_30d", "mean_eta_30d", "jobs_30d")
    hourly = tuple(f"{stat}_{h}_30d" for stat in ("eta_mean", "eta_p90", "eta_std", "demand") for h in HOURS)
    per_service = tuple(f"demand_share_{s}_30d" for s in SERVICE_TYPES)
    return static + hourly + per_service


def _region_batch_features() -> tuple[str, ...]:
    base = ("accept_rate_7d", "mean_eta_7d", "jobs_7d", "weather_severity_7d", "active_providers_7d")
    per_lob = tuple(f"demand_share_{lob}_7d" for lob in LINES_OF_BUSINESS)
    hourly = tuple(f"accept_rate_{h}_30d" for h in HOURS)
    return base + per_lob + hourly


PROVIDER_BATCH = FeatureGroup(
    name="provider_batch",
    entity="provider",
    cadence="batch",
    ttl=timedelta(days=3),
    freshness_limit=timedelta(hours=36),
    features=_provider_batch_features(),
    description="Provider history: acceptance, lateness, cancellations and arrival times over 1/7/30 days.",
)
CELL_BATCH = FeatureGroup(
    name="cell_batch",
    entity="cell",
    cadence="batch",
    ttl=timedelta(days=3),
    freshness_limit=timedelta(hours=36),
    features=_cell_batch_features(),
    description="Cell x hour-of-day historical ETA statistics and demand over 30 days.",
)
REGION_BATCH = FeatureGroup(
    name="region_batch",
    entity="region",
    cadence="batch",
    ttl=timedelta(days=3),
    freshness_limit=timedelta(hours=36),
    features=_region_batch_features(),
    description="Regional acceptance, ETA, demand mix and hourly acceptance over 7/30 days.",
)
CELL_TRAFFIC = FeatureGroup(
    name="cell_traffic",
    entity="cell",
    cadence="near_real_time",
    ttl=timedelta(minutes=30),
    freshness_limit=timedelta(minutes=10),
    features=(
        "traffic_index",
        "speed_kmh",
        "incident_count",
        "congestion_level",
        "road_closures",
        "traffic_index_lag_15m",
        "traffic_index_lag_60m",
        "traffic_index_mean_60m",
        "precip_mm_h",
        "temperature_c",
        "visibility_km",
        "wind_kmh",
    ),
    description="Traffic and weather per cell, pushed every few minutes by the traffic feed.",
)
PROVIDER_STATUS = FeatureGroup(
    name="provider_status",
    entity="provider",
    cadence="near_real_time",
    ttl=timedelta(minutes=30),
    freshness_limit=timedelta(minutes=10),
    features=(
        "provider_lat",
        "provider_lon",
        "queue_depth",
        "active_jobs",
        "minutes_since_last_job",
        "on_shift",
        "shift_minutes_remaining",
        "current_speed_kmh",
        "offers_last_hour",
        "declines_last_hour",
    ),
    description="Provider location, queue and shift state, pushed by the provider app.",
)
REGION_LOAD = FeatureGroup(
    name="region_load",
    entity="region",
    cadence="near_real_time",
    ttl=timedelta(minutes=30),
    freshness_limit=timedelta(minutes=10),
    features=(
        "open_jobs",
        "available_providers",
        "supply_demand_ratio",
        "pending_offers",
        "mean_wait_last_hour_min",
        "jobs_last_hour",
        "cancels_last_hour",
        "reassignments_last_hour",
    ),
    description="Regional open jobs and supply, pushed by the dispatch system.",
)

FEATURE_GROUPS: tuple[FeatureGroup, ...] = (
    PROVIDER_BATCH,
    CELL_BATCH,
    REGION_BATCH,
    CELL_TRAFFIC,
    PROVIDER_STATUS,
    REGION_LOAD,
)

#: Features computed per (job, candidate) at request time from the request itself and the
#: provider's pushed location. They are defined once, in ``feature_repo`` as an on-demand view.
REQUEST_FEATURES: tuple[str, ...] = (
    "distance_km",
    "bearing_sin",
    "bearing_cos",
    "naive_travel_min",
    "hour_of_day",
    "day_of_week",
    "hour_sin",
    "hour_cos",
    "is_weekend",
    "lob_code",
    "service_code",
    "vehicle_code",
    "candidate_rank_by_distance",
    "n_candidates",
)


def group(name: str) -> FeatureGroup:
    """The feature group called ``name``; raises KeyError naming the known groups."""
    for g in FEATURE_GROUPS:
        if g.name == name:
            return g
    raise KeyError(f"unknown feature group {name!r}; known: {[g.name for g in FEATURE_GROUPS]}")


def model_features() -> tuple[str, ...]:
    """Every model input column, in a stable order: stored groups, then request features.

    Columns are prefixed by their group (``group__feature``) so names never collide across
    entities (``accept_rate_7d`` exists for providers and regions).
    """
    stored = tuple(f"{g.name}__{f}" for g in FEATURE_GROUPS for f in g.features)
    return stored + REQUEST_FEATURES


#: Stated valid ranges ``[low, high]`` of the stored features, the contract the data-quality
#: monitor (``eval.data_quality``) checks upstream values against. A value outside is a unit,
#: sign or scaling bug upstream, not a rare event: the bounds are physical or definitional
#: (a rate is in [0, 1], a count is >= 0), with room for the extremes the world can produce.
#: Explicit entries win; otherwise the first matching name rule applies.
FEATURE_RANGES: dict[str, tuple[float, float]] = {
    "cell_traffic__traffic_index": (0.5, 10.0),
    "cell_traffic__traffic_index_lag_15m": (0.5, 10.0),
    "cell_traffic__traffic_index_lag_60m": (0.5, 10.0),
    "cell_traffic__traffic_index_mean_60m": (0.5, 10.0),
    "cell_traffic__speed_kmh": (3.0, 160.0),
    "cell_traffic__incident_count": (0.0, 100.0),
    "cell_traffic__congestion_level": (0.0, 4.0),
    "cell_traffic__road_closures": (0.0, 100.0),
    "cell_traffic__precip_mm_h": (0.0, 100.0),
    "cell_traffic__temperature_c": (-50.0, 55.0),
    "cell_traffic__visibility_km": (0.0, 50.0),
    "cell_traffic__wind_kmh": (0.0, 200.0),
    "provider_status__provider_lat": (-90.0, 90.0),
    "provider_status__provider_lon": (-180.0, 180.0),
    "provider_status__on_shift": (0.0, 1.0),
    "provider_status__current_speed_kmh": (0.0, 160.0),
    "provider_status__shift_minutes_remaining": (0.0, 24 * 60.0),
    "provider_batch__rating": (0.0, 6.0),  # a 5-star rating plus the simulator's noise
    "cell_batch__urban_index": (0.0, 1.0),
    "region_batch__weather_severity_7d": (0.0, 10.0),
}
#: ``(substring, range)`` rules for the columns not listed above, tried in order.
_RANGE_RULES: tuple[tuple[str, tuple[float, float]], ...] = (
    ("_rate", (0.0, 1.0)),
    ("share_", (0.0, 1.0)),
    ("mean_eta_error_min", (-240.0, 240.0)),
    ("_min", (0.0, 24 * 60.0)),
    ("eta_", (0.0, 24 * 60.0)),
    ("_kmh", (0.0, 160.0)),
    ("supply_demand_ratio", (0.0, 1e4)),
)
#: Everything else is a count, size, density or duration: non-negative and finite.
_DEFAULT_RANGE: tuple[float, float] = (0.0, 1e9)


def feature_range(column: str) -> tuple[float, float]:
    """Stated ``[low, high]`` of a stored feature ``<group>__<feature>`` (see ``FEATURE_RANGES``)."""
    if column in FEATURE_RANGES:
        return FEATURE_RANGES[column]
    feature = column.split("__", 1)[-1]
    for pattern, bounds in _RANGE_RULES:
        if pattern in feature:
            return bounds
    return _DEFAULT_RANGE
