"""The scoring service running for real: Ray Serve on loopback, Feast on SQLite, a trained registry.

One module-scoped app (started with ``dispatchml serve up``, stopped with ``serve down``) on a
small world the demo built; near-real-time features are pushed through Feast for the jobs the
tests send. Requests are bounded in count and run against 127.0.0.1 only. One test adds a real
Prometheus server (``prometheus_server.py``) scraping the app with the generated SLO rules.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_server import PROMETHEUS, PrometheusServer, running_prometheus
from scipy.stats import binomtest

from cluster.config import Settings, load_settings
from contracts.features import group
from contracts.scoring import SCORE_PATH, ScoreRequest, ScoreResponse
from contracts.warehouse import world_path
from retrain.ranking import RankingPolicy
from retrain.registry import ModelRegistry, VersionSpec
from serve_apps.cells import CellIndex

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

DISPATCHML = str(Path(sys.executable).with_name("dispatchml"))
ADMIN_TOKEN = "e2e-admin-token-7f3a"
PSEUDONYM_KEYS = "k1:ZTJlLXBzZXVkb255bS1rZXktMDAwMDAwMDAwMDAwMDAwMDAwMDA="
MEMBER_NAME, MEMBER_PHONE = "Zelda Quintero-Fakename", "+1-555-0199-7788"
MEMBER_OFFSET = 0.0031337


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class App:
    url: str
    settings: Settings
    config: Path
    env: dict[str, str]
    live_cell: tuple[int, int, float, float]
    dead_location: tuple[float, float]
    providers: list[int]

    def request(self, job_id: str, *, location: tuple[float, float] | None = None, member: str = "M000000042") -> dict:
        # The member stands off the cell centre (where test providers are pushed), so the exact
        # coordinates are a distinctive needle for the PII scan.
        lat, lon = location or (self.live_cell[2] + MEMBER_OFFSET, self.live_cell[3] - MEMBER_OFFSET)
        return {
            "job_id": job_id,
            "requested_at": datetime.now(UTC).isoformat(),
            "line_of_business": "insurer",
            "service_type": "tow",
            "vehicle": {"vehicle_class": "suv"},
            "location": {"lat": lat, "lon": lon},
            "member": {"member_id": member, "name": MEMBER_NAME, "phone": MEMBER_PHONE},
            "candidates": [{"provider_id": p} for p in self.providers],
        }

    def score(self, client: httpx.Client, body: dict) -> httpx.Response:
        return client.post(self.url + SCORE_PATH, json=body, timeout=10)


def _cli(env: dict[str, str], *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([DISPATCHML, *args], capture_output=True, text=True, env=env, timeout=timeout, check=False)


def _register_challenger(registry: ModelRegistry) -> str:
    """A second dispatch version: same models, a much larger re-offer delay, so ranks can differ."""
    champion = registry.metadata("dispatch", "champion")
    spec = VersionSpec.model_validate(
        {**champion.model_dump(include=set(VersionSpec.model_fields)), "parent_version": champion.version,
         "hyperparameters": {"reoffer_delay_minutes": 45.0}, "lineage": {"trigger": "e2e challenger"}}
    )
    version = registry.register(spec, RankingPolicy(reoffer_delay_minutes=45.0).save).version
    registry.set_alias("dispatch", "challenger", version, moved_by="e2e", reason="challenger for split tests")
    return version


def _push_live_features(settings: Settings, cell: int, region: int, providers: list[int], lat: float, lon: float) -> None:
    from feast.data_source import PushMode

    from cluster.feature_store import get_store

    store = get_store(settings)
    now = pd.Timestamp(datetime.now(UTC))

    def push(name: str, keys: list[int], overrides: dict) -> None:
        g = group(name)
        frame = pd.DataFrame({g.join_key: keys, "event_timestamp": now, "created_timestamp": now})
        for f in g.features:
            frame[f] = 1.0
        for key, value in overrides.items():
            frame[key] = value
        store.push(f"{name}_push", frame, to=PushMode.ONLINE)

    push("cell_traffic", [cell], {"speed_kmh": 40.0, "traffic_index": 1.3})
    push("region_load", [region], {})
    push("provider_status", providers, {"provider_lat": lat + np.arange(len(providers)) * 0.01, "provider_lon": lon, "queue_depth": 0.0, "on_shift": 1.0})


def build_demo_world(workdir: Path, env: dict[str, str]) -> Settings:
    """A small trained world (the demo, shrunk); ``env`` is pointed at its settings file."""
    demo = _cli(env, "demo", "--workdir", str(workdir), "--days", "21", "--events-per-day", "15000",
                "--cells", "900", "--regions", "4", "--providers", "3000", "--no-live")
    assert demo.returncode == 0, demo.stdout[-2000:] + demo.stderr[-2000:]
    env["DISPATCHML_CONFIG"] = str(workdir / "dispatchml.yaml")
    return load_settings(workdir / "dispatchml.yaml", environ=env)


def live_cell(settings: Settings) -> pd.Series:
    """A cell in the middle of region 0, where the tests push live features."""
    table = pd.read_parquet(world_path(settings.paths.data, "cells"))
    region = table[table.region_id == 0]
    return region.iloc[len(region) // 2]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[App]:
    workdir = tmp_path_factory.mktemp("serving")
    env = {**os.environ, "COLUMNS": "200", "DISPATCHML_ADMIN_TOKEN": ADMIN_TOKEN, "DISPATCHML_PSEUDONYM_KEYS": PSEUDONYM_KEYS,
           "DISPATCHML__SERVING__PORT": str(_free_port())}
    settings = build_demo_world(workdir, env)
    config = workdir / "dispatchml.yaml"
    _register_challenger(ModelRegistry(settings.paths.registry))
    cells = CellIndex.from_parquet(world_path(settings.paths.data, "cells"))
    table = pd.read_parquet(world_path(settings.paths.data, "cells"))
    live = live_cell(settings)
    dead = table[table.region_id == table.region_id.max()].iloc[0]
    providers = list(range(10, 16))
    assert cells.locate(float(live.center_lat), float(live.center_lon)) == (int(live.cell_id), 0)
    _push_live_features(settings, int(live.cell_id), 0, providers, float(live.center_lat), float(live.center_lon))
    up = _cli(env, "serve", "up", "--timeout", "300")
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        url = f"http://127.0.0.1:{settings.serving.port}"
        yield App(url, settings, config, env, (int(live.cell_id), 0, float(live.center_lat), float(live.center_lon)),
                  (float(dead.center_lat), float(dead.center_lon)), providers)
    finally:
        _cli(env, "serve", "down", timeout=120)


@pytest.fixture(scope="module")
def client(app: App) -> Iterator[httpx.Client]:
    with httpx.Client() as c:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the cache reloads near-real-time groups every 5 s
            r = app.score(c, app.request("warmup-1"))
            if r.status_code == 200 and r.json()["arm"] != "fallback":
                break
            time.sleep(1)
        yield c


def _admin(app: App, client: httpx.Client, path: str, body: dict, token: str | None = ADMIN_TOKEN) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token is not None else {}
    return client.post(app.url + path, json=body, headers=headers, timeout=10)


def test_a_job_with_live_features_is_scored_by_the_champion(app: App, client: httpx.Client) -> None:
    r = app.score(client, app.request("J-e2e-champion"))
    assert r.status_code == 200, r.text
    body = ScoreResponse.model_validate(r.json())
    assert body.arm == "champion"
    assert {"dispatch", "eta", "acceptance"} <= set(body.model_versions)
    assert sorted(c.rank for c in body.candidates) == list(range(1, len(app.providers) + 1))
    assert all(c.eta_low <= c.eta_minutes <= c.eta_high and 0 <= c.p_accept <= 1 for c in body.candidates)


def test_a_region_without_live_features_is_answered_by_the_fallback_and_flagged(app: App, client: httpx.Client) -> None:
    r = app.score(client, app.request("J-e2e-dead-region", location=app.dead_location))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["arm"] == "fallback" and body["degraded"] is True
    assert {d["component"] for d in body["degradations"]} >= {"cell_traffic"}
    assert "fallback" in body["model_versions"]


@pytest.mark.parametrize(
    ("mutate", "status", "field"),
    [
        (lambda b: b.update(candidates=[]), 422, "candidates"),
        (lambda b: b["candidates"].append(dict(b["candidates"][0])), 422, "candidates"),
        (lambda b: b.update(line_of_business="spaceship"), 422, "line_of_business"),
        (lambda b: b["location"].update(lat="north"), 422, "location.lat"),
        (lambda b: b.update(requested_at=(datetime.now(UTC) + timedelta(days=30)).isoformat()), 422, "requested_at"),
        (lambda b: b.update(requested_at=(datetime.now(UTC) - timedelta(days=30)).isoformat()), 422, "requested_at"),
        (lambda b: b.update(surprise=1), 422, "surprise"),
        (lambda b: b.update(candidates=[{"provider_id": i} for i in range(10_000)]), 413, None),
        (lambda b: b["member"].update(name="x" * 100_000), 413, None),
        (lambda b: b.update(location={"lat": 0.0, "lon": 0.0}), 422, "location"),
    ],
)
def test_invalid_requests_get_a_4xx_naming_the_field(app: App, client: httpx.Client, mutate, status: int, field: str | None) -> None:
    body = app.request("J-e2e-bad")
    mutate(body)
    r = app.score(client, body)
    assert r.status_code == status, r.text
    if field is not None:
        assert field in r.text
    assert MEMBER_NAME not in r.text and MEMBER_PHONE not in r.text


@pytest.mark.parametrize("raw", [b"{not json", b"[]", b'{"job_id": NaN}', b"", b'{"lat": Infinity}'])
def test_malformed_bodies_are_4xx_never_5xx(app: App, client: httpx.Client, raw: bytes) -> None:
    r = client.post(app.url + SCORE_PATH, content=raw, headers={"content-type": "application/json"}, timeout=10)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)


def test_openapi_documents_the_score_endpoint_with_a_valid_example(app: App, client: httpx.Client) -> None:
    doc = client.get(app.url + "/openapi.json").json()
    post = doc["paths"][SCORE_PATH]["post"]
    example = post["requestBody"]["content"]["application/json"]["example"]
    ScoreRequest.model_validate(example)
    assert {"200", "422"} <= set(post["responses"])
    assert {"/healthz", "/readyz", "/metrics"} <= set(doc["paths"])


def test_metrics_have_a_latency_bucket_at_the_120ms_budget(app: App, client: httpx.Client) -> None:
    text = client.get(app.url + "/metrics").text
    assert 'dispatchml_request_duration_seconds_bucket{endpoint="/v1/dispatch/score",le="0.12"}' in text
    assert "dispatchml_scored_requests_total" in text
    assert MEMBER_PHONE not in text and "M000000042" not in text


def _listening_addresses(port: int) -> list[str]:
    """Local addresses of TCP sockets listening on ``port``, from /proc/net/tcp{,6} (state 0A)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:
                raw = bytes.fromhex(address)
                # /proc prints each 32-bit word in host (little-endian) order.
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.append(socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, words))
    return found


def test_the_service_listens_on_loopback_only(app: App, client: httpx.Client) -> None:
    addresses = _listening_addresses(app.settings.serving.port)
    assert addresses, f"nothing listens on port {app.settings.serving.port}"
    assert set(addresses) <= {"127.0.0.1", "::1", "::ffff:127.0.0.1"}, addresses


@pytest.fixture
def prometheus(app: App, tmp_path: Path) -> Iterator[PrometheusServer]:
    """A Prometheus server scraping the app for one test, stopped right after it."""
    if not PROMETHEUS.exists():
        pytest.skip(f"{PROMETHEUS} is not installed (./install.sh installs it)")
    with running_prometheus(app.settings, tmp_path / "prometheus", _free_port()) as server:
        yield server


def test_prometheus_ingests_the_request_counter_and_evaluates_the_slo_rules(
    app: App, client: httpx.Client, prometheus: PrometheusServer
) -> None:
    score_requests = f'sum(dispatchml_requests_total{{endpoint="{SCORE_PATH}"}})'
    # Scraped once before the requests, so the counter rises inside every rate() window.
    prometheus.wait_for("a first scrape of the app", lambda: prometheus.query(score_requests))
    for i in range(20):
        assert app.score(client, app.request(f"J-prometheus-{i}")).status_code == 200
    # No score request follows until this test ends, so the app's own counter is the target.
    served = sum(
        sample.value for family in text_string_to_metric_families(client.get(app.url + "/metrics").text) for sample in family.samples
        if sample.name == "dispatchml_requests_total" and sample.labels["endpoint"] == SCORE_PATH
    )
    assert served >= 20
    prometheus.wait_for(f"{score_requests} == {served}", lambda: [r for r in prometheus.query(score_requests) if float(r["value"][1]) == served])
    def recorded(slo: str) -> list[float]:  # NaN until a scrape with the new requests is inside the window
        values = [float(r["value"][1]) for r in prometheus.query(f'dispatchml:slo_errors:ratio_rate5m{{slo="{slo}"}}')]
        return [v for v in values if not math.isnan(v)]

    assert prometheus.wait_for("the availability error ratio recorded", lambda: recorded("availability")) == [0.0]  # 200s and 4xx only
    latency = prometheus.wait_for("the latency error ratio recorded", lambda: recorded("latency"))
    assert 0.0 <= latency[0] <= 1.0  # how many were slower than 120 ms depends on the machine's load

    def rules_evaluated() -> list[dict]:
        rules = [rule for group in prometheus.api("rules")["groups"] for rule in group["rules"]]
        return rules if rules and all(r["health"] == "ok" for r in rules) else []

    rules = prometheus.wait_for("every rule evaluated without error", rules_evaluated)
    assert {r["name"] for r in rules if r["type"] == "alerting"} == {
        "ScoreAvailabilityBudgetBurnPage", "ScoreAvailabilityBudgetBurnTicket", "ScoreLatencyBudgetBurnPage", "ScoreLatencyBudgetBurnTicket"
    }
    assert not prometheus.query('ALERTS{slo="availability"}'), "no 5xx, yet an availability alert"


def test_admin_rejects_missing_and_wrong_tokens(app: App, client: httpx.Client) -> None:
    assert _admin(app, client, "/v1/admin/traffic", {"challenger_weight": 0.5}, token=None).status_code == 401
    assert _admin(app, client, "/v1/admin/traffic", {"challenger_weight": 0.5}, token="wrong").status_code == 401
    assert _admin(app, client, "/v1/admin/rollback", {}, token="wrong").status_code == 401


def test_split_is_sticky_and_in_proportion(app: App, client: httpx.Client) -> None:
    r = _admin(app, client, "/v1/admin/traffic", {"challenger_weight": 0.5, "shadow": False, "reason": "e2e split"})
    assert r.status_code == 200, r.text
    time.sleep(1.5)  # replicas poll the policy every second
    jobs = [f"J-split-{i}" for i in range(160)]
    first = {j: app.score(client, app.request(j)).json()["arm"] for j in jobs}
    again = {j: app.score(client, app.request(j)).json()["arm"] for j in jobs}
    # A response answered by the fallback (a model call that missed its deadline) says nothing
    # about the assignment; the router's feature refresh can stall a replica briefly (see README).
    both = [j for j in jobs if "fallback" not in (first[j], again[j])]
    assert len(both) >= 0.9 * len(jobs), f"{len(jobs) - len(both)} of {len(jobs)} jobs fell back"
    assert {j: first[j] for j in both} == {j: again[j] for j in both}, "the same job must keep its arm"
    challenger = sum(first[j] == "challenger" for j in both)
    assert {first[j] for j in both} <= {"champion", "challenger"}
    assert binomtest(challenger, len(both), 0.5).pvalue > 1e-3, challenger


def test_shadow_never_changes_a_response(app: App, client: httpx.Client) -> None:
    def scores(shadow: bool) -> dict[str, dict]:
        assert _admin(app, client, "/v1/admin/traffic", {"challenger_weight": 0.0, "shadow": shadow}).status_code == 200
        time.sleep(1.5)
        out = {}
        for i in range(20):
            body = app.score(client, app.request(f"J-shadow-{i}")).json()
            out[f"J-shadow-{i}"] = {"arm": body["arm"], "candidates": body["candidates"], "versions": body["model_versions"]}
        return out

    with_shadow, without = scores(shadow=True), scores(shadow=False)
    # Compare what the champion answered; a fallback on either side is a missed deadline, not shadow.
    both = [j for j in with_shadow if with_shadow[j]["arm"] == without[j]["arm"] == "champion"]
    assert len(both) >= 15, f"only {len(both)} of 20 jobs were champion-served in both runs"
    assert {j: with_shadow[j] for j in both} == {j: without[j] for j in both}


def test_rollback_and_traffic_change_under_load_drop_nothing(app: App, client: httpx.Client) -> None:
    def one(i: int) -> int:
        with httpx.Client() as c:
            return app.score(c, app.request(f"J-load-{i}")).status_code

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(one, i) for i in range(240)]
        time.sleep(0.3)
        assert _admin(app, client, "/v1/admin/traffic", {"challenger_weight": 0.25}).status_code == 200
        rolled = _admin(app, client, "/v1/admin/rollback", {"family": "dispatch", "alias": "challenger", "reason": "e2e"})
        assert rolled.status_code in (200, 409), rolled.text
        codes = [f.result(timeout=60) for f in futures]
    assert codes.count(200) == len(codes), {c: codes.count(c) for c in set(codes)}


def _modified_since(path: Path, since: float) -> bool:
    try:
        return path.is_file() and path.stat().st_mtime >= since
    except FileNotFoundError:  # a log rotated away meanwhile
        return False


def _read_if_present(path: Path) -> bytes | None:
    try:
        return path.read_bytes() if path.is_file() and path.stat().st_size < 200_000_000 else None
    except FileNotFoundError:
        return None


def test_after_shutdown_every_served_request_is_logged_once_and_no_pii_is_written(app: App, client: httpx.Client) -> None:
    from serve_apps.prediction_log import read_prediction_log

    served = []
    for i in range(25):
        r = app.score(client, app.request(f"J-log-{i}", member="M000000777"))
        assert r.status_code == 200
        served.append(r.json()["request_id"])
    down = _cli(app.env, "serve", "down", timeout=120)
    assert down.returncode == 0, down.stderr[-2000:]
    table = read_prediction_log(Path(app.settings.paths.root) / "prediction_log").to_pandas()
    rows = table[table.request_id.isin(served) & (table.role == "served")]
    assert sorted(rows.request_id.unique()) == sorted(served)
    assert (rows.groupby("request_id").size() == len(app.providers)).all()
    # No raw member identity or coordinates in anything the service wrote.
    coordinates = (app.live_cell[2] + MEMBER_OFFSET, app.live_cell[3] - MEMBER_OFFSET)
    needles = [b"M000000777", b"M000000042", MEMBER_NAME.encode(), MEMBER_PHONE.encode()]
    needles += [f"{c:.6f}".encode() for c in coordinates] + [struct.pack(f, c) for c in coordinates for f in ("<d", "<f")]
    # Everything under the root (prediction log, registry and its history, reports, feature
    # store) and Serve's logs since the world was built (router replicas, proxy, controller).
    since = app.config.stat().st_mtime
    serve_logs = [p for p in Path("/tmp/ray").glob("session_*/logs/serve/*") if _modified_since(p, since)]
    for path in [*Path(app.settings.paths.root).rglob("*"), *serve_logs]:
        blob = _read_if_present(path) if "raw" not in path.parts else None
        assert blob is None or not any(n in blob for n in needles), f"PII found in {path}"
    assert json.dumps(list(table.columns)).count("member_id") == 0
    # Decoded too: zstd-compressed parquet would hide a coordinate from the byte scan.
    floats = table.select_dtypes("number").to_numpy(dtype=np.float64, na_value=np.nan)
    assert not any(np.isclose(floats, c, rtol=0, atol=1e-5).any() for c in coordinates), "a member coordinate is in the log"
