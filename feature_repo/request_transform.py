"""Features of one (job, candidate) pair, computed at request time: the one definition, without Feast.

``compute_request_features`` (a frame) and ``request_feature_matrix`` (its numpy kernel) are what
the ``request_features`` on-demand view (``feature_repo/request_features.py``) runs in Feast's
historical retrieval, what serving calls on the candidate frame it built, and what the in-process
point-in-time join (``retrain/point_in_time.py``) applies. This module imports no Feast, so a Ray
worker that only computes these features does not pay Feast's import.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from contracts.features import CELL_TRAFFIC, LINES_OF_BUSINESS, PROVIDER_STATUS, REQUEST_FEATURES, SERVICE_TYPES, VEHICLE_CLASSES

#: Bump when the meaning of any request feature changes; part of ``FEATURE_DEFINITION_VERSION``.
REQUEST_TRANSFORM_REVISION = 1

#: Mean Earth radius (IUGG), km.
EARTH_RADIUS_KM = 6371.0088
#: Traffic speeds below this are clipped before dividing: a jammed cell reads 0-2 km/h and would
#: otherwise blow the naive travel time up to hours.
MIN_SPEED_KMH = 5.0

#: Columns ``compute_request_features`` reads. The first seven arrive with the request; the
#: last three are stored features (``provider_status`` location, ``cell_traffic`` speed).
REQUEST_INPUTS: tuple[str, ...] = (
    "job_id",
    "job_lat",
    "job_lon",
    "request_ts",
    "line_of_business",
    "service_type",
    "vehicle_class",
    "provider_lat",
    "provider_lon",
    "speed_kmh",
)

#: The stored inputs and the feature group each comes from (the on-demand view's feature-view sources).
STORED_REQUEST_INPUTS: dict[str, str] = {
    "provider_lat": PROVIDER_STATUS.name,
    "provider_lon": PROVIDER_STATUS.name,
    "speed_kmh": CELL_TRAFFIC.name,
}


def _codes(values: pd.Series, vocabulary: tuple[str, ...]) -> np.ndarray:
    """Index of each value in the contract vocabulary, -1 for anything unknown or missing."""
    lookup = {name: i for i, name in enumerate(vocabulary)}
    return values.map(lookup).fillna(-1).to_numpy(dtype=np.float64)


def _timestamps(values: pd.Series) -> pd.Series:
    """Request times as UTC timestamps; numbers are read as epoch seconds (Feast's UnixTimestamp)."""
    if pd.api.types.is_numeric_dtype(values):
        return pd.to_datetime(values, unit="s", utc=True)
    return pd.to_datetime(values, utc=True)


def haversine_km(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    """Great-circle distance in km: d = 2R asin(sqrt(sin²(Δφ/2) + cos φ1 cos φ2 sin²(Δλ/2)))."""
    phi1, phi2 = np.radians(lat1), np.radians(lat2)
    dphi, dlmb = phi2 - phi1, np.radians(lon2 - lon1)
    a = np.sin(dphi / 2) ** 2 + np.cos(phi1) * np.cos(phi2) * np.sin(dlmb / 2) ** 2
    return 2 * EARTH_RADIUS_KM * np.arcsin(np.sqrt(np.clip(a, 0.0, 1.0)))


def initial_bearing_rad(lat1: np.ndarray, lon1: np.ndarray, lat2: np.ndarray, lon2: np.ndarray) -> np.ndarray:
    """Initial great-circle bearing from point 1 to point 2, radians clockwise from north:
    θ = atan2(sin Δλ cos φ2, cos φ1 sin φ2 − sin φ1 cos φ2 cos Δλ)."""
    phi1, phi2 = np.radians(lat1), np.radians(lat2)
    dlmb = np.radians(lon2 - lon1)
    y = np.sin(dlmb) * np.cos(phi2)
    x = np.cos(phi1) * np.sin(phi2) - np.sin(phi1) * np.cos(phi2) * np.cos(dlmb)
    return np.arctan2(y, x)


def rank_min_within(groups: np.ndarray, values: np.ndarray) -> np.ndarray:
    """1-based rank of each value within its group, ties sharing the lowest rank; NaN stays NaN.

    The same as pandas ``groupby(groups).rank(method="min")``, in numpy so one job's candidates
    can be ranked on the request path without building a DataFrame.
    """
    out = np.full(len(values), np.nan)
    idx = np.nonzero(~np.isnan(values))[0]
    if len(idx) == 0:
        return out
    order = idx[np.lexsort((values[idx], groups[idx]))]
    g, v = groups[order], values[order]
    positions = np.arange(len(order))
    new_group = np.r_[True, g[1:] != g[:-1]]
    new_value = new_group | np.r_[True, v[1:] != v[:-1]]
    group_start = np.maximum.accumulate(np.where(new_group, positions, 0))
    first_of_value = np.maximum.accumulate(np.where(new_value, positions, 0))
    out[order] = first_of_value - group_start + 1
    return out


def request_feature_matrix(
    job_group: np.ndarray,
    job_lat: np.ndarray,
    job_lon: np.ndarray,
    provider_lat: np.ndarray,
    provider_lon: np.ndarray,
    speed_kmh: np.ndarray,
    hour: np.ndarray,
    weekday: np.ndarray,
    lob_code: np.ndarray,
    service_code: np.ndarray,
    vehicle_code: np.ndarray,
) -> np.ndarray:
    """The kernel: ``REQUEST_FEATURES`` as an (n, 14) float64 matrix, columns in contract order.

    ``job_group`` is an integer per row identifying its job (rank and count are within it);
    ``hour`` and ``weekday`` are of the request time in UTC; codes are vocabulary indices (-1
    unknown). ``compute_request_features`` (training, through Feast) and the serving path both
    call this, so the features are computed by one piece of code.
    """
    distance = haversine_km(provider_lat, provider_lon, job_lat, job_lon)
    bearing = initial_bearing_rad(provider_lat, provider_lon, job_lat, job_lon)
    speed = np.maximum(speed_kmh, MIN_SPEED_KMH)
    _, group_index, group_size = np.unique(job_group, return_inverse=True, return_counts=True)
    columns = {
        "distance_km": distance,
        "bearing_sin": np.sin(bearing),
        "bearing_cos": np.cos(bearing),
        "naive_travel_min": distance / speed * 60.0,
        "hour_of_day": hour,
        "day_of_week": weekday,
        "hour_sin": np.sin(2 * np.pi * hour / 24.0),
        "hour_cos": np.cos(2 * np.pi * hour / 24.0),
        "is_weekend": (weekday >= 5).astype(np.float64),
        "lob_code": lob_code,
        "service_code": service_code,
        "vehicle_code": vehicle_code,
        "candidate_rank_by_distance": rank_min_within(job_group, distance),
        "n_candidates": group_size[group_index].astype(np.float64),
    }
    return np.column_stack([np.asarray(columns[name], dtype=np.float64) for name in REQUEST_FEATURES])


def compute_request_features(frame: pd.DataFrame) -> pd.DataFrame:
    """``REQUEST_FEATURES`` for every row of ``frame``: one row per (job, candidate provider).

    ``frame`` holds ``REQUEST_INPUTS``. The frame must contain *all* candidates of each job it
    mentions, because rank and count are taken within ``job_id``. Missing provider location or
    traffic speed gives NaN distance-derived features (the model treats them as missing) rather
    than an invented value. All outputs are float64, index-aligned with ``frame``.

    - ``distance_km``: haversine distance provider → job.
    - ``bearing_sin``/``bearing_cos``: initial bearing provider → job.
    - ``naive_travel_min`` = distance / max(speed_kmh, 5) × 60.
    - ``hour_of_day`` (0-23), ``day_of_week`` (Monday = 0), ``is_weekend``: of ``request_ts`` in UTC.
    - ``hour_sin``/``hour_cos`` = sin/cos(2π · hour_of_day / 24).
    - ``lob_code``/``service_code``/``vehicle_code``: index in the contract vocabulary, -1 unknown.
    - ``candidate_rank_by_distance``: 1 = nearest in the job; ties share the lower rank, so the
      value does not depend on row order.
    - ``n_candidates``: rows of the job in ``frame``.
    """
    ts = _timestamps(frame["request_ts"])
    matrix = request_feature_matrix(
        job_group=pd.factorize(frame["job_id"])[0],
        job_lat=frame["job_lat"].to_numpy(dtype=np.float64),
        job_lon=frame["job_lon"].to_numpy(dtype=np.float64),
        provider_lat=frame["provider_lat"].to_numpy(dtype=np.float64),
        provider_lon=frame["provider_lon"].to_numpy(dtype=np.float64),
        speed_kmh=frame["speed_kmh"].to_numpy(dtype=np.float64),
        hour=ts.dt.hour.to_numpy(dtype=np.float64),
        weekday=ts.dt.dayofweek.to_numpy(dtype=np.float64),
        lob_code=_codes(frame["line_of_business"], LINES_OF_BUSINESS),
        service_code=_codes(frame["service_type"], SERVICE_TYPES),
        vehicle_code=_codes(frame["vehicle_class"], VEHICLE_CLASSES),
    )
    return pd.DataFrame(matrix, columns=list(REQUEST_FEATURES), index=frame.index)

