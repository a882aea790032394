"""Policy passes over the event log: actions carried out once, recorded with reasons, failures kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from cluster.actions import Executor, apply_policy
from cluster.event_log import EventLog
from contracts.events import Event, event_id, incident_key
from retrain.policy import Policy
from serve_apps.traffic_state import read_quarantine

T0 = datetime(2026, 2, 25, 12, tzinfo=UTC)


def _event(kind: str, region: int, subject: str, minutes: int = 0, state: str = "firing", severity: str = "page") -> Event:
    segment = {"region_id": region}
    key = incident_key(kind, "check", subject, segment)
    at = T0 + timedelta(minutes=minutes)
    return Event(event_id=event_id(key, at, state), kind=kind, severity=severity, state=state, source="check", subject=subject,
                 segment=segment, observed_at=at, detected_at=at, summary=f"{kind} {subject} region {region}")


def test_unit_bug_quarantines_and_concept_drift_elsewhere_retrains(tmp_path: Path) -> None:
    log, registry = EventLog(tmp_path / "events"), tmp_path / "registry"
    retrained: list[Event] = []
    executor = Executor(registry, retrain=lambda e: retrained.append(e) or {"candidate": "v-new"})
    log.append([_event("data_quality", 23, "cell_traffic__speed_kmh")])
    first = apply_policy(log, Policy.load(), executor)
    assert [(r.action, r.status) for r in first] == [("page", "taken"), ("fallback_feature_group", "taken")]
    assert read_quarantine(registry).groups_for(23) == {"cell_traffic"} and not read_quarantine(registry).groups_for(30)

    log.append([_event("concept_drift", 23, "eta", minutes=60), _event("concept_drift", 30, "eta", minutes=60)])
    second = apply_policy(log, Policy.load(), executor)
    region_of = {e.event_id: e.segment["region_id"] for e in log.events()}
    assert sorted((region_of[r.event_id], r.action, r.status) for r in second) == [
        (23, "page", "taken"), (23, "retrain", "skipped"), (30, "page", "taken"), (30, "retrain", "taken")]
    assert [e.segment for e in retrained] == [{"region_id": 30}]
    assert apply_policy(log, Policy.load(), executor) == []  # idempotent

    log.append([_event("data_quality", 23, "cell_traffic__speed_kmh", minutes=120, state="resolved", severity="info")])
    third = apply_policy(log, Policy.load(), executor)
    assert [(r.action, r.status) for r in third] == [("restore_feature_group", "taken")]
    assert not read_quarantine(registry).groups_for(23)
    assert sorted(i.first.segment["region_id"] for i in log.incidents()) == [23, 30]  # concept drift stays open


def test_failed_action_is_recorded_with_its_error(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events")

    def broken(_: Event) -> dict:
        raise RuntimeError("tune cluster unreachable")

    log.append([_event("concept_drift", 30, "eta")])
    records = apply_policy(log, Policy.load(), Executor(tmp_path / "registry", retrain=broken))
    failed = [r for r in records if r.action == "retrain"]
    assert failed[0].status == "failed" and "tune cluster unreachable" in failed[0].reason
    log.append([_event("data_quality", 5, "not_a_group")])
    bad = [r for r in apply_policy(log, Policy.load(), Executor(tmp_path / "registry")) if r.action == "fallback_feature_group"]
    assert bad[0].status == "failed" and "names no feature group" in bad[0].reason


def test_incidents_and_policy_apply_commands(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from cluster.cli import app

    config = tmp_path / "dispatchml.yaml"
    config.write_text(f"paths:\n  root: {tmp_path}\n  registry: {tmp_path / 'registry'}\n  events: {tmp_path / 'events'}\n")
    EventLog(tmp_path / "events").append([_event("data_quality", 23, "cell_traffic__speed_kmh")])
    runner = CliRunner()
    applied = runner.invoke(app, ["--config", str(config), "policy-apply"], env={"COLUMNS": "250"})
    assert applied.exit_code == 0, applied.output
    assert "fallback_feature_group" in applied.output and "upstream-data-quality" in applied.output
    listed = runner.invoke(app, ["--config", str(config), "incidents"], env={"COLUMNS": "250"})
    assert listed.exit_code == 0 and "cell_traffic__speed_kmh" in listed.output and "fallback_feature_group:taken" in listed.output
    as_json = runner.invoke(app, ["--config", str(config), "incidents", "--json"])
    assert '"region_id": 23' in as_json.output
