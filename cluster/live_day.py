"""A simulated day through the running system: real Serve, real Feast pushes, the loop on a clock.

``cluster.closed_loop`` scores in-process in lockstep; this replays a window of the simulated
warehouse through the deployed app, compressed ``speed`` times, as ``dispatchml demo`` does:

1. the app is deployed with a replay clock (``serve_apps.clock``): its now is simulated time,
   starting at the window's start when the replay starts, ``speed`` x the wall clock;
2. the feeds' rows are pushed into the Feast online store as the clock passes their event time
   (``simulator.live_feed.FeedPusher``, through the push sources), the window's ``unit_change``
   feed incidents applied to what is pushed;
3. every job of the window is sent over HTTP when its request time comes (a load process of its
   own, open loop, so a slow service cannot slow the offered load), answers recorded;
4. every ``step`` of simulated time the loop runs once on the clock (``LoopRunner``): monitor
   pass, policy (pages, quarantine, retrain), release step, each as of the clock's reading;
5. optionally the online store goes down for a while (:class:`SqliteOutage`: another connection
   holds the SQLite database exclusively, so every read and push waits past its deadline), and
   comes back.

What comes back (:class:`LiveDayResult`) is every answer, every loop step and the outage's span,
which is what the demo shows and its test asserts on: no request failed, the incident was found
and acted on, the outage was served through the fallback.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cluster.actions import RetrainFn
from cluster.closed_loop import LoopRunner, LoopStep
from cluster.config import Settings
from cluster.load import Answer, Job, LoadProcess
from serve_apps.clock import ServiceClock, replay_clock_path, start_replay_clock, stop_replay_clock
from simulator.live_feed import FeedPusher, PusherProcess, live_window, monotonic_at, wall_schedule
from simulator.scenarios import Scenario

US = 1_000_000
#: The router flushes its prediction log every 2 s (wall); a loop step waits this long past its end.
LOG_FLUSH_WALL_S = 3.0
#: CPU priority of the loop's thread: below the service's.
LOOP_NICENESS = 10


@dataclass
class LiveDayOptions:
    #: Simulated seconds per wall second: 240 replays a day in 6 minutes.
    speed: float = 240.0
    #: How often (simulated) the monitor, the policy and the release controller run.
    step: timedelta = timedelta(minutes=30)
    #: The online store is down from ``outage_start`` (an offset into the window) for ``outage_for``.
    outage_start: timedelta | None = None
    outage_for: timedelta = timedelta(hours=1)
    #: Pushes reach the store this many wall seconds before their event time (see live_feed).
    push_lead_wall_s: float = 5.0
    #: Feature cache refresh periods of the replayed service, wall seconds.
    nrt_refresh_s: float = 0.5
    nrt_full_refresh_s: float = 1.0
    #: Daily groups are big (every cell's and provider's daily aggregates): reloading them often
    #: overruns the 3 s refresh deadline on a busy machine and flags the store unavailable. The
    #: window's daily rows are pushed before the replay starts, so the first load has them.
    batch_refresh_s: float = 120.0
    #: ``unit_change`` incidents applied to what the feed pushes (resolved against ``sim_start``).
    feed_scenario: Scenario | None = None
    sim_start: datetime | None = None
    retrain: RetrainFn | None = None
    #: Leave the app up at the end (``dispatchml serve down`` stops it).
    keep_running: bool = False
    request_timeout_s: float = 10.0


@dataclass
class LiveDayResult:
    start: datetime
    end: datetime
    settings: Settings
    answers: list[Answer]
    steps: list[LoopStep]
    outage: tuple[datetime, datetime] | None
    pushed_rows: int
    push_failures: int
    wall_seconds: float
    kept_running: bool = False
    #: The HTML report of the day, once written (``eval.loop_report``).
    report: Path | None = None

    @property
    def failed(self) -> int:
        return sum(not a.ok for a in self.answers)


def replay_settings(settings: Settings, start: datetime, options: LiveDayOptions) -> Settings:
    """``settings`` with the service's replay clock and the fast near-real-time refresh."""
    serving = settings.serving.model_copy(update={
        "replay_speed": options.speed, "replay_start": start,
        "nrt_refresh_s": options.nrt_refresh_s, "nrt_full_refresh_s": options.nrt_full_refresh_s, "batch_refresh_s": options.batch_refresh_s,
    })
    return settings.model_copy(update={"serving": serving})


class SqliteOutage:
    """The SQLite online store down: a connection holds it exclusively until :meth:`end`.

    Readers and writers wait for the lock (Feast's connections time out after 5 s, past the
    router's 3 s refresh deadline), so the router marks the store unavailable and serves from
    its cache until values expire, then from the fallback; pushes fail and are retried.
    """

    def __init__(self, settings: Settings) -> None:
        if settings.features.online_store != "sqlite":
            raise ValueError(f"the outage is simulated on the SQLite online store only, not {settings.features.online_store}")
        from cluster.feature_store import repo_path

        self.path = repo_path(settings) / "online_store.db"
        self._conn: sqlite3.Connection | None = None

    def begin(self) -> None:
        self._conn = sqlite3.connect(self.path, timeout=60.0, isolation_level=None, check_same_thread=False)
        self._conn.execute("BEGIN EXCLUSIVE")

    def end(self) -> None:
        if self._conn is not None:
            self._conn.execute("ROLLBACK")
            self._conn.close()
            self._conn = None


def _run_outage(outage: SqliteOutage, clock: ServiceClock, start_s: float, end_s: float, stop: threading.Event, span: list[datetime]) -> None:
    def wait_until(simulated: float) -> bool:
        while not stop.is_set():
            if clock.now() >= simulated:
                return True
            stop.wait(0.05)
        return False

    if not wait_until(start_s):
        return
    outage.begin()
    span.append(datetime.fromtimestamp(clock.now(), UTC))
    try:
        wait_until(end_s)
    finally:
        outage.end()
        span.append(datetime.fromtimestamp(clock.now(), UTC))


def _loop_steps(runner: LoopRunner, clock: ServiceClock, start: datetime, end: datetime, options: LiveDayOptions,
                steps: list[LoopStep], on_step: Callable[[LoopStep], None] | None) -> None:
    t = start
    while t < end:
        until = min(t + options.step, end)
        # Wait for the clock to pass the step plus the router's log flush (2 s of wall time).
        while clock.now() < until.timestamp() + LOG_FLUSH_WALL_S * options.speed and clock.now() < end.timestamp():
            time.sleep(0.1)
        record = runner.step(t, until, 0)
        steps.append(record)
        if on_step is not None:
            on_step(record)
        t = until


def _in_background(work: Callable[[], None]) -> None:
    """Run ``work`` in a thread at low CPU priority and wait for it, re-raising its error.

    The monitor, the policy and the release controller are background work; on a small machine
    they must not take the CPU from the replicas answering dispatch (Linux nices threads one by one).
    """
    errors: list[BaseException] = []

    def run() -> None:
        with contextlib.suppress(OSError, AttributeError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), LOOP_NICENESS)
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            errors.append(exc)

    thread = threading.Thread(target=run, name="closed-loop", daemon=True)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def _serve_command(settings: Settings, action: str) -> None:
    """``dispatchml serve up|down`` with the replay's settings, in a process of its own.

    Serve's client keeps threads in the driver that can touch Ray after ``ray.shutdown()``, and
    Ray then ends the whole process; the demo must outlive the service it started.
    """
    import subprocess
    import sys

    import yaml

    config = Path(settings.paths.root) / "live_day.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json"), sort_keys=False))
    done = subprocess.run([str(Path(sys.executable).with_name("dispatchml")), "--config", str(config), "serve", action],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"dispatchml serve {action} failed: {(done.stdout + done.stderr).strip()[-800:]}")


def run_live_day(
    settings: Settings,
    start: datetime,
    end: datetime,
    options: LiveDayOptions | None = None,
    *,
    on_step: Callable[[LoopStep], None] | None = None,
    on_ready: Callable[[Settings], None] | None = None,
    say: Callable[[str], None] = lambda _: None,
) -> LiveDayResult:
    """Replay jobs requested in ``[start, end)`` through the deployed app; see the module docstring.

    ``on_ready`` is called with the replay's settings once the app answers and before traffic
    starts (the demo starts its live view there); ``on_step`` after every loop step.
    """
    from cluster import serve

    options = options or LiveDayOptions()
    if start >= end:
        raise ValueError(f"need start < end, got {start} .. {end}")
    live = replay_settings(settings, start, options)
    registry_root = Path(live.paths.registry)
    replay_clock_path(registry_root).unlink(missing_ok=True)

    say(f"reading the window's jobs and feeds {start:%Y-%m-%d %H:%M}..{end:%Y-%m-%d %H:%M}")
    window = live_window(Path(live.paths.data), start, end, feed_scenario=options.feed_scenario, sim_start=options.sim_start)
    clock = ServiceClock.from_settings(live)
    pusher = FeedPusher(live, window, clock.now, lead_s=options.push_lead_wall_s * options.speed)
    # What the feeds delivered by the time the window opens (the pushes run ``lead`` ahead), before
    # the app's first load; the pusher process starts now, so it is running when the clock starts.
    pusher.push_until(start.timestamp() + pusher.lead_s)
    feed = PusherProcess(pusher).start()

    say(f"starting the service with a {options.speed:g}x replay clock")
    load = LoadProcess()
    runner = LoopRunner(live, retrain=options.retrain)
    stop = threading.Event()
    span: list[datetime] = []
    outage_thread = None
    steps: list[LoopStep] = []
    try:
        _serve_command(live, "up")
        if on_ready is not None:
            on_ready(live)
        jobs = [Job(j.body, j.region_id, j.n_candidates) for j in window.jobs]
        offsets = wall_schedule(window.jobs, int(start.timestamp() * US), options.speed)
        wall_origin = start_replay_clock(registry_root, time.time() + 1.0)
        load.start(serve.base_url(live), jobs, 1.0, monotonic_at(wall_origin), options.request_timeout_s, offsets)
        if options.outage_start is not None:
            outage_at = (start + options.outage_start).timestamp()
            outage_thread = threading.Thread(
                target=_run_outage, args=(SqliteOutage(live), clock, outage_at, outage_at + options.outage_for.total_seconds(), stop, span),
                name="store-outage", daemon=True,
            )
            outage_thread.start()
        say(f"replaying {len(jobs):,} jobs over {(end - start) / options.speed} of wall time")
        _in_background(lambda: _loop_steps(runner, clock, start, end, options, steps, on_step))
        answers = load.answers()
    finally:
        stop.set()
        pushed = feed.stop()
        if outage_thread is not None:
            outage_thread.join(30)
        load.close()
        if options.keep_running:
            stop_replay_clock(registry_root, end.timestamp())
        else:
            _serve_command(live, "down")
    return LiveDayResult(
        start, end, live, answers, steps, (span[0], span[1]) if len(span) == 2 else None,
        int(pushed["pushed"]), int(pushed["failures"]), wall_seconds=(end - start).total_seconds() / options.speed,
        kept_running=options.keep_running,
    )


@dataclass(frozen=True)
class LiveSummary:
    """What the live day amounted to, for the terminal and the tests."""

    requests: int
    failed: int
    p50_ms: float
    p99_ms: float
    arm_share: dict[str, float]
    degraded_share: float
    outage_requests: int
    outage_failed: int
    outage_fallback_share: float
    #: (first at, kind, severity, segment, subject, firing count), one per incident subject.
    events: list[tuple[str, str, str, str, str, int]]
    #: (first at, action, status, policy rule, count).
    actions: list[tuple[str, str, str, str, int]]


def summarize(result: LiveDayResult) -> LiveSummary:
    """Counts over the answers (the outage by the simulated time each request was sent) and the loop's record."""
    import numpy as np

    from cluster.load import percentile_ms

    answers = result.answers
    ok = [a for a in answers if a.ok]
    arms: dict[str, int] = {}
    for a in ok:
        arms[a.arm or "?"] = arms.get(a.arm or "?", 0) + 1
    during: list[Answer] = []
    if result.outage is not None:
        speed = result.settings.serving.replay_speed
        lo, hi = ((t - result.start).total_seconds() / speed for t in result.outage)
        during = [a for a in answers if lo <= a.sent_s < hi]
    events: dict[tuple[str, str, str, str], list] = {}
    for e in (e for step in result.steps for e in step.events if e.state == "firing"):
        key = (e.kind, e.severity, ",".join(f"{k}={v}" for k, v in sorted(e.segment.items())), e.subject)
        events.setdefault(key, [e.observed_at.strftime("%H:%M"), *key, 0])[-1] += 1
    actions: dict[tuple[str, str, str], list] = {}
    for a in (a for step in result.steps for a in step.actions):
        key = (a.action, a.status, a.reason.split(":", 1)[0])
        actions.setdefault(key, [a.decided_at.strftime("%H:%M"), *key, 0])[-1] += 1
    return LiveSummary(
        requests=len(answers), failed=result.failed,
        p50_ms=percentile_ms(ok, 50.0), p99_ms=percentile_ms(ok, 99.0),
        arm_share={arm: n / max(len(ok), 1) for arm, n in sorted(arms.items())},
        degraded_share=float(np.mean([a.degraded for a in ok])) if ok else 0.0,
        outage_requests=len(during), outage_failed=sum(not a.ok for a in during),
        outage_fallback_share=float(np.mean([a.arm == "fallback" for a in during if a.ok])) if during else 0.0,
        events=[tuple(v) for v in events.values()], actions=[tuple(v) for v in actions.values()],
    )
