"""The closed loop's figures on simulated time: detection delay, false alarms, trigger to promotion.

Three parts, each on the label world of ``tests/integration/label_world.py`` (seed 7, champion
trained on days 0-6, the log served through the real serving code from day 6, one monitor pass,
policy pass and release step per ``--step-hours`` of simulated time, ``cluster.closed_loop``):

1. **Detection delay per scenario.** Each ``scenarios/*.yaml`` (but ``demo.yaml``, a mix of
   two) is moved to day 7 of a ``--scenario-days`` world with ``--regions`` regions (region ids of
   the scenario files beyond that wrap around) and served without retraining. The delay is the
   first event after the onset that names the scenario's region (or is global) and that the same
   world without the scenario did not raise too (a control run first), in simulated minutes;
   ``unit_change`` is applied to the online feed only (``simulator.served_log``), as the skew
   check expects, with the skew check every 6 h (daily for the others: it is most of a pass's
   time). Feature-drift tickets count only for ``covariate_drift``.
2. **False pages and tickets per simulated month**: a ``--control-days`` control world (no
   scenario; ``--control-regions`` regions, ``--control-events`` events a day), policed daily.
3. **Trigger to promotion**: the closed-loop test's world (``concept_drift`` in region 16, the
   ``unit_change`` feed bug in region 23, ``--loop-days`` days) with retraining on Ray Tune and
   the release controller; wall time from the retrain's start to the promoting step's end.

Prints one table per part. Bounded: every loop ends at its world's end; ``--parts`` picks parts.

    .venv/bin/python bench/closed_loop.py --workdir var/bench-loop
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster.closed_loop import LoopStep, run_closed_loop
from cluster.event_log import EventLog
from contracts.events import Event
from simulator.scenarios import Scenario
from tests.integration.label_world import INCIDENT_DAY, REPO, build_label_world, unit_change_feed

SKIPPED = ("demo.yaml",)
#: Kinds that are noise unless the scenario is about them.
TICKET_NOISE = ("drift", "prediction_drift", "release")


def _moved(scenario: Scenario, regions: int) -> Scenario:
    """The scenario with every incident starting on ``INCIDENT_DAY`` and region ids wrapped into the world."""
    incidents = []
    for incident in scenario.incidents:
        segment = dict(incident.segment or {})
        if "region_id" in segment:
            segment["region_id"] = sorted({int(r) % regions for r in segment["region_id"]})
        offset = incident.start_day - min(i.start_day for i in scenario.incidents)
        incidents.append(incident.model_copy(update={"start_day": float(INCIDENT_DAY) + offset, "segment": segment}))
    return scenario.model_copy(update={"incidents": incidents})


def _names_segment(event: Event, regions: set[int] | None) -> bool:
    region = event.segment.get("region_id")
    return regions is None or region is None or int(region) in regions


def _served(args: argparse.Namespace, kind: str, scenario: Scenario | None, feed: Scenario | None) -> tuple[list[Event], datetime]:
    """Firing events of a ``--scenario-days`` world served without retraining, and the onset."""
    root = Path(args.workdir) / f"scenario-{kind}"
    shutil.rmtree(root, ignore_errors=True)
    world = build_label_world(root, incidents=False, replay=False, days=args.scenario_days, regions=args.regions,
                              cells=args.regions * 20, providers=args.regions * 50, scenario=scenario)
    skew = 6 if feed is not None else 24
    settings = world.settings.model_copy(update={"monitor": world.settings.monitor.model_copy(update={"skew_every_hours": skew, "skew_window_hours": skew})})
    run_closed_loop(settings, world.replay_start, world.end, timedelta(hours=args.step_hours), feed_scenario=feed, sim_start=world.sim_start)
    onset = world.sim_start + timedelta(days=INCIDENT_DAY)
    return [e for e in EventLog(settings.paths.events).events() if e.state == "firing" and e.observed_at > onset], onset


def detection(args: argparse.Namespace) -> list[tuple[str, str, str]]:
    rows = []
    control_events, _ = _served(args, "control", None, None)
    in_control = {e.incident_key() for e in control_events}
    for path in sorted((REPO / "scenarios").glob("*.yaml")):
        if path.name in SKIPPED or (args.scenarios and path.stem not in args.scenarios):
            continue
        kind = path.stem
        scenario = _moved(Scenario.load(path), args.regions)
        feed = scenario if kind == "unit_change" else None
        t0 = time.perf_counter()
        try:
            fired, onset = _served(args, kind, None if feed is not None else scenario, feed)
        except Exception as exc:  # noqa: BLE001 - a scenario the loop cannot serve is a result of the bench, reported
            rows.append((kind, "error", f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}"))
            continue
        segment_regions = {r for i in scenario.incidents for r in (i.segment or {}).get("region_id", [])} or None
        noise = () if kind == "covariate_drift" else TICKET_NOISE
        events = [e for e in fired if e.kind not in noise and e.incident_key() not in in_control and _names_segment(e, segment_regions)]
        if not events:
            rows.append((kind, "not caught", f"no event naming the segment by day {args.scenario_days} ({time.perf_counter() - t0:.0f} s)"))
            continue
        first = min(events, key=lambda e: e.observed_at)
        delay = (first.observed_at - onset).total_seconds() / 60
        rows.append((kind, f"{delay:.0f}", f"{first.kind} {first.severity} {first.source}:{first.subject} {first.segment} ({time.perf_counter() - t0:.0f} s)"))
        print(f"  {rows[-1]}", flush=True)
    return rows


def control(args: argparse.Namespace) -> dict[str, float]:
    root = Path(args.workdir) / "control"
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.perf_counter()
    world = build_label_world(root, incidents=False, replay=False, days=6 + args.control_days, events_per_day=args.control_events,
                              regions=args.control_regions, cells=args.control_regions * 20, providers=args.control_regions * 50)
    settings = world.settings.model_copy(update={"monitor": world.settings.monitor.model_copy(update={"skew_every_hours": 24, "skew_window_hours": 24})})
    run_closed_loop(settings, world.replay_start, world.end, timedelta(hours=24), sim_start=world.sim_start)
    log = EventLog(settings.paths.events)
    months = args.control_days / 30.0
    firing = [e for e in log.events() if e.state == "firing"]
    by_kind = Counter(f"{e.kind}/{e.severity}" for e in firing)
    out = {"pages per month": sum(1 for a in log.actions() if a.action == "page") / months,
           "page events per month": sum(1 for e in firing if e.severity == "page") / months,
           "tickets per month": sum(1 for e in firing if e.severity == "ticket") / months,
           "seconds": time.perf_counter() - t0}
    out.update({f"  {k} per month": v / months for k, v in sorted(by_kind.items())})
    return out


def promotion(args: argparse.Namespace) -> dict[str, object]:
    import ray

    from retrain.pipeline import retrainer

    root = Path(args.workdir) / "promotion"
    shutil.rmtree(root, ignore_errors=True)
    world = build_label_world(root, replay=False, days=args.loop_days)
    s = world.settings
    settings = s.model_copy(update={
        "monitor": s.monitor.model_copy(update={"skew_every_hours": 24, "skew_window_hours": 24}),
        "retrain": s.retrain.model_copy(update={"trials": args.trials, "max_boost_round": 60, "recent_days": 5, "history_days": 0}),
        "release": s.release.model_copy(update={"min_requests_per_step": 30}),
    })
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    marks: dict[str, float] = {}
    retrained_at: list[datetime] = []

    def retrain(event: Event):
        marks.setdefault("trigger", time.perf_counter())
        retrained_at.append(event.observed_at)
        return retrainer(settings, as_of=event.observed_at)(event)

    def on_step(step: LoopStep) -> None:
        if step.release == "test_promoted" and "promoted" not in marks:
            marks["promoted"] = time.perf_counter()
            marks["promoted_sim"] = step.end.timestamp()

    try:
        steps = run_closed_loop(settings, world.replay_start, world.end, timedelta(hours=args.step_hours), retrain=retrain,
                                feed_scenario=unit_change_feed(INCIDENT_DAY), sim_start=world.sim_start, on_step=on_step)
    finally:
        ray.shutdown()
    onset = world.sim_start + timedelta(days=INCIDENT_DAY)
    out: dict[str, object] = {"steps": len(steps)}
    if retrained_at:
        out["concept drift detected (simulated min after onset)"] = (retrained_at[0] - onset).total_seconds() / 60
    if "promoted" in marks:
        out["trigger to promotion, wall seconds"] = round(marks["promoted"] - marks["trigger"], 1)
        out["trigger to promotion, simulated hours"] = round((marks["promoted_sim"] - retrained_at[0].timestamp()) / 3600, 1)
    else:
        out["promoted"] = "no (world ended first)"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", default="var/bench-loop")
    parser.add_argument("--parts", default="detection,control,promotion")
    parser.add_argument("--scenarios", default="", help="comma-separated scenario names (default: all)")
    parser.add_argument("--scenario-days", type=int, default=10)
    parser.add_argument("--regions", type=int, default=32)
    parser.add_argument("--step-hours", type=float, default=6.0)
    parser.add_argument("--control-days", type=int, default=30)
    parser.add_argument("--control-regions", type=int, default=12)
    parser.add_argument("--control-events", type=int, default=2_000)
    parser.add_argument("--loop-days", type=int, default=13)
    parser.add_argument("--trials", type=int, default=2)
    args = parser.parse_args()
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    parts = set(args.parts.split(","))
    Path(args.workdir).mkdir(parents=True, exist_ok=True)
    if "detection" in parts:
        print("detection delay per scenario (onset day 7, passes every "
              f"{args.step_hours:g} h of simulated time)")
        for kind, delay, what in detection(args):
            print(f"| {kind} | {delay} | {what} |")
    if "control" in parts:
        print(f"control: {args.control_days} simulated days, no scenario")
        for name, value in control(args).items():
            print(f"| {name} | {value:.2f} |")
    if "promotion" in parts:
        print("concept drift to promoted model")
        for name, value in promotion(args).items():
            print(f"| {name} | {value} |")


if __name__ == "__main__":
    main()
