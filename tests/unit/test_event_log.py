"""The event log: append-only, durable, deduplicated by id, queryable; incidents open and close."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from cluster.event_log import EventLog
from contracts.events import ActionRecord, Event, event_id, incident_key

T0 = datetime(2026, 2, 25, 12, tzinfo=UTC)


def _event(state: str = "firing", minutes: int = 0, region: int = 23, kind: str = "data_quality") -> Event:
    key = incident_key(kind, "range", "cell_traffic__speed_kmh", {"region_id": region})
    at = T0 + timedelta(minutes=minutes)
    return Event(event_id=event_id(key, at, state), kind=kind, severity="page", state=state, source="range",
                 subject="cell_traffic__speed_kmh", segment={"region_id": region}, observed_at=at, detected_at=at,
                 summary="speed_kmh out of range in region 23", evidence={"out_of_range_ratio": 0.4})


def test_append_is_idempotent_and_survives_a_torn_line(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    assert log.append([_event(), _event(minutes=5)]) == 2
    assert log.append([_event(), _event(minutes=5)]) == 0  # a monitor re-run writes the same ids
    with (tmp_path / "events.jsonl").open("a") as f:
        f.write('{"event_id": "torn", "kind": "dr')  # a crash mid-write
    reader = EventLog(tmp_path)
    assert [e.observed_at for e in reader.events()] == [T0, T0 + timedelta(minutes=5)]
    assert reader.unreadable_lines == 1


def test_incident_opens_and_closes_with_its_actions(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    first = _event()
    log.append([first, _event(minutes=5), _event(region=7)])
    log.record([ActionRecord(action_id="a1", event_id=first.event_id, incident_key=first.incident_key(), action="fallback_feature_group",
                             status="taken", reason="data_quality pages and falls back", decided_at=T0, detail={"feature_group": "cell_traffic"})])
    open_ = log.incidents()
    assert len(open_) == 2
    region23 = next(i for i in open_ if i.first.segment == {"region_id": 23})
    assert region23.events == 2 and [a.action for a in region23.actions] == ["fallback_feature_group"]
    log.append([_event(state="resolved", minutes=30)])
    assert [i.first.segment for i in log.incidents()] == [{"region_id": 7}]
    assert len(log.incidents(include_closed=True)) == 2


def test_query_filters_and_flattens(tmp_path: Path) -> None:
    log = EventLog(tmp_path)
    log.append([_event(), _event(region=7, kind="drift")])
    frame = log.query(kind="data_quality", segment={"region_id": 23})
    assert list(frame["segment.region_id"]) == [23]
    assert frame["evidence.out_of_range_ratio"].tolist() == [0.4]
    assert log.query(since=T0 + timedelta(hours=1)).empty


def test_segments_cannot_name_a_member_or_job() -> None:
    with pytest.raises(ValidationError, match="not allowed"):
        Event(event_id="x", kind="drift", severity="info", source="psi", subject="f", segment={"member_id": "M1"},
              observed_at=T0, detected_at=T0, summary="s")
    with pytest.raises(ValidationError, match="labels of at most"):
        Event(event_id="x", kind="drift", severity="info", source="psi", subject="f", observed_at=T0, detected_at=T0,
              summary="s", evidence={"note": "x" * 500})


def test_two_writers_never_duplicate_an_event_and_each_reads_only_the_new_lines(tmp_path: Path) -> None:
    a, b = EventLog(tmp_path), EventLog(tmp_path)
    events = [_event(minutes=m) for m in range(6)]
    assert a.append(events[:3]) == 3
    assert b.append(events[1:4]) == 1  # b has never read the file: it must see a's lines first
    assert a.append(events[2:5]) == 1  # a read up to its own write; b's line came after it
    assert b.append(events) == 1
    # A torn, unacknowledged tail from a crashed writer is not taken for a record.
    with (tmp_path / "events.jsonl").open("a") as handle:
        handle.write('{"event_id": "torn')
    assert a.append(events) == 0
    late = _event(minutes=30)
    assert b.append([late]) == 1  # written on a line of its own, after the torn one
    reader = EventLog(tmp_path)
    assert [e.event_id for e in reader.events()] == [e.event_id for e in [*events, late]]
    assert reader.unreadable_lines == 1
