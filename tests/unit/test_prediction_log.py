"""Prediction log: rows survive the trip to disk, partial files are never visible, a full backlog
or a failing disk never blocks a request and never loses a row silently, and no member PII can
get into the log.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import serve_apps.prediction_log as plog
from contracts.prediction_log import (
    FEATURE_STATUSES,
    GROUP_NAMES,
    MODEL_FEATURES,
    PREDICTION_LOG,
    LoggedRequest,
    ModelVersions,
    PredictionLogError,
    ScoredCandidates,
    prediction_columns,
    to_record_batch,
)
from contracts.scoring import Degradation, DegradationReason
from contracts.warehouse import MEMBER_PII_COLUMNS
from serve_apps.prediction_log import PredictionLogWriter, read_prediction_log

DAY = datetime(2026, 3, 1, 14, 0, tzinfo=UTC)
N_FEATURES = len(MODEL_FEATURES)


def request(request_id: str, requested_at: datetime = DAY) -> LoggedRequest:
    return LoggedRequest(
        request_id=request_id,
        job_id=f"job-{request_id}",
        requested_at=requested_at,
        member_pseudonym="9f2c4e",
        pseudonym_key_id="k1",
        cell_id=1204,
        region_id=7,
        line_of_business="insurer",
        service_type="tow",
        vehicle_class="suv",
        hour_of_day=requested_at.hour,
    )


def scored(n: int = 6, role: str = "served", seed: int = 0, p_accept: float | None = None) -> ScoredCandidates:
    rng = np.random.default_rng(seed)
    eta = rng.uniform(5, 60, n)
    return ScoredCandidates(
        role=role,  # type: ignore[arg-type]
        arm="champion" if role == "served" else "challenger",
        versions=ModelVersions(dispatch="d1", eta="e1", acceptance="a1"),
        provider_id=list(range(100, 100 + n)),
        provider_cohort=["new_small_top"] * n,
        eta_minutes=eta,
        eta_low=eta * 0.7,
        eta_high=eta * 1.4,
        p_accept=[p_accept] * n if p_accept is not None else rng.uniform(0, 1, n),
        rank=list(range(1, n + 1)),
        features=rng.normal(size=(n, N_FEATURES)),
        feature_status={g: "ok" for g in GROUP_NAMES} | {"cell_traffic": "stale"},
        feature_age_s={g: 12.5 for g in GROUP_NAMES} | {"provider_status": [None] + [3.0] * (n - 1)},
        latency_ms=4.2,
        degradations=[Degradation(component="cell_traffic", reason=DegradationReason.STALE)],
    )


def rows(request_id: str, requested_at: datetime = DAY, n: int = 6, role: str = "served", **kw: Any) -> dict[str, Any]:
    logged_at = kw.pop("logged_at", requested_at + timedelta(milliseconds=5))
    return prediction_columns(request(request_id, requested_at), scored(n, role, **kw), logged_at)


def wait_until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll a condition of another thread's progress (10 ms steps), failing after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


@pytest.fixture
def open_writer(tmp_path: Path) -> Iterator[Callable[..., PredictionLogWriter]]:
    """``open_writer(**kw)``: a writer on ``tmp_path/log``, closed after the test."""
    writers: list[PredictionLogWriter] = []

    def open_(**kw: Any) -> PredictionLogWriter:
        options = {"replica_id": "router-1", "max_backlog_rows": 10_000, "flush_rows": 5_000, "flush_seconds": 3600.0}
        options.update(min_backoff_s=0.01, max_backoff_s=0.05, poll_seconds=0.02)
        writer = PredictionLogWriter(kw.pop("root", tmp_path / "log"), **(options | kw))
        writers.append(writer)
        return writer

    yield open_
    for writer in writers:
        writer.close(timeout=2.0)


def committed_row_count(root: Path) -> int:
    """Rows in committed files, before de-duplication."""
    return sum(pq.read_metadata(p).num_rows for p in root.glob("date=*/part-*.parquet"))


# -- round trip and layout --------------------------------------------------------------------


def test_round_trip_keeps_every_column_and_value(open_writer: Callable[..., PredictionLogWriter], tmp_path: Path) -> None:
    writer = open_writer()
    appended = [rows("r1"), rows("r1", role="shadow", seed=1), rows("r2", n=3, seed=2)]
    for batch in appended:
        assert writer.append(batch)
    assert writer.flush(timeout=5.0)

    table = read_prediction_log(tmp_path / "log")
    expected = pa.Table.from_batches([to_record_batch(b) for b in appended])
    assert table.schema.equals(PREDICTION_LOG)
    assert table.sort_by([("request_id", "ascending"), ("role", "ascending"), ("candidate_index", "ascending")]).to_pylist() == (
        expected.sort_by([("request_id", "ascending"), ("role", "ascending"), ("candidate_index", "ascending")]).to_pylist()
    )
    row = table.filter(pc.equal(table["request_id"], "r2")).to_pylist()[0]
    assert row["degraded"] and row["degradation_reasons"] == "cell_traffic:stale"
    assert row["status__cell_traffic"] == "stale" and row["age_s__provider_status"] is None
    assert row["n_candidates"] == 3 and row["feature__n_candidates"] == pytest.approx(expected["feature__n_candidates"][-3].as_py())
    stats = writer.snapshot()
    assert (stats.rows_written, stats.rows_dropped, stats.backlog_rows, stats.write_errors) == (15, 0, 0, 0)


def test_files_are_partitioned_by_the_utc_date_of_requested_at(
    open_writer: Callable[..., PredictionLogWriter], tmp_path: Path
) -> None:
    """A request just before midnight, logged just after it, lands on its request date."""
    writer = open_writer()
    before_midnight = datetime(2026, 3, 1, 23, 59, 59, 900_000, tzinfo=UTC)
    next_day = datetime(2026, 3, 2, 0, 30, tzinfo=UTC)
    late = rows("late", before_midnight, logged_at=before_midnight + timedelta(seconds=1))
    # One batch spanning two dates is split between the two partitions.
    following = rows("next", next_day)
    mixed = to_record_batch({name: [*late[name], *following[name]] for name in late})
    assert mixed.num_rows == 12
    assert writer.append(mixed)
    assert writer.flush(timeout=5.0)

    root = tmp_path / "log"
    by_date = {p.parent.name: pq.read_table(p)["request_id"].unique().to_pylist() for p in root.glob("date=*/part-*.parquet")}
    assert by_date == {"date=2026-03-01": ["late"], "date=2026-03-02": ["next"]}
    assert [p.name for p in (root / "date=2026-03-01").iterdir()] == ["part-router-1-000000000.parquet"]
    only_2nd = read_prediction_log(root, start=datetime(2026, 3, 2, tzinfo=UTC), end=datetime(2026, 3, 3, tzinfo=UTC))
    assert only_2nd["request_id"].unique().to_pylist() == ["next"]
    assert read_prediction_log(root, end=datetime(2026, 3, 2, tzinfo=UTC))["request_id"].unique().to_pylist() == ["late"]


def test_flushes_when_the_oldest_row_has_waited_flush_seconds(open_writer: Callable[..., PredictionLogWriter]) -> None:
    now = [1000.0]
    writer = open_writer(flush_seconds=30.0, clock=lambda: now[0])
    writer.append(rows("r1"))
    now[0] += 29.0
    time.sleep(0.1)  # several poll periods: nothing is due yet
    assert writer.snapshot().files_committed == 0
    now[0] += 1.0
    wait_until(lambda: writer.snapshot().files_committed == 1)
    now[0] += 5.0
    assert writer.snapshot().last_flush_age_s == pytest.approx(5.0)


def test_close_flushes_everything_and_then_refuses_rows(open_writer: Callable[..., PredictionLogWriter], tmp_path: Path) -> None:
    writer = open_writer()
    for i in range(5):
        writer.append(rows(f"r{i}"))
    assert writer.close(timeout=5.0)
    assert len(read_prediction_log(tmp_path / "log")) == 30
    assert writer.append(rows("after-close")) is False
    stats = writer.snapshot()
    assert (stats.rows_written, stats.rows_dropped, stats.backlog_rows) == (30, 6, 0)


# -- atomic commits ---------------------------------------------------------------------------


def test_a_write_that_dies_midway_leaves_nothing_visible(
    open_writer: Callable[..., PredictionLogWriter], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer dies after half the file is on disk: readers see nothing, the rows are retried."""
    real_write = plog._write_durably
    died = threading.Event()

    def dies_midway(dir_fd: int, name: str, table: pa.Table) -> None:
        real_write(dir_fd, name, table)
        fd = os.open(name, os.O_RDWR, dir_fd=dir_fd)
        os.ftruncate(fd, os.fstat(fd).st_size // 2)
        os.close(fd)
        died.set()
        raise OSError(5, "Input/output error (simulated crash mid-write)")

    monkeypatch.setattr(plog, "_write_durably", dies_midway)
    writer = open_writer()
    writer.append(rows("r1"))
    assert not writer.flush(timeout=0.2)
    assert died.wait(5.0)
    root = tmp_path / "log"
    assert read_prediction_log(root).num_rows == 0
    assert list(root.glob("date=*/part-*.parquet")) == []
    assert writer.snapshot().backlog_rows == 6 and writer.snapshot().write_errors >= 1

    monkeypatch.setattr(plog, "_write_durably", real_write)
    assert writer.flush(timeout=5.0)
    assert committed_row_count(root) == 6
    assert list(root.rglob("*.tmp")) == []


def test_leftover_tmp_files_are_ignored_by_readers_and_cleaned_at_startup(
    open_writer: Callable[..., PredictionLogWriter], tmp_path: Path
) -> None:
    """What a crashed replica leaves: truncated ``.tmp`` files next to committed parts."""
    root = tmp_path / "log"
    first = open_writer()
    first.append(rows("committed"))
    assert first.close(timeout=5.0)
    partition = root / "date=2026-03-01"
    own = partition / ".part-router-1-000000001.parquet.tmp"
    other_young = partition / ".part-router-2-000000000.parquet.tmp"
    other_old = partition / ".part-router-3-000000000.parquet.tmp"
    committed = next(partition.glob("part-*.parquet")).read_bytes()
    for path in (own, other_young, other_old):
        path.write_bytes(committed[: len(committed) // 3])
    os.utime(other_old, (time.time() - 7200, time.time() - 7200))

    assert read_prediction_log(root)["request_id"].unique().to_pylist() == ["committed"]

    second = open_writer(stale_tmp_seconds=3600.0)
    assert not own.exists() and not other_old.exists()
    assert other_young.exists(), "another live replica may still be writing it"
    second.append(rows("after-restart"))
    assert second.flush(timeout=5.0)
    names = sorted(p.name for p in partition.glob("part-*.parquet"))
    assert names == ["part-router-1-000000000.parquet", "part-router-1-000000001.parquet"], "seq continues"
    assert set(read_prediction_log(root)["request_id"].to_pylist()) == {"committed", "after-restart"}


# -- backpressure and failures ----------------------------------------------------------------


def test_full_backlog_refuses_newest_batches_and_counts_every_row(
    open_writer: Callable[..., PredictionLogWriter], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stalled disk: appends still return at once; past the bound whole batches are refused and counted."""
    real_write = plog._write_durably
    writing, disk_back = threading.Event(), threading.Event()

    def slow_disk(dir_fd: int, name: str, table: pa.Table) -> None:
        writing.set()
        assert disk_back.wait(10.0)
        real_write(dir_fd, name, table)

    monkeypatch.setattr(plog, "_write_durably", slow_disk)
    writer = open_writer(max_backlog_rows=100, flush_rows=10)
    assert writer.append(rows("r0", n=7)) and writer.append(rows("r1", n=7))
    assert writing.wait(5.0)  # the flush thread now holds 14 rows in a write that does not return

    accepted = [writer.append(rows(f"r{i}", n=7)) for i in range(2, 32)]
    assert accepted == [True] * 12 + [False] * 18  # 14 + 12 * 7 = 98 rows; a 7-row batch more would pass 100
    stats = writer.snapshot()
    assert (stats.backlog_rows, stats.rows_dropped, stats.rows_written) == (98, 18 * 7, 0)

    disk_back.set()
    assert writer.flush(timeout=5.0)
    stats = writer.snapshot()
    assert (stats.backlog_rows, stats.rows_written, stats.rows_dropped) == (0, 98, 126)
    table = read_prediction_log(tmp_path / "log")
    assert set(table["request_id"].to_pylist()) == {f"r{i}" for i in range(14)}
    assert committed_row_count(tmp_path / "log") == 98


def test_flush_waits_for_rows_already_being_written(
    open_writer: Callable[..., PredictionLogWriter], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_write = plog._write_durably
    writing, disk_back = threading.Event(), threading.Event()

    def slow_disk(dir_fd: int, name: str, table: pa.Table) -> None:
        writing.set()
        assert disk_back.wait(10.0)
        real_write(dir_fd, name, table)

    monkeypatch.setattr(plog, "_write_durably", slow_disk)
    writer = open_writer(flush_rows=6)
    writer.append(rows("r1"))
    assert writing.wait(5.0)  # drained: the queue is empty, the rows are in flight
    assert not writer.flush(timeout=0.05)
    disk_back.set()
    assert writer.flush(timeout=5.0)
    assert writer.snapshot().rows_written == 6


def _recovers_exactly_once(writer: PredictionLogWriter, root: Path, broken_partition: Path, repoint: Callable[[], None]) -> None:
    """Shared body of the failing-disk tests: rows for a broken partition wait in the backlog."""
    broken_day = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
    for i in range(3):
        assert writer.append(rows(f"broken-{i}", broken_day, n=60))
    assert writer.append(rows("healthy", DAY))
    assert not writer.flush(timeout=0.2)
    wait_until(lambda: writer.snapshot().write_errors >= 2)  # retried, with backoff

    stats = writer.snapshot()
    assert stats.backlog_rows == 180 and stats.rows_dropped == 0
    assert read_prediction_log(root)["request_id"].unique().to_pylist() == ["healthy"], "other dates still commit"

    broken_target = broken_partition.resolve()
    repoint()
    assert writer.flush(timeout=5.0)
    assert not [p for p in broken_target.iterdir() if p.name.endswith(".tmp")], "no partial file left behind"
    assert list(root.rglob("*.tmp")) == []
    stats = writer.snapshot()
    assert (stats.backlog_rows, stats.rows_written, stats.rows_dropped) == (0, 186, 0)
    assert committed_row_count(root) == 186, "every row written exactly once"
    assert read_prediction_log(root).num_rows == 186


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")
def test_unwritable_partition_keeps_rows_counts_errors_and_recovers(
    open_writer: Callable[..., PredictionLogWriter], tmp_path: Path
) -> None:
    """The partition directory is a symlink into /proc, where the kernel refuses to create files."""
    root = tmp_path / "log"
    writer = open_writer(root=root)
    partition = root / "date=2026-03-02"
    partition.symlink_to("/proc", target_is_directory=True)

    def repoint() -> None:
        partition.unlink()
        (tmp_path / "recovered").mkdir()
        partition.symlink_to(tmp_path / "recovered", target_is_directory=True)

    _recovers_exactly_once(writer, root, partition, repoint)


@pytest.fixture
def tiny_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KiB tmpfs, so a write fails with ENOSPC part way; skipped where mounting is not allowed."""
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


def test_disk_full_keeps_rows_counts_errors_and_recovers(
    open_writer: Callable[..., PredictionLogWriter],
    tmp_path: Path,
    tiny_filesystem: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The partition lives on a full disk (ENOSPC part way through the file), then gets space."""
    caplog.set_level(logging.WARNING, logger=plog.__name__)
    root = tmp_path / "log"
    writer = open_writer(root=root)
    partition = root / "date=2026-03-02"
    partition.symlink_to(tiny_filesystem, target_is_directory=True)

    def repoint() -> None:
        partition.unlink()
        (tmp_path / "recovered").mkdir()
        partition.symlink_to(tmp_path / "recovered", target_is_directory=True)

    _recovers_exactly_once(writer, root, partition, repoint)
    assert any(getattr(r.exc_info[1], "errno", None) == errno.ENOSPC for r in caplog.records if r.exc_info)
    writer.close(timeout=2.0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc")
def test_close_gives_up_after_timeout_and_counts_the_rows_it_could_not_write(
    open_writer: Callable[..., PredictionLogWriter], tmp_path: Path
) -> None:
    root = tmp_path / "log"
    writer = open_writer(root=root)
    (root / "date=2026-03-01").symlink_to("/proc", target_is_directory=True)
    writer.append(rows("r1"))
    assert writer.close(timeout=0.2) is False
    wait_until(lambda: writer.snapshot().backlog_rows == 0)
    stats = writer.snapshot()
    assert (stats.rows_dropped, stats.rows_written) == (6, 0) and stats.write_errors >= 1


def test_rows_that_do_not_fit_the_schema_are_counted_not_retried(
    open_writer: Callable[..., PredictionLogWriter], tmp_path: Path
) -> None:
    writer = open_writer()
    missing_column = rows("bad")
    del missing_column["latency_ms"]
    assert writer.append(missing_column)  # cheap on the request path; refused by the flush thread
    assert writer.append(42) is False  # type: ignore[arg-type]  # never raises into the request path
    with_pii = rows("pii", n=2)
    with_pii["member_phone"] = ["+1 555 0100"] * 2
    assert writer.append(with_pii)
    writer.append(rows("good"))
    assert writer.flush(timeout=5.0)
    stats = writer.snapshot()
    assert (stats.rows_invalid, stats.rows_written, stats.backlog_rows, stats.write_errors) == (9, 6, 0, 0)
    assert read_prediction_log(tmp_path / "log")["request_id"].unique().to_pylist() == ["good"]


# -- reading ----------------------------------------------------------------------------------


def test_reader_deduplicates_at_least_once_delivery(open_writer: Callable[..., PredictionLogWriter], tmp_path: Path) -> None:
    """A retried batch is written twice; readers keep one row per (request, provider, role), the first logged."""
    writer = open_writer()
    first = rows("r1", p_accept=0.25)
    retried = rows("r1", p_accept=0.75, logged_at=DAY + timedelta(seconds=2))
    shadow = rows("r1", role="shadow", p_accept=0.5)
    for batch in (retried, first, shadow, first):
        writer.append(batch)
        assert writer.flush(timeout=5.0)  # separate files, as separate deliveries would be
    root = tmp_path / "log"
    assert committed_row_count(root) == 24
    table = read_prediction_log(root)
    assert table.num_rows == 12
    assert sorted(zip(table["role"].to_pylist(), table["p_accept"].to_pylist(), strict=True)) == (
        [("served", 0.25)] * 6 + [("shadow", 0.5)] * 6
    )


def test_reader_requires_timezone_aware_bounds(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        read_prediction_log(tmp_path, start=datetime(2026, 3, 1))
    assert read_prediction_log(tmp_path / "nothing").schema.equals(PREDICTION_LOG)


# -- no member PII ----------------------------------------------------------------------------


def test_schema_and_builder_have_no_member_pii_fields() -> None:
    assert not set(PREDICTION_LOG.names) & set(MEMBER_PII_COLUMNS)
    assert not {"lat", "lon", "latitude", "longitude"} & set(PREDICTION_LOG.names)
    builder_fields = {f.name for f in dataclasses.fields(LoggedRequest)} | {f.name for f in dataclasses.fields(ScoredCandidates)}
    assert not builder_fields & set(MEMBER_PII_COLUMNS)


texts = st.text(max_size=20)


@st.composite
def logged_rows(draw: st.DrawFn) -> dict[str, Any]:
    n = draw(st.integers(1, 8))
    requested_at = draw(st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)))
    logged_request = LoggedRequest(
        request_id=draw(texts),
        job_id=draw(texts),
        requested_at=requested_at,
        member_pseudonym=draw(st.text(min_size=1, max_size=20)),
        pseudonym_key_id=draw(st.text(min_size=1, max_size=8)),
        cell_id=draw(st.integers(0, 2**40)),
        region_id=draw(st.integers(0, 100)),
        line_of_business=draw(st.sampled_from(["member_id", "job_lat", "insurer"])),
        service_type=draw(texts),
        vehicle_class=draw(texts),
        hour_of_day=draw(st.integers(0, 23)),
    )
    floats = st.lists(st.floats(allow_nan=False, width=32), min_size=n, max_size=n)
    statuses = st.one_of(st.sampled_from(FEATURE_STATUSES), st.lists(st.sampled_from(FEATURE_STATUSES), min_size=n, max_size=n))
    components = st.sampled_from(["member_name", "cell_traffic", "feature_store"])
    scores = ScoredCandidates(
        role=draw(st.sampled_from(["served", "shadow"])),
        arm=draw(st.sampled_from(["champion", "challenger", "fallback"])),
        versions=ModelVersions(dispatch=draw(st.none() | texts), eta=draw(texts), acceptance=draw(texts)),
        provider_id=draw(st.lists(st.integers(0, 2**63 - 1), min_size=n, max_size=n)),
        provider_cohort=draw(st.lists(st.none() | texts, min_size=n, max_size=n)),
        eta_minutes=draw(floats),
        eta_low=draw(floats),
        eta_high=draw(floats),
        p_accept=draw(floats),
        rank=list(range(1, n + 1)),
        features=np.random.default_rng(draw(st.integers(0, 2**32))).normal(size=(n, N_FEATURES)),
        feature_status={g: draw(statuses) for g in GROUP_NAMES},
        feature_age_s={g: draw(st.none() | st.floats(0, 1e6, width=32)) for g in GROUP_NAMES},
        latency_ms=draw(st.floats(0, 1e4, width=32)),
        degradations=[
            Degradation(component=c, reason=r)
            for c, r in draw(st.lists(st.tuples(components, st.sampled_from(list(DegradationReason))), max_size=3))
        ],
    )
    return prediction_columns(logged_request, scores, logged_at=requested_at)


@settings(max_examples=60, deadline=None)
@given(logged_rows())
def test_no_record_content_yields_a_pii_column(columns: dict[str, Any]) -> None:
    batch = to_record_batch(columns)
    assert batch.schema.equals(PREDICTION_LOG)
    assert not set(batch.schema.names) & set(MEMBER_PII_COLUMNS)


@settings(max_examples=30, deadline=None)
@given(logged_rows(), st.sampled_from(MEMBER_PII_COLUMNS), st.text(max_size=12))
def test_an_added_pii_column_is_refused(columns: dict[str, Any], pii: str, value: str) -> None:
    n = len(columns["request_id"])
    with pytest.raises(PredictionLogError, match="unknown"):
        to_record_batch(columns | {pii: [value] * n})
    with pytest.raises(PredictionLogError, match="unknown"):
        to_record_batch(to_record_batch(columns).append_column(pii, pa.array([value] * n)))


def test_logged_features_cannot_pin_a_job_location_finer_than_a_cell() -> None:
    """Provider position + distance + bearing would triangulate the member; the log keeps them
    only at the precision in LOCATION_QUANTA, and keeps every other feature exact."""
    from contracts.prediction_log import LOCATION_QUANTA, MODEL_FEATURES, coarsen_location

    rng = np.random.default_rng(3)
    exact = rng.normal(size=(len(MODEL_FEATURES), 6)).astype(np.float32) * 10
    logged = coarsen_location(exact.copy())
    for i, name in enumerate(MODEL_FEATURES):
        if name in LOCATION_QUANTA:
            q = LOCATION_QUANTA[name]
            np.testing.assert_allclose(logged[i] / q, np.round(logged[i] / q), atol=1e-3)
            assert np.abs(logged[i] - exact[i]).max() <= q / 2 + 1e-4
        else:
            np.testing.assert_array_equal(logged[i], exact[i])
