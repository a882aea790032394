"""The static world: a grid of cells grouped into regions, metro-skewed demand, and providers.

Cells are ~4 km squares on a rectangular grid; regions are rectangular blocks of cells, so
neighbouring cells mostly share a region and a regional incident has a spatial footprint.
Demand is a mixture of metro-area Gaussians with Zipf-distributed sizes over a rural floor,
which gives the heavy skew real dispatch sees (a few hundred cells carry most jobs, thousands
see a job a week). Providers live where demand is, in cohorts by tenure, fleet size and rating.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from simulator.randomness import Stream, normal, uniform

CELL_KM = 4.0
ORIGIN_LAT, ORIGIN_LON = 30.0, -100.0
KM_PER_DEG_LAT = 111.0
KM_PER_DEG_LON = 111.0 * np.cos(np.radians(ORIGIN_LAT + 5.0))

TENURE_BANDS = ("new", "mid", "veteran")
FLEET_BANDS = ("solo", "small", "large")
RATING_TIERS = ("A", "B", "C")
#: Candidate pools look this many cells out in each direction (a 5x5 block, ~20 km across).
POOL_RADIUS = 2


@dataclass
class World:
    """Arrays describing the world; index ``i`` of a cell array is ``cell_id == i``."""

    seed: int
    rows: int
    cols: int
    cell_region: np.ndarray
    cell_lat: np.ndarray
    cell_lon: np.ndarray
    urban: np.ndarray
    demand: np.ndarray
    demand_cdf: np.ndarray
    n_regions: int
    provider_home: np.ndarray
    provider_region: np.ndarray
    provider_tenure: np.ndarray
    provider_fleet: np.ndarray
    provider_rating: np.ndarray
    provider_capacity: np.ndarray
    provider_accept_bias: np.ndarray
    provider_speed_factor: np.ndarray
    provider_tenure_days: np.ndarray
    pool_start: np.ndarray
    pool_count: np.ndarray
    pool_members: np.ndarray
    region_pool_start: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    region_pool_count: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    region_pool_members: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def n_cells(self) -> int:
        return len(self.cell_region)

    @property
    def n_providers(self) -> int:
        return len(self.provider_home)

    def provider_cohort(self, provider: np.ndarray) -> np.ndarray:
        """Cohort label ``tenure-fleet-rating`` (27 cohorts), the segment the monitors use."""
        labels = np.array(
            [f"{t}-{f}-{r}" for t in TENURE_BANDS for f in FLEET_BANDS for r in RATING_TIERS], dtype=object
        )
        code = self.provider_tenure[provider] * 9 + self.provider_fleet[provider] * 3 + self.provider_rating[provider]
        return labels[code]

    def cells_frame(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "cell_id": np.arange(self.n_cells, dtype=np.int64),
                "region_id": self.cell_region.astype(np.int64),
                "row": (np.arange(self.n_cells) // self.cols).astype(np.int32),
                "col": (np.arange(self.n_cells) % self.cols).astype(np.int32),
                "center_lat": self.cell_lat,
                "center_lon": self.cell_lon,
                "urban_index": self.urban,
                "demand_weight": self.demand,
            }
        )

    def regions_frame(self) -> pd.DataFrame:
        counts = np.bincount(self.cell_region, minlength=self.n_regions)
        return pd.DataFrame(
            {
                "region_id": np.arange(self.n_regions, dtype=np.int64),
                "region_name": [f"region-{r:02d}" for r in range(self.n_regions)],
                "n_cells": counts.astype(np.int32),
            }
        )

    def providers_frame(self) -> pd.DataFrame:
        ids = np.arange(self.n_providers)
        return pd.DataFrame(
            {
                "provider_id": ids.astype(np.int64),
                "home_cell_id": self.provider_home.astype(np.int64),
                "region_id": self.provider_region.astype(np.int64),
                "provider_cohort": self.provider_cohort(ids),
                "tenure_band": np.array(TENURE_BANDS, dtype=object)[self.provider_tenure],
                "fleet_band": np.array(FLEET_BANDS, dtype=object)[self.provider_fleet],
                "rating_tier": np.array(RATING_TIERS, dtype=object)[self.provider_rating],
                "capacity": self.provider_capacity.astype(np.int32),
            }
        )


def _grid(n_cells: int) -> tuple[int, int]:
    rows = max(1, int(round(np.sqrt(n_cells))))
    cols = int(np.ceil(n_cells / rows))
    return rows, cols


def _region_blocks(rows: int, cols: int, n_regions: int) -> tuple[int, int]:
    """Block counts (down, across) whose product is n_regions and whose blocks are squarest."""
    best = (1, n_regions)
    for down in range(1, n_regions + 1):
        if n_regions % down:
            continue
        across = n_regions // down
        aspect = abs(np.log((rows / down) / (cols / across)))
        if aspect < abs(np.log((rows / best[0]) / (cols / best[1]))):
            best = (down, across)
    return best


def _csr(keys: np.ndarray, values: np.ndarray, n_keys: int, seed: int, stream: int) -> tuple[np.ndarray, ...]:
    """Group ``values`` by ``keys`` in a shuffled, deterministic order (CSR: start, count, members)."""
    order = np.lexsort((uniform(seed, stream, keys, values), keys))
    members = values[order]
    count = np.bincount(keys, minlength=n_keys).astype(np.int64)
    start = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
    return start, count, members


def build_world(n_cells: int, n_regions: int, n_providers: int, seed: int) -> World:
    rows, cols = _grid(n_cells)
    idx = np.arange(n_cells)
    r, c = idx // cols, idx % cols
    down, across = _region_blocks(rows, cols, n_regions)
    region = (np.minimum(r * down // rows, down - 1) * across + np.minimum(c * across // cols, across - 1)).astype(
        np.int64
    )
    lat = ORIGIN_LAT + (r + 0.5) * CELL_KM / KM_PER_DEG_LAT
    lon = ORIGIN_LON + (c + 0.5) * CELL_KM / KM_PER_DEG_LON

    n_metros = max(3, n_cells // 1500)
    m = np.arange(n_metros)
    metro_r = uniform(seed, Stream.WORLD, m, 1) * rows
    metro_c = uniform(seed, Stream.WORLD, m, 2) * cols
    metro_size = 1.0 / (m + 1.0) ** 0.9
    metro_radius = 2.0 + 6.0 * metro_size * np.sqrt(max(rows, cols) / 40.0)
    density = np.zeros(n_cells)
    for k in range(n_metros):
        d2 = (r - metro_r[k]) ** 2 + (c - metro_c[k]) ** 2
        density += metro_size[k] * np.exp(-d2 / (2 * metro_radius[k] ** 2))
    urban = np.clip(density / density.max(), 0.0, 1.0)
    demand = 0.02 + urban**1.5 * np.exp(0.3 * normal(seed, Stream.WORLD, idx, 3))
    demand = demand / demand.sum()
    demand_cdf = np.cumsum(demand)
    demand_cdf /= demand_cdf[-1]

    p = np.arange(n_providers)
    home_cdf = np.cumsum(demand**0.8)
    home_cdf /= home_cdf[-1]
    home = np.minimum(np.searchsorted(home_cdf, uniform(seed, Stream.WORLD, p, 10)), n_cells - 1).astype(np.int64)
    tenure = np.searchsorted([0.3, 0.7], uniform(seed, Stream.WORLD, p, 11), side="right")
    fleet = np.searchsorted([0.45, 0.8], uniform(seed, Stream.WORLD, p, 12), side="right")
    rating = np.searchsorted([0.35, 0.8], uniform(seed, Stream.WORLD, p, 13), side="right")
    capacity = 1 + fleet + (uniform(seed, Stream.WORLD, p, 14) < 0.3)
    accept_bias = 0.5 * normal(seed, Stream.WORLD, p, 15) + 0.25 * (tenure - 1) - 0.3 * (rating - 1)
    speed_factor = np.exp(0.1 * normal(seed, Stream.WORLD, p, 16)) * (1.0 + 0.03 * (tenure - 1))
    tenure_days = np.select(
        [tenure == 0, tenure == 1], [30 + 300 * uniform(seed, Stream.WORLD, p, 17), 365 + 700 * uniform(seed, Stream.WORLD, p, 17)],
        1100 + 2500 * uniform(seed, Stream.WORLD, p, 17),
    )

    pool_keys, pool_values = [], []
    hr, hc = home // cols, home % cols
    for dr in range(-POOL_RADIUS, POOL_RADIUS + 1):
        for dc in range(-POOL_RADIUS, POOL_RADIUS + 1):
            tr, tc = hr + dr, hc + dc
            ok = (tr >= 0) & (tr < rows) & (tc >= 0) & (tc < cols) & (tr * cols + tc < n_cells)
            pool_keys.append((tr * cols + tc)[ok])
            pool_values.append(p[ok])
    pool_start, pool_count, pool_members = _csr(
        np.concatenate(pool_keys), np.concatenate(pool_values), n_cells, seed, Stream.WORLD
    )
    provider_region = region[home]
    rstart, rcount, rmembers = _csr(provider_region, p, n_regions, seed, Stream.WORLD + 1)
    return World(
        seed=seed,
        rows=rows,
        cols=cols,
        cell_region=region,
        cell_lat=lat,
        cell_lon=lon,
        urban=urban,
        demand=demand,
        demand_cdf=demand_cdf,
        n_regions=n_regions,
        provider_home=home,
        provider_region=provider_region,
        provider_tenure=tenure.astype(np.int64),
        provider_fleet=fleet.astype(np.int64),
        provider_rating=rating.astype(np.int64),
        provider_capacity=capacity.astype(np.int64),
        provider_accept_bias=accept_bias,
        provider_speed_factor=speed_factor,
        provider_tenure_days=tenure_days,
        pool_start=pool_start,
        pool_count=pool_count,
        pool_members=pool_members,
        region_pool_start=rstart,
        region_pool_count=rcount,
        region_pool_members=rmembers,
    )
