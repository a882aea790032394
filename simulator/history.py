"""The daily batch pipeline: provider, cell and region history features from realised outcomes.

Each "N-day" feature is an exponentially weighted mean of what actually happened, with weight
1/N per observation (so a 7-day acceptance rate really moves a week after a cohort starts
declining). Counts are EW sums, whose steady state is N x the daily count. Priors seed the
state so the first simulated day has values, as a warehouse backfill would.

Per observation of a mean-type feature: state <- state + w (mean_today - state) with
w = 1 - (1 - 1/N)^count, the exact weight of ``count`` successive EW updates with a common value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from contracts.features import (
    CELL_BATCH,
    HOUR_BUCKETS,
    HOURS,
    LINES_OF_BUSINESS,
    PROVIDER_BATCH,
    REGION_BATCH,
    SERVICE_TYPES,
    VEHICLE_CLASSES,
)
from simulator.dispatch import HourOutcome
from simulator.live_state import US_PER_HOUR, weather_code
from simulator.randomness import Stream, normal
from simulator.world import World

FLEET_SIZE = np.array([1.0, 5.0, 25.0])
RATING = np.array([4.8, 4.4, 3.9])


def ema_mean(state: np.ndarray, keys: np.ndarray, values: np.ndarray, window: float) -> None:
    """Move ``state[key]`` toward today's mean of ``values`` with the EW weight of their count."""
    n = len(state)
    valid = ~np.isnan(values)
    cnt = np.bincount(keys[valid], minlength=n).astype(np.float64)
    sums = np.bincount(keys[valid], weights=values[valid], minlength=n)
    seen = cnt > 0
    w = 1.0 - (1.0 - 1.0 / window) ** cnt[seen]
    state[seen] += w * (sums[seen] / cnt[seen] - state[seen])


def ema_count(state: np.ndarray, keys: np.ndarray, window: float) -> None:
    """EW daily sum: decays by (1 - 1/N) a day and adds today's count."""
    state *= 1.0 - 1.0 / window
    state += np.bincount(keys, minlength=len(state))


@dataclass
class _Day:
    offers: list[dict[str, np.ndarray]]
    assignments: list[dict[str, np.ndarray]]


class BatchHistory:
    """EW state of every batch feature, updated once per simulated day."""

    def __init__(self, world: World) -> None:
        self.world = world
        np_, nc, nr = world.n_providers, world.n_cells, world.n_regions
        prior_accept = 1.0 / (1.0 + np.exp(-(0.3 + world.provider_accept_bias)))
        self.provider = {f: np.zeros(np_) for f in PROVIDER_BATCH.features}
        p = self.provider
        for f in p:
            if f.startswith("accept_rate"):
                p[f][:] = prior_accept
            elif f.startswith("late_rate"):
                p[f][:] = 0.2
            elif f.startswith("cancel_rate"):
                p[f][:] = 0.08
            elif f.startswith("mean_eta_error"):
                p[f][:] = 5.0
            elif f.startswith("mean_arrival"):
                p[f][:] = 45.0
            elif f.startswith("reassign"):
                p[f][:] = 0.05
        p["tenure_days"][:] = world.provider_tenure_days
        p["fleet_size"][:] = FLEET_SIZE[world.provider_fleet]
        p["rating"][:] = RATING[world.provider_rating] + 0.1 * normal(world.seed, Stream.WORLD, np.arange(np_), 40)
        p["capacity"][:] = world.provider_capacity
        self.cell = {f: np.zeros(nc) for f in CELL_BATCH.features}
        c = self.cell
        c["urban_index"][:] = world.urban
        c["road_density"][:] = np.clip(0.2 + 0.7 * world.urban + 0.05 * normal(world.seed, Stream.WORLD, np.arange(nc), 41), 0, 1)
        c["provider_density_30d"][:] = world.pool_count / 25.0
        c["cancel_rate_30d"][:] = 0.08
        c["mean_eta_30d"][:] = 45.0
        for h in HOURS:
            c[f"eta_mean_{h}_30d"][:] = 45.0
            c[f"eta_std_{h}_30d"][:] = 15.0
            c[f"eta_p90_{h}_30d"][:] = 45.0 + 1.2816 * 15.0
        for s in SERVICE_TYPES:
            c[f"demand_share_{s}_30d"][:] = 1.0 / len(SERVICE_TYPES)
        self.region = {f: np.zeros(nr) for f in REGION_BATCH.features}
        r = self.region
        for f in r:
            if f.startswith("accept_rate"):
                r[f][:] = 0.6
        r["mean_eta_7d"][:] = 45.0
        for lob in LINES_OF_BUSINESS:
            r[f"demand_share_{lob}_7d"][:] = 1.0 / len(LINES_OF_BUSINESS)
        self._day = _Day([], [])

    def observe(self, hour: HourOutcome) -> None:
        self._day.offers.append(hour.offers)
        self._day.assignments.append(hour.assignments)

    def close_day(self, day_start_us: int) -> None:
        """Fold the day's outcomes into the state (the nightly pipeline run)."""
        off = {k: np.concatenate([o[k] for o in self._day.offers]) for k in self._day.offers[0]} if self._day.offers else {}
        asg = {k: np.concatenate([a[k] for a in self._day.assignments]) for k in self._day.assignments[0]} if self._day.assignments else {}
        self._day = _Day([], [])
        if off:
            self._provider_day(off, asg)
            self._cell_day(asg)
            self._region_day(off, asg, day_start_us)

    def _provider_day(self, off: dict[str, np.ndarray], asg: dict[str, np.ndarray]) -> None:
        p = self.provider
        prov, acc = off["provider"], off["accepted"]
        ema_mean(p["accept_rate_1d"], prov, acc, 1.0)
        for w, days in (("7d", 7.0), ("30d", 30.0)):
            ema_mean(p[f"accept_rate_{w}"], prov, acc, days)
            ema_mean(p[f"late_rate_{w}"], asg["provider"], np.where(asg["arrived"] > 0, asg["late"], np.nan), days)
            ema_mean(p[f"cancel_rate_{w}"], asg["provider"], asg["cancelled"], days)
            ema_mean(p[f"mean_eta_error_min_{w}"], asg["provider"], np.where(asg["arrived"] > 0, asg["eta_error"], np.nan), days)
            ema_count(p[f"jobs_completed_{w}"], asg["provider"][asg["arrived"] > 0], days)
        ema_mean(p["reassign_rate_30d"], asg["provider"], asg["reassigned"], 30.0)
        arrived = asg["arrived"] > 0
        eta = np.where(arrived, asg["eta"], np.nan)
        late = np.where(arrived, asg["late"], np.nan)
        for i, s in enumerate(SERVICE_TYPES):
            m = off["service"] == i
            ema_mean(p[f"accept_rate_{s}_30d"], prov[m], acc[m], 30.0)
            ma = asg["service"] == i
            ema_mean(p[f"mean_arrival_min_{s}_30d"], asg["provider"][ma], eta[ma], 30.0)
            ema_mean(p[f"late_rate_{s}_30d"], asg["provider"][ma], late[ma], 30.0)
        for i, b in enumerate(HOUR_BUCKETS):
            m = off["bucket"] == i
            ema_mean(p[f"accept_rate_{b}_30d"], prov[m], acc[m], 30.0)
            ma = asg["bucket"] == i
            ema_mean(p[f"mean_arrival_min_{b}_30d"], asg["provider"][ma], eta[ma], 30.0)
        for i, lob in enumerate(LINES_OF_BUSINESS):
            m = off["lob"] == i
            ema_mean(p[f"accept_rate_{lob}_30d"], prov[m], acc[m], 30.0)
        for i, v in enumerate(VEHICLE_CLASSES):
            m = off["vehicle"] == i
            ema_mean(p[f"accept_rate_{v}_30d"], prov[m], acc[m], 30.0)
        p["tenure_days"] += 1.0

    def _cell_day(self, asg: dict[str, np.ndarray]) -> None:
        c = self.cell
        arrived = asg["arrived"] > 0
        cells, eta = asg["cell"][arrived], asg["eta"][arrived]
        ema_mean(c["cancel_rate_30d"], asg["all_cells"], asg["all_cancelled"], 30.0)
        ema_mean(c["mean_eta_30d"], cells, eta, 30.0)
        ema_count(c["jobs_30d"], asg["all_cells"], 30.0)
        hours = asg["hour"][arrived]
        for h, name in enumerate(HOURS):
            m = hours == h
            mean = c[f"eta_mean_{name}_30d"]
            ema_mean(mean, cells[m], eta[m], 30.0)
            dev2 = (eta[m] - mean[cells[m]]) ** 2
            var = c[f"eta_std_{name}_30d"] ** 2
            ema_mean(var, cells[m], dev2, 30.0)
            c[f"eta_std_{name}_30d"][:] = np.sqrt(var)
            c[f"eta_p90_{name}_30d"][:] = mean + 1.2816 * c[f"eta_std_{name}_30d"]
            ema_count(c[f"demand_{name}_30d"], asg["all_cells"][asg["all_hours"] == h], 30.0)
        for i, s in enumerate(SERVICE_TYPES):
            ema_mean(c[f"demand_share_{s}_30d"], asg["all_cells"], (asg["all_services"] == i).astype(np.float64), 30.0)

    def _region_day(self, off: dict[str, np.ndarray], asg: dict[str, np.ndarray], day_start_us: int) -> None:
        r, world = self.region, self.world
        ema_mean(r["accept_rate_7d"], off["region"], off["accepted"], 7.0)
        arrived = asg["arrived"] > 0
        ema_mean(r["mean_eta_7d"], asg["region"][arrived], asg["eta"][arrived], 7.0)
        ema_count(r["jobs_7d"], asg["all_regions"], 7.0)
        regions = np.arange(world.n_regions)
        noon = np.full(world.n_regions, day_start_us + 12 * US_PER_HOUR)
        ema_mean(r["weather_severity_7d"], regions, weather_code(world, regions, noon).astype(np.float64), 7.0)
        active = np.unique(off["provider"])
        ema_mean(r["active_providers_7d"], regions, np.bincount(world.provider_region[active], minlength=world.n_regions).astype(np.float64), 7.0)
        for i, lob in enumerate(LINES_OF_BUSINESS):
            ema_mean(r[f"demand_share_{lob}_7d"], asg["all_regions"], (asg["all_lobs"] == i).astype(np.float64), 7.0)
        for h, name in enumerate(HOURS):
            m = off["hour"] == h
            ema_mean(r[f"accept_rate_{name}_30d"], off["region"][m], off["accepted"][m], 30.0)

    def snapshot(self, group_name: str) -> dict[str, np.ndarray]:
        return {"provider_batch": self.provider, "cell_batch": self.cell, "region_batch": self.region}[group_name]
