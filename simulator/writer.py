"""Streams the simulated warehouse to date-partitioned parquet with bounded memory.

Daily tables get one file per date, appended in row groups of at least ``ROW_GROUP_ROWS`` rows
(an hour at the real rate; many hours of a small test world, whose per-hour row groups made
writing, not simulating, the cost of a simulated year). Labels are
partitioned by the date they became *known*, which can be days after the job, so a writer per
known-date stays open until no job still being simulated can produce a label for that date.
Labels known after the end of the simulated span are not written: the warehouse has not seen
them yet. They are counted as pending in the manifest. Lifecycle events after the end (the
arrival of a job requested at 23:50, its late offers and answers) are held back the same way,
so the events and the labels describe the same instant.

What a feed *reports* can differ from what *is*: unit changes are applied here, to the written
values only, and outages drop the rows a feed would have pushed.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from contracts.features import FEATURE_GROUPS, group
from contracts.warehouse import FEATURE_SCHEMAS, TABLES, partition_dir
from simulator.dispatch import HourOutcome
from simulator.live_state import US_PER_DAY
from simulator.scenarios import ActiveIncidents

COMPRESSION = "zstd"
#: Rows buffered per open file before a row group is written: bounds memory per open file.
ROW_GROUP_ROWS = 65_536


def _day_of(us: int) -> date:
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(us))).date()


class PartitionedWriter:
    """Keeps one open ``ParquetWriter`` per (table, date) and closes dates that can get no more rows."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._open: dict[tuple[str, date], pq.ParquetWriter] = {}
        self._pending: dict[tuple[str, date], list[pa.Table]] = {}
        self.rows: Counter[str] = Counter()

    def write(self, table_name: str, schema: pa.Schema, day: date, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        key = (table_name, day)
        writer = self._open.get(key)
        if writer is None:
            d = partition_dir(self.root, table_name, day)
            d.mkdir(parents=True, exist_ok=True)
            writer = pq.ParquetWriter(d / "part-0.parquet", schema, compression=COMPRESSION)
            self._open[key] = writer
            self._pending[key] = []
        pending = self._pending[key]
        pending.append(table)
        self.rows[table_name] += table.num_rows
        if sum(t.num_rows for t in pending) >= ROW_GROUP_ROWS:
            self._flush(key)

    def _flush(self, key: tuple[str, date]) -> None:
        pending = self._pending[key]
        if pending:
            self._open[key].write_table(pa.concat_tables(pending))
            pending.clear()

    def close_before(self, day: date, table_name: str | None = None) -> None:
        for key in [k for k in self._open if k[1] < day and (table_name is None or k[0] == table_name)]:
            self._flush(key)
            del self._pending[key]
            self._open.pop(key).close()

    def close(self) -> None:
        self.close_before(date.max)


class WarehouseWriter:
    """Writes one simulated hour (and the nightly batch snapshots) into the warehouse layout."""

    def __init__(self, root: Path, incidents: ActiveIncidents, end_us: int) -> None:
        self.out = PartitionedWriter(root)
        self.incidents = incidents
        self.end_us = end_us
        self.pending_labels = 0
        self.pending_events = 0
        self.dropped_pushes: Counter[str] = Counter()

    def write_hour(self, hour: HourOutcome, day: date) -> None:
        for name, table in (("raw/requests", hour.requests), ("dispatch/candidates", hour.candidates)):
            self.out.write(name, TABLES[name], day, table)
        self._write_events(hour.events, day)
        self._write_labels(hour.labels)
        for group_name, push in hour.features.items():
            self.write_feature_rows(group_name, push["keys"], push["ts"], push["values"], push["cols"])

    def _write_events(self, events: pa.Table, day: date) -> None:
        seen = events.column("event_ts").cast(pa.int64()).to_numpy() < self.end_us
        self.pending_events += int((~seen).sum())
        self.out.write("dispatch/events", TABLES["dispatch/events"], day, events if seen.all() else events.filter(pa.array(seen)))

    def _write_labels(self, labels: pa.Table) -> None:
        known = labels.column("known_at").cast(pa.int64()).to_numpy()
        keep = known < self.end_us
        self.pending_labels += int((~keep).sum())
        known_day = known // US_PER_DAY
        for d in np.unique(known_day[keep]):
            rows = np.nonzero(keep & (known_day == d))[0]
            self.out.write("labels", TABLES["labels"], _day_of(int(d) * US_PER_DAY), labels.take(pa.array(rows)))

    def write_feature_rows(
        self,
        group_name: str,
        keys: np.ndarray,
        ts_us: np.ndarray,
        values: dict[str, np.ndarray],
        segment_cols: dict[str, np.ndarray],
    ) -> None:
        g = group(group_name)
        keep = np.ones(len(keys), dtype=bool)
        outage_kind = "feed_outage" if g.cadence == "near_real_time" else "stale_batch"
        for inc, s, e in self.incidents.of_kind(outage_kind):
            if group_name in inc.affected_groups():
                keep &= ~self.incidents.mask(inc, s, e, ts_us, segment_cols)
        self.dropped_pushes[group_name] += int((~keep).sum())
        if not keep.any():
            return
        reported = {f: np.asarray(values[f], dtype=np.float64).copy() for f in g.features}
        for inc, s, e in self.incidents.of_kind("unit_change"):
            g_name, col = (inc.feature or ".").split(".", 1)
            if g_name == group_name:
                m = self.incidents.mask(inc, s, e, ts_us, segment_cols)
                reported[col][m] *= inc.size
        ts = pa.array(ts_us[keep].astype(np.int64)).cast(pa.timestamp("us", tz="UTC"))
        arrays = [pa.array(keys[keep].astype(np.int64)), ts, ts] + [pa.array(reported[f][keep]) for f in g.features]
        table = pa.Table.from_arrays(arrays, schema=FEATURE_SCHEMAS[group_name])
        day_idx = ts_us[keep] // US_PER_DAY
        for d in np.unique(day_idx):
            rows = np.nonzero(day_idx == d)[0]
            self.out.write(f"features/{group_name}", FEATURE_SCHEMAS[group_name], _day_of(int(d) * US_PER_DAY), table.take(pa.array(rows)))

    def end_of_day(self, next_day: date) -> None:
        """Nothing dated before ``next_day`` can arrive now except labels, which lag by days."""
        for name in ("raw/requests", "dispatch/candidates", "dispatch/events", "labels"):
            self.out.close_before(next_day, name)
        # The first jobs of the next day carry pushes from a few minutes before midnight.
        for g in FEATURE_GROUPS:
            self.out.close_before(next_day - timedelta(days=1), f"features/{g.name}")

    def close(self) -> None:
        self.out.close()

