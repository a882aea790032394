"""The release controller against the real router (in process): requests keep flowing while a
worse challenger is shadowed, put on the canary and rolled back automatically.

The router is the product's ``DispatchRouter`` (``in_process_router``); the controller is
``retrain.release.release_step`` acting through the traffic file and the registry, which the
router polls. Only the model deployments are stand-ins: the challenger's ETA is the champion's
plus a bias. The world's labels follow the unbiased ETA, so the challenger is worse by about the
bias on every job.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from in_process_router import FakeDispatchHandle, InProcessRouter, in_process_router
from typer.testing import CliRunner, Result

import serve_apps.router as router_module
from cluster.cli import app as cli_app
from cluster.config import Settings
from cluster.event_log import EventLog
from contracts.features import model_features
from contracts.scoring import SCORE_PATH
from contracts.warehouse import LABELS, table_dir
from retrain.registry import ModelRegistry
from retrain.release import release_step
from serve_apps.openapi import ADMIN_TOKEN_ENV
from serve_apps.prediction_log import read_prediction_log
from serve_apps.traffic_state import read_state

BIAS_MINUTES = 6.0
#: Small steps and samples so the test runs in seconds; the statistics are the product's.
RELEASE = {"canary_steps": [0.05, 0.25, 0.5], "min_samples": 30, "target_samples": 200, "min_requests_per_step": 30,
           "min_guardrail_requests": 20, "label_horizon_hours": 1.0}
#: Latency is not what these tests are about (see ``unhurried_models``): the latency SLO is loose
#: enough that a descheduled request does not page, and a page needs > 72 % of an arm's requests
#: failing (14.4 x a 5 % budget), which a broken model does.
SLO = {"service": {"availability": {"kind": "availability", "objective": 0.95},
                   "latency": {"kind": "latency", "objective": 0.99, "threshold_seconds": 10.0}}}
WAIT_S = 60.0


def body(job_id: str) -> dict:
    return {
        "job_id": job_id, "requested_at": datetime.now(UTC).isoformat(), "line_of_business": "auto_club",
        "service_type": "tow", "vehicle": {"vehicle_class": "car"}, "location": {"lat": 22.61, "lon": -45.13},
        "member": {"member_id": "M-release-1", "name": "Release Tester", "phone": "+1-555-0199"},
        "candidates": [{"provider_id": p} for p in (3, 11, 27, 42)],
    }


class Traffic(threading.Thread):
    """Dispatch's requests, one after another on one event loop (so shadow scoring completes), until stopped."""

    def __init__(self, app: InProcessRouter, limit: int = 20_000) -> None:
        super().__init__(daemon=True)
        self.app, self.limit = app, limit
        self.stop = threading.Event()
        self.statuses: list[int] = []
        self.arms: list[str] = []
        self.versions: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            asyncio.run(self._send())
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            self.error = exc

    async def _send(self) -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self.app), base_url="http://127.0.0.1") as client:
            for i in range(self.limit):
                if self.stop.is_set():
                    break
                response = await client.post(SCORE_PATH, json=body(f"J-release-{i}"))
                answer = response.json() if response.status_code == 200 else {}
                self.statuses.append(response.status_code)
                self.arms.append(answer.get("arm", ""))
                self.versions.append(answer.get("model_versions", {}).get("dispatch", ""))
                await asyncio.sleep(0.001)  # let shadow tasks and batch timers run
        await asyncio.gather(*list(self.app.router._shadow_tasks), return_exceptions=True)


@contextmanager
def flowing(app: InProcessRouter) -> Iterator[Traffic]:
    """Requests flow while the block runs; afterwards, every one of them was answered 200."""
    traffic = Traffic(app)
    traffic.start()
    try:
        yield traffic
    finally:
        traffic.stop.set()
        traffic.join(timeout=WAIT_S)
    assert traffic.error is None and not traffic.is_alive()
    assert len(traffic.statuses) > 100 and set(traffic.statuses) == {200}, "every request answered 200"


def wait_for(condition: Callable[[], bool], what: str, traffic: Traffic) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert traffic.error is None, f"traffic failed: {traffic.error!r}"
        assert traffic.is_alive(), "traffic stopped early"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture(autouse=True)
def unhurried_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """The router, the controller and the test share a loaded two-core machine, so a model call
    can miss its 60 ms deadline through no fault of the model, and a few misses open its breaker.
    Latency is not under test here: a 5 s deadline leaves model failures to the broken model."""
    monkeypatch.setattr(router_module, "MODEL_DEADLINE_S", 5.0)


def step(app: InProcessRouter, settings: Settings, **kwargs: object):
    """One controller tick on what the router has logged so far (its log commits every 2 s)."""
    assert app.router.log.flush(timeout=30)
    return release_step(settings, **kwargs)


def logged(app: InProcessRouter):
    assert app.router.log.flush(timeout=30)
    return read_prediction_log(app.prediction_log).to_pandas()


def write_labels(app: InProcessRouter, seed: int, eta_bias: dict[str, float]) -> int:
    """The world answers every served job: the top-ranked provider arrives after the unbiased ETA
    (the served ETA less that version's bias) plus noise; every candidate accepts or declines the
    offer at random. Known 30 minutes later."""
    rng = np.random.default_rng(seed)
    served = logged(app).query("role == 'served' and arm != 'fallback'")
    bias = served["dispatch_version"].map(eta_bias).fillna(0.0).to_numpy()
    top = (served["rank"] == 1).to_numpy()
    known_at = served["requested_at"] + timedelta(minutes=30)
    arrivals = {"label_type": "arrival_minutes", "value": (served["eta_minutes"] - bias + rng.normal(0.0, 2.0, len(served)))[top]}
    accepts = {"label_type": "accepted", "value": (rng.random(len(served)) < 0.5).astype(np.float64)}
    rows = []
    for labels, mask in ((arrivals, top), (accepts, np.ones(len(served), bool))):
        rows.append(pa.table({
            "job_id": served["job_id"][mask].to_numpy(), "provider_id": served["provider_id"][mask].to_numpy(),
            "label_type": [labels["label_type"]] * int(mask.sum()), "value": np.asarray(labels["value"], np.float64),
            "request_ts": served["requested_at"][mask].to_numpy(), "known_at": known_at[mask].to_numpy(),
            "revision": np.zeros(int(mask.sum()), np.int32), "source": ["gps"] * int(mask.sum()),
        }).cast(LABELS))
    table = pa.concat_tables(rows)
    day = (datetime.now(UTC) + timedelta(minutes=30)).date()
    directory = table_dir(Path(app.settings.paths.data), "labels") / f"date={day.isoformat()}"
    directory.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, directory / f"part-{seed}.parquet")
    return table.num_rows


@pytest.fixture
def worse_challenger() -> FakeDispatchHandle:
    return FakeDispatchHandle(model_features().index("distance_km"), version="dispatch-v2", eta_bias=BIAS_MINUTES)


def test_worse_challenger_goes_to_canary_then_is_rolled_back_with_every_request_answered(
    tmp_path: Path, worse_challenger: FakeDispatchHandle
) -> None:
    with in_process_router(tmp_path, challenger=worse_challenger) as app:
        settings = Settings.model_validate({**app.settings.model_dump(mode="json"), "release": RELEASE, "slo": SLO})
        registry = ModelRegistry(settings.paths.registry)
        with flowing(app) as traffic:
            # Shadow (the traffic file's default): the challenger scores champion jobs off the response path.
            wait_for(lambda: (logged(app)["role"] == "shadow").sum() >= 40 * 4, "40 shadowed jobs", traffic)
            situation, first = step(app, settings)
            assert situation.stage == "shadow" and situation.test.decision == "continue"  # no labels yet
            assert (first.action, first.code) == ("advance", "step_passed"), first.reason
            assert read_state(settings.paths.registry).challenger_weight == 0.05

            # The router picks the canary up by itself and serves some jobs from the challenger.
            wait_for(lambda: traffic.arms.count("challenger") >= 3, "challenger-served jobs", traffic)
            assert write_labels(app, seed=11, eta_bias={"dispatch-v2": BIAS_MINUTES}) > 0
            situation, second = step(app, settings, as_of=datetime.now(UTC) + timedelta(hours=2))
            assert situation.stage == "canary"
            assert (second.action, second.code) == ("rollback", "test_rejected"), second.reason
            eta = situation.test.metrics[0]
            assert eta.metric == "eta_abs_error" and eta.verdict == "worse" and eta.lower > 0.25

            # Back to the champion alone: once the router has reloaded, no job reaches the challenger.
            state = read_state(settings.paths.registry)
            assert (state.challenger_weight, state.shadow, state.canary_step) == (0.0, False, None)
            wait_for(lambda: app.router.policy is not None and app.router.policy.challenger_weight == 0.0, "the router to reload", traffic)
            after = len(traffic.arms)
            wait_for(lambda: len(traffic.arms) >= after + 50, "50 more requests", traffic)
            assert set(traffic.arms[after + 1:]) <= {"champion", "fallback"}

            # The controller now holds: the experiment is stopped until a new challenger comes.
            _, third = step(app, settings, as_of=datetime.now(UTC) + timedelta(hours=2))
            assert (third.action, third.code) == ("hold", "stopped")
    assert registry.alias("dispatch", "champion").version == "dispatch-v1"
    events = EventLog(settings.paths.events)
    actions = events.actions()
    assert [a.action for a in actions] == ["canary_advance", "rollback", "none"]
    rollback = actions[1]
    assert rollback.status == "taken" and rollback.reason.startswith("test_rejected: sequential test rejects dispatch-v2")
    assert rollback.detail["eta_abs_error_verdict"] == "worse"
    (event,) = events.events()
    assert (event.kind, event.severity, event.state, event.event_id) == ("release", "ticket", "firing", rollback.event_id)
    assert "dispatch-v1->dispatch-v2" in event.subject
    assert [i.key for i in events.incidents()] == [rollback.incident_key]


class AliasFollowingModel(FakeDispatchHandle):
    """Like ``DispatchModelServer``: scores with whatever version its alias points at now, each
    version with its own ETA bias; ``broken`` versions raise (a bad deploy)."""

    def __init__(self, registry_root: Path, alias: str, eta_bias: dict[str, float]) -> None:
        super().__init__(model_features().index("distance_km"))
        self.registry, self.alias, self.biases = ModelRegistry(registry_root), alias, eta_bias
        self.broken: set[str] = set()

    def current(self) -> tuple[str, float]:
        version = self.registry.alias("dispatch", self.alias).version
        if version in self.broken:
            raise RuntimeError(f"{version} fails to score")
        return version, self.biases.get(version, 0.0)


def test_better_challenger_is_ramped_and_promoted_then_rolled_back_when_it_burns_budget_as_champion(tmp_path: Path) -> None:
    # dispatch-v1 (the champion) overestimates ETAs by 3 minutes; dispatch-v2 does not.
    biases = {"dispatch-v1": 3.0, "dispatch-v2": 0.0}
    registry_root = tmp_path / "registry"
    with in_process_router(tmp_path) as first:  # lays out the world and the registry
        pass
    champion = AliasFollowingModel(registry_root, "champion", biases)
    challenger = AliasFollowingModel(registry_root, "challenger", biases)
    with in_process_router(tmp_path, champion=champion, challenger=challenger) as app:
        release = {**RELEASE, "min_requests_per_step": 5}
        settings = Settings.model_validate({**app.settings.model_dump(mode="json"), "release": release, "slo": SLO})
        registry = ModelRegistry(settings.paths.registry)
        later = datetime.now(UTC) + timedelta(hours=2)  # the controller's clock: labels have matured

        def served_by(arm: str, since: int) -> list[str]:
            """Dispatch versions of the responses from ``arm`` since request number ``since``."""
            return [v for a, v in zip(traffic.arms[since:], traffic.versions[since:], strict=False) if a == arm]

        with flowing(app) as traffic:
            wait_for(lambda: (logged(app)["role"] == "shadow").sum() >= 40 * 4, "40 shadowed jobs", traffic)
            assert write_labels(app, seed=12, eta_bias=biases) > 0
            weights = []
            for _ in range(4):  # shadow -> 5 % -> 25 % -> 50 % -> champion
                situation, decision = step(app, settings, as_of=later)
                if decision.action != "advance":
                    break
                assert situation.test.decision != "reject"
                weights.append(read_state(settings.paths.registry).challenger_weight)
                mark = len(traffic.arms)
                wait_for(lambda mark=mark: len(served_by("challenger", mark)) >= 8, "challenger requests at the new step", traffic)
            assert weights == [0.05, 0.25, 0.5]
            assert (decision.action, decision.code) == ("promote", "test_promoted"), decision.reason
            assert situation.test.metrics[0].verdict == "better"
            assert registry.alias("dispatch", "champion").version == "dispatch-v2"
            assert registry.alias("dispatch", "fallback").version == "dispatch-v1"
            assert read_state(settings.paths.registry).challenger_weight == 0.0

            # Probation: the new champion serves every job; healthy, so the controller holds.
            wait_for(lambda: app.router.policy is not None and app.router.policy.champion == "dispatch-v2", "the router to reload", traffic)
            served_from = len(traffic.arms) + 1
            wait_for(lambda: len(served_by("champion", served_from)) >= 20, "20 jobs on the new champion", traffic)
            assert set(served_by("champion", served_from)) == {"dispatch-v2"}
            assert served_by("challenger", served_from) == []
            situation, decision = step(app, settings, as_of=later)
            assert (situation.stage, decision.action) == ("probation", "hold"), decision.reason

            # A bad deploy of the new champion: every job falls back, which burns the availability budget.
            champion.broken.add("dispatch-v2")
            broken_from = len(traffic.arms)
            wait_for(lambda: len(traffic.arms) >= broken_from + 150, "150 requests on the broken champion", traffic)
            situation, decision = step(app, settings, as_of=later)
            assert (situation.stage, decision.action, decision.code) == ("probation", "rollback", "burn_rate"), decision.reason
            assert registry.alias("dispatch", "champion").version == "dispatch-v1"
            # The router follows: dispatch-v1 answers again (once the champion's breaker lets it through).
            restored_from = len(traffic.arms)
            wait_for(lambda: "dispatch-v1" in traffic.versions[restored_from:], "dispatch-v1 to serve again", traffic)
            _, decision = step(app, settings, as_of=later)
            assert (decision.action, decision.code) == ("hold", "stopped")
    events = EventLog(settings.paths.events)
    assert [a.action for a in events.actions()] == ["canary_advance"] * 3 + ["promote", "none", "rollback", "none"]
    promoted, rolled_back = (e for e in events.events())
    assert (promoted.severity, promoted.state, rolled_back.severity, rolled_back.state) == ("info", "resolved", "ticket", "firing")
    assert "burns error budget at page rate" in rolled_back.summary
    assert [m.action for m in registry.history("dispatch", "champion")][-2:] == ["set", "rollback"]
    assert first is not None


def test_release_cli_shows_status_and_needs_the_admin_token_to_act(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with in_process_router(tmp_path) as app:  # a champion and a challenger in the registry, nothing served yet
        paths = app.settings.paths
    config = tmp_path / "dispatchml.yaml"
    config.write_text(yaml.safe_dump({"paths": {name: str(value) for name, value in paths.model_dump().items()}}))
    events = EventLog(paths.events)
    cli = CliRunner()

    def run(*args: str) -> Result:
        return cli.invoke(cli_app, ["--config", str(config), "release", *args])

    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    disabled = run("step", "--token", "anything")
    assert disabled.exit_code == 1 and ADMIN_TOKEN_ENV in disabled.output
    monkeypatch.setenv(ADMIN_TOKEN_ENV, "release-cli-token-7f3a")
    status = run("status")
    assert status.exit_code == 0, status.output
    assert "stage shadow" in status.output and "waiting_for_requests" in status.output
    denied = run("step", "--token", "not-the-token")
    assert denied.exit_code == 1 and "wrong admin token" in denied.output
    dry = run("step", "--dry-run")
    assert dry.exit_code == 0 and "would hold" in dry.output
    assert events.actions() == [], "neither a refused nor a dry-run step records anything"
    done = run("step", "--token", "release-cli-token-7f3a")
    assert done.exit_code == 0 and "did hold" in done.output
    assert [(a.action, a.status) for a in events.actions()] == [("none", "taken")]
