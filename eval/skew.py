"""Training-serving skew: what serving fed the model versus what training would have fed it.

For the same rows (job, candidate, request time), the prediction log holds the feature vector
the model actually scored, and Feast's historical retrieval (``retrain.training_set``) recomputes
it from the warehouse, the source every training set comes from. Any systematic difference
means the model is served inputs it was never trained on: a push pipeline in another unit, a
cache serving stale values, a request feature computed differently online.

Per (segment, feature) the report gives:

- ``mismatch_rate``: share of rows whose served and offline values differ beyond tolerance
  (``mismatch_mask``: float32 relative precision, plus the log's rounding quantum for the
  location columns ``contracts.prediction_log.LOCATION_QUANTA`` coarsens; NaN equals NaN);
- ``served_to_offline``: ratio of mean served to mean offline value, so a unit bug reads
  as its factor (0.621 for km/h logged as mph);
- ``wasserstein_norm``: ``scipy.stats.wasserstein_distance(offline, served) / std(offline)``,
  the distribution distance the drift scan reports (``eval.drift.wasserstein_norm``), computed
  here on the paired rows.
- ``mismatch_ratio``: median served/offline ratio over the mismatching rows: a unit bug
  reads as its exact factor (0.621 for km/h pushed as mph), a stale cache as a spread;
- ``served_ahead``: rows left out because serving read a value stamped after the request
  (:func:`served_ahead`: a time-compressed replay's artefact, never live);
- ``skewed``: mismatch rate at least ``min_mismatch`` on at least ``min_rows`` rows.

Where a bug shows up: a segment flags where served values come from a path the warehouse does
not share. A bug in the warehouse itself (the simulator's ``unit_change`` written to history)
reaches training and serving alike; that is drift, caught by the drift scan, not skew.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from cluster.config import Settings
from contracts.features import FEATURE_GROUPS
from contracts.prediction_log import LOCATION_QUANTA, MODEL_FEATURES, age_column, coarsen_location, feature_column
from eval import drift
from serve_apps.prediction_log import read_prediction_log

#: Relative tolerance: the log stores float32 (≈ 6e-8 relative precision); values recomputed in
#: float64 from float32 inputs differ by a few float32 ulps.
RELATIVE_TOLERANCE = 1e-5
#: A (segment, feature) with at least this share of mismatching rows is skew.
DEFAULT_MIN_MISMATCH = 0.05
DEFAULT_MIN_ROWS = 30
#: Columns the skew report joins on (log column names).
JOIN_KEYS: tuple[str, ...] = ("job_id", "provider_id", "requested_at")


def mismatch_mask(served: np.ndarray, offline: np.ndarray, absolute_tolerance: float = 0.0) -> np.ndarray:
    """``|served − offline| > atol + rtol·|offline|``, with NaN matching NaN and NaN never matching a number."""
    a = np.asarray(served, dtype=np.float64)
    b = np.asarray(offline, dtype=np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    one_nan = np.isnan(a) ^ np.isnan(b)
    with np.errstate(invalid="ignore"):
        differs = np.abs(a - b) > absolute_tolerance + RELATIVE_TOLERANCE * np.abs(b)
    return (differs & ~both_nan) | one_nan


def normalized_wasserstein(reference: np.ndarray, current: np.ndarray) -> float:
    """``W₁(reference, current) / std(reference)`` over finite values; ``nan`` if either is empty
    or the reference is constant (then any difference is infinite in its own units)."""
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
    if not ref.size or not cur.size:
        return float("nan")
    return drift.wasserstein_norm(ref, cur) if float(np.std(ref)) > 0 else float("nan")


def feature_skew(served: np.ndarray, offline: np.ndarray, absolute_tolerance: float = 0.0) -> dict[str, float]:
    """One feature's paired comparison: mismatch rate, mean ratio, normalized distance, rows."""
    a = np.asarray(served, dtype=np.float64)
    b = np.asarray(offline, dtype=np.float64)
    mismatch = mismatch_mask(a, b, absolute_tolerance)
    ratio_rows = mismatch & np.isfinite(a) & np.isfinite(b) & (b != 0)
    offline_mean = float(np.nanmean(b)) if np.isfinite(b).any() else float("nan")
    served_mean = float(np.nanmean(a)) if np.isfinite(a).any() else float("nan")
    return {
        "n": float(a.size),
        "mismatch_rate": float(mismatch.mean()) if a.size else float("nan"),
        "served_mean": served_mean,
        "offline_mean": offline_mean,
        "served_to_offline": served_mean / offline_mean if offline_mean else float("nan"),
        "mismatch_ratio": float(np.median(a[ratio_rows] / b[ratio_rows])) if ratio_rows.any() else float("nan"),
        "wasserstein_norm": normalized_wasserstein(b, a),
    }


def offline_matrix(offline: pd.DataFrame, features: Sequence[str] = MODEL_FEATURES) -> np.ndarray:
    """The offline frame's features (``model_features()`` names) as the log would have stored them:
    float32, location columns coarsened to ``LOCATION_QUANTA``; rows x features."""
    by_feature = np.array(offline[list(MODEL_FEATURES)].to_numpy(np.float64).T, dtype=np.float32, order="C")
    coarsen_location(by_feature)
    keep = [MODEL_FEATURES.index(f) for f in features]
    return by_feature[keep].T


def served_ahead(log: pd.DataFrame) -> np.ndarray:
    """Rows served a value stamped after their own request time (a negative age in any group).

    Live, nothing is served from the future. A time-compressed replay delivers the feeds a few
    wall seconds ahead of its clock, so the cache has a job's values when it comes
    (``simulator.live_feed``); an entity pushed again within that lead is then served its next
    value. Such a row has no point-in-time counterpart and is left out of the comparison
    (counted in ``served_ahead``) rather than reported as skew.
    """
    ages = [log[age_column(g.name)].to_numpy(np.float64) for g in FEATURE_GROUPS if age_column(g.name) in log.columns]
    if not ages:
        return np.zeros(len(log), dtype=bool)
    with np.errstate(invalid="ignore"):
        return np.any(np.column_stack(ages) < 0, axis=1)


def skew_report(
    log: pd.DataFrame,
    offline: pd.DataFrame,
    segment: str = "region_id",
    features: Sequence[str] = MODEL_FEATURES,
    min_mismatch: float = DEFAULT_MIN_MISMATCH,
    min_rows: int = DEFAULT_MIN_ROWS,
) -> pd.DataFrame:
    """One row per (segment value, feature) comparing served (``log``) with ``offline`` values.

    ``log`` has the prediction-log columns (``feature__<name>``); ``offline`` is a
    ``retrain.training_set.build_training_set`` frame (``request_ts`` and plain feature names).
    Rows are paired on ``JOIN_KEYS`` (``request_ts`` as ``requested_at``); log rows without an
    offline row are counted in ``unpaired``. Sorted worst first.
    """
    right = offline.rename(columns={"request_ts": "requested_at"})
    ahead = served_ahead(log)
    log = log[~ahead]
    pairs = log[[*JOIN_KEYS, segment, *(feature_column(f) for f in features)]].merge(
        right[[*JOIN_KEYS, *MODEL_FEATURES]], on=list(JOIN_KEYS), how="left", indicator=True, validate="many_to_one"
    )
    unpaired = pairs["_merge"] != "both"
    pairs = pairs[~unpaired].reset_index(drop=True)
    offline_values = offline_matrix(pairs, features)
    rows = []
    for value, index in pairs.groupby(segment, sort=True).indices.items():
        for j, name in enumerate(features):
            stats = feature_skew(pairs[feature_column(name)].to_numpy()[index], offline_values[index, j], LOCATION_QUANTA.get(name, 0.0))
            rows.append({segment: value, "feature": name, **stats})
    report = pd.DataFrame(rows)
    if report.empty:
        return report
    report["unpaired"] = int(unpaired.sum())
    report["served_ahead"] = int(ahead.sum())
    report["skewed"] = (report["mismatch_rate"] >= min_mismatch) & (report["n"] >= min_rows)
    return report.sort_values(["skewed", "mismatch_rate", "wasserstein_norm"], ascending=False, kind="stable").reset_index(drop=True)


def offline_features(settings: Settings, data_root: Path, start: datetime, end: datetime) -> pd.DataFrame:
    """Every candidate requested in ``[start, end)`` recomputed the way training sets are:
    Feast ``get_historical_features`` over the warehouse (``retrain.training_set``)."""
    from retrain.training_set import build_training_set  # imports Feast: only where it is used

    return build_training_set(settings, Path(data_root), start, end, "eta")


def skew_scan(settings: Settings, log_root: Path, start: datetime, end: datetime, segment: str = "region_id") -> pd.DataFrame:
    """The skew report for the served rows requested in ``[start, end)``: log -> Feast -> compare."""
    log = read_prediction_log(log_root, start, end).to_pandas()
    if log.empty:
        raise ValueError(f"no prediction-log rows under {log_root} requested between {start} and {end}")
    served = log[log["role"] == "served"]
    return skew_report(served, offline_features(settings, Path(settings.paths.data), start, end), segment=segment)
