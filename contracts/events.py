"""Model-quality events and the actions taken on them: the event log's records, defined once.

Monitors (drift, concept drift, skew, calibration, data quality, SLO burn on matured labels)
write :class:`Event` records; the policy (``retrain/policy.py``) answers each firing event with
one or more :class:`ActionRecord` s; ``dispatchml incidents`` reads both back. Both go to the
append-only event log (``cluster/event_log.py``), so an operator can always answer "what did the
system see, and what did it do about it, and why".

An *incident* is the sequence of events sharing an :meth:`Event.incident_key`: the same check
(``kind`` + ``source``) on the same ``subject`` (a feature, feature group, model or SLO) in the
same ``segment``. It is open from its first ``firing`` event until a later ``resolved`` one.

No PII, by construction
    Segments name only bounded, non-identifying columns (:data:`SEGMENT_COLUMNS`: region, cell,
    provider cohort, line of business, hour of day): never a member, job or provider. Evidence is
    numbers and short labels, checked on construction.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any, Literal, get_args

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

EventKind = Literal["data_quality", "drift", "prediction_drift", "concept_drift", "skew", "calibration", "estimated_performance", "slo_burn", "release"]
Severity = Literal["info", "ticket", "page"]
EventState = Literal["firing", "resolved"]
ActionKind = Literal["page", "ticket", "fallback_feature_group", "restore_feature_group", "retrain", "shadow", "canary_advance", "promote", "rollback", "none"]
ActionStatus = Literal["suggested", "taken", "failed", "skipped"]

EVENT_KINDS: tuple[str, ...] = get_args(EventKind)
SEVERITIES: tuple[str, ...] = get_args(Severity)
ACTION_KINDS: tuple[str, ...] = get_args(ActionKind)
#: The only columns a segment may name: bounded and not identifying a member, job or provider.
SEGMENT_COLUMNS: frozenset[str] = frozenset({"region_id", "cell_id", "provider_cohort", "line_of_business", "hour_of_day", "global"})
#: Evidence strings are labels (a feature name, a window), not free text that could carry input.
MAX_EVIDENCE_TEXT = 200

SegmentValue = int | str
EvidenceValue = float | int | str | bool | None


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", ser_json_inf_nan="constants")


def _check_segment(segment: dict[str, SegmentValue]) -> dict[str, SegmentValue]:
    unknown = set(segment) - SEGMENT_COLUMNS
    if unknown:
        raise ValueError(f"segment columns {sorted(unknown)} are not allowed; use {sorted(SEGMENT_COLUMNS)}")
    return dict(sorted(segment.items()))


def _check_evidence(evidence: dict[str, EvidenceValue]) -> dict[str, EvidenceValue]:
    for key, value in evidence.items():
        if isinstance(value, str) and len(value) > MAX_EVIDENCE_TEXT:
            raise ValueError(f"evidence {key!r} is {len(value)} characters; evidence holds labels of at most {MAX_EVIDENCE_TEXT}")
    return evidence


class Event(_Record):
    """One observation of a monitor: a check fired (or cleared) on a subject in a segment."""

    event_id: str = Field(min_length=1, max_length=64)
    kind: EventKind
    severity: Severity
    state: EventState = "firing"
    #: The check that produced it, e.g. ``freshness``, ``range``, ``page_hinkley``, ``eta_interval_slo``.
    source: str = Field(min_length=1, max_length=64)
    #: What the check is about: a feature, a feature group, a model (``eta``/``acceptance``) or an SLO.
    subject: str = Field(min_length=1, max_length=128)
    segment: dict[str, SegmentValue] = Field(default_factory=dict)
    #: Data time the evidence refers to (the end of the monitored window).
    observed_at: AwareDatetime
    #: Wall-clock time the monitor wrote it.
    detected_at: AwareDatetime
    summary: str = Field(min_length=1, max_length=300)
    evidence: dict[str, EvidenceValue] = Field(default_factory=dict)
    #: Where to look next: a report path or dashboard URL.
    report: str | None = None

    @field_validator("segment")
    @classmethod
    def _bounded_segment(cls, segment: dict[str, SegmentValue]) -> dict[str, SegmentValue]:
        return _check_segment(segment)

    @field_validator("evidence")
    @classmethod
    def _short_evidence(cls, evidence: dict[str, EvidenceValue]) -> dict[str, EvidenceValue]:
        return _check_evidence(evidence)

    def incident_key(self) -> str:
        """Events with the same key belong to one incident (see the module docstring)."""
        return incident_key(self.kind, self.source, self.subject, self.segment)


class ActionRecord(_Record):
    """What the policy decided for an event, and why; ``status`` says whether it was carried out."""

    action_id: str = Field(min_length=1, max_length=64)
    event_id: str = Field(min_length=1, max_length=64)
    incident_key: str = Field(min_length=1, max_length=64)
    action: ActionKind
    status: ActionStatus
    #: The policy rule that matched and, for an action taken, what it did.
    reason: str = Field(min_length=1, max_length=500)
    decided_at: AwareDatetime
    detail: dict[str, EvidenceValue] = Field(default_factory=dict)

    @field_validator("detail")
    @classmethod
    def _short_detail(cls, detail: dict[str, EvidenceValue]) -> dict[str, EvidenceValue]:
        return _check_evidence(detail)


def incident_key(kind: str, source: str, subject: str, segment: dict[str, Any]) -> str:
    """A short stable id for (check, subject, segment); independent of dict order."""
    text = json.dumps([kind, source, subject, sorted(segment.items())], default=str)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def event_id(key: str, observed_at: datetime, state: str) -> str:
    """Deterministic: a monitor re-run over the same window writes the same id, so readers dedupe."""
    return hashlib.blake2b(f"{key}|{observed_at.isoformat()}|{state}".encode(), digest_size=12).hexdigest()
