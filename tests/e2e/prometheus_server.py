"""A real Prometheus server for e2e tests: loopback, a free port, its own data dir, killed after.

It loads the rules ``dispatchml alerts render`` generates for the given settings and scrapes the
app at ``settings.serving`` every second (evaluating rules every second too), so a test sees
samples and recorded series within seconds rather than the production 15 s.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from cluster import alert_rules
from cluster.config import Settings

PROMETHEUS = Path("/usr/bin/prometheus")


@dataclass
class PrometheusServer:
    url: str
    log: Path

    def api(self, path: str, **params: str) -> Any:
        r = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        r.raise_for_status()
        return r.json()["data"]

    def query(self, expr: str) -> list[dict]:
        """Instant vector result of ``expr``: ``[{"metric": {...}, "value": [ts, "text"]}, ...]``."""
        return self.api("query", query=expr)["result"]

    def wait_for(self, what: str, condition: Callable[[], Any], timeout: float = 90.0) -> Any:
        """Poll ``condition`` until it returns something truthy; fail naming ``what`` and the server log."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = condition()
            if found:
                return found
            time.sleep(0.5)
        raise AssertionError(f"Prometheus: {what} within {timeout:.0f} s; log tail: {self.log.read_text()[-2000:]}")


@contextmanager
def running_prometheus(settings: Settings, workdir: Path, port: int) -> Iterator[PrometheusServer]:
    """Start Prometheus on ``127.0.0.1:port`` with the generated rules, scraping the app of ``settings``; stop it after."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / alert_rules.RULES_FILE).write_text(alert_rules.to_yaml(alert_rules.render_rules(settings)))
    config = workdir / alert_rules.CONFIG_FILE
    config.write_text(
        alert_rules.to_yaml(alert_rules.render_prometheus_config(settings, scrape_interval="1s", evaluation_interval="1s"))
    )
    log = workdir / "prometheus.log"
    with log.open("w") as sink:
        server = subprocess.Popen(
            [str(PROMETHEUS), f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
            stdout=sink, stderr=subprocess.STDOUT,
        )
    prometheus = PrometheusServer(f"http://127.0.0.1:{port}", log)
    try:
        prometheus.wait_for("ready", lambda: _ready(prometheus.url, server), timeout=60)
        yield prometheus
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def _ready(url: str, server: subprocess.Popen) -> bool:
    if server.poll() is not None:
        raise AssertionError(f"prometheus exited with {server.returncode}")
    try:
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
