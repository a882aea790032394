"""Fallback model: ETA, interval and acceptance from history tables, no online features needed.

Serving degrades to this model when the feature store is down or stale past its freshness
limit, so it must answer from the request alone (cell, region, time, and optionally the
candidate's provider id and straight-line distance):

* **ETA and interval** — the median and the ``α/2``, ``1 − α/2`` quantiles of
  ``arrival_minutes`` per cell × hour-of-week (UTC, Monday 00:00 = 0). Most cell × hour
  cells are sparse (25 000 cells × 168 hours against a few hundred thousand arrivals), so each
  statistic is shrunk towards its parent, region × hour-of-week, which is itself shrunk
  towards the global value::

      q̃_cell = (n·q_cell + k·q̃_region) / (n + k)

  with ``n`` the cell's arrivals and ``k`` a pseudo-count (``eta_prior_rows``). This is the
  credibility-weighted estimate of actuarial practice (Bühlmann 1967) applied to quantiles;
  averaging quantiles rather than pooling samples is a deliberate simplification
  (quantile averaging, Vincent 1912) that keeps the tables a few numbers per key.
* **Acceptance** — a beta-binomial posterior mean per provider shrunk to the job's region
  rate, itself shrunk to the global rate:
  ``p = (accepts + m·p_region) / (offers + m)``. Unknown providers get the region rate.
* **Ranking** — by ``distance_km`` when given, else by ETA (see ``retrain.ranking.rank_by_proxy``).

Lookups are ``np.searchsorted`` over sorted int64 keys, cheap for one job and for a backtest.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple, Self

import numpy as np
import pandas as pd

from retrain.boosting import Estimator
from retrain.eta_model import order_interval
from retrain.ranking import rank_by_proxy

HOURS_PER_WEEK = 168

_FILES = {"tables": "fallback_tables.npz", "state": "fallback_model.json"}


class FallbackPrediction(NamedTuple):
    """Per candidate: ETA with interval, acceptance prior and rank within its job."""

    eta_minutes: np.ndarray
    eta_low: np.ndarray
    eta_high: np.ndarray
    p_accept: np.ndarray
    rank: np.ndarray


def hour_of_week(request_ts: pd.Series) -> np.ndarray:
    """Hour of the week in UTC, Monday 00:00–00:59 = 0 … Sunday 23:00–23:59 = 167."""
    ts = pd.to_datetime(request_ts, utc=True)
    return (ts.dt.dayofweek.to_numpy() * 24 + ts.dt.hour.to_numpy()).astype(np.int64)


class FallbackModel(Estimator):
    """History-table ETA and acceptance priors. Learned state is the ``*_keys_``/``*_`` tables."""

    _fitted_attribute = "global_eta_"

    def __init__(
        self,
        *,
        coverage: float = 0.8,
        eta_prior_rows: float = 20.0,
        provider_prior_offers: float = 30.0,
        region_prior_offers: float = 100.0,
    ) -> None:
        self.coverage = coverage
        self.eta_prior_rows = eta_prior_rows
        self.provider_prior_offers = provider_prior_offers
        self.region_prior_offers = region_prior_offers

    @property
    def quantile_levels(self) -> tuple[float, float, float]:
        """(low, median, high) levels of the interval, e.g. (0.1, 0.5, 0.9) for 80 % coverage."""
        tail = (1.0 - self.coverage) / 2.0
        return (tail, 0.5, 1.0 - tail)

    def fit(self, frame: pd.DataFrame) -> Self:
        """Build the tables from a training frame (``request_ts``, ``cell_id``, ``region_id``,
        ``arrival_minutes``, ``accepted``, and ``provider_id`` for provider priors)."""
        needed = ["request_ts", "cell_id", "region_id", "arrival_minutes", "accepted"]
        missing = [c for c in needed if c not in frame.columns]
        if missing:
            raise KeyError(f"FallbackModel.fit needs columns {missing}")
        self._fit_eta(frame)
        self._fit_acceptance(frame)
        return self

    def _fit_eta(self, frame: pd.DataFrame) -> None:
        known = frame.loc[frame["arrival_minutes"].notna(), ["cell_id", "region_id", "arrival_minutes"]].copy()
        if known.empty:
            raise ValueError("no rows with known arrival_minutes; the fallback ETA table would be empty")
        known["how"] = hour_of_week(frame.loc[known.index, "request_ts"])
        levels = list(self.quantile_levels)
        self.global_eta_ = np.quantile(known["arrival_minutes"].to_numpy(), levels)

        region = _quantile_table(known, ["region_id", "how"], levels)
        region_values = _shrink(region.values, region.counts, self.global_eta_[None, :], self.eta_prior_rows)
        self.region_eta_keys_ = region.keys_of(HOURS_PER_WEEK)
        self.region_eta_ = region_values

        cell_region = known.groupby("cell_id")["region_id"].first()
        cell = _quantile_table(known, ["cell_id", "how"], levels)
        parent_keys = cell_region.loc[cell.frame["cell_id"]].to_numpy() * HOURS_PER_WEEK + cell.frame["how"].to_numpy()
        parent_hit, parent_pos = _find(self.region_eta_keys_, parent_keys)
        parent = np.where(parent_hit[:, None], self.region_eta_[parent_pos], self.global_eta_[None, :])
        self.cell_eta_keys_ = cell.keys_of(HOURS_PER_WEEK)
        self.cell_eta_ = _shrink(cell.values, cell.counts, parent, self.eta_prior_rows)

    def _fit_acceptance(self, frame: pd.DataFrame) -> None:
        offered = frame.loc[frame["accepted"].notna()]
        if offered.empty:
            raise ValueError("no rows with a known acceptance label; the fallback acceptance prior would be empty")
        self.global_accept_rate_ = float(offered["accepted"].mean())
        by_region = offered.groupby("region_id")["accepted"].agg(["sum", "count"]).sort_index()
        self.region_accept_keys_ = by_region.index.to_numpy(dtype=np.int64)
        self.region_accept_rate_ = (
            (by_region["sum"].to_numpy() + self.region_prior_offers * self.global_accept_rate_)
            / (by_region["count"].to_numpy() + self.region_prior_offers)
        )
        if "provider_id" in offered.columns:
            by_provider = offered.groupby("provider_id")["accepted"].agg(["sum", "count"]).sort_index()
            self.provider_keys_ = by_provider.index.to_numpy(dtype=np.int64)
            self.provider_accepts_ = by_provider["sum"].to_numpy(dtype=np.float64)
            self.provider_offers_ = by_provider["count"].to_numpy(dtype=np.float64)
        else:
            self.provider_keys_ = np.empty(0, dtype=np.int64)
            self.provider_accepts_ = np.empty(0)
            self.provider_offers_ = np.empty(0)

    def predict(
        self,
        cell_id: np.ndarray,
        region_id: np.ndarray,
        hour_of_week: np.ndarray,
        *,
        provider_id: np.ndarray | None = None,
        distance_km: np.ndarray | None = None,
        job_ids: np.ndarray | None = None,
    ) -> FallbackPrediction:
        """Fallback answer per candidate row; ``job_ids`` None means all rows are one job."""
        self._check_fitted()
        cells = np.atleast_1d(np.asarray(cell_id, dtype=np.int64))
        regions = np.broadcast_to(np.asarray(region_id, dtype=np.int64), cells.shape)
        hours = np.broadcast_to(np.asarray(hour_of_week, dtype=np.int64), cells.shape)
        eta = self._eta_table_lookup(cells, regions, hours)
        p = self._acceptance_lookup(regions, provider_id, cells.shape)
        interval = order_interval(eta[:, 1], eta[:, 0], eta[:, 2])
        rank = rank_by_proxy(interval.eta_minutes, p, distance_km, job_ids)
        return FallbackPrediction(interval.eta_minutes, interval.eta_low, interval.eta_high, p, rank)

    def predict_frame(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Offline convenience: predict for a frame of candidates with the training-frame columns."""
        distance = frame["distance_km"].to_numpy() if "distance_km" in frame.columns else None
        provider = frame["provider_id"].to_numpy() if "provider_id" in frame.columns else None
        job_ids = frame["job_id"].to_numpy() if "job_id" in frame.columns else None
        result = self.predict(
            frame["cell_id"].to_numpy(),
            frame["region_id"].to_numpy(),
            hour_of_week(frame["request_ts"]),
            provider_id=provider,
            distance_km=distance,
            job_ids=job_ids,
        )
        return pd.DataFrame(result._asdict(), index=frame.index)

    def _eta_table_lookup(self, cells: np.ndarray, regions: np.ndarray, hours: np.ndarray) -> np.ndarray:
        """(n, 3) quantiles from the most specific table that has the key: cell, region, global."""
        out = np.broadcast_to(self.global_eta_, (cells.size, 3)).copy()
        region_hit, region_pos = _find(self.region_eta_keys_, regions * HOURS_PER_WEEK + hours)
        out[region_hit] = self.region_eta_[region_pos[region_hit]]
        cell_hit, cell_pos = _find(self.cell_eta_keys_, cells * HOURS_PER_WEEK + hours)
        out[cell_hit] = self.cell_eta_[cell_pos[cell_hit]]
        return out

    def _acceptance_lookup(self, regions: np.ndarray, provider_id: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
        region_rate = np.full(shape, self.global_accept_rate_)
        hit, pos = _find(self.region_accept_keys_, regions)
        region_rate[hit] = self.region_accept_rate_[pos[hit]]
        if provider_id is None:
            return region_rate
        providers = np.broadcast_to(np.asarray(provider_id, dtype=np.int64), shape)
        accepts = np.zeros(shape)
        offers = np.zeros(shape)
        hit, pos = _find(self.provider_keys_, providers)
        accepts[hit] = self.provider_accepts_[pos[hit]]
        offers[hit] = self.provider_offers_[pos[hit]]
        m = self.provider_prior_offers
        return (accepts + m * region_rate) / (offers + m)

    def save(self, directory: Path) -> list[Path]:
        """Tables as one ``.npz`` (no pickle) and scalars as JSON under ``directory``."""
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        with (directory / _FILES["tables"]).open("wb") as f:
            np.savez(f, **{name: getattr(self, name) for name in _TABLES})
        state = {"params": self.get_params(), "global_accept_rate_": self.global_accept_rate_}
        (directory / _FILES["state"]).write_text(json.dumps(state, sort_keys=True))
        return [directory / name for name in _FILES.values()]

    @classmethod
    def load(cls, directory: Path) -> FallbackModel:
        directory = Path(directory)
        state = json.loads((directory / _FILES["state"]).read_text())
        model = cls(**state["params"])
        model.global_accept_rate_ = float(state["global_accept_rate_"])
        with np.load(directory / _FILES["tables"], allow_pickle=False) as tables:
            for name in _TABLES:
                setattr(model, name, tables[name])
        return model


_TABLES = (
    "global_eta_",
    "region_eta_keys_",
    "region_eta_",
    "cell_eta_keys_",
    "cell_eta_",
    "region_accept_keys_",
    "region_accept_rate_",
    "provider_keys_",
    "provider_accepts_",
    "provider_offers_",
)


class _QuantileTable(NamedTuple):
    frame: pd.DataFrame  # the two key columns, sorted
    values: np.ndarray  # (n_keys, n_levels)
    counts: np.ndarray  # (n_keys,)

    def keys_of(self, radix: int) -> np.ndarray:
        first, second = self.frame.columns
        return self.frame[first].to_numpy(dtype=np.int64) * radix + self.frame[second].to_numpy(dtype=np.int64)


def _quantile_table(known: pd.DataFrame, keys: list[str], levels: list[float]) -> _QuantileTable:
    grouped = known.groupby(keys, sort=True)["arrival_minutes"]
    quantiles = grouped.quantile(levels).unstack(-1)
    counts = grouped.size()
    return _QuantileTable(
        quantiles.index.to_frame(index=False),
        quantiles.to_numpy(dtype=np.float64),
        counts.to_numpy(dtype=np.float64),
    )


def _shrink(values: np.ndarray, counts: np.ndarray, parent: np.ndarray, prior_rows: float) -> np.ndarray:
    """Credibility blend ``(n·child + k·parent) / (n + k)`` row-wise."""
    n = counts[:, None]
    return (n * values + prior_rows * parent) / (n + prior_rows)


def _find(sorted_keys: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(found, position)`` of each key in a sorted key array."""
    if sorted_keys.size == 0:
        return np.zeros(keys.shape, dtype=bool), np.zeros(keys.shape, dtype=np.int64)
    pos = np.minimum(np.searchsorted(sorted_keys, keys), sorted_keys.size - 1)
    return sorted_keys[pos] == keys, pos
