"""Incidents declared in YAML: what happens, where, when and how much, with no code per incident.

A scenario file lists incidents::

    name: traffic-regime-change
    incidents:
      - kind: covariate_drift
        start: "2026-02-20T06:00:00Z"   # or start_day: 45 (days after the simulation start)
        duration: "7d"                  # s, m, h or d
        segment: {region_id: [3, 4]}    # any of region_id, cell_id, line_of_business,
                                        # service_type, provider_cohort; empty = everywhere
        size: 0.5

What ``size`` means per kind (each effect is confined to the segment and the time span):

=====================  ===============================================================
covariate_drift        traffic index x (1 + size); arrivals slow with it (P(X) moves,
                       P(y|X) stays)
concept_drift          true travel speed / (1 + size) with features unchanged (P(y|X) moves)
unit_change            ``feature`` (``group.column``) is written x ``size`` (e.g. 0.621 for
                       km/h to mph); the world itself is unchanged
stale_batch            the daily pipeline of ``groups`` (default: all batch) writes nothing
feed_outage            the near-real-time ``groups`` (default: all) push nothing
new_line_of_business   a share ``size`` of jobs come from line of business ``value``,
                       whose members wait longer (they are farther from providers)
cohort_acceptance_drop acceptance logit - size for providers in the segment's cohort(s)
label_delay            arrival-label delays x (1 + size)
calibration_shift      acceptance logit + size with features unchanged
=====================  ===============================================================
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from contracts.features import FEATURE_GROUPS, group

IncidentKind = Literal[
    "covariate_drift",
    "concept_drift",
    "unit_change",
    "stale_batch",
    "feed_outage",
    "new_line_of_business",
    "cohort_acceptance_drop",
    "label_delay",
    "calibration_shift",
]
SegmentKey = Literal["region_id", "cell_id", "line_of_business", "service_type", "provider_cohort"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd])\s*$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_duration(text: str | int | float) -> timedelta:
    """``"90m"``, ``"6h"``, ``"7d"`` (a bare number is seconds)."""
    if isinstance(text, (int, float)):
        return timedelta(seconds=float(text))
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"duration {text!r} must look like 30m, 6h or 7d")
    return timedelta(**{_UNITS[match.group(2)]: float(match.group(1))})


class Incident(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: IncidentKind
    start: datetime | None = None
    start_day: float | None = None
    duration: timedelta
    segment: dict[SegmentKey, list[int | str]] = Field(default_factory=dict)
    size: float = 0.0
    feature: str | None = None
    groups: list[str] | None = None
    value: str | None = None

    @field_validator("duration", mode="before")
    @classmethod
    def _duration(cls, v: object) -> timedelta:
        return v if isinstance(v, timedelta) else parse_duration(v)  # type: ignore[arg-type]

    @field_validator("segment", mode="before")
    @classmethod
    def _listify(cls, v: object) -> object:
        if isinstance(v, dict):
            return {k: (x if isinstance(x, list) else [x]) for k, x in v.items()}
        return v

    @model_validator(mode="after")
    def _check(self) -> Incident:
        if (self.start is None) == (self.start_day is None):
            raise ValueError(f"{self.kind}: give exactly one of start or start_day")
        if self.kind == "unit_change":
            if not self.feature or "." not in self.feature:
                raise ValueError("unit_change needs feature: <group>.<column>, e.g. cell_traffic.speed_kmh")
            g, col = self.feature.split(".", 1)
            if col not in group(g).features:
                raise ValueError(f"unit_change: {col!r} is not a feature of group {g!r}")
        if self.kind == "new_line_of_business" and not self.value:
            raise ValueError("new_line_of_business needs value: the new line of business name")
        for g in self.groups or []:
            group(g)
        return self

    def window(self, sim_start: datetime) -> tuple[datetime, datetime]:
        """The incident's [start, end) in UTC."""
        start = self.start if self.start is not None else sim_start + timedelta(days=float(self.start_day or 0))
        if start.tzinfo is None:
            start = start.replace(tzinfo=UTC)
        return start, start + self.duration

    def affected_groups(self) -> list[str]:
        if self.groups:
            return list(self.groups)
        cadence = "batch" if self.kind == "stale_batch" else "near_real_time"
        return [g.name for g in FEATURE_GROUPS if g.cadence == cadence]


class Scenario(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "baseline"
    description: str = ""
    incidents: list[Incident] = Field(default_factory=list)

    @classmethod
    def load(cls, path: Path | str | None) -> Scenario:
        if path is None:
            return cls()
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"scenario file {path} does not exist")
        return cls.model_validate(yaml.safe_load(path.read_text()) or {})

    def split_feed(self) -> tuple[Scenario, Scenario]:
        """(what happens to the world, what only the live feed gets wrong).

        A live replay simulates the warehouse with the first and applies the second
        (``unit_change``) only to what the feed pushes, so serving reads the bug while the
        warehouse, rebuilt from raw data, stays right (``simulator.served_log``).
        """
        feed = [i for i in self.incidents if i.kind == "unit_change"]
        world = [i for i in self.incidents if i.kind != "unit_change"]
        return self.model_copy(update={"incidents": world}), self.model_copy(update={"incidents": feed})

    def shifted(self, days: float) -> Scenario:
        """The same incidents ``days`` later (those given by ``start_day``; absolute starts stay)."""
        moved = [i.model_copy(update={"start_day": i.start_day + days}) if i.start_day is not None else i for i in self.incidents]
        return self.model_copy(update={"incidents": moved})


class ActiveIncidents:
    """Incidents resolved against the simulation start, queried with event times and segments."""

    def __init__(self, scenario: Scenario, sim_start: datetime) -> None:
        self.scenario = scenario
        self.windows = [(inc, *inc.window(sim_start)) for inc in scenario.incidents]

    def of_kind(self, kind: str) -> list[tuple[Incident, datetime, datetime]]:
        return [w for w in self.windows if w[0].kind == kind]

    def any_overlap(self, kind: str, lo: datetime, hi: datetime) -> bool:
        return any(s < hi and e > lo for _, s, e in self.of_kind(kind))

    @staticmethod
    def mask(
        incident: Incident,
        start: datetime,
        end: datetime,
        ts_us: np.ndarray,
        columns: dict[str, np.ndarray],
    ) -> np.ndarray:
        """Rows whose time falls in [start, end) and whose segment columns match the incident's.

        ``ts_us`` are UTC microseconds; ``columns`` maps segment keys to arrays of the rows. A
        segment key the caller has no column for matches nothing, so an effect can never leak
        out of its segment by omission.
        """
        lo, hi = int(start.timestamp() * 1e6), int(end.timestamp() * 1e6)
        m = (ts_us >= lo) & (ts_us < hi)
        for key, allowed in incident.segment.items():
            if key not in columns:
                return np.zeros_like(m)
            m &= np.isin(columns[key], np.asarray(allowed, dtype=columns[key].dtype))
        return m

    def factor(
        self,
        kind: str,
        ts_us: np.ndarray,
        columns: dict[str, np.ndarray],
        neutral: float,
        combine: str = "mul",
        transform=None,
    ) -> np.ndarray:
        """Combine the sizes of every incident of ``kind`` active on each row (product or sum)."""
        out = np.full(len(ts_us), neutral, dtype=np.float64)
        for inc, s, e in self.of_kind(kind):
            m = self.mask(inc, s, e, ts_us, columns)
            v = transform(inc.size) if transform else inc.size
            if combine == "mul":
                out[m] *= v
            else:
                out[m] += v
        return out
