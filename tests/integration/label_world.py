"""A small simulated world with a registered champion and a replayed prediction log.

Shared by the skew and delayed-label tests. 480 cells in 24 regions (so region 23 of
``scenarios/unit_change.yaml`` exists), 1,200 providers, ~1,000 jobs a day for 10 days. The
champion is trained on days 0-7; from day 7 two incidents run to the end:

- the warehouse is simulated with ``concept_drift`` in ``DRIFT_REGION`` (true speed / 1.35,
  features unchanged): realized ETA error there rises and nothing the model sees moves;
- ``scenarios/unit_change.yaml``, moved to day 7, is applied only to what the online feed pushed
  in the replay (``simulator.served_log``): the served ``cell_traffic.speed_kmh`` of region 23 is
  in mph while the warehouse keeps km/h.

The replay scores days 6-9 through the real serving code into ``<root>/prediction_log``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from cluster.config import Settings
from cluster.demo import DemoOptions, demo_settings
from cluster.feature_store import apply
from contracts.events import Event, EvidenceValue
from retrain.pipeline import request_bounds, train_from_warehouse, with_labels
from retrain.registry import ModelRegistry
from retrain.train import register_models, train_models
from retrain.training_set import build_training_set
from simulator.run import SimulationSpec, simulate
from simulator.scenarios import Incident, Scenario
from simulator.served_log import replay_served_log

REPO = Path(__file__).resolve().parents[2]
START = date(2026, 1, 5)
DAYS = 9
TRAIN_DAYS = 6
INCIDENT_DAY = 7
DRIFT_REGION = 16
UNIT_REGION = 23


@dataclass(frozen=True)
class LabelWorld:
    settings: Settings
    sim_start: datetime
    replay_start: datetime
    end: datetime
    log_root: Path
    logged_rows: int

    @property
    def data_root(self) -> Path:
        return Path(self.settings.paths.data)

    @property
    def config_path(self) -> Path:
        return Path(self.settings.paths.root) / "dispatchml.yaml"


def unit_change_feed(at_day: int) -> Scenario:
    """``scenarios/unit_change.yaml`` with its onset moved to ``at_day`` of this short world."""
    scenario = Scenario.load(REPO / "scenarios" / "unit_change.yaml")
    return scenario.model_copy(update={"incidents": [i.model_copy(update={"start_day": float(at_day)}) for i in scenario.incidents]})


def build_label_world(
    root: Path, *, incidents: bool = True, replay: bool = True, days: int = DAYS,
    events_per_day: int = 5_000, regions: int = 24, cells: int = 480, providers: int = 1_200, scenario: Scenario | None = None,
) -> LabelWorld:
    """The world above; ``incidents=False`` is its control: same seed and size, no scenario at all.

    ``replay=False`` leaves the prediction log empty, for a caller that serves the days itself
    (the closed-loop test replays them step by step). ``days`` lengthens the world past day 9
    (the incidents run to its end); the size arguments shrink a control world (the incidents
    need the default 24 regions). ``scenario`` is simulated into the warehouse instead of the
    world's own incidents (``bench/closed_loop.py`` runs each of ``scenarios/*.yaml``).
    """
    if incidents and regions <= max(DRIFT_REGION, UNIT_REGION):
        raise ValueError(f"the incidents need regions {DRIFT_REGION} and {UNIT_REGION}; got {regions} regions")
    options = DemoOptions(workdir=root, days=days, events_per_day=events_per_day, cells=cells, regions=regions, providers=providers, seed=7, start=START,
                          max_training_rows=20_000, num_boost_round=40)
    base = demo_settings(Settings(), options)
    # One LightGBM thread: on a loaded 2-core machine two OpenMP threads spin and fit ~10x slower.
    settings = base.model_copy(update={"train": base.train.model_copy(update={"holdout_days": 2, "window_days": 7, "num_threads": 1})})
    concept = Incident(kind="concept_drift", start_day=INCIDENT_DAY, duration=f"{max(days - INCIDENT_DAY, 10)}d", segment={"region_id": [DRIFT_REGION]}, size=0.35)
    simulate(SimulationSpec(
        out=Path(settings.paths.data), days=days, events_per_day=options.events_per_day, seed=options.seed, start=START,
        cells=options.cells, regions=options.regions, providers=options.providers,
        scenario=scenario or Scenario(incidents=[concept] if incidents else []),
    ))
    apply(settings)
    sim_start = datetime(START.year, START.month, START.day, tzinfo=UTC)
    replay_start = sim_start + timedelta(days=TRAIN_DAYS)
    training = train_from_warehouse(settings, as_of=replay_start, set_alias="champion")
    registry = ModelRegistry(settings.paths.registry)
    registry.set_alias("fallback", "fallback", training.versions["fallback"], moved_by="test", reason="label world")
    end = sim_start + timedelta(days=days)
    # Where ``dispatchml`` reads the prediction log: ``<paths.root>/prediction_log``.
    log_root = Path(settings.paths.root) / "prediction_log"
    (Path(settings.paths.root) / "dispatchml.yaml").write_text(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False))
    rows = replay_served_log(
        Path(settings.paths.data), Path(settings.paths.registry), log_root, replay_start, end,
        feed_scenario=unit_change_feed(INCIDENT_DAY) if incidents else None, sim_start=sim_start,
    ) if replay else 0
    return LabelWorld(settings, sim_start, replay_start, end, log_root, rows)


def shuffled_label_retrainer(settings: Settings, seed: int = 0) -> Callable[[Event], dict[str, EvidenceValue]]:
    """A retrain function that registers a deliberately worse challenger (for rollback tests).

    The champion's recipe (``train_from_warehouse``'s window and models) fitted on labels
    shuffled across candidate rows: the models learn the label marginals and nothing of the
    features, so the challenger's ETA error is far above the champion's. It is registered as
    ``dispatch@challenger`` at the event's data time, as the real retrainer does, without the
    offline gate (which would stop it before the release controller ever saw it).
    """

    def retrain(event: Event) -> dict[str, EvidenceValue]:
        data_root = Path(settings.paths.data)
        span_start, as_of, holdout_start, requests_end = request_bounds(settings, data_root, event.observed_at)
        start = max(span_start, holdout_start - timedelta(days=settings.train.window_days))
        fit_part = build_training_set(settings, data_root, start, holdout_start, "eta", max_rows=settings.train.max_training_rows)
        frame = pd.concat([fit_part, build_training_set(settings, data_root, holdout_start, requests_end, "eta")], ignore_index=True)
        frame.attrs.update(fit_part.attrs)
        labelled = with_labels(frame, data_root, as_of)
        rng = np.random.default_rng(seed)
        for column in ("arrival_minutes", "accepted"):
            labelled[column] = rng.permutation(labelled[column].to_numpy())
        result = train_models(labelled, settings, num_threads=settings.train.num_threads)
        versions = register_models(result, ModelRegistry(settings.paths.registry), lineage={"trigger": event.event_id, "labels": "shuffled"},
                                   set_alias="challenger", at=event.observed_at)
        return {"dispatch_version": versions["dispatch"], "alias": "challenger", "labels": "shuffled"}

    return retrain
