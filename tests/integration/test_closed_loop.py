"""The closed loop on a simulated world: serve, monitor, decide, retrain, release, in lockstep.

The label world (``label_world``), lengthened to ``LOOP_DAYS``, with its two incidents from day
7: the ``unit_change`` feed bug in ``UNIT_REGION`` (what serving reads is in mph; the warehouse
is right) and ``concept_drift`` in ``DRIFT_REGION``. ``cluster.closed_loop.run_closed_loop``
serves days 6-13 through the serving code step by step, with a monitor pass, a policy pass
(retraining on Ray Tune) and a release step after each. The story the operator must see:

- the unit bug pages as data quality naming the feature and its region, the feature group is
  quarantined there (those jobs are served by the fallback from then on), and nothing retrains
  because of it;
- the concept drift is found in its own region once labels mature, and triggers a retrain whose
  candidate is registered with the triggering event in its lineage;
- the release controller shadows the candidate, ramps it through every canary step and promotes
  it on the sequential test's evidence that it is better, and no job goes unanswered.

A second run on the same warehouse (fresh registry and log) retrains into a deliberately worse
candidate (labels shuffled): the controller rolls it back and the champion keeps serving. A third,
smaller world is the control: a simulated month without any scenario, served and monitored with
the policy applied, pages nothing.

Release settings are test-sized only where the world is small: ~800 jobs a day put ~40 a day on
a 5 % canary, so a step waits for ``min_requests_per_step`` = 30 challenger requests instead of
2,000; the test's own thresholds (``min_samples``, ``alpha``, margins) are the defaults.
"""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path

import pytest

from cluster.closed_loop import LoopStep, run_closed_loop
from cluster.config import Settings
from cluster.event_log import EventLog
from retrain.pipeline import retrainer
from retrain.registry import ModelRegistry
from retrain.release import ACTION_KINDS
from retrain.training_set import entity_frame
from serve_apps.prediction_log import read_prediction_log
from tests.integration.label_world import (
    DRIFT_REGION,
    INCIDENT_DAY,
    UNIT_REGION,
    LabelWorld,
    build_label_world,
    shuffled_label_retrainer,
    unit_change_feed,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

#: Long enough for the release to promote (day 9.75 with seed 7) and a day of the new champion.
LOOP_DAYS = 12
STEP = timedelta(hours=6)


def loop_settings(world: LabelWorld) -> Settings:
    """The world's settings with a daily skew check, a small Tune search and test-sized canary steps."""
    s = world.settings
    return s.model_copy(update={
        "monitor": s.monitor.model_copy(update={"skew_every_hours": 24, "skew_window_hours": 24}),
        "retrain": s.retrain.model_copy(update={"trials": 2, "max_boost_round": 60, "recent_days": 5, "history_days": 0}),
        "release": s.release.model_copy(update={"min_requests_per_step": 30}),
    })


def relocated(settings: Settings, root: Path) -> Settings:
    """The same warehouse and feature store with a fresh registry (a copy), log, events and reports under ``root``."""
    shutil.copytree(settings.paths.registry, root / "registry")
    return settings.model_copy(update={"paths": settings.paths.model_copy(update={
        "root": root, "registry": root / "registry", "events": root / "events", "reports": root / "reports"})})


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[LabelWorld, Path]:
    """The lengthened label world and a pristine copy of its registry (champion only)."""
    built = build_label_world(tmp_path_factory.mktemp("closed-loop"), replay=False, days=LOOP_DAYS)
    pristine = tmp_path_factory.mktemp("pristine")
    relocated(built.settings, pristine)
    return built, pristine


@pytest.fixture(scope="module")
def loop(world: tuple[LabelWorld, Path], local_ray: object) -> tuple[LabelWorld, Settings, list[LoopStep]]:
    built, _ = world
    settings = loop_settings(built)

    def retrain(event):
        return retrainer(settings, as_of=event.observed_at)(event)

    steps = run_closed_loop(settings, built.replay_start, built.end, STEP, retrain=retrain,
                            feed_scenario=unit_change_feed(INCIDENT_DAY), sim_start=built.sim_start)
    return built, settings, steps


def _every_job_served(settings: Settings, world: LabelWorld, until) -> None:
    """Every job requested in the replayed span has exactly one served answer in the prediction log."""
    requested = set(entity_frame(Path(settings.paths.data), world.replay_start, until)["job_id"].unique())
    log = read_prediction_log(Path(settings.paths.root) / "prediction_log", world.replay_start, until).to_pandas()
    served = log[log.role == "served"].drop_duplicates(["request_id", "job_id"])
    assert set(served.job_id) == requested and served.job_id.is_unique


def _first_candidate(settings: Settings) -> tuple[EventLog, str]:
    """The event log and the dispatch version the loop's first retrain registered."""
    log = EventLog(settings.paths.events)
    retrain = next(a for a in log.actions() if a.action == "retrain" and a.status == "taken")
    return log, str(retrain.detail["dispatch_version"])


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
    # While quarantined, the region's jobs are served by the fallback with the reason on them.
    quarantined_at = next(s.end for s in steps if "cell_traffic" in s.quarantined)
    lifted_at = next((s.start for s in steps if s.end > quarantined_at and "cell_traffic" not in s.quarantined), world.end)
    rows = read_prediction_log(Path(settings.paths.root) / "prediction_log", quarantined_at, lifted_at).to_pandas()
    region = rows[(rows.role == "served") & (rows.region_id == UNIT_REGION)]
    assert len(region) and (region.arm == "fallback").all() and region.degradation_reasons.str.contains("cell_traffic:quarantined").all()


def test_concept_drift_in_its_region_triggers_a_retrain_with_lineage(loop) -> None:
    world, settings, steps = loop
    log = EventLog(settings.paths.events)
    events = {e.event_id: e for e in log.events()}
    onset = world.sim_start + timedelta(days=INCIDENT_DAY)
    concept = [e for e in events.values() if e.kind in ("concept_drift", "slo_burn") and e.state == "firing"]
    assert concept and all(e.observed_at > onset for e in concept)
    assert concept[0].segment.get("region_id") == DRIFT_REGION
    retrains = [a for a in log.actions() if a.action == "retrain" and a.status in ("taken", "failed")]
    assert retrains and retrains[0].status == "taken", [(a.action, a.status, a.reason) for a in log.actions() if a.action == "retrain"]
    trigger = events[retrains[0].event_id]
    assert trigger.kind == "concept_drift" and trigger.segment.get("region_id") == DRIFT_REGION
    registry = ModelRegistry(settings.paths.registry)
    candidates = [registry.metadata("dispatch", v) for v in registry.versions("dispatch")]
    assert any(m.lineage.get("trigger") == trigger.event_id and m.lineage.get("refit") == ["eta"] for m in candidates)
    # Later retrain requests (the drift keeps firing) wait while its candidate is in release.
    waited = [a for a in log.actions() if a.action == "retrain" and a.status == "skipped" and "in release" in str(a.detail.get("note"))]
    assert waited and all(a.decided_at >= retrains[0].decided_at for a in waited)
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


def test_the_retrained_candidate_is_shadowed_ramped_and_promoted_with_every_job_answered(loop) -> None:
    world, settings, steps = loop
    log, candidate = _first_candidate(settings)
    first_champion = steps[0].champion
    # The release's own record, in order: three canary steps (after shadowing, on by default), promotion.
    release = [a for a in log.actions() if a.action in set(ACTION_KINDS.values()) - {"none"} and a.status == "taken"
               and a.detail.get("candidate") == candidate]
    assert [a.action for a in release] == ["canary_advance", "canary_advance", "canary_advance", "promote"], [(a.action, a.reason) for a in release]
    assert release[0].detail["shadow"] and release[0].detail["requests_at_step"] >= settings.release.min_requests_per_step
    assert [s.challenger_weight for s in steps if s.challenger == candidate and s.challenger_weight > 0][-1] == 0.5
    promote = release[-1]
    # Promoted on the sequential test: ETA error better (upper bound of challenger - champion < 0),
    # acceptance log loss non-inferior within its margin.
    assert promote.detail["test"] == "promote" and promote.detail["eta_abs_error_upper"] < 0
    assert promote.detail["accept_log_loss_upper"] < settings.release.acceptance_margin
    promoted_at = next(s.end for s in steps if s.champion == candidate)
    assert candidate != first_champion and all(s.champion == first_champion for s in steps if s.end < promoted_at)
    registry = ModelRegistry(settings.paths.registry)
    assert registry.alias("dispatch", "fallback").version == first_champion, "the old champion is the last-known-good"
    # From the promotion on, the new champion answers every job the champion arm serves.
    until = next((s.end for s in steps if s.end > promoted_at and s.champion != candidate), world.end)
    after = read_prediction_log(Path(settings.paths.root) / "prediction_log", promoted_at, until).to_pandas()
    served = after[(after.role == "served") & (after.arm == "champion")]
    assert len(served) and (served.dispatch_version == candidate).all()
    _every_job_served(settings, world, world.end)


@pytest.fixture(scope="module")
def worse(world: tuple[LabelWorld, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[LabelWorld, Settings, list[LoopStep]]:
    """Days 6-10 of the same warehouse, from the pristine registry, retraining into a worse candidate."""
    built, pristine = world
    base = loop_settings(built).model_copy(update={"paths": built.settings.paths.model_copy(update={"registry": pristine / "registry"})})
    settings = relocated(base, tmp_path_factory.mktemp("worse"))
    # The skew check (Feast retrievals) is the unit bug's detector; this run has no unit bug.
    settings = settings.model_copy(update={"monitor": settings.monitor.model_copy(update={"skew_every_hours": 0})})
    end = built.sim_start + timedelta(days=10)
    steps = run_closed_loop(settings, built.replay_start, end, STEP, retrain=shuffled_label_retrainer(settings), sim_start=built.sim_start)
    return built, settings, steps


def test_a_worse_candidate_is_rolled_back_and_the_champion_keeps_serving(worse) -> None:
    world, settings, steps = worse
    log, candidate = _first_candidate(settings)
    champion = steps[0].champion
    rollback = [a for a in log.actions() if a.action == "rollback" and a.status == "taken" and a.detail.get("candidate") == candidate]
    assert len(rollback) == 1 and rollback[0].reason.startswith(("test_rejected", "burn_rate", "guardrail"))
    assert not [a for a in log.actions() if a.action == "promote"]
    rolled_back_at = next(s.end for s in steps if s.release in ("test_rejected", "burn_rate", "guardrail"))
    assert all(s.champion == champion for s in steps)
    # The experiment is stopped: no challenger traffic or shadow scoring after the rollback.
    after = read_prediction_log(Path(settings.paths.root) / "prediction_log", rolled_back_at, steps[-1].end).to_pandas()
    assert len(after) and not (after.dispatch_version == candidate).any()
    _every_job_served(settings, world, steps[-1].end)


def test_a_control_month_pages_nothing(tmp_path_factory: pytest.TempPathFactory) -> None:
    """A month of a small world with no scenario, monitored and policed daily: no page, few tickets.

    The skew check (a Feast retrieval, most of a pass's time) runs weekly here over a day's window;
    ``bench/closed_loop.py`` runs the same month with it daily.
    """
    world = build_label_world(tmp_path_factory.mktemp("control-month"), incidents=False, replay=False, days=36,
                              events_per_day=2_000, regions=12, cells=240, providers=600)
    settings = world.settings.model_copy(update={"monitor": world.settings.monitor.model_copy(update={"skew_every_hours": 168, "skew_window_hours": 24})})
    steps = run_closed_loop(settings, world.replay_start, world.end, timedelta(hours=24), sim_start=world.sim_start)
    log = EventLog(settings.paths.events)
    pages = [a for a in log.actions() if a.action == "page"]
    days = (world.end - world.replay_start).days
    assert days == 30 and len(steps) == 30
    assert not pages, [(a.reason, a.event_id) for a in pages]
    assert not [e for e in log.events() if e.severity == "page"]
    tickets = [e for e in log.events() if e.severity == "ticket" and e.state == "firing"]
    assert len(tickets) / days <= 1.0, [(e.kind, e.subject, e.segment) for e in tickets]
