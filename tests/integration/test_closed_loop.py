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


def test_loop_report_shows_the_incident_and_its_figures_come_from_the_logs(loop, tmp_path: Path) -> None:
    """``eval.loop_report`` over the loop's span: the unit bug's page and quarantine are on the page,
    its fallback share and drift match what the prediction log says, and no member data is in it."""
    import json
    import re

    import numpy as np
    import pandas as pd
    import plotly.offline
    import pyarrow.dataset as ds

    from contracts.warehouse import table_dir
    from eval.drift import psi
    from eval.loop_report import DATA_ELEMENT_ID, write_loop_report

    world, settings, steps = loop
    page = write_loop_report(settings, world.replay_start, world.end, tmp_path / "loop.html", steps=steps).read_text()
    data = json.loads(re.search(rf"<script type='application/json' id='{DATA_ELEMENT_ID}'>(.*?)</script>", page, re.S).group(1).replace("<\\/", "</"))
    incident_at = pd.Timestamp(data["incident_at"])

    def table_rows(table_id: str) -> list[str]:
        table = re.search(rf'<table[^>]*id="{table_id}".*?</table>', page, re.S).group(0)
        return [" ".join(re.sub(r"<[^>]+>", " ", row).split()) for row in re.findall(r"<tr>.*?</tr>", table, re.S)]

    # The unit bug's data-quality page and the quarantine it led to, in the incident table and on the timeline.
    assert any(all(s in row for s in ("data_quality", "page", "cell_traffic__speed_kmh", f"region_id={UNIT_REGION}", "fallback_feature_group (taken)"))
               for row in table_rows("incidents"))
    assert '"release: quarantine"' in page and '"action: fallback_feature_group"' in page and '"event: data_quality"' in page
    assert UNIT_REGION in data["incident_regions"]

    # Fallback share of the unit region's requests after the incident, recomputed from the log.
    log = read_prediction_log(Path(settings.paths.root) / "prediction_log", world.replay_start, world.end).to_pandas()
    served = log[(log.role == "served") & (log.region_id == UNIT_REGION)].drop_duplicates("request_id")
    after = served[pd.to_datetime(served.requested_at, utc=True) >= incident_at]
    expected = float((after.arm == "fallback").mean())
    reported = next(r for r in data["region_metrics"] if r["region_id"] == UNIT_REGION and r["period"] == "after incident")
    assert expected > 0 and reported["fallback_share"] == pytest.approx(expected, abs=1e-12)
    assert f"{expected:.4f}" in next(row for row in table_rows("region-metrics") if row.startswith(f"{UNIT_REGION} "))

    # The served speed in the unit region drifted (km/h read as mph): PSI from the log itself.
    rows = log[(log.role == "served") & (log.region_id == UNIT_REGION)]
    speed = rows["feature__cell_traffic__speed_kmh"].to_numpy(np.float32)
    before_incident = (pd.to_datetime(rows.requested_at, utc=True) < incident_at).to_numpy()
    drift = next(r for r in data["region_drift"] if r["region_id"] == UNIT_REGION and r["feature"] == "cell_traffic__speed_kmh")
    assert drift["drift"] and drift["psi"] == pytest.approx(psi(speed[before_incident], speed[~before_incident]), rel=1e-9)

    # No member id, name, phone, coordinate, job, request or pseudonym (outside plotly.js itself).
    text = page.replace(plotly.offline.get_plotlyjs(), "")
    tokens = set(re.findall(r"[A-Za-z0-9_.+:-]+", text))
    requests = ds.dataset(table_dir(world.data_root, "raw/requests"), format="parquet").to_table(
        filter=(ds.field("request_ts") >= world.replay_start) & (ds.field("request_ts") < world.end)).to_pandas()
    identifiers = {*requests.member_id, *requests.member_phone, *log.job_id, *log.request_id, *log.member_pseudonym}
    coordinates = {f"{v:{fmt}}" for v in (*requests.job_lat, *requests.job_lon) for fmt in ("", ".5f", ".6f")}
    assert not tokens & identifiers and not tokens & coordinates
    assert not any(name in text for name in requests.member_name.unique()[:500])
