"""Small simulated warehouses for the simulator tests, and the comparisons they make.

One world size (1,500 cells, 6 regions, 4,000 providers, 3 days at ~30K events/day) keeps a
whole simulation near one second, so a test can afford to simulate a baseline and a scenario
with the same seed and compare them row by row. The fixtures in ``conftest.py`` cache each
(scenario, seed) run for the session.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from contracts.features import FEATURE_GROUPS
from contracts.warehouse import TABLES, table_dir, world_path
from simulator.run import Manifest, SimulationSpec, simulate
from simulator.scenarios import Incident, Scenario

SEED = 11
START = date(2026, 3, 2)  # a Monday
DAYS = 3
EVENTS_PER_DAY = 30_000
CELLS, REGIONS, PROVIDERS = 1_500, 6, 4_000
SIM_START = datetime(START.year, START.month, START.day, tzinfo=UTC)
SIM_END = SIM_START + timedelta(days=DAYS)

#: Every table the simulator writes per date, with its partition directory under the root.
DAILY_TABLES: tuple[str, ...] = tuple(TABLES)
FEATURE_TABLES: tuple[str, ...] = tuple(f"features/{g.name}" for g in FEATURE_GROUPS)
BATCH_TABLES: tuple[str, ...] = tuple(f"features/{g.name}" for g in FEATURE_GROUPS if g.cadence == "batch")
NRT_TABLES: tuple[str, ...] = tuple(f"features/{g.name}" for g in FEATURE_GROUPS if g.cadence == "near_real_time")

#: Unique row keys of the job-level tables, used to pair a baseline row with a scenario row.
ROW_KEYS: dict[str, list[str]] = {
    "raw/requests": ["job_id"],
    "dispatch/candidates": ["job_id", "provider_id"],
    "dispatch/events": ["job_id", "event_id"],
    "labels": ["job_id", "provider_id", "label_type", "revision"],
}


def spec(out: Path, scenario: Scenario | None = None, seed: int = SEED) -> SimulationSpec:
    return SimulationSpec(
        out=out,
        days=DAYS,
        events_per_day=EVENTS_PER_DAY,
        seed=seed,
        start=START,
        cells=CELLS,
        regions=REGIONS,
        providers=PROVIDERS,
        scenario=scenario or Scenario(),
    )


def partition_files(root: Path, table: str) -> list[Path]:
    """The table's parquet files in partition-date order."""
    return sorted(table_dir(root, table).glob("date=*/*.parquet"))


def read_table(root: Path, table: str) -> pa.Table:
    """All partitions of ``table`` in date order, with the partition date as ``partition_date``."""
    parts = []
    for path in partition_files(root, table):
        part = pq.read_table(path)
        day = date.fromisoformat(path.parent.name.removeprefix("date="))
        parts.append(part.append_column("partition_date", pa.array([day] * part.num_rows, pa.date32())))
    return pa.concat_tables(parts)


@dataclass
class Warehouse:
    """A simulated warehouse on disk with lazily read, cached tables."""

    root: Path
    manifest: Manifest
    _arrow: dict[str, pa.Table] = field(default_factory=dict)
    _frames: dict[str, pd.DataFrame] = field(default_factory=dict)

    def arrow(self, name: str) -> pa.Table:
        if name not in self._arrow:
            self._arrow[name] = read_table(self.root, name)
        return self._arrow[name]

    def table(self, name: str) -> pd.DataFrame:
        if name not in self._frames:
            self._frames[name] = self.arrow(name).to_pandas()
        return self._frames[name]

    def world(self, name: str) -> pd.DataFrame:
        return pq.read_table(world_path(self.root, name)).to_pandas()

    def cell_region(self) -> np.ndarray:
        cells = self.world("cells")
        return cells.sort_values("cell_id")["region_id"].to_numpy()

    def provider_region(self) -> np.ndarray:
        providers = self.world("providers")
        return providers.sort_values("provider_id")["region_id"].to_numpy()


def run_simulation(out: Path, scenario: Scenario | None = None, seed: int = SEED) -> Warehouse:
    return Warehouse(out, simulate(spec(out, scenario, seed)))


def scenario_of(**incident: object) -> Scenario:
    """A one-incident scenario named after its kind."""
    return Scenario(name=str(incident["kind"]), incidents=[Incident.model_validate(incident)])


def window(start_day: float, duration: timedelta) -> tuple[pd.Timestamp, pd.Timestamp]:
    start = pd.Timestamp(SIM_START + timedelta(days=start_day))
    return start, start + pd.Timedelta(duration)


def in_window(ts: pd.Series, start: pd.Timestamp, end: pd.Timestamp) -> pd.Series:
    return (ts >= start) & (ts < end)


def paired(base: pd.DataFrame, scen: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Outer join of baseline and scenario rows on ``keys`` (which must be unique in each).

    Columns come back suffixed ``_b`` and ``_s``; ``_merge`` says which side had the row.
    """
    for side, frame in (("baseline", base), ("scenario", scen)):
        dup = frame.duplicated(keys).sum()
        assert dup == 0, f"{dup} duplicate {keys} keys in the {side} table"
    return base.merge(scen, on=keys, how="outer", suffixes=("_b", "_s"), indicator=True)


def changed_jobs(base: Warehouse, scen: Warehouse, tables: tuple[str, ...] = DAILY_TABLES) -> set[str]:
    """Job ids with a row, in any of the job-level ``tables``, that the other run lacks.

    Rows are compared whole by a 64-bit hash of every column, so a changed value, a missing row
    and an extra row all count. Row keys are checked unique so a hash stands for one row.
    """
    jobs: set[str] = set()
    for name in tables:
        b, s = base.table(name), scen.table(name)
        for side, frame in (("baseline", b), ("scenario", s)):
            assert not frame.duplicated(ROW_KEYS[name]).any(), f"duplicate {ROW_KEYS[name]} in the {side} {name}"
        hb = pd.util.hash_pandas_object(b, index=False).to_numpy()
        hs = pd.util.hash_pandas_object(s, index=False).to_numpy()
        jobs |= set(b.loc[~np.isin(hb, hs), "job_id"]) | set(s.loc[~np.isin(hs, hb), "job_id"])
    return jobs


def sorted_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows in a canonical order, for comparing tables as multisets of rows."""
    return frame.sort_values(list(frame.columns), kind="stable").reset_index(drop=True)


def assert_same_rows(base: pd.DataFrame, scen: pd.DataFrame, what: str) -> None:
    pd.testing.assert_frame_equal(sorted_rows(base), sorted_rows(scen), obj=what)


def assert_sub_multiset(sub: pd.DataFrame, sup: pd.DataFrame, what: str) -> None:
    """Every row of ``sub`` occurs in ``sup`` at least as often."""
    cols = list(sub.columns)
    need = sub.groupby(cols, dropna=False).size().rename("need")
    have = sup.groupby(cols, dropna=False).size().rename("have")
    counts = pd.concat([need, have], axis=1).fillna(0)
    extra = counts[counts["need"] > counts["have"]]
    assert extra.empty, f"{what}: {len(extra)} rows not in the reference"


def assert_tables_identical(base: Warehouse, scen: Warehouse, tables: tuple[str, ...]) -> None:
    """Row-for-row identical, in the same order, partition by partition."""
    for name in tables:
        if not base.arrow(name).equals(scen.arrow(name)):
            pd.testing.assert_frame_equal(base.table(name), scen.table(name), obj=name)
            raise AssertionError(f"{name} differs")

