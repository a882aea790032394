"""The closed loop on simulated traffic: serve, monitor, decide, retrain, release, step by step.

Each step of simulated time ``[t, t + step)``:

1. **serve**: the window's jobs are scored through the serving code in-process
   (``simulator.served_log.replay_served_log``), following the live routing state: the
   champion/challenger split, shadow scoring and any feature-group quarantine;
2. **monitor**: one incremental monitor pass at ``t + step`` (``cluster.monitor.Monitor``)
   reads the new log rows and the labels known by then and writes events;
3. **decide and act**: one policy pass (``cluster.actions.apply_policy``): pages, feature-group
   quarantine, retraining (the ``retrain`` function registers a candidate as
   ``dispatch@challenger``);
4. **release**: one release-controller step (``retrain.release.release_step``): shadow, canary
   steps, promotion or automatic rollback, on matured labels.

The same components run live (the monitor service on a timer, the release controller after
it); this driver runs them in lockstep on simulated time, so a scenario's whole story (incident,
detection, action, release) plays out deterministically in minutes and can be asserted on.
:class:`LoopStep` records what each step saw and did: the timeline of the loop's report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cluster.actions import Executor, RetrainFn, apply_policy
from cluster.config import Settings
from cluster.event_log import EventLog
from cluster.monitor import Monitor
from contracts.events import ActionRecord, Event
from retrain.policy import DEFAULT_POLICY, Policy
from retrain.registry import ModelRegistry
from retrain.release import release_step
from serve_apps.traffic_state import read_quarantine, read_state
from simulator.scenarios import Scenario
from simulator.served_log import replay_served_log


@dataclass(frozen=True)
class LoopStep:
    """What one step of the loop saw and did."""

    start: datetime
    end: datetime
    logged_rows: int
    events: tuple[Event, ...]
    actions: tuple[ActionRecord, ...]
    release: str
    release_reason: str
    champion: str
    challenger: str | None
    challenger_weight: float
    quarantined: tuple[str, ...]


class LoopRunner:
    """Steps 2-4 (monitor, decide and act, release) once per call, on whatever served the window.

    ``run_closed_loop`` serves in-process; the live replay (``cluster/live_day.py``) lets the
    running service serve and calls :meth:`step` on the simulated clock.
    """

    def __init__(self, settings: Settings, *, retrain: RetrainFn | None = None, policy: Policy | None = None) -> None:
        self.settings = settings
        self.policy = policy or Policy.load(DEFAULT_POLICY)
        self.registry_root = Path(settings.paths.registry)
        self.monitor, self.events = Monitor(settings), EventLog(settings.paths.events)
        self.executor = Executor(self.registry_root, retrain=retrain, settings=settings)
        self.registry = ModelRegistry(self.registry_root)

    def step(self, start: datetime, until: datetime, logged_rows: int) -> LoopStep:
        passed = self.monitor.run_pass(until)
        actions = apply_policy(self.events, self.policy, self.executor, now=until)
        _, decision = release_step(self.settings, as_of=until)
        champion = self.registry.alias("dispatch", "champion")
        challenger = self.registry.alias("dispatch", "challenger")
        return LoopStep(
            start=start, end=until, logged_rows=logged_rows, events=tuple(passed.events), actions=tuple(actions),
            release=decision.code, release_reason=decision.reason,
            champion=champion.version if champion else "",
            challenger=challenger.version if challenger and champion and challenger.version != champion.version else None,
            challenger_weight=read_state(self.registry_root).challenger_weight,
            quarantined=tuple(sorted({e.feature_group for e in read_quarantine(self.registry_root).entries})),
        )


def run_closed_loop(
    settings: Settings,
    start: datetime,
    end: datetime,
    step: timedelta,
    *,
    retrain: RetrainFn | None = None,
    feed_scenario: Scenario | None = None,
    sim_start: datetime | None = None,
    policy: Policy | None = None,
    on_step: Callable[[LoopStep], None] | None = None,
) -> list[LoopStep]:
    """Run the loop from ``start`` to ``end`` in steps of ``step``; returns one record per step."""
    if step <= timedelta(0) or start >= end:
        raise ValueError(f"need start < end and a positive step, got {start} .. {end} by {step}")
    runner = LoopRunner(settings, retrain=retrain, policy=policy)
    data_root = Path(settings.paths.data)
    log_root = Path(settings.paths.root) / "prediction_log"
    steps: list[LoopStep] = []
    t = start
    while t < end:
        until = min(t + step, end)
        rows = replay_served_log(data_root, runner.registry_root, log_root, t, until, feed_scenario=feed_scenario, sim_start=sim_start)
        record = runner.step(t, until, rows)
        steps.append(record)
        if on_step is not None:
            on_step(record)
        t = until
    return steps
