"""Outages on a running app: the Redis online store stopped and restarted, the champion replica
killed. Every request must still get a 200, flagged and counted when degraded.

Redis is a real ``redis-server`` on a loopback port this module starts; the app is the same one
``dispatchml serve up`` runs. Load is bounded: a few hundred requests.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from test_serving import ADMIN_TOKEN, PSEUDONYM_KEYS, App, _cli, _free_port, _push_live_features, build_demo_world, live_cell

from cluster.serve import connect

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REDIS_SERVER = Path("/usr/bin/redis-server")


def _start_redis(port: int) -> subprocess.Popen:
    server = subprocess.Popen(
        [str(REDIS_SERVER), "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            import redis

            if redis.Redis(host="127.0.0.1", port=port).ping():
                return server
        except Exception:  # noqa: BLE001 - not up yet
            time.sleep(0.1)
    server.terminate()
    raise RuntimeError("redis-server did not start")


@pytest.fixture(scope="module")
def redis_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[App, dict]]:
    if not REDIS_SERVER.exists():
        pytest.skip(f"{REDIS_SERVER} is not installed (./install.sh installs it)")
    workdir = tmp_path_factory.mktemp("outages")
    port = _free_port()
    state = {"port": port, "redis": _start_redis(port)}
    env = {**os.environ, "COLUMNS": "200", "DISPATCHML_ADMIN_TOKEN": ADMIN_TOKEN, "DISPATCHML_PSEUDONYM_KEYS": PSEUDONYM_KEYS,
           "DISPATCHML__SERVING__PORT": str(_free_port()), "DISPATCHML__FEATURES__ONLINE_STORE": "redis",
           "DISPATCHML__FEATURES__REDIS_CONNECTION": f"127.0.0.1:{port}"}
    settings = build_demo_world(workdir, env)
    config = workdir / "dispatchml.yaml"
    assert settings.features.online_store == "redis"
    live = live_cell(settings)
    providers = list(range(10, 16))
    state["push"] = lambda: _push_live_features(settings, int(live.cell_id), 0, providers, float(live.center_lat), float(live.center_lon))
    state["push"]()
    up = _cli(env, "serve", "up", "--timeout", "300")
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        app = App(f"http://127.0.0.1:{settings.serving.port}", settings, config, env,
                  (int(live.cell_id), 0, float(live.center_lat), float(live.center_lon)), (0.0, 0.0), providers)
        yield app, state
    finally:
        _cli(env, "serve", "down", timeout=120)
        state["redis"].terminate()


def _wait_for_champion(app: App, client: httpx.Client, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = app.score(client, app.request("warmup"))
        if r.status_code == 200 and r.json()["arm"] == "champion":
            return
        time.sleep(1)
    raise AssertionError("the champion never served the live region")


def _reasons(response: httpx.Response) -> set[str]:
    assert response.status_code == 200, response.text
    return {d["reason"] for d in response.json()["degradations"]}


def _score_until(app: App, client: httpx.Client, prefix: str, done: Callable[[set[str]], bool], timeout: float = 90) -> int:
    """Score jobs until the router's answers show ``done``: the refresh that notices a store
    change runs every 5 s in the background, later on a loaded machine. Every answer on the way
    must be a 200 too; returns how many it took."""
    deadline = time.monotonic() + timeout
    for i in itertools.count():
        if done(_reasons(app.score(client, app.request(f"{prefix}-{i}")))):
            return i + 1
        assert time.monotonic() < deadline, f"the router did not notice within {timeout:.0f} s"
        time.sleep(0.5)
    raise AssertionError("unreachable")


def test_feature_store_stopped_then_restarted(redis_app: tuple[App, dict]) -> None:
    app, state = redis_app
    with httpx.Client() as client:
        _wait_for_champion(app, client)
        state["redis"].terminate()
        state["redis"].wait(timeout=10)
        _score_until(app, client, "J-detect", lambda reasons: "store_unavailable" in reasons)
        during = [app.score(client, app.request(f"J-outage-{i}")) for i in range(40)]
        assert [r.status_code for r in during] == [200] * len(during)
        bodies = [r.json() for r in during]
        assert all(b["degraded"] for b in bodies)
        assert all("store_unavailable" in {d["reason"] for d in b["degradations"]} for b in bodies)
        assert all(b["arm"] == "champion" for b in bodies), "fresh last-known-good values keep the champion serving"
        metrics = client.get(app.url + "/metrics").text
        failures = [line for line in metrics.splitlines() if line.startswith("dispatchml_feature_refresh_failures_total")]
        assert failures and any(float(line.rsplit(" ", 1)[1]) > 0 for line in failures)
        assert 'dispatchml_degraded_requests_total{reason="store_unavailable"}' in metrics

        state["redis"] = _start_redis(state["port"])
        state["push"]()
        _score_until(app, client, "J-recover", lambda reasons: "store_unavailable" not in reasons)
        after = [app.score(client, app.request(f"J-recovered-{i}")).json() for i in range(10)]
        assert all("store_unavailable" not in {d["reason"] for d in b["degradations"]} for b in after)


def test_champion_replica_killed_every_request_still_answered(redis_app: tuple[App, dict]) -> None:
    import ray

    app, _ = redis_app
    connect()
    try:
        names = [a for a in ray.util.list_named_actors(all_namespaces=True) if "champion" in a["name"] and "REPLICA" in a["name"].upper()]
        assert names, "no champion replica actor found"
        with httpx.Client() as client:
            _wait_for_champion(app, client)
            for actor in names:
                ray.kill(ray.get_actor(actor["name"], namespace=actor["namespace"]), no_restart=False)
            codes, arms = [], []
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline and len(codes) < 400:
                r = app.score(client, app.request(f"J-kill-{len(codes)}"))
                codes.append(r.status_code)
                if r.status_code == 200:
                    arms.append(r.json()["arm"])
        assert codes.count(200) == len(codes), {c: codes.count(c) for c in set(codes)}
        assert "fallback" in arms, "while the champion restarted, the fallback should have answered"
    finally:
        ray.shutdown()
