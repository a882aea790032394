"""The warehouse is written as a stream: one hour at a time, partitioned by the date rows belong to.

Memory stays bounded because hours are appended to their daily files in row groups of about
``ROW_GROUP_ROWS`` rows (one hour at the real rate, many hours of a small world) and then
dropped; the row groups are the visible trace of that. Labels are
partitioned by the date they became *known*, so one job's labels can sit in several partitions,
and nothing known (or happening) after the end of the span is written at all.
"""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pyarrow.compute as pc
import pyarrow.parquet as pq
from simulated_warehouse import DAYS, FEATURE_TABLES, SIM_END, START, Warehouse, partition_files

from simulator.writer import ROW_GROUP_ROWS

HOURLY_TABLES = ("raw/requests", "dispatch/candidates", "dispatch/events")


def _hours(ts: pd.Series) -> np.ndarray:
    return ts.dt.hour.to_numpy()


def test_daily_tables_are_appended_hour_by_hour_in_bounded_row_groups(baseline: Warehouse) -> None:
    for name in HOURLY_TABLES:
        files = partition_files(baseline.root, name)
        assert [f.parent.name for f in files] == [f"date={pd.Timestamp(START) + pd.Timedelta(days=d):%Y-%m-%d}" for d in range(DAYS)]
        for path in files:
            parquet = pq.ParquetFile(path)
            day = date.fromisoformat(path.parent.name.removeprefix("date="))
            hours_seen: list[np.ndarray] = []
            for index in range(parquet.num_row_groups):
                group = parquet.read_row_group(index).to_pandas()
                if index < parquet.num_row_groups - 1:
                    assert len(group) >= ROW_GROUP_ROWS, f"{path} row group {index} flushed early"
                if name == "dispatch/events":
                    group = group[group["event_type"] == "request"].rename(columns={"event_ts": "request_ts"})
                assert (group["request_ts"].dt.date == day).all()
                hours_seen.append(_hours(group["request_ts"]))
            hours = np.concatenate(hours_seen)
            assert (np.diff(hours) >= 0).all(), f"{path}: hours appended out of order"
            assert set(hours) == set(range(24)), f"{path}: {sorted(set(hours))}"


def test_labels_are_partitioned_by_the_date_they_became_known(baseline: Warehouse) -> None:
    labels = baseline.table("labels")
    assert (labels["known_at"].dt.date == labels["partition_date"]).all()
    assert (labels["known_at"] < pd.Timestamp(SIM_END)).all()
    assert (labels["known_at"] >= labels["request_ts"]).all()
    assert baseline.manifest.pending_labels > 0
    # A late correction (6-72 h) or an evening arrival puts one job's labels in several partitions.
    spread = labels.groupby("job_id")["partition_date"].nunique()
    assert (spread > 1).sum() > 100
    late = labels[labels["partition_date"] > labels["request_ts"].dt.date]
    assert set(late["label_type"]) == {"accepted", "arrival_minutes"}


def test_nothing_after_the_end_of_the_span_is_written(baseline: Warehouse) -> None:
    events = baseline.arrow("dispatch/events")
    assert pc.max(events.column("event_ts")).as_py() < SIM_END
    assert baseline.manifest.pending_events > 0
    for name in FEATURE_TABLES:
        assert pc.max(baseline.arrow(name).column("event_timestamp")).as_py() < SIM_END


def test_feature_rows_are_partitioned_by_event_time(baseline: Warehouse) -> None:
    for name in FEATURE_TABLES:
        frame = baseline.table(name)
        assert (frame["event_timestamp"].dt.date == frame["partition_date"]).all(), name
        assert (frame["created_timestamp"] == frame["event_timestamp"]).all(), name


def test_manifest_counts_match_the_files(baseline: Warehouse) -> None:
    for name, rows in baseline.manifest.rows.items():
        assert sum(pq.ParquetFile(p).metadata.num_rows for p in partition_files(baseline.root, name)) == rows, name
    assert baseline.manifest.events == baseline.manifest.rows["dispatch/events"]
    assert baseline.manifest.jobs == baseline.manifest.rows["raw/requests"]
