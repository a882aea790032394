"""Fault drills: the real scoring app on loopback, steady load, one fault injected, outcome measured.

``dispatchml drill NAME`` (or ``all``) opens a ``DrillWorld``: a small simulated world and
trained registry (built once under ``--workdir``), a real ``redis-server`` on a loopback port as
the online store, reached through ``DelayProxy`` (a loopback TCP proxy that can delay Redis's
replies), the prediction log on a small tmpfs when the machine allows mounting one, and the
same app ``dispatchml serve up`` runs. Each drill then sends a fixed number of requests at a
fixed rate (``cluster.load.run_load``, open loop), injects its fault part-way, repairs it, and
measures:

- availability: the share of 2xx answers over the whole run;
- p99 during the fault (requests sent between fault and repair) and after it (sent once
  recovered);
- degraded share: the share of answers flagged degraded during the fault;
- recovery time: from the repair to the first request after which every answer is healthy
  again (the drill's own notion of healthy: no ``store_unavailable`` flag, champion back...);
- lost records: prediction-log rows (``role=served``, after de-duplication on ``DEDUPE_KEY``)
  missing for answered requests, read back once the replicas flushed.

Each drill checks its targets (the issue's: every request answered and p99 <= 120 ms through
feature-store, feed, region and challenger faults; <= 0.1 % failed through replica and
controller kills; zero lost records, except a full log disk, where the loss must equal what the
writer counted as dropped) and returns a ``DrillResult`` whose ``line()`` is the one-line
report. Load and faults stay on this machine; every run is bounded in count and time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from cluster.config import Settings, load_settings
from cluster.load import (
    BATCH_GROUPS,
    NEAR_REAL_TIME_GROUPS,
    Answer,
    Job,
    LoadProcess,
    job_bodies,
    percentile_ms,
    push_features,
    run_load,
)
from contracts.features import group

REDIS_SERVER = Path("/usr/bin/redis-server")
ADMIN_TOKEN_ENV = "DISPATCHML_ADMIN_TOKEN"
#: The issue's latency target once breakers are open, and its failure budget for kills.
P99_TARGET_MS = 120.0
KILL_FAILURE_BUDGET = 0.001
#: Regions of the drill world: 0 and 3 are live all along; 1 goes stale and 2 goes missing.
LIVE_REGIONS, STALE_REGION, MISSING_REGION = (0, 3), 1, 2
#: A small backlog bound, so that the full-disk drill reaches it within seconds.
DRILL_LOG_BACKLOG_ROWS = 2_000
TMPFS_SIZE = "128m"


TABLE_COLUMNS = ("drill", "availability", "p99 during / after", "degraded", "recovery", "lost records", "command")


class DrillError(RuntimeError):
    """A drill could not run (its world or fault could not be set up); the message says why."""


# -- results -----------------------------------------------------------------------------------


@dataclass
class DrillResult:
    drill: str
    requests: int
    availability: float
    p99_during_ms: float
    p99_after_ms: float
    degraded_share: float
    recovery_s: float | None
    lost_records: int
    #: Whether the fault showed where it should (flagged answers, a refusal, counted errors):
    #: a drill whose fault went unseen measured nothing.
    observed: bool = False
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.problems

    @property
    def command(self) -> str:
        return f"dispatchml drill {self.drill}"

    def table_row(self) -> list[str]:
        """A row under ``TABLE_COLUMNS`` (the README's drills table)."""
        recovery = "-" if self.recovery_s is None else f"{self.recovery_s:.1f} s"
        return [self.drill, f"{self.availability:.2%}", f"{self.p99_during_ms:.0f} / {self.p99_after_ms:.0f} ms", f"{self.degraded_share:.0%}",
                recovery, str(self.lost_records), f"`{self.command}`"]

    def line(self) -> str:
        recovery = "n/a" if self.recovery_s is None else f"{self.recovery_s:.1f}s"
        verdict = "PASS" if self.passed else "FAIL: " + "; ".join(self.problems)
        extra = f" ({'; '.join(self.notes)})" if self.notes else ""
        return (
            f"{self.drill}: {verdict} | {self.requests} req, available {self.availability:.2%}, p99 during {self.p99_during_ms:.0f} ms, "
            f"after {self.p99_after_ms:.0f} ms, degraded {self.degraded_share:.1%}, recovery {recovery}, lost records {self.lost_records}{extra}"
        )


# -- the world ---------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DelayProxy:
    """A loopback TCP proxy to ``127.0.0.1:upstream_port`` that holds each reply chunk ``delay_s``.

    Setting ``delay_s`` makes the store slow without touching it: requests still arrive, answers
    come late, as from an overloaded or distant Redis.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = _free_port()
        self.delay_s = 0.0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="drill-delay-proxy", daemon=True)

    def start(self) -> DelayProxy:
        self._thread.start()
        if not self._ready.wait(10):
            raise DrillError("the delay proxy did not start")
        return self

    def stop(self) -> None:
        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), self._loop)
        self._thread.join(5)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", self.port))
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            server.close()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.close()
            return

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delayed: bool) -> None:
            try:
                while chunk := await src.read(65536):
                    if delayed and self.delay_s > 0:
                        await asyncio.sleep(self.delay_s)
                    dst.write(chunk)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))


class RedisServer:
    """Debian's ``redis-server`` on a loopback port, no persistence: a restart starts empty."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        import redis

        if not REDIS_SERVER.exists():
            raise DrillError(f"{REDIS_SERVER} is not installed (./install.sh installs it)")
        self.process = subprocess.Popen(
            [str(REDIS_SERVER), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if redis.Redis(host="127.0.0.1", port=self.port).ping():
                    return
            time.sleep(0.1)
        self.stop()
        raise DrillError("redis-server did not start within 15 s")

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None


@dataclass
class DrillWorld:
    settings: Settings
    env: dict[str, str]
    redis: RedisServer
    proxy: DelayProxy
    rate: float
    seconds: float
    log_on_tmpfs: bool
    load: LoadProcess
    challengers: list[str] = field(default_factory=list)
    _seed: int = 0

    @property
    def url(self) -> str:
        return f"http://{self.settings.serving.host}:{self.settings.serving.port}"

    @property
    def log_root(self) -> Path:
        return Path(self.settings.paths.root) / "prediction_log"

    def jobs(self, drill: str, regions: Sequence[int], seconds: float | None = None) -> list[Job]:
        self._seed += 1
        n = int(round(self.rate * (seconds or self.seconds)))
        return job_bodies(self.settings, n, seed=self._seed, regions=regions, prefix=f"DRILL-{drill}")

    def admin(self, path: str, body: dict) -> httpx.Response:
        return httpx.post(self.url + path, json=body, headers={"authorization": f"Bearer {self.env[ADMIN_TOKEN_ENV]}"}, timeout=30)

    def metrics(self) -> dict[str, float]:
        """``/metrics`` samples summed over labels, by sample name, and by ``name{label=value}`` too."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.url + "/metrics", timeout=10).text
        totals: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                keys = [sample.name, *(f"{sample.name}{{{k}={v}}}" for k, v in sample.labels.items())]
                for key in keys:
                    totals[key] = totals.get(key, 0.0) + sample.value
        return totals

    def push_live(self, regions: Sequence[int] = LIVE_REGIONS, at: datetime | None = None, groups: Sequence[str] = NEAR_REAL_TIME_GROUPS + BATCH_GROUPS) -> None:
        _at_idle_priority(push_features, self.settings, regions=regions, at=at, groups=groups)

    def set_traffic(self, **change: object) -> None:
        response = self.admin("/v1/admin/traffic", {**change, "reason": "drill"})
        if response.status_code != 200:
            raise DrillError(f"traffic change refused: {response.status_code} {response.text[:200]}")
        time.sleep(1.5)  # replicas poll the policy every second


def _at_idle_priority(fn: Callable[..., object], *args: object, **kwargs: object) -> object:
    """``fn(*args, **kwargs)`` on a thread of its own at the lowest CPU priority (Linux nice is
    per thread), so the drill's own work (pushing features, loading models) does not take the
    cores the service under test needs; the rest of this process keeps its priority."""
    outcome: dict[str, object] = {}

    def run() -> None:
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        try:
            outcome["value"] = fn(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, name="drill-idle-work")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome.get("value")


def _build_world(workdir: Path, env: dict[str, str]) -> None:
    """A small trained world: the demo shrunk to what the drills need (four regions, two weeks)."""
    from cluster.demo import DemoOptions, run_demo

    run_demo(load_settings(None, environ=env), DemoOptions(workdir=workdir, days=14, events_per_day=4_000, cells=400, regions=4, providers=1_200, live=False))


def _mount_tmpfs(directory: Path) -> bool:
    """A small tmpfs on ``directory`` (needs root); False where the machine refuses."""
    directory.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(directory)], capture_output=True, check=False)
    return done.returncode == 0


def _register_challenger(settings: Settings, delay_minutes: float, trigger: str) -> str:
    """A working dispatch version (the champion's models, another re-offer delay) as challenger."""
    from retrain.ranking import RankingPolicy
    from retrain.registry import ModelRegistry, VersionSpec

    registry = ModelRegistry(settings.paths.registry)
    champion = registry.metadata("dispatch", "champion")
    spec = VersionSpec.model_validate(
        {**champion.model_dump(include=set(VersionSpec.model_fields)), "parent_version": champion.version,
         "hyperparameters": {"reoffer_delay_minutes": delay_minutes}, "lineage": {"trigger": trigger}}
    )
    version = registry.register(spec, RankingPolicy(reoffer_delay_minutes=delay_minutes).save).version
    registry.set_alias("dispatch", "challenger", version, moved_by="drill", reason=trigger)
    return version


@contextlib.contextmanager
def drill_world(workdir: Path, rate: float = 50.0, seconds: float = 24.0) -> Iterator[DrillWorld]:
    """Build (once) and start the drill world; stops the app, Ray head, Redis and proxy on exit."""
    from cluster import serve

    workdir = Path(workdir).resolve()
    env = dict(os.environ)
    env.setdefault(ADMIN_TOKEN_ENV, secrets.token_urlsafe(24))
    redis = RedisServer(_free_port())
    redis.start()
    proxy = DelayProxy(redis.port).start()
    load = LoadProcess()
    mounted = False
    try:
        if not (workdir / "dispatchml.yaml").exists():
            _build_world(workdir, env)
        env.update({
            "DISPATCHML_CONFIG": str(workdir / "dispatchml.yaml"),
            "DISPATCHML__FEATURES__ONLINE_STORE": "redis",
            "DISPATCHML__FEATURES__REDIS_CONNECTION": f"127.0.0.1:{proxy.port}",
            "DISPATCHML__SERVING__PORT": str(_free_port()),
            "DISPATCHML__SERVING__LOG_MAX_BACKLOG_ROWS": str(DRILL_LOG_BACKLOG_ROWS),
        })
        settings = load_settings(workdir / "dispatchml.yaml", environ=env)
        if serve.ray_running():
            raise DrillError("a Ray head from `dispatchml serve up` is running; stop it (dispatchml serve down) before drilling")
        log_root = Path(settings.paths.root) / "prediction_log"
        mounted = _mount_tmpfs(log_root)
        world = DrillWorld(settings, env, redis, proxy, rate, seconds, mounted, load)
        # Daily groups for every region; near-real-time ones only where the feed is live.
        _at_idle_priority(push_features, settings, groups=BATCH_GROUPS)
        world.push_live()
        world.challengers = [_register_challenger(settings, 45.0, "drill challenger"), _register_challenger(settings, 30.0, "drill challenger 2")]
        # The Ray head inherits this process's environment: that is how the token reaches the router.
        saved_token = os.environ.get(ADMIN_TOKEN_ENV)
        os.environ[ADMIN_TOKEN_ENV] = env[ADMIN_TOKEN_ENV]
        try:
            serve.up(settings)
            _warm_up(world, LIVE_REGIONS, lambda a: not _feature_flagged(a))
            yield world
        finally:
            serve.down(settings)
            if saved_token is None:
                os.environ.pop(ADMIN_TOKEN_ENV, None)
            else:
                os.environ[ADMIN_TOKEN_ENV] = saved_token
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(Path(workdir) / "prediction_log")], capture_output=True, check=False)
        load.close()
        proxy.stop()
        redis.stop()


def _warm_up(world: DrillWorld, regions: Sequence[int], ready: Callable[[Answer], bool], timeout_s: float = 60.0) -> None:
    """Score single jobs of ``regions`` until one answer is ``ready`` (caches refresh every 5 s)."""
    deadline = time.monotonic() + timeout_s
    answers: list[Answer] = []
    while time.monotonic() < deadline:
        answers = asyncio.run(run_load(world.url, world.jobs("warmup", regions, seconds=2 / world.rate), rate=10))
        if all(a.ok for a in answers) and any(ready(a) for a in answers):
            return
        time.sleep(1.0)
    last = [(a.status, a.arm, sorted(a.flags)) for a in answers]
    raise DrillError(f"regions {list(regions)} never became ready within {timeout_s:.0f} s; last answers {last}")


# -- measuring ---------------------------------------------------------------------------------


@dataclass
class Run:
    """One drill's load and the times (seconds since the load started) it broke and repaired things."""

    answers: list[Answer]
    fault_s: float
    repair_s: float


async def drive(world: DrillWorld, jobs: list[Job], script: Callable[[Callable[[float], Awaitable[float]]], Awaitable[tuple[float, float]]]) -> Run:
    """Run the load (in the load process) and, alongside it, ``script(at)``; ``at(t)`` sleeps
    until ``t`` s into the load and returns the time it woke."""
    started = time.monotonic() + 0.5  # the load process receives the jobs meanwhile

    async def at(t: float) -> float:
        await asyncio.sleep(max(0.0, started + t - time.monotonic()))
        return time.monotonic() - started

    world.load.start(world.url, jobs, world.rate, started)
    fault_s, repair_s = await script(at)
    return Run(await asyncio.to_thread(world.load.answers), fault_s, repair_s)


def _recovery(answers: Sequence[Answer], repair_s: float, healthy: Callable[[Answer], bool]) -> float | None:
    """Seconds from ``repair_s`` to the first request after which every answer is healthy."""
    after = sorted((a for a in answers if a.sent_s >= repair_s), key=lambda a: a.sent_s)
    if not after or not healthy(after[-1]):
        return None
    last_bad = max((i for i, a in enumerate(after) if not healthy(a)), default=-1)
    if last_bad + 1 >= len(after):
        return None
    return max(0.0, after[last_bad + 1].sent_s - repair_s)


def lost_records(world: DrillWorld, answers: Sequence[Answer], timeout_s: float = 45.0) -> int:
    """Served-role log rows missing for answered requests, once the log stops growing or is complete."""
    from serve_apps.prediction_log import read_prediction_log

    expected = {a.request_id: a.n_candidates for a in answers if a.ok and a.request_id}
    deadline = time.monotonic() + timeout_s
    while True:
        table = read_prediction_log(world.log_root).select(["request_id", "role"]).to_pandas()
        logged = table[(table.role == "served") & table.request_id.isin(expected)].groupby("request_id").size().to_dict()
        missing = sum(max(0, n - logged.get(r, 0)) for r, n in expected.items())
        if missing == 0 or time.monotonic() > deadline:
            return missing
        time.sleep(2.0)


def _measure(
    world: DrillWorld, name: str, run: Run, healthy: Callable[[Answer], bool], *, answered_target: float = 1.0, check_p99: bool = True,
    count_lost: bool = True, expect_recovery: bool = True,
) -> DrillResult:
    answers = run.answers
    before = [a for a in answers if a.sent_s < run.fault_s]
    during = [a for a in answers if run.fault_s <= a.sent_s < run.repair_s]
    recovery = _recovery(answers, run.repair_s, healthy)
    after = [a for a in answers if recovery is not None and a.sent_s >= run.repair_s + recovery]
    ok = sum(a.ok for a in answers)
    result = DrillResult(
        drill=name,
        requests=len(answers),
        availability=ok / max(1, len(answers)),
        p99_during_ms=percentile_ms(during),
        p99_after_ms=percentile_ms(after),
        degraded_share=sum(a.degraded for a in during) / max(1, len(during)),
        recovery_s=recovery,
        lost_records=lost_records(world, answers) if count_lost else 0,
    )
    reasons = Counter(f"{c}:{r}" for a in during for c, r in a.flags)
    result.notes.append(f"p99 before the fault {percentile_ms(before):.0f} ms")
    if reasons:
        result.notes.append("flags during " + ", ".join(f"{k} {v}" for k, v in reasons.most_common(3)))
    if result.availability < answered_target:
        codes = sorted({a.status for a in answers if not a.ok})
        result.problems.append(f"answered {result.availability:.3%} < {answered_target:.1%} (codes {codes})")
    if check_p99 and not result.p99_during_ms <= P99_TARGET_MS:
        result.problems.append(f"p99 during {result.p99_during_ms:.0f} ms > {P99_TARGET_MS:.0f} ms")
    if recovery is None and expect_recovery:
        result.problems.append("did not recover before the load ended")
    if count_lost and result.lost_records:
        result.problems.append(f"{result.lost_records} log records lost")
    return result


# -- the drills --------------------------------------------------------------------------------


def _no(reason: str) -> Callable[[Answer], bool]:
    return lambda a: a.ok and reason not in a.reasons


def drill_store_down(world: DrillWorld) -> DrillResult:
    """Redis stopped for 10 s under load, then restarted (empty, as after a crash) and refilled."""

    async def script(at):
        fault = await at(5)
        await asyncio.to_thread(world.redis.stop)
        await at(15)
        await asyncio.to_thread(world.redis.start)
        await asyncio.to_thread(world.push_live)
        return fault, await at(15)

    run = asyncio.run(drive(world, world.jobs("store_down", LIVE_REGIONS), script))
    result = _measure(world, "store_down", run, _no("store_unavailable"))
    _require_seen(result, run, "store_unavailable")
    return result


def drill_store_slow(world: DrillWorld) -> DrillResult:
    """Every Redis reply held 4 s (past the 3 s refresh deadline) for 15 s under load."""

    async def script(at):
        fault = await at(4)
        world.proxy.delay_s = 4.0
        repair = await at(19)
        world.proxy.delay_s = 0.0
        return fault, repair

    run = asyncio.run(drive(world, world.jobs("store_slow", LIVE_REGIONS, seconds=world.seconds + 12), script))
    result = _measure(world, "store_slow", run, _no("store_unavailable"))
    _require_seen(result, run, "store_unavailable")
    return result


def _expiring_push(world: DrillWorld, region: int, limit: timedelta, lead_s: float, name: str) -> float:
    """Push ``region``'s near-real-time features stamped so they pass ``limit`` in ``lead_s``;
    daily features fresh. Warms the router's cache up and returns when the limit is crossed
    (``time.time()``)."""
    stamp = datetime.now(UTC).replace(microsecond=0) - limit + timedelta(seconds=lead_s)
    world.push_live([region], at=stamp, groups=NEAR_REAL_TIME_GROUPS)
    world.push_live([region], groups=BATCH_GROUPS)
    # Ready once the cache has the values: no longer missing (an old stamp may already be stale).
    _warm_up(world, [region], lambda a: "missing" not in a.reasons)
    return (stamp + limit).timestamp() + 1.0  # ages are whole seconds


#: Seconds between the push of an expiring feed and its crossing: room for the cache to pick
#: the values up (a refresh every 5 s, slower on a loaded machine) and for a fault-free start.
FEED_LEAD_S = 45.0


def _feed_drill(world: DrillWorld, name: str, region: int, limit: timedelta, flag: str, mixed: bool) -> tuple[DrillResult, list[Answer]]:
    """Run a feed drill; returns its result and the answers sent while the fault was settled."""
    crossing = _expiring_push(world, region, limit, FEED_LEAD_S, name)
    regions = [region, LIVE_REGIONS[0]] if mixed else [region]
    # Until the crossing, 8 s of fault, then as long again as a drill's load for the recovery.
    jobs = world.jobs(name, regions, seconds=max(0.0, crossing - time.time()) + 8 + world.seconds)
    started_wall = time.time()

    async def script(at):
        fault = max(0.0, crossing - started_wall)
        await at(fault + 8)
        await asyncio.to_thread(world.push_live, [region], None, NEAR_REAL_TIME_GROUPS)  # the feed resumes
        return fault, await at(fault + 8)

    run = asyncio.run(drive(world, jobs, script))
    result = _measure(world, name, run, lambda a: a.ok and (a.region_id != region or flag not in a.reasons))
    _require_seen(result, run, flag)
    return result, [a for a in run.answers if run.fault_s + 1 <= a.sent_s < run.repair_s]


def _feature_flagged(a: Answer) -> bool:
    """Degraded by its features, not by a model's deadline or breaker."""
    return any(not c.endswith("_model") for c in a.components)


def drill_feed_stale(world: DrillWorld) -> DrillResult:
    """The near-real-time feed of one region stops: its ages pass the 10-minute freshness limit."""
    result, during = _feed_drill(world, "feed_stale", STALE_REGION, group("cell_traffic").freshness_limit, "stale", mixed=False)
    # A fallback answer here must be the model's doing (deadline, breaker) or a provider the
    # cache had not loaded yet (flagged missing), never the staleness.
    switched = [a for a in during if a.arm == "fallback" and a.reasons <= {"stale"}]
    if switched:
        result.problems.append(f"{len(switched)} stale jobs went to the fallback: last-known-good values should keep the model serving")
    return result


def drill_region_missing(world: DrillWorld) -> DrillResult:
    """One region's near-real-time features expire (past the TTL) while another region is scored too."""
    result, during = _feed_drill(world, "region_missing", MISSING_REGION, group("cell_traffic").ttl, "missing", mixed=True)
    others = [a for a in during if a.region_id != MISSING_REGION]
    hit = [a for a in during if a.region_id == MISSING_REGION]
    if any(_feature_flagged(a) for a in others):
        result.problems.append(f"{sum(_feature_flagged(a) for a in others)} answers outside region {MISSING_REGION} had feature flags")
    if any(a.arm != "fallback" for a in hit):
        result.problems.append("jobs without features should be answered by the fallback")
    result.degraded_share = sum(a.degraded for a in hit) / max(1, len(hit))
    result.notes.append(f"other region feature-flagged {sum(_feature_flagged(a) for a in others)}/{len(others)}")
    return result


def _require_seen(result: DrillResult, run: Run, reason: str) -> None:
    """The fault must have shown: otherwise the drill measured nothing."""
    result.observed = any(reason in a.reasons for a in run.answers if run.fault_s <= a.sent_s < run.repair_s)
    if not result.observed:
        result.problems.append(f"no answer was flagged {reason!r} during the fault")


def _serve_actors(match: Callable[[str], bool]) -> list:
    import ray

    from cluster.serve import connect

    connect()
    return [ray.get_actor(a["name"], namespace=a["namespace"]) for a in ray.util.list_named_actors(all_namespaces=True) if match(a["name"])]


def _kill_drill(world: DrillWorld, name: str, match: Callable[[str], bool]) -> tuple[DrillResult, Run]:
    import ray

    actors = _serve_actors(match)
    if not actors:
        raise DrillError(f"{name}: no actor to kill")

    async def script(at):
        fault = await at(5)
        for actor in actors:
            ray.kill(actor, no_restart=False)
        return fault, await at(5.5)

    # Long enough for Serve to restart a replica (it loads the models) on a loaded machine.
    run = asyncio.run(drive(world, world.jobs(name, LIVE_REGIONS, seconds=world.seconds + 30), script))
    result = _measure(world, name, run, lambda a: a.ok, answered_target=1 - KILL_FAILURE_BUDGET, check_p99=False)
    result.observed = True
    result.notes.append(f"killed {len(actors)} actor(s); failed {sum(not a.ok for a in run.answers)}")
    return result, run


def drill_replica_killed(world: DrillWorld) -> DrillResult:
    """Every champion replica actor killed under load; Serve restarts it, the fallback answers meanwhile."""
    result, run = _kill_drill(world, "replica_killed", lambda n: "champion" in n and "REPLICA" in n.upper())
    # Recovered once the restarted champion answers again (its breaker may still trip on a
    # loaded machine afterwards; that is the deadline's doing, not the kill's).
    back = [a.sent_s for a in run.answers if a.sent_s >= run.repair_s and a.arm == "champion"]
    result.recovery_s = min(back) - run.repair_s if back else None
    if not back:
        result.problems.append("the champion never answered again")
    return result


def drill_controller_killed(world: DrillWorld) -> DrillResult:
    """The Serve controller actor killed under load; Ray restarts it, replicas keep serving."""
    return _kill_drill(world, "controller_killed", lambda n: n == "SERVE_CONTROLLER_ACTOR")[0]


def _raising_challenger(settings: Settings) -> str:
    """A dispatch version whose ETA artifact loads and verifies but raises on every prediction:
    it declares one feature fewer than its boosters were trained on (a catalogue mismatch)."""
    from retrain.registry import ModelRegistry, VersionSpec

    registry = ModelRegistry(settings.paths.registry)
    champion = registry.metadata("dispatch", "champion")
    eta_meta = registry.metadata("eta", champion.components["eta"])
    eta = registry.load_model("eta", eta_meta.version)
    eta.feature_names_ = eta.feature_names_[:-1]
    eta_spec = VersionSpec.model_validate(
        {**eta_meta.model_dump(include=set(VersionSpec.model_fields)), "parent_version": eta_meta.version, "lineage": {"trigger": "drill: raises at predict"}}
    )
    broken_eta = registry.register_model(eta_spec, eta).version
    policy = registry.load_model("dispatch", champion.version).policy
    spec = VersionSpec.model_validate(
        {**champion.model_dump(include=set(VersionSpec.model_fields)), "parent_version": champion.version,
         "components": {**champion.components, "eta": broken_eta}, "lineage": {"trigger": "drill: raises at predict"}}
    )
    version = registry.register(spec, policy.save).version
    registry.set_alias("dispatch", "challenger", version, moved_by="drill", reason="challenger raising at predict")
    return version


def drill_challenger_raising(world: DrillWorld) -> DrillResult:
    """A challenger raising on every request, first in shadow, then as a 25 % canary."""
    from retrain.registry import ModelRegistry

    registry = ModelRegistry(world.settings.paths.registry)
    before = world.metrics()

    async def script(at):
        fault = await at(0)
        await asyncio.to_thread(world.set_traffic, challenger_weight=0.0, shadow=True)
        await asyncio.to_thread(_at_idle_priority, _raising_challenger, world.settings)
        await at(12)
        await asyncio.to_thread(world.set_traffic, challenger_weight=0.25, shadow=False)
        await at(22)
        await asyncio.to_thread(registry.rollback, "dispatch", "challenger", moved_by="drill", reason="drill over")
        await asyncio.to_thread(world.set_traffic, challenger_weight=0.0, shadow=True)
        return fault, await at(24)

    run = asyncio.run(drive(world, world.jobs("challenger_raising", LIVE_REGIONS, seconds=world.seconds + 10), script))
    result = _measure(world, "challenger_raising", run, lambda a: a.ok and "challenger_model" not in a.components)
    after = world.metrics()
    key = "dispatchml_shadow_scores_total{outcome=error}"
    shadow_errors = after.get(key, 0) - before.get(key, 0)
    failed_canary = sum(a.arm == "fallback" and "challenger_model" in a.components for a in run.answers)
    result.notes.append(f"shadow errors counted {shadow_errors:.0f}, canary jobs answered by the fallback {failed_canary}")
    result.observed = shadow_errors > 0 and failed_canary > 0
    if shadow_errors <= 0:
        result.problems.append("no shadow error was counted")
    if failed_canary == 0:
        result.problems.append("no canary job hit the raising challenger")
    return result


def drill_corrupt_artifact(world: DrillWorld) -> DrillResult:
    """A corrupted dispatch version promoted to champion under load: refused, champion kept."""
    from retrain.registry import CorruptArtifactError, ModelRegistry, VersionSpec

    registry = ModelRegistry(world.settings.paths.registry)
    champion = registry.metadata("dispatch", "champion")
    policy = registry.load_model("dispatch", champion.version).policy
    spec = VersionSpec.model_validate({**champion.model_dump(include=set(VersionSpec.model_fields)), "parent_version": champion.version,
                                       "lineage": {"trigger": "drill: corrupt artifact"}})
    bad = registry.register(spec, policy.save).version
    artifact = next(p for p in registry.artifact_dir("dispatch", bad).rglob("*") if p.is_file())
    artifact.chmod(0o644)
    artifact.write_bytes(artifact.read_bytes()[:-1] + b"#")
    refusals: list[str] = []

    def promote() -> None:
        try:
            registry.set_alias("dispatch", "champion", bad, moved_by="drill", reason="promote a corrupt artifact")
        except CorruptArtifactError as exc:
            refusals.append(str(exc))

    async def script(at):
        fault = await at(5)
        await asyncio.to_thread(promote)
        return fault, world.seconds  # the corrupt version stays registered: the fault lasts to the end

    run = asyncio.run(drive(world, world.jobs("corrupt_artifact", LIVE_REGIONS), script))
    result = _measure(world, "corrupt_artifact", run, lambda a: a.ok, expect_recovery=False)
    served = {dict(a.versions).get("dispatch") for a in run.answers if a.ok and a.arm == "champion"}
    result.observed = bool(refusals)
    if not refusals:
        result.problems.append("the corrupt version was promoted")
    if registry.alias("dispatch", "champion").version != champion.version or served - {champion.version}:
        result.problems.append(f"the champion changed: served {sorted(v or '-' for v in served)}")
    result.recovery_s = None if result.problems else 0.0
    result.notes.append("promotion refused: CorruptArtifactError" if refusals else "promotion accepted")
    return result


def drill_log_disk_full(world: DrillWorld) -> DrillResult:
    """The prediction-log disk fills for 12 s under load, then space is freed.

    Scoring must go on; the writer's backlog is bounded (``DRILL_LOG_BACKLOG_ROWS``) and shown
    in ``/metrics``; rows that did not fit are refused whole and counted, so the records missing
    from the log must equal ``prediction_log_rows_dropped`` exactly.
    """
    if not world.log_on_tmpfs:
        raise DrillError("log_disk_full needs the prediction log on its own small tmpfs (mount as root)")
    filler = world.log_root / "filler.bin"
    world.set_traffic(challenger_weight=0.0, shadow=False)  # served rows only, so every row is accounted for
    before = world.metrics()
    peak_backlog = [0.0]

    def fill() -> None:
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        block = b"\0" * (1 << 20)
        try:
            while True:
                os.write(fd, block)
        except OSError:  # ENOSPC: the disk is full, which is the point
            pass
        finally:
            os.close(fd)

    async def script(at):
        fault = await at(3)
        await asyncio.to_thread(fill)
        for t in range(4, 16):
            await at(t)
            backlog = (await asyncio.to_thread(world.metrics)).get("dispatchml_prediction_log_backlog_rows", 0.0)
            peak_backlog[0] = max(peak_backlog[0], backlog)
        repair = await at(16)
        filler.unlink()
        return fault, repair

    try:
        run = asyncio.run(drive(world, world.jobs("log_disk_full", LIVE_REGIONS), script))
    finally:
        filler.unlink(missing_ok=True)
    deadline = time.monotonic() + 60
    while world.metrics().get("dispatchml_prediction_log_backlog_rows", 1.0) > 0 and time.monotonic() < deadline:
        time.sleep(1.0)
    world.set_traffic(challenger_weight=0.0, shadow=True)
    result = _measure(world, "log_disk_full", run, lambda a: a.ok, count_lost=False)
    after = world.metrics()
    dropped = after.get("dispatchml_prediction_log_rows_dropped_total", 0) - before.get("dispatchml_prediction_log_rows_dropped_total", 0)
    errors = after.get("dispatchml_prediction_log_write_errors_total", 0) - before.get("dispatchml_prediction_log_write_errors_total", 0)
    result.lost_records = lost_records(world, run.answers, timeout_s=20)
    result.notes.append(f"write errors {errors:.0f}, peak backlog {peak_backlog[0]:.0f} rows, counted dropped {dropped:.0f}")
    result.observed = errors > 0
    if errors <= 0:
        result.problems.append("no write failed: the disk was not full")
    if not 0 < peak_backlog[0] <= DRILL_LOG_BACKLOG_ROWS:
        result.problems.append(f"backlog not visible or not bounded (peak {peak_backlog[0]:.0f})")
    if result.lost_records != int(dropped):
        result.problems.append(f"lost {result.lost_records} rows but {dropped:.0f} counted as dropped")
    return result


def drill_rollback_mid_load(world: DrillWorld) -> DrillResult:
    """Through the admin API under load: 50 % to the challenger, then roll the challenger back."""
    from retrain.registry import ModelRegistry

    registry = ModelRegistry(world.settings.paths.registry)
    responses: list[int] = []

    async def script(at):
        fault = await at(4)
        responses.append((await asyncio.to_thread(world.admin, "/v1/admin/traffic", {"challenger_weight": 0.5, "shadow": False, "reason": "drill"})).status_code)
        await at(11)
        responses.append((await asyncio.to_thread(world.admin, "/v1/admin/rollback", {"family": "dispatch", "alias": "challenger", "reason": "drill"})).status_code)
        await at(17)
        responses.append((await asyncio.to_thread(world.admin, "/v1/admin/traffic", {"challenger_weight": 0.0, "shadow": True, "reason": "drill"})).status_code)
        return fault, await at(18)

    rolled_from = registry.alias("dispatch", "challenger").version
    run = asyncio.run(drive(world, world.jobs("rollback_mid_load", LIVE_REGIONS), script))
    result = _measure(world, "rollback_mid_load", run, lambda a: a.ok)
    challenger_versions = {dict(a.versions).get("dispatch") for a in run.answers if a.ok and a.arm == "challenger"}
    result.notes.append(f"admin answers {responses}, challenger versions served {len(challenger_versions)}")
    if responses != [200, 200, 200]:
        result.problems.append(f"admin calls answered {responses}")
    result.observed = rolled_from in challenger_versions and registry.alias("dispatch", "challenger").version != rolled_from
    if not result.observed:
        result.problems.append("the challenger did not serve and then roll back")
    return result


DRILLS: dict[str, Callable[[DrillWorld], DrillResult]] = {
    "store_down": drill_store_down,
    "store_slow": drill_store_slow,
    "feed_stale": drill_feed_stale,
    "region_missing": drill_region_missing,
    "replica_killed": drill_replica_killed,
    "controller_killed": drill_controller_killed,
    "challenger_raising": drill_challenger_raising,
    "corrupt_artifact": drill_corrupt_artifact,
    "log_disk_full": drill_log_disk_full,
    "rollback_mid_load": drill_rollback_mid_load,
}


def run_drills(names: Sequence[str], workdir: Path, rate: float = 50.0, seconds: float = 24.0, report: Callable[[DrillResult], None] = print) -> list[DrillResult]:
    """Run ``names`` (keys of ``DRILLS``, or ``["all"]``) in one drill world, reporting each line."""
    chosen = list(DRILLS) if list(names) == ["all"] else list(names)
    unknown = [n for n in chosen if n not in DRILLS]
    if unknown:
        raise DrillError(f"unknown drill(s) {unknown}; choose from {', '.join(DRILLS)} or all")
    results = []
    with drill_world(workdir, rate, seconds) as world:
        for name in chosen:
            world.push_live()  # live regions stay fresh however long the drills take
            try:
                result = DRILLS[name](world)
            except DrillError as exc:
                result = DrillResult(name, 0, 0.0, float("nan"), float("nan"), 0.0, None, 0, problems=[f"could not run: {exc}"])
            report(result)
            results.append(result)
    return results


def results_json(results: Sequence[DrillResult]) -> str:
    return json.dumps([{**r.__dict__, "passed": r.passed} for r in results], indent=2, default=float)


