"""The live view (``cluster/live_view.py``) over real ``ServingMetrics`` expositions and real operator files."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import start_http_server
from rich.console import Console

from cluster.config import Settings
from cluster.event_log import EventLog
from cluster.live_view import LiveView, Scrape, ScrapeError, ViewState, histogram_quantile, render, scrape, summarize
from contracts.events import Event
from contracts.scoring import SCORE_PATH
from serve_apps.metrics import ServingMetrics
from serve_apps.traffic_state import TrafficState, quarantine_group, write_state

LIVE = {"champion": "v-champion", "challenger": "v-challenger", "fallback": "v-fallback"}


def _replica() -> ServingMetrics:
    metrics = ServingMetrics(price_per_cpu_second=0.0)
    metrics.record_policy(1, 0.2, LIVE)
    return metrics


def _serve(metrics: ServingMetrics, n: int, seconds: float, arm: str, *, degraded: bool = False, code: int = 200) -> None:
    for _ in range(n):
        metrics.record_request(SCORE_PATH, code, seconds)
        if code == 200:
            metrics.record_scored(arm, LIVE[arm], 3, degraded=degraded)  # type: ignore[arg-type]


def _exposition(metrics: ServingMetrics) -> str:
    return metrics.exposition()[0].decode()


def test_summarize_reads_rates_quantiles_and_shares_from_the_deltas_between_two_scrapes() -> None:
    metrics = _replica()
    _serve(metrics, 50, 1.0, "champion")  # before the first scrape: must not count in the interval
    metrics.record_request("/metrics", 200, 0.001)  # another endpoint: not a score request
    first = Scrape.parse(_exposition(metrics), at=10.0)
    _serve(metrics, 60, 0.02, "champion")
    _serve(metrics, 5, 0.02, "champion", degraded=True)
    _serve(metrics, 15, 0.02, "challenger")
    _serve(metrics, 10, 0.2, "fallback", degraded=True)
    _serve(metrics, 10, 0.2, "champion", code=503)
    second = Scrape.parse(_exposition(metrics), at=12.5)
    state = summarize(first, second)
    assert state.interval_s == 2.5 and state.qps == pytest.approx(100 / 2.5)
    assert state.error_share == pytest.approx(0.10)
    # 80 requests in (0.01, 0.025], 20 in (0.15, 0.2]: histogram_quantile interpolates inside the bucket.
    assert state.p50_ms == pytest.approx(1000 * (0.01 + 0.015 * 50 / 80))
    assert state.p99_ms == pytest.approx(1000 * (0.15 + 0.05 * (99 - 80) / 20))
    assert state.scored == 90
    assert state.arm_share == pytest.approx({"champion": 65 / 90, "challenger": 15 / 90, "fallback": 10 / 90})
    assert state.degraded_share == pytest.approx(15 / 90)


def test_first_scrape_covers_everything_since_start_and_a_reset_counts_from_zero() -> None:
    metrics = _replica()
    _serve(metrics, 4, 0.02, "champion")
    since_start = summarize(None, Scrape.parse(_exposition(metrics), at=1.0))
    assert since_start.qps is None and since_start.scored == 4 and since_start.p99_ms is not None
    busy = Scrape.parse(_exposition(metrics), at=1.0)
    restarted = _replica()
    _serve(restarted, 3, 0.02, "challenger")
    after_restart = summarize(busy, Scrape.parse(_exposition(restarted), at=2.0))
    assert after_restart.qps == 3.0 and after_restart.arm_share["challenger"] == 1.0


def test_histogram_quantile_matches_prometheus_rules() -> None:
    cumulative = {0.1: 0.0, 0.2: 10.0, 0.5: 10.0, float("inf"): 12.0}
    assert histogram_quantile(0.5, cumulative) == pytest.approx(0.1 + 0.1 * 6 / 10)
    assert histogram_quantile(0.99, cumulative) == 0.5  # in the +Inf bucket: the highest finite bound
    assert histogram_quantile(0.5, {0.1: 0.0, float("inf"): 0.0}) is None


def _settings(tmp_path: Path) -> Settings:
    base = Settings()
    paths = base.paths.model_copy(update={"root": tmp_path, "registry": tmp_path / "registry", "events": tmp_path / "events",
                                          "data": tmp_path / "data", "reports": tmp_path / "reports"})
    return base.model_copy(update={"paths": paths})


def _page(region: int) -> Event:
    now = datetime(2026, 1, 5, 12, tzinfo=UTC)
    return Event(event_id=f"skew-{region}", kind="data_quality", severity="page", source="skew", subject="cell_traffic__speed_kmh",
                 segment={"region_id": region}, observed_at=now, detected_at=now, summary="served speed differs from the warehouse")


def test_live_view_scrapes_a_real_endpoint_and_shows_alerts_weight_and_quarantine(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    EventLog(settings.paths.events).append([_page(23)])
    write_state(settings.paths.registry, TrafficState(challenger_weight=0.25))
    quarantine_group(settings.paths.registry, "cell_traffic", (23,), incident_key="k", reason="unit bug")
    metrics = _replica()
    server, _ = start_http_server(0, addr="127.0.0.1", registry=metrics.registry)
    try:
        url = f"http://127.0.0.1:{server.server_port}/metrics"
        view = LiveView(settings, url)
        view.tick()
        _serve(metrics, 7, 0.02, "champion")
        state = view.tick()
        assert state.scored == 7 and state.arm_share["champion"] == 1.0 and state.qps is not None and state.error is None
        assert state.open_alerts == 1 and state.alerts[0].subject == "cell_traffic__speed_kmh" and state.alerts[0].segment == "region_id=23"
        assert state.challenger_weight == 0.25 and state.quarantined == ("cell_traffic (regions 23)",) and state.champion is None

        console = Console(record=True, width=140, force_terminal=False)
        with LiveView(settings, url, interval_s=0.05, console=console) as live:
            deadline = time.monotonic() + 60
            while live.state.interval_s is None and time.monotonic() < deadline:  # two scrapes done
                time.sleep(0.05)
        assert live.state.interval_s is not None
        text = console.export_text()
        assert "open alerts: 1" in text and "cell_traffic__speed_kmh" in text and "cell_traffic (regions 23)" in text
    finally:
        server.shutdown()
        server.server_close()


def test_an_unreachable_endpoint_is_shown_and_counted_not_raised(tmp_path: Path) -> None:
    with pytest.raises(ScrapeError, match="cannot read"):
        scrape("http://127.0.0.1:9/metrics", timeout_s=0.2)
    view = LiveView(_settings(tmp_path), "http://127.0.0.1:9/metrics")
    state = view.tick()
    assert view.failures == 1 and state.error and "cannot read" in state.error


def test_render_prints_every_field() -> None:
    state = ViewState(interval_s=1.0, qps=41.5, error_share=0.0, p50_ms=18.0, p99_ms=97.0,
                      arm_share={"champion": 0.7, "challenger": 0.2, "fallback": 0.1}, degraded_share=0.05, scored=40,
                      champion="v-champion", challenger="v-challenger", challenger_weight=0.25, quarantined=("cell_traffic (all regions)",))
    console = Console(record=True, width=140, force_terminal=False)
    console.print(render(state))
    text = console.export_text()
    for shown in ("41.5", "18 ms", "97 ms", "5.0%", "70% / 20% / 10%", "v-champion", "v-challenger at weight 25%",
                  "cell_traffic (all regions)", "open alerts: 0"):
        assert shown in text, shown
    Console(record=True).print(render(ViewState()))  # nothing known yet: prints dashes, no error
