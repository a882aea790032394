"""The append-only event log: model-quality events and the actions taken on them.

Layout under ``Settings.paths.events``: ``events.jsonl`` and ``actions.jsonl``, one JSON record
per line (``contracts.events``). Appends take an exclusive ``flock`` and ``fsync`` before
returning, so several monitor or policy processes can write and a reader never sees a torn line
that was acknowledged. Nothing is ever rewritten: an incident is closed by appending a
``resolved`` event, and re-running a monitor over a window it already scanned writes the same
deterministic ``event_id`` s, which readers keep once.

Volume is small (a few events per incident, incidents per day in the tens), so JSON Lines read
into pandas is the queryable form; a line that does not parse (a crash mid-write before the
fsync acknowledged it) is skipped and counted, never fatal.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pandas as pd
from pydantic import ValidationError

from contracts.events import ActionRecord, Event

EVENTS_FILE = "events.jsonl"
ACTIONS_FILE = "actions.jsonl"


@dataclass(frozen=True)
class Incident:
    """An incident's latest state: its first and last event, and the actions taken on it."""

    key: str
    first: Event
    last: Event
    events: int
    actions: tuple[ActionRecord, ...]

    @property
    def is_open(self) -> bool:
        return self.last.state == "firing"


class EventLog:
    """Append and query events and actions under one directory."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)
        #: Per file: how far it was read for ids, and the ids found (``_seen_ids``).
        self._seen: dict[str, tuple[int, set[str]]] = {}
        self.unreadable_lines = 0

    # -- writing ------------------------------------------------------------------------------
    def append(self, events: Iterable[Event]) -> int:
        """Append ``events`` durably; returns how many were written (already-logged ids are skipped)."""
        return self._append(EVENTS_FILE, [(e.event_id, e.model_dump_json()) for e in events], "event_id")

    def record(self, actions: Iterable[ActionRecord]) -> int:
        """Append action records durably; returns how many were written."""
        return self._append(ACTIONS_FILE, [(a.action_id, a.model_dump_json()) for a in actions], "action_id")

    def _append(self, name: str, records: list[tuple[str, str]], id_field: str) -> int:
        if not records:
            return 0
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / name
        with self._locked(path) as handle:
            seen = self._seen_ids(path, id_field)
            fresh = []
            for record_id, text in records:
                if record_id not in seen:
                    seen.add(record_id)
                    fresh.append(text)
            if fresh:
                # A crashed writer's torn tail ends without a newline: start on a line of our own.
                size = handle.seek(0, os.SEEK_END)
                with path.open("rb") as tail:
                    torn = size > 0 and tail.seek(size - 1) >= 0 and tail.read(1) != b"\n"
                handle.write(("\n" if torn else "") + "".join(text + "\n" for text in fresh))
                handle.flush()
                os.fsync(handle.fileno())
                # What this process wrote is known; only other writers' lines need reading next time.
                self._seen[name] = (handle.tell(), seen)
        return len(fresh)

    def _seen_ids(self, path: Path, id_field: str) -> set[str]:
        """Ids already in ``path`` (caller holds the lock): the lines past what this instance read last.

        A policy pass appends one action at a time; rereading the whole file for each would make
        a busy day quadratic. The file only grows, so the ids read so far stay valid.
        """
        offset, seen = self._seen.get(path.name, (0, set()))
        if path.stat().st_size < offset:
            offset, seen = 0, set()
        with path.open("rb") as handle:
            handle.seek(offset)
            tail = handle.read()
        complete = tail.rfind(b"\n") + 1
        for line in tail[:complete].splitlines():
            if not line.strip():
                continue
            try:
                seen.add(json.loads(line).get(id_field))
            except json.JSONDecodeError:
                self.unreadable_lines += 1
        self._seen[path.name] = (offset + complete, seen)
        return seen

    @contextmanager
    def _locked(self, path: Path) -> Iterator[object]:
        with path.open("a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield handle
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    # -- reading ------------------------------------------------------------------------------
    def _lines(self, path: Path) -> Iterator[dict]:
        if not path.exists():
            return
        with path.open() as handle:
            for line in handle:
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    self.unreadable_lines += 1

    def events(self) -> list[Event]:
        """Every event once (first record of each id), in log order."""
        return self._parse(EVENTS_FILE, Event, "event_id")

    def actions(self) -> list[ActionRecord]:
        return self._parse(ACTIONS_FILE, ActionRecord, "action_id")

    def _parse(self, name: str, model: type, id_field: str) -> list:
        out, seen = [], set()
        for row in self._lines(self.root / name):
            if row.get(id_field) in seen:
                continue
            try:
                out.append(model.model_validate(row))
            except ValidationError:
                self.unreadable_lines += 1
                continue
            seen.add(row[id_field])
        return out

    def query(
        self,
        *,
        kind: str | None = None,
        severity: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        segment: dict[str, int | str] | None = None,
    ) -> pd.DataFrame:
        """Events as a frame (one row per event, segment and evidence flattened), filtered."""
        rows = []
        for event in self.events():
            if kind and event.kind != kind or severity and event.severity != severity:
                continue
            if since and event.observed_at < since or until and event.observed_at > until:
                continue
            if segment and any(event.segment.get(k) != v for k, v in segment.items()):
                continue
            row = event.model_dump(exclude={"segment", "evidence"})
            row["incident_key"] = event.incident_key()
            row.update({f"segment.{k}": v for k, v in event.segment.items()})
            row.update({f"evidence.{k}": v for k, v in event.evidence.items()})
            rows.append(row)
        return pd.DataFrame(rows)

    def incidents(self, *, include_closed: bool = False) -> list[Incident]:
        """Incidents, most recently observed first; only open ones unless ``include_closed``."""
        grouped: dict[str, list[Event]] = {}
        for event in self.events():
            grouped.setdefault(event.incident_key(), []).append(event)
        by_incident: dict[str, list[ActionRecord]] = {}
        for action in self.actions():
            by_incident.setdefault(action.incident_key, []).append(action)
        out = []
        for key, events in grouped.items():
            events.sort(key=lambda e: (e.observed_at, e.detected_at))
            incident = Incident(key, events[0], events[-1], len(events), tuple(by_incident.get(key, ())))
            if include_closed or incident.is_open:
                out.append(incident)
        out.sort(key=lambda i: i.last.observed_at, reverse=True)
        return out
