"""Near-real-time state of the world at any instant: traffic, weather, provider status, regional load.

Each quantity is a deterministic function of (entity, time) built from smooth daily/weekly
patterns plus counter-based noise (see ``simulator.randomness``), so the value a feed pushed at
time t and the value that drove the outcome at time t are the same number, and a point-in-time
join can be checked exactly. Scenario effects that alter the *world* (covariate drift) are
applied here; effects that alter only what is *reported* (unit changes) are applied when rows
are written.
"""

from __future__ import annotations

import numpy as np

from simulator.randomness import Stream, normal, uniform
from simulator.scenarios import ActiveIncidents
from simulator.world import CELL_KM, KM_PER_DEG_LAT, KM_PER_DEG_LON, World

US_PER_MIN = 60_000_000
US_PER_HOUR = 60 * US_PER_MIN
US_PER_DAY = 24 * US_PER_HOUR
WEATHER = ("clear", "rain", "snow", "storm")
_WEATHER_TRAFFIC = np.array([1.0, 1.15, 1.4, 1.6])
# 2026-01-01 was a Thursday; the epoch (1970-01-01) was a Thursday too, so weekday = (days + 3) % 7.
_EPOCH_WEEKDAY_SHIFT = 3


def hour_of_day(ts_us: np.ndarray) -> np.ndarray:
    return (ts_us // US_PER_HOUR) % 24


def fractional_hour(ts_us: np.ndarray) -> np.ndarray:
    return (ts_us % US_PER_DAY) / US_PER_HOUR


def day_index(ts_us: np.ndarray) -> np.ndarray:
    return ts_us // US_PER_DAY


def day_of_week(ts_us: np.ndarray) -> np.ndarray:
    """Monday = 0."""
    return (day_index(ts_us) + _EPOCH_WEEKDAY_SHIFT) % 7


def rush(hour: np.ndarray, weekday: np.ndarray) -> np.ndarray:
    """Commute peaks at 08:00 and 17:30, damped at weekends."""
    peak = np.exp(-(((hour - 8.0) / 1.5) ** 2)) + np.exp(-(((hour - 17.5) / 2.0) ** 2))
    return peak * np.where(weekday >= 5, 0.45, 1.0)


def weather_code(world: World, region: np.ndarray, ts_us: np.ndarray) -> np.ndarray:
    """Per region and 6-hour block: mostly clear, rain in spells, snow and storms in winter."""
    block = ts_us // (6 * US_PER_HOUR)
    u = uniform(world.seed, Stream.WEATHER, region, block)
    winter = np.cos(2 * np.pi * ((day_index(ts_us) % 365) / 365.0)) * 0.5 + 0.5
    cut_rain = 0.72
    cut_snow = cut_rain + 0.18 * (1 - winter)
    cut_storm = 1.0 - 0.03 - 0.05 * winter
    return np.select([u < cut_rain, u < cut_snow, u < cut_storm], [0, 1, 2], 3).astype(np.int64)


def traffic_index(
    world: World, cell: np.ndarray, ts_us: np.ndarray, incidents: ActiveIncidents, columns: dict[str, np.ndarray]
) -> np.ndarray:
    """Travel-time multiplier over free flow (1.0 = empty roads), per cell and 5-minute bucket."""
    hour = fractional_hour(ts_us)
    region = world.cell_region[cell]
    base = 1.0 + 0.9 * world.urban[cell] * rush(hour, day_of_week(ts_us))
    region_day = np.exp(0.08 * normal(world.seed, Stream.REGION_DAY, region, day_index(ts_us)))
    weather = _WEATHER_TRAFFIC[weather_code(world, region, ts_us)]
    noise = np.exp(0.07 * normal(world.seed, Stream.TRAFFIC, cell, ts_us // (5 * US_PER_MIN)))
    drift = incidents.factor("covariate_drift", ts_us, columns, 1.0, transform=lambda s: 1.0 + s)
    return base * region_day * weather * noise * drift


def free_flow_kmh(world: World, cell: np.ndarray) -> np.ndarray:
    return 85.0 - 50.0 * world.urban[cell]


def cell_traffic(
    world: World, cell: np.ndarray, ts_us: np.ndarray, incidents: ActiveIncidents, columns: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The ``cell_traffic`` feature group at (cell, time)."""
    ti = traffic_index(world, cell, ts_us, incidents, columns)
    lag15 = traffic_index(world, cell, ts_us - 15 * US_PER_MIN, incidents, columns)
    lag60 = traffic_index(world, cell, ts_us - 60 * US_PER_MIN, incidents, columns)
    lag30 = traffic_index(world, cell, ts_us - 30 * US_PER_MIN, incidents, columns)
    region = world.cell_region[cell]
    wcode = weather_code(world, region, ts_us)
    bucket = ts_us // (5 * US_PER_MIN)
    u_inc = uniform(world.seed, Stream.TRAFFIC + 100, cell, bucket)
    lam = 0.05 + 0.6 * np.maximum(ti - 1.0, 0.0)
    doy = (day_index(ts_us) % 365) / 365.0
    temp = 18.0 - 14.0 * np.cos(2 * np.pi * (doy - 0.05)) + 6.0 * np.sin(np.pi * (fractional_hour(ts_us) - 8) / 12)
    return {
        "traffic_index": ti,
        "speed_kmh": free_flow_kmh(world, cell) / ti,
        "incident_count": np.floor(-np.log(u_inc) * lam),
        "congestion_level": np.clip(np.round((ti - 1.0) * 3.0), 0, 4),
        "road_closures": (uniform(world.seed, Stream.TRAFFIC + 101, cell, bucket) < 0.01 + 0.03 * world.urban[cell])
        .astype(np.float64),
        "traffic_index_lag_15m": lag15,
        "traffic_index_lag_60m": lag60,
        "traffic_index_mean_60m": (ti + lag15 + lag30 + lag60) / 4.0,
        "precip_mm_h": np.select([wcode == 1, wcode == 2, wcode == 3], [3.0, 1.5, 12.0], 0.0)
        * (0.5 + uniform(world.seed, Stream.WEATHER + 1, region, bucket)),
        "temperature_c": temp - 6.0 * (wcode == 2),
        "visibility_km": np.select([wcode == 1, wcode == 2, wcode == 3], [6.0, 2.0, 1.0], 12.0),
        "wind_kmh": 8.0 + 25.0 * (wcode == 3) + 6.0 * uniform(world.seed, Stream.WEATHER + 2, region, bucket),
    }


def busy_share(hour: np.ndarray) -> np.ndarray:
    """Share of a provider's capacity in use by hour of day: low at night, high mid-day."""
    return 0.15 + 0.5 * np.exp(-(((hour - 14.0) / 5.0) ** 2))


def on_shift_probability(world: World, provider: np.ndarray, hour: np.ndarray) -> np.ndarray:
    night = (hour < 6) | (hour >= 22)
    base = np.where(night, 0.35, 0.9)
    return np.clip(base + 0.05 * (world.provider_fleet[provider] - 1), 0.05, 0.98)


def provider_status(world: World, provider: np.ndarray, ts_us: np.ndarray) -> dict[str, np.ndarray]:
    """The ``provider_status`` feature group at (provider, time). Provider location is not member PII."""
    hour = fractional_hour(ts_us)
    quarter = ts_us // (15 * US_PER_MIN)
    home = world.provider_home[provider]
    # Providers roam up to ~1.5 cells from home between jobs.
    dlat = (uniform(world.seed, Stream.PROVIDER_POS, provider, quarter) - 0.5) * 3.0 * CELL_KM / KM_PER_DEG_LAT
    dlon = (uniform(world.seed, Stream.PROVIDER_POS + 1, provider, quarter) - 0.5) * 3.0 * CELL_KM / KM_PER_DEG_LON
    cap = world.provider_capacity[provider]
    u_q = uniform(world.seed, Stream.PROVIDER_QUEUE, provider, quarter)
    queue = np.floor(u_q**1.5 * (cap + 1) * busy_share(hour) * 1.6)
    on_shift = uniform(world.seed, Stream.PROVIDER_SHIFT, provider, ts_us // US_PER_HOUR) < on_shift_probability(
        world, provider, np.floor(hour)
    )
    shift_left = np.where(on_shift, 30.0 + 420.0 * uniform(world.seed, Stream.PROVIDER_SHIFT + 1, provider, day_index(ts_us)), 0.0)
    offers = np.floor(-np.log(uniform(world.seed, Stream.PROVIDER_OFFERS, provider, quarter)) * (1.0 + 2.5 * busy_share(hour)))
    declines = np.floor(offers * uniform(world.seed, Stream.PROVIDER_OFFERS + 1, provider, quarter) * 0.6)
    return {
        "provider_lat": world.cell_lat[home] + dlat,
        "provider_lon": world.cell_lon[home] + dlon,
        "queue_depth": queue,
        "active_jobs": np.minimum(queue, 1.0),
        "minutes_since_last_job": -np.log(uniform(world.seed, Stream.PROVIDER_IDLE, provider, quarter)) * 70.0 / (0.5 + busy_share(hour)),
        "on_shift": on_shift.astype(np.float64),
        "shift_minutes_remaining": shift_left,
        "current_speed_kmh": np.where(queue > 0, 25.0 + 40.0 * uniform(world.seed, Stream.PROVIDER_IDLE + 1, provider, quarter), 0.0),
        "offers_last_hour": offers,
        "declines_last_hour": declines,
    }


def region_load(
    world: World, region: np.ndarray, ts_us: np.ndarray, jobs_per_hour_region: np.ndarray
) -> dict[str, np.ndarray]:
    """The ``region_load`` feature group at (region, time), scaled to the region's expected demand."""
    hour = fractional_hour(ts_us)
    quarter = ts_us // (15 * US_PER_MIN)
    expected = jobs_per_hour_region[region]
    u = uniform(world.seed, Stream.REGION_LOAD, region, quarter)
    open_jobs = np.round(expected * (0.4 + 0.8 * u))
    n_prov = world.region_pool_count[region].astype(np.float64)
    available = np.round(n_prov * np.where((hour < 6) | (hour >= 22), 0.3, 0.75) * (0.85 + 0.3 * uniform(world.seed, Stream.REGION_LOAD + 1, region, quarter)))
    return {
        "open_jobs": open_jobs,
        "available_providers": available,
        "supply_demand_ratio": available / np.maximum(open_jobs, 1.0),
        "pending_offers": np.round(open_jobs * 0.3 * (0.5 + uniform(world.seed, Stream.REGION_LOAD + 2, region, quarter))),
        "mean_wait_last_hour_min": 35.0 + 20.0 * uniform(world.seed, Stream.REGION_LOAD + 3, region, quarter) + 10.0 * rush(hour, day_of_week(ts_us)),
        "jobs_last_hour": np.round(expected * (0.7 + 0.6 * uniform(world.seed, Stream.REGION_LOAD + 4, region, quarter))),
        "cancels_last_hour": np.round(expected * 0.08 * (0.5 + uniform(world.seed, Stream.REGION_LOAD + 5, region, quarter))),
        "reassignments_last_hour": np.round(expected * 0.04 * (0.5 + uniform(world.seed, Stream.REGION_LOAD + 6, region, quarter))),
    }
