"""The model-quality monitor on replayed prediction logs and labels of small simulated worlds.

Two worlds from ``label_world``: the incident world (``concept_drift`` in ``DRIFT_REGION`` and
the ``unit_change`` feed bug in ``UNIT_REGION``, both from day 7) and its control (same seed, no
scenario). The monitor runs in simulated time, one pass every ``STEP`` over the replayed days,
as the service would; detection delay is the first event's data time minus the onset.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest
from prometheus_client import generate_latest
from typer.testing import CliRunner

from cluster.cli import app
from cluster.event_log import EventLog
from cluster.monitor import Monitor
from contracts.events import Event
from contracts.monitor_metrics import monitor_series_names
from tests.integration.label_world import DRIFT_REGION, INCIDENT_DAY, UNIT_REGION, LabelWorld, build_label_world

pytestmark = [pytest.mark.integration, pytest.mark.slow]

STEP = timedelta(hours=6)


def _replay(world: LabelWorld) -> tuple[Monitor, list[Event]]:
    # The skew check (a Feast historical retrieval per window) once a simulated day keeps the test short.
    settings = world.settings.model_copy(update={"monitor": world.settings.monitor.model_copy(update={"skew_every_hours": 24, "skew_window_hours": 24})})
    monitor = Monitor(settings)
    at = world.replay_start + STEP
    while at <= world.end:
        monitor.run_pass(at)
        at += STEP
    return monitor, EventLog(world.settings.paths.events).events()


@pytest.fixture(scope="module")
def incident(label_world: LabelWorld) -> tuple[LabelWorld, Monitor, list[Event]]:
    return (label_world, *_replay(label_world))


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> tuple[LabelWorld, Monitor, list[Event]]:
    world = build_label_world(tmp_path_factory.mktemp("monitor-control"), incidents=False)
    return (world, *_replay(world))


def _onset(world: LabelWorld) -> datetime:
    return world.sim_start + timedelta(days=INCIDENT_DAY)


def _delay_minutes(world: LabelWorld, events: list[Event]) -> float:
    return min((e.observed_at - _onset(world)).total_seconds() / 60 for e in events)


def test_unit_change_pages_as_data_quality_on_the_feature_and_region_and_is_not_concept_drift(incident) -> None:
    world, _, events = incident
    pages = [e for e in events if e.state == "firing" and e.kind == "data_quality"]
    assert {(e.subject, e.segment.get("region_id")) for e in pages if e.subject.startswith("cell_traffic")} == {("cell_traffic__speed_kmh", UNIT_REGION)}
    assert {e.segment.get("region_id") for e in pages} == {UNIT_REGION}, "naive_travel_min, computed online from the speed, may page too; nothing else"
    speed = next(e for e in pages if e.subject == "cell_traffic__speed_kmh")
    assert speed.severity == "page" and speed.observed_at > _onset(world)
    assert speed.evidence["mismatch_ratio"] == pytest.approx(0.621, abs=0.01), "the evidence reads as the km/h -> mph factor"
    assert not [e for e in events if e.kind == "concept_drift" and e.segment.get("region_id") == UNIT_REGION]
    print(f"unit_change detection delay: {_delay_minutes(world, [speed]):.0f} simulated minutes")


def test_concept_drift_is_flagged_in_its_region_only_once_labels_mature(incident) -> None:
    world, _, events = incident
    quality = [e for e in events if e.state == "firing" and e.kind in ("concept_drift", "slo_burn")]
    assert {e.segment.get("region_id") for e in quality} == {DRIFT_REGION}, [(e.kind, e.segment) for e in quality]
    assert all(e.observed_at > _onset(world) for e in quality)
    print(f"concept_drift detection delay: {_delay_minutes(world, quality):.0f} simulated minutes")


def test_control_world_never_pages(control) -> None:
    world, _, events = control
    pages = [e for e in events if e.severity == "page" and e.state == "firing"]
    days = (world.end - world.replay_start).total_seconds() / 86_400
    assert not pages, [(e.kind, e.source, e.subject, e.segment) for e in pages]
    assert not [e for e in events if e.kind in ("concept_drift", "slo_burn", "data_quality")]
    tickets = [e for e in events if e.severity == "ticket" and e.state == "firing"]
    # Job-level features counted once per job and a 12 h persistence (was ~53 drift tickets a day).
    assert len(tickets) / days <= 2, [(e.kind, e.subject, e.segment) for e in tickets]
    print(f"control: {len(pages) / days:.2f} pages and {len(tickets) / days:.1f} tickets (feature drift) per simulated day over {days:.0f} days")


def test_monitor_exports_the_contracted_series(incident) -> None:
    _, monitor, _ = incident
    exposed = {s.name for family in monitor.registry.collect() for s in family.samples if s.value == s.value}
    assert {n for n in exposed if not n.endswith("_created")} <= monitor_series_names()
    for name in ("feature_drift_psi", "feature_null_ratio", "eta_interval_hit_ratio", "quality_burn_rate", "label_watermark_lag_seconds",
                 "matured_eta_mae_seconds", "estimated_eta_mae_seconds", "calibration_ece_ratio", "freshness_seconds",
                 "member_wait_seconds_bucket", "offers_total", "jobs_completed_total"):
        assert f"dispatchml_monitor_{name}" in exposed, name
    text = generate_latest(monitor.registry).decode()
    assert f'dispatchml_monitor_concept_drift_detections_total{{detector="page_hinkley",model="eta",region="{DRIFT_REGION}"}}' in text


def test_a_second_pass_over_the_same_data_writes_nothing(incident) -> None:
    world, monitor, events = incident
    again = monitor.run_pass(world.end)
    assert again.rows_read == 0 and again.written == 0
    done = CliRunner().invoke(app, ["--config", str(world.config_path), "monitor", "run", "--once", "--until", world.end.isoformat()])
    assert done.exit_code == 0, done.output
    assert "0 log rows" in done.output and "0 new events" in done.output
    assert len(EventLog(world.settings.paths.events).events()) == len(events)
