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
    policy = policy or Policy.load(DEFAULT_POLICY)
    data_root, registry_root = Path(settings.paths.data), Path(settings.paths.registry)
    log_root = Path(settings.paths.root) / "prediction_log"
    monitor, events = Monitor(settings), EventLog(settings.paths.events)
    executor = Executor(registry_root, retrain=retrain, settings=settings)
    registry = ModelRegistry(registry_root)
    steps: list[LoopStep] = []
    t = start
    while t < end:
        until = min(t + step, end)
        rows = replay_served_log(data_root, registry_root, log_root, t, until, feed_scenario=feed_scenario, sim_start=sim_start)
        passed = monitor.run_pass(until)
        actions = apply_policy(events, policy, executor, now=until)
        _, decision = release_step(settings, as_of=until)
        champion = registry.alias("dispatch", "champion")
        challenger = registry.alias("dispatch", "challenger")
        record = LoopStep(
            start=t, end=until, logged_rows=rows, events=tuple(passed.events), actions=tuple(actions),
            release=decision.code, release_reason=decision.reason,
            champion=champion.version if champion else "",
            challenger=challenger.version if challenger and champion and challenger.version != champion.version else None,
            challenger_weight=read_state(registry_root).challenger_weight,
            quarantined=tuple(sorted({e.feature_group for e in read_quarantine(registry_root).entries})),
        )
        steps.append(record)
        if on_step is not None:
            on_step(record)
        t = until
    return steps
