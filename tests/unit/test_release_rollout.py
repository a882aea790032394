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
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from in_process_router import FakeDispatchHandle, InProcessRouter, in_process_router

from cluster.config import Settings
from cluster.event_log import EventLog
from contracts.features import model_features
from contracts.scoring import SCORE_PATH
from contracts.warehouse import LABELS, table_dir
from retrain.registry import ModelRegistry
from retrain.release import release_step
from serve_apps.prediction_log import read_prediction_log
from serve_apps.traffic_state import read_state

BIAS_MINUTES = 6.0
#: Small steps and samples so the test runs in seconds; the statistics are the product's.
RELEASE = {"canary_steps": [0.05, 0.25, 0.5], "min_samples": 30, "target_samples": 200, "min_requests_per_step": 30,
           "min_guardrail_requests": 20, "label_horizon_hours": 1.0}
#: The router shares two cores with this test: its latency is not what the test is about, so the
#: latency SLO is loose enough that a descheduled request does not page.
SLO = {"service": {"availability": {"kind": "availability", "objective": 0.999},
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
                self.statuses.append(response.status_code)
                self.arms.append(response.json().get("arm", "") if response.status_code == 200 else "")
                await asyncio.sleep(0.001)  # let shadow tasks and batch timers run
        await asyncio.gather(*list(self.app.router._shadow_tasks), return_exceptions=True)


def wait_for(condition: Callable[[], bool], what: str, traffic: Traffic) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert traffic.error is None, f"traffic failed: {traffic.error!r}"
        assert traffic.is_alive(), "traffic stopped early"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def logged(app: InProcessRouter):
    assert app.router.log.flush(timeout=30)
    return read_prediction_log(app.prediction_log).to_pandas()


def write_labels(app: InProcessRouter, seed: int) -> int:
    """The world answers every served job: the top-ranked provider arrives after the unbiased ETA
    plus noise; every candidate accepts or declines the offer at random. Known 30 minutes later."""
    rng = np.random.default_rng(seed)
    served = logged(app).query("role == 'served' and arm != 'fallback'")
    bias = np.where(served["dispatch_version"] == "dispatch-v2", BIAS_MINUTES, 0.0)
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


def test_worse_challenger_goes_to_canary_then_is_rolled_back_with_every_request_answered(tmp_path: Path, worse_challenger) -> None:
    with in_process_router(tmp_path, challenger=worse_challenger) as app:
        settings = Settings.model_validate({**app.settings.model_dump(mode="json"), "release": RELEASE, "slo": SLO})
        registry = ModelRegistry(settings.paths.registry)
        traffic = Traffic(app)
        traffic.start()
        try:
            # Shadow (the traffic file's default): the challenger scores champion jobs off the response path.
            wait_for(lambda: (logged(app)["role"] == "shadow").sum() >= 40 * 4, "40 shadowed jobs", traffic)
            situation, first = release_step(settings)
            assert situation.stage == "shadow" and situation.test.decision == "continue"  # no labels yet
            assert (first.action, first.code) == ("advance", "step_passed"), first.reason
            assert read_state(settings.paths.registry).challenger_weight == 0.05

            # The router picks the canary up by itself and serves some jobs from the challenger.
            wait_for(lambda: traffic.arms.count("challenger") >= 3, "challenger-served jobs", traffic)
            assert write_labels(app, seed=11) > 0
            situation, second = release_step(settings, as_of=datetime.now(UTC) + timedelta(hours=2))
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
            _, third = release_step(settings, as_of=datetime.now(UTC) + timedelta(hours=2))
            assert (third.action, third.code) == ("hold", "stopped")
        finally:
            traffic.stop.set()
            traffic.join(timeout=WAIT_S)
        assert traffic.error is None and not traffic.is_alive()

    assert len(traffic.statuses) > 100 and set(traffic.statuses) == {200}, "every request answered 200"
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
