"""The closed loop on a simulated world: serve, monitor, decide, retrain, release, in lockstep.

The label world (``label_world``) with its two incidents from day 7: the ``unit_change`` feed bug
in ``UNIT_REGION`` (what serving reads is in mph; the warehouse is right) and ``concept_drift``
in ``DRIFT_REGION``. ``cluster.closed_loop.run_closed_loop`` serves days 6-9 through the serving
code step by step, with a monitor pass, a policy pass (retraining on Ray Tune) and a release
step after each. The story the operator must see:

- the unit bug pages as data quality naming the feature and its region, the feature group is
  quarantined there (those jobs are served by the fallback from then on), and nothing retrains
  because of it;
- the concept drift is found in its own region once labels mature, and triggers a retrain whose
  candidate is registered with the triggering event in its lineage.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest

from cluster.closed_loop import run_closed_loop
from cluster.event_log import EventLog
from retrain.pipeline import retrainer
from retrain.registry import ModelRegistry
from serve_apps.prediction_log import read_prediction_log
from tests.integration.label_world import DRIFT_REGION, INCIDENT_DAY, UNIT_REGION, build_label_world, unit_change_feed

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def loop(tmp_path_factory: pytest.TempPathFactory, local_ray: object):
    world = build_label_world(tmp_path_factory.mktemp("closed-loop"), replay=False)
    settings = world.settings.model_copy(update={
        "monitor": world.settings.monitor.model_copy(update={"skew_every_hours": 24, "skew_window_hours": 24}),
        "retrain": world.settings.retrain.model_copy(update={"trials": 2, "max_boost_round": 60, "recent_days": 3, "history_days": 3}),
    })

    def retrain(event):
        return retrainer(settings, as_of=event.observed_at)(event)

    steps = run_closed_loop(settings, world.replay_start, world.end, timedelta(hours=6), retrain=retrain,
                            feed_scenario=unit_change_feed(INCIDENT_DAY), sim_start=world.sim_start)
    return world, settings, steps


def test_unit_bug_pages_and_quarantines_without_retraining(loop) -> None:
    world, settings, steps = loop
    log = EventLog(settings.paths.events)
    events = {e.event_id: e for e in log.events()}
    quality = [e for e in events.values() if e.kind == "data_quality" and e.segment.get("region_id") == UNIT_REGION and e.state == "firing"]
    assert quality and any("cell_traffic" in e.subject for e in quality)
    assert quality[0].severity == "page"
    actions = log.actions()
    fallback = [a for a in actions if a.action == "fallback_feature_group" and events[a.event_id].segment.get("region_id") == UNIT_REGION
                and events[a.event_id].subject.startswith("cell_traffic")]
    assert fallback and fallback[0].status == "taken"
    retrained_for_unit_region = [a for a in actions if a.action == "retrain" and a.status == "taken"
                                 and events[a.event_id].segment.get("region_id") == UNIT_REGION]
    assert retrained_for_unit_region == []
    # Once quarantined, the region's jobs are served by the fallback with the reason on them.
    quarantined_at = next(s.end for s in steps if "cell_traffic" in s.quarantined)
    rows = read_prediction_log(Path(settings.paths.root) / "prediction_log", quarantined_at, world.end).to_pandas()
    region = rows[(rows.role == "served") & (rows.region_id == UNIT_REGION)]
    assert len(region) and (region.arm == "fallback").all() and region.degradation_reasons.str.contains("cell_traffic:quarantined").all()


def test_concept_drift_in_its_region_triggers_a_retrain_with_lineage(loop) -> None:
    world, settings, steps = loop
    log = EventLog(settings.paths.events)
    events = {e.event_id: e for e in log.events()}
    onset = world.sim_start + timedelta(days=INCIDENT_DAY)
    concept = [e for e in events.values() if e.kind in ("concept_drift", "slo_burn") and e.state == "firing"]
    assert concept and all(e.observed_at > onset for e in concept)
    assert {e.segment.get("region_id") for e in concept if e.kind == "concept_drift"} == {DRIFT_REGION}
    retrains = [a for a in log.actions() if a.action == "retrain" and a.status == "taken"]
    assert retrains, [(a.action, a.status, a.reason) for a in log.actions() if a.action == "retrain"]
    trigger = events[retrains[0].event_id]
    assert trigger.segment.get("region_id") == DRIFT_REGION
    registry = ModelRegistry(settings.paths.registry)
    candidates = [registry.metadata("dispatch", v) for v in registry.versions("dispatch")]
    assert any(m.lineage.get("trigger") == trigger.event_id for m in candidates)
    # Every row every step scored (served and shadow) is in the log: nothing dropped on the way.
    logged = read_prediction_log(Path(settings.paths.root) / "prediction_log", world.replay_start, world.end).to_pandas()
    assert sum(s.logged_rows for s in steps) == len(logged)
