"""``dispatchml demo``: the whole foundation on one machine, from an empty directory.

simulate -> features apply -> materialize -> point-in-time training set -> train -> register
champion (and the fallback alias), each step timed. The demo works in its own directory
(``<paths.root>/demo`` unless ``--workdir``), wiped at the start, so it never touches data the
operator keeps under the configured paths.

The world is shrunk (2,500 cells, 8,000 providers, ~25K events/day over 60 days) so that the run
fits in minutes on two cores; ``--events-per-day`` and the world options scale it back up.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from cluster.config import Settings
from cluster.feature_store import apply, materialize
from retrain.pipeline import TrainingRun, train_from_warehouse
from retrain.registry import ModelRegistry
from simulator.run import Manifest, SimulationSpec, simulate
from simulator.scenarios import ActiveIncidents, Scenario

if TYPE_CHECKING:
    from cluster.closed_loop import LoopStep
    from cluster.live_day import LiveDayResult

REPO = Path(__file__).resolve().parents[1]
#: The live day's default incidents; their ``start_day`` counts from the live day.
LIVE_SCENARIO = REPO / "scenarios" / "live_day.yaml"
LIVE_SCENARIO_DAY = 0


@dataclass
class DemoOptions:
    workdir: Path
    days: int = 60
    events_per_day: int = 25_000
    cells: int = 2_500
    regions: int = 12
    providers: int = 8_000
    seed: int = 7
    start: date = date(2026, 1, 1)
    #: Incidents (``start_day`` from the first simulated day). Default: ``scenarios/live_day.yaml``,
    #: moved with ``days`` so that its incidents stay on the live day.
    scenario: Path | None = None
    #: Replay the day after the history through the running service (``cluster/live_day.py``).
    live: bool = True
    #: The replayed hours of the live day: the morning peak and the incident, by default.
    live_start_hour: float = 5.0
    live_hours: float = 8.0
    #: Simulated seconds per wall second of the live replay. At 96x a wall second is 1.6 simulated
    #: minutes, well inside the 10-minute freshness limit of the near-real-time features even
    #: when the cache refresh lags a few seconds on a busy two-core machine; at 480x it is not.
    speed: float = 96.0
    #: The online store goes down at this hour of the live day for ``outage_minutes`` (None: never).
    outage_hour: float | None = 10.0
    outage_minutes: float = 45.0
    keep_running: bool = False
    #: Smaller LightGBM budget than production so that training takes about a minute here.
    max_training_rows: int = 150_000
    num_boost_round: int = 150


@dataclass
class DemoResult:
    settings: Settings
    manifest: Manifest
    training: TrainingRun
    aliases: dict[str, str]
    config_path: Path
    seconds: dict[str, float] = field(default_factory=dict)
    live: LiveDayResult | None = None


class Reporter:
    """How the demo tells the terminal what it is doing; the CLI plugs rich progress in here."""

    def step(self, text: str) -> None: ...

    def progress(self, label: str, total: int) -> Callable[[int, int], None]:
        return lambda done, total: None

    def live_started(self, settings: Settings) -> None:
        """The live day is about to deploy the service (``settings`` say where it listens)."""

    def loop_step(self, step: LoopStep) -> None: ...

    def live_finished(self) -> None: ...


def demo_settings(base: Settings, options: DemoOptions) -> Settings:
    """The base settings re-rooted under the demo directory, with the demo world and budget."""
    root = Path(options.workdir).resolve()
    return base.model_copy(
        update={
            "paths": base.paths.model_copy(
                update={
                    "root": root,
                    "data": root / "data",
                    "registry": root / "registry",
                    "feature_store": root / "feature_store",
                    "reports": root / "reports",
                    "events": root / "events",
                }
            ),
            "world": base.world.model_copy(
                update={"cells": options.cells, "regions": options.regions, "providers": options.providers}
            ),
            "train": base.train.model_copy(
                update={"max_training_rows": options.max_training_rows, "num_boost_round": options.num_boost_round}
            ),
        }
    )


def run_demo(base: Settings, options: DemoOptions, reporter: Reporter | None = None) -> DemoResult:
    report = reporter or Reporter()
    settings = demo_settings(base, options)
    root = Path(settings.paths.root)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    config_path = root / "dispatchml.yaml"
    config_path.write_text(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False))
    seconds: dict[str, float] = {}

    scenario = Scenario.load(options.scenario or LIVE_SCENARIO)
    if options.scenario is None:
        scenario = scenario.shifted(options.days - LIVE_SCENARIO_DAY)
    world_scenario = scenario.split_feed()[0]
    live_days = math.ceil((options.live_start_hour + options.live_hours) / 24.0) if options.live else 0

    t = time.perf_counter()
    spec = SimulationSpec(
        out=Path(settings.paths.data),
        days=options.days + live_days,
        events_per_day=options.events_per_day,
        seed=options.seed,
        start=options.start,
        cells=options.cells,
        regions=options.regions,
        providers=options.providers,
        candidates_per_job=settings.world.candidates_per_job,
        scenario=world_scenario,
    )
    manifest = simulate(spec, progress=report.progress("simulate", spec.days * 24))
    seconds["simulate"] = time.perf_counter() - t

    t = time.perf_counter()
    report.step("features apply")
    apply(settings)
    seconds["features apply"] = time.perf_counter() - t

    t = time.perf_counter()
    start = datetime(options.start.year, options.start.month, options.start.day, tzinfo=UTC)
    end = start + timedelta(days=options.days)
    tick = report.progress("materialize", 6)
    done = [0]

    def advance(*_: object) -> None:
        done[0] += 1
        tick(done[0], 6)

    materialize(settings, start, end, progress=advance)
    seconds["materialize"] = time.perf_counter() - t

    t = time.perf_counter()
    training = train_from_warehouse(settings, as_of=end, set_alias="champion", lineage={"trigger": "demo"}, step=report.step)
    seconds["train + register"] = time.perf_counter() - t

    registry = ModelRegistry(settings.paths.registry)
    # The first champion is also the first last-known-good version serving can fall back to.
    for family, version in training.versions.items():
        registry.set_alias(family, "fallback", version, moved_by="demo", reason="demo: first release is last-known-good")
    aliases = {
        f"{family}@{alias}": record.version
        for family in training.versions
        for alias in ("champion", "challenger", "fallback")
        if (record := registry.alias(family, alias)) is not None
    }
    result = DemoResult(settings, manifest, training, aliases, config_path, seconds)
    if options.live:
        t = time.perf_counter()
        result.live = _live_day(settings, options, start, end, scenario, report)
        seconds["live day"] = time.perf_counter() - t
    return result


def _live_day(settings: Settings, options: DemoOptions, sim_start: datetime, start: datetime, scenario: Scenario, report: Reporter) -> LiveDayResult:
    from cluster.live_day import LiveDayOptions, replay_settings, run_live_day, summarize
    from eval.loop_report import write_loop_report
    from retrain.pipeline import retrainer

    # Skew every two simulated hours: the replayed window is a few hours long.
    settings = settings.model_copy(update={"monitor": settings.monitor.model_copy(update={"skew_every_hours": 2, "skew_window_hours": 2})})
    # A retrain the demo can wait for: two trials, a short window (the policy decides whether).
    budget = settings.model_copy(update={"retrain": settings.retrain.model_copy(update={"trials": 2, "max_boost_round": 120, "recent_days": 7, "history_days": 14})})

    def retrain(event):
        return retrainer(budget, as_of=event.observed_at)(event)

    live = LiveDayOptions(
        speed=options.speed,
        outage_start=None if options.outage_hour is None else timedelta(hours=options.outage_hour - options.live_start_hour),
        outage_for=timedelta(minutes=options.outage_minutes),
        feed_scenario=scenario.split_feed()[1], sim_start=sim_start, retrain=retrain, keep_running=options.keep_running,
    )
    start = start + timedelta(hours=options.live_start_hour)
    end = start + timedelta(hours=options.live_hours)
    report.live_started(replay_settings(settings, start, live))
    try:
        result = run_live_day(settings, start, end, live, on_step=report.loop_step, say=report.step)
    finally:
        report.live_finished()
    summary = Path(settings.paths.reports) / "live_day.json"
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text(json.dumps(dataclasses.asdict(summarize(result)), indent=1))
    report.step("writing the day's report")
    onsets = [s for _, s, _ in ActiveIncidents(scenario, sim_start).windows if start <= s < end]
    result.report = write_loop_report(
        result.settings, start, end, Path(settings.paths.reports) / "live_day.html", steps=result.steps,
        title=f"A day in the life: {start:%Y-%m-%d}", incident_at=min(onsets) if onsets else None,
    )
    return result
