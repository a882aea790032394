"""The event policy: data incidents page and fall back without retraining; confirmed drift retrains."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from contracts.events import ActionRecord, Event, event_id, incident_key
from retrain.policy import Policy, decide, segments_overlap

T0 = datetime(2026, 2, 25, 12, tzinfo=UTC)
POLICY = Policy.load()


def _event(kind: str, region: int | None = 23, severity: str = "page", state: str = "firing", subject: str = "eta", minutes: int = 0) -> Event:
    segment = {} if region is None else {"region_id": region}
    key = incident_key(kind, "check", subject, segment)
    at = T0 + timedelta(minutes=minutes)
    return Event(event_id=event_id(key, at, state), kind=kind, severity=severity, state=state, source="check", subject=subject,
                 segment=segment, observed_at=at, detected_at=at, summary=f"{kind} in {segment}")


def _actions(decisions: list) -> list[tuple[str, str]]:
    return [(d.action, d.status) for d in decisions]


def test_upstream_data_incident_pages_and_falls_back_never_retrains() -> None:
    dq = _event("data_quality", subject="cell_traffic")
    assert _actions(decide(POLICY, [dq], [dq])) == [("page", "suggested"), ("fallback_feature_group", "suggested")]
    # The same bug later raises the matured error in the region: no retrain while the data incident is open.
    concept = _event("concept_drift", minutes=90)
    decisions = decide(POLICY, [concept], [dq, concept])
    assert _actions(decisions) == [("page", "suggested"), ("retrain", "skipped")]
    assert "data_quality incident" in decisions[1].reason
    # A global data incident overlaps every region.
    assert _actions(decide(POLICY, [concept], [_event("data_quality", region=None, subject="weather"), concept]))[1] == ("retrain", "skipped")


def test_concept_drift_retrains_and_only_once_per_incident() -> None:
    concept = _event("concept_drift", region=30)
    first = decide(POLICY, [concept], [concept, _event("data_quality", region=23, subject="cell_traffic")])
    assert _actions(first) == [("page", "suggested"), ("retrain", "suggested")]
    taken = [ActionRecord(action_id=f"a{i}", event_id=concept.event_id, incident_key=concept.incident_key(), action=d.action,
                          status="taken", reason=d.reason, decided_at=T0) for i, d in enumerate(first)]
    again = _event("concept_drift", region=30, minutes=5)
    assert decide(POLICY, [again], [again], taken) == []


def test_covariate_drift_retrains_only_when_matured_labels_confirm() -> None:
    drift = _event("drift", region=30, severity="ticket", subject="cell_traffic__speed_kmh")
    assert _actions(decide(POLICY, [drift], [drift])) == [("ticket", "suggested")]
    concept = _event("concept_drift", region=30)
    assert _actions(decide(POLICY, [drift], [drift, concept])) == [("ticket", "suggested"), ("retrain", "suggested")]
    assert _actions(decide(POLICY, [drift], [drift, _event("concept_drift", region=31)])) == [("ticket", "suggested")]


def test_resolved_data_incident_restores_the_feature_group() -> None:
    cleared = _event("data_quality", subject="cell_traffic", state="resolved", severity="info", minutes=60)
    assert _actions(decide(POLICY, [cleared], [])) == [("restore_feature_group", "suggested")]


def test_unmatched_event_is_recorded_as_no_action() -> None:
    info = _event("drift", severity="info")
    assert [(d.action, d.status, d.rule) for d in decide(POLICY, [info], [info])] == [("ticket", "suggested", "covariate-drift-unconfirmed")]
    only_release = Policy.model_validate({"rules": [{"name": "r", "match": {"kinds": ["release"]}, "actions": ["none"], "why": "w"}]})
    assert [(d.action, d.status) for d in decide(only_release, [info], [info])] == [("none", "skipped")]


def test_segment_overlap_and_bad_policy() -> None:
    assert segments_overlap({}, {"region_id": 3}) and segments_overlap({"region_id": 3, "line_of_business": "auto"}, {"region_id": 3})
    assert not segments_overlap({"region_id": 3}, {"region_id": 4})
    with pytest.raises(ValidationError):
        Policy.model_validate({"rules": [{"name": "r", "match": {"kinds": ["nonsense"]}, "actions": ["retrain"], "why": "w"}]})


def test_other_incidents_clearing_are_recorded_without_action() -> None:
    cleared = _event("drift", severity="ticket", state="resolved", subject="cell_traffic__speed_kmh")
    assert [(d.action, d.status, d.rule) for d in decide(POLICY, [cleared], [])] == [("none", "suggested", "incident-cleared")]
