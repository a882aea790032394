"""``retrain_from_warehouse`` on a small concept-drift world, with Ray Tune on a local Ray.

The world (240 cells in 6 regions, 600 providers, ~5,000 events a day for 12 days) runs
``scenarios/concept_drift.yaml``'s incident from day 6 in ``DRIFT_REGION``, stronger (true
travel speed / 2 instead of / 1.35) while every feature reads as before, so only a model trained
on post-drift labels can know.
The champion is trained at day 6, before the drift shows in any label. A concept-drift event is
appended to the event log and a retrain is triggered by its id at the end of day 12, on the
last 3 recent days plus half of the 4 days before them; the holdout (days 9.5-11.5) is all
post-drift.

ASHA's grace period is set beyond the trials' last report here, so no trial is pruned and which
trial wins does not depend on the order the two concurrent trials report in: the test stays
deterministic. LightGBM's early stopping still ends each trial.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from cluster.config import Settings
from cluster.event_log import EventLog
from cluster.feature_store import apply
from contracts.events import Event, event_id, incident_key
from retrain.pipeline import RetrainRun, retrain_from_warehouse, train_from_warehouse
from retrain.registry import ModelRegistry
from simulator.run import SimulationSpec, simulate
from simulator.scenarios import Incident, Scenario

pytestmark = [pytest.mark.integration]

START = date(2026, 2, 2)
DAYS = 12
DRIFT_DAY = 6
DRIFT_REGION = 3
#: Travel speed / 2: concept_drift.yaml's incident (speed / 1.35) made large enough to stand out of a 2-day holdout.
DRIFT_SIZE = 1.0
SIM_START = datetime(START.year, START.month, START.day, tzinfo=UTC)


def _settings(root: Path) -> Settings:
    base = Settings()
    return base.model_copy(update={
        "paths": base.paths.model_copy(update={
            "root": root, "data": root / "data", "registry": root / "registry",
            "feature_store": root / "feature_store", "reports": root / "reports", "events": root / "events",
        }),
        "world": base.world.model_copy(update={"cells": 240, "regions": 6, "providers": 600}),
        "train": base.train.model_copy(update={
            "window_days": 3, "holdout_days": 2, "num_boost_round": 40, "num_leaves": 15,
            "max_training_rows": 60_000, "num_threads": 1,
        }),
        "retrain": base.retrain.model_copy(update={
            "recent_days": 3, "history_days": 4, "history_fraction": 0.5, "validation_days": 1,
            "trials": 2, "max_boost_round": 60, "early_stopping_rounds": 10, "report_every": 10,
            "asha_grace_reports": 100, "gate_min_rows": 100,
        }),
    })


def _drift_event(settings: Settings) -> Event:
    """What the concept-drift monitor writes when region ``DRIFT_REGION``'s ETA residuals shift."""
    observed = SIM_START + timedelta(days=9)
    segment = {"region_id": DRIFT_REGION}
    key = incident_key("concept_drift", "page_hinkley", "eta", segment)
    event = Event(
        event_id=event_id(key, observed, "firing"), kind="concept_drift", severity="ticket", source="page_hinkley",
        subject="eta", segment=segment, observed_at=observed, detected_at=observed + timedelta(minutes=5),
        summary="ETA residual mean rose in region 3", evidence={"residual_mean_minutes": 6.1},
    )
    EventLog(settings.paths.events).append([event])
    return event


@pytest.fixture(scope="module")
def retrained(tmp_path_factory: pytest.TempPathFactory, local_ray: object) -> tuple[Settings, Event, RetrainRun]:
    settings = _settings(tmp_path_factory.mktemp("retrain"))
    concept = Incident(kind="concept_drift", start_day=DRIFT_DAY, duration="10d", segment={"region_id": [DRIFT_REGION]}, size=DRIFT_SIZE)
    simulate(SimulationSpec(
        out=Path(settings.paths.data), days=DAYS, events_per_day=5_000, seed=7, start=START,
        cells=240, regions=6, providers=600, scenario=Scenario(incidents=[concept]),
    ))
    apply(settings)
    train_from_warehouse(settings, as_of=SIM_START + timedelta(days=DRIFT_DAY), set_alias="champion")
    event = _drift_event(settings)
    run = retrain_from_warehouse(settings, trigger=event.event_id)
    return settings, event, run


def test_retrained_candidate_passes_the_gate_and_fixes_the_drifted_region(retrained: tuple[Settings, Event, RetrainRun]) -> None:
    _, _, run = retrained
    assert run.gate is not None and run.gate.passed, run.gate.reason if run.gate else "no champion"
    checks = {(c.metric, c.segment, c.value): c for c in run.gate.checks}
    drifted = checks[("eta_mae", "region_id", str(DRIFT_REGION))]
    assert drifted.verdict == "pass" and drifted.rows >= 100
    assert drifted.candidate < drifted.champion
    # A passed segment is within its tolerance or its excess is noise; small segments are listed unjudged.
    assert all(c.relative_change <= c.tolerance or c.z <= 1.645 for c in run.gate.checks if c.verdict == "pass")
    assert any(c.verdict == "ignored" for c in run.gate.checks)
    assert run.alias == "challenger"


def test_lineage_records_trigger_windows_trials_and_gate(retrained: tuple[Settings, Event, RetrainRun]) -> None:
    settings, event, run = retrained
    registry = ModelRegistry(settings.paths.registry)
    metadata = registry.metadata("dispatch", run.versions["dispatch"])
    lineage = metadata.lineage
    assert lineage["trigger"] == event.event_id
    assert lineage["trigger_event"]["segment"] == {"region_id": DRIFT_REGION}
    assert lineage["gate"] == "passed" and lineage["gate_champion"] == run.champion
    recent, history = lineage["windows"]["recent"], lineage["windows"]["history"]
    assert history[1] == recent[0] and datetime.fromisoformat(history[0]) < datetime.fromisoformat(recent[0])
    # ETA concept drift refits the ETA model only; the champion's acceptance model is kept.
    assert lineage["refit"] == ["eta"] and set(lineage["tune"]) == {"eta"}
    tuned = lineage["tune"]["eta"]
    assert tuned["trial_id"] == run.searches["eta"].best.trial_id
    assert tuned["trials"] == 2 and tuned["failed_trials"] == 0
    assert 0 < tuned["best_iteration"] <= settings.retrain.max_boost_round
    # The candidate was refit with the winning trial's capacity, boosted to its best round.
    component = registry.metadata("eta", metadata.components["eta"])
    assert component.hyperparameters["num_leaves"] == tuned["config"]["num_leaves"]
    assert component.hyperparameters["num_boost_round"] == tuned["best_iteration"]
    champion_acceptance = registry.metadata("dispatch", run.champion).components["acceptance"]
    assert lineage["kept_from_champion"] == {"acceptance": champion_acceptance}
    kept = registry.metadata("acceptance", metadata.components["acceptance"])
    assert kept.hyperparameters == registry.metadata("acceptance", champion_acceptance).hyperparameters
    # Not champion: release decides that.
    assert registry.alias("dispatch", "champion").version == run.champion != run.versions["dispatch"]
    assert registry.alias("dispatch", "challenger").version == run.versions["dispatch"]
    json.dumps(lineage)
