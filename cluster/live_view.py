"""The operator's live terminal view of a running service: traffic, latency, arms, alerts, models.

Every second the view scrapes the router's ``/metrics`` (``serve_apps.metrics.ServingMetrics``,
Prometheus text format) and reads the operator's files (the event log's open incidents, the
registry's aliases, the traffic split and the feature-group quarantine), then redraws one rich
``Live`` panel:

- **QPS** of score requests, their **p50/p99 latency** and the share answered with an error
  status, over the last interval;
- the **arm split** (champion / challenger / fallback share of scored requests) and the
  **degraded share** (requests answered with at least one degradation) over the last interval;
- the **open alerts** (incidents whose last event is firing), pages first;
- the current **champion**, **challenger** and its traffic **weight**, and the **quarantined**
  feature groups with their regions.

Rates are deltas of counters between two scrapes, as Prometheus's ``rate`` computes them: a
counter that went down (a replica restarted, or the scrape reached another replica) counts from
zero. Latency quantiles are ``histogram_quantile`` over the bucket deltas: linear interpolation
inside the bucket that holds the rank, the highest finite bound for the ``+Inf`` bucket.

Through Ray Serve's proxy ``/metrics`` reaches one replica per request; with one router replica
(the demo) that is the whole service, with several it is one replica's view (see the module
docstring of ``serve_apps/metrics.py``).

Split into a pure :func:`summarize` (two parsed scrapes in, numbers out), :func:`scrape` (one
HTTP GET), :func:`render` (numbers in, a rich renderable out) and :class:`LiveView`, which runs
them on a background thread as a context manager around a demo's live phase.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client.parser import text_string_to_metric_families

from cluster.event_log import EventLog
from contracts.scoring import SCORE_PATH
from retrain.registry import ModelRegistry
from serve_apps.metrics import ARMS, PREFIX
from serve_apps.traffic_state import read_quarantine, read_state

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from cluster.config import Settings

log = logging.getLogger(__name__)

REQUESTS = f"{PREFIX}_requests_total"
DURATION_BUCKET = f"{PREFIX}_request_duration_seconds_bucket"
SCORED = f"{PREFIX}_scored_requests_total"
DEGRADED_SCORED = f"{PREFIX}_degraded_scored_requests_total"
#: Open alerts shown; the rest are counted.
MAX_ALERTS = 8
SCRAPE_TIMEOUT_S = 0.5


class ScrapeError(RuntimeError):
    """``/metrics`` could not be read; the message names the URL and why."""


@dataclass(frozen=True)
class Scrape:
    """One parsed exposition: every sample by (name, sorted labels), taken at monotonic time ``at``."""

    at: float
    samples: Mapping[tuple[str, tuple[tuple[str, str], ...]], float]

    @classmethod
    def parse(cls, text: str, at: float) -> Scrape:
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): float(s.value)
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        return cls(at, samples)


@dataclass(frozen=True)
class Alert:
    severity: str
    kind: str
    subject: str
    segment: str
    since: str


@dataclass(frozen=True)
class ViewState:
    """What the view shows. Rates need two scrapes: they are ``None`` after the first."""

    interval_s: float | None = None
    qps: float | None = None
    error_share: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    #: Share of scored requests by arm over the interval (all three arms, summing to 1 when any).
    arm_share: Mapping[str, float] = field(default_factory=dict)
    degraded_share: float | None = None
    scored: float = 0.0
    champion: str | None = None
    challenger: str | None = None
    challenger_weight: float | None = None
    quarantined: tuple[str, ...] = ()
    alerts: tuple[Alert, ...] = ()
    open_alerts: int = 0
    error: str | None = None


# -- pure: two scrapes in, numbers out -----------------------------------------------------------


def _deltas(previous: Scrape | None, current: Scrape) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Per series: current minus previous, or current where the counter went down (a reset) or is new."""
    if previous is None:
        return dict(current.samples)
    out = {}
    for key, value in current.samples.items():
        before = previous.samples.get(key, 0.0)
        out[key] = value - before if value >= before else value
    return out


def _sum(deltas: Mapping, name: str, **match: str) -> float:
    return sum(v for (n, labels), v in deltas.items() if n == name and all(dict(labels).get(k) == want for k, want in match.items()))


def _by(deltas: Mapping, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for (n, labels), value in deltas.items():
        if n == name:
            key = dict(labels).get(label, "")
            out[key] = out.get(key, 0.0) + value
    return out


def histogram_quantile(q: float, cumulative: Mapping[float, float]) -> float | None:
    """Prometheus's ``histogram_quantile``: ``q`` of a histogram given as cumulative counts per upper bound.

    The rank ``q * total`` falls in the first bucket whose cumulative count reaches it; the value
    is interpolated linearly between that bucket's lower and upper bound (the first bucket starts
    at 0). A rank in the ``+Inf`` bucket returns the highest finite bound. ``None`` without
    observations. (https://prometheus.io/docs/prometheus/latest/querying/functions/#histogram_quantile)
    """
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"q must be in [0, 1], got {q}")
    bounds = sorted(cumulative)
    if not bounds or cumulative[bounds[-1]] <= 0:
        return None
    rank = q * cumulative[bounds[-1]]
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank and count > below:
            if math.isinf(bound):
                return lower
            return lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower


def summarize(previous: Scrape | None, current: Scrape) -> ViewState:
    """The traffic part of the view from two scrapes of ``ServingMetrics`` (``previous`` None: since start).

    QPS and the error share are over score requests (``dispatchml_requests_total`` for the score
    endpoint); quantiles over their ``dispatchml_request_duration_seconds`` buckets; the arm split
    over ``dispatchml_scored_requests_total``; the degraded share is
    ``dispatchml_degraded_scored_requests_total`` over the scored requests.
    """
    deltas = _deltas(previous, current)
    interval = current.at - previous.at if previous is not None else None
    requests = _sum(deltas, REQUESTS, endpoint=SCORE_PATH)
    errors = sum(v for code, v in _codes(deltas).items() if not code.startswith("2"))
    buckets: dict[float, float] = {}
    for (name, labels), value in deltas.items():
        labels_of = dict(labels)
        if name == DURATION_BUCKET and labels_of.get("endpoint") == SCORE_PATH:
            bound = float(labels_of["le"])
            buckets[bound] = buckets.get(bound, 0.0) + value
    by_arm = _by(deltas, SCORED, "arm")
    scored = sum(by_arm.values())
    p50, p99 = histogram_quantile(0.5, buckets), histogram_quantile(0.99, buckets)
    return ViewState(
        interval_s=interval,
        qps=requests / interval if interval else None,
        error_share=errors / requests if requests else None,
        p50_ms=None if p50 is None else 1000.0 * p50,
        p99_ms=None if p99 is None else 1000.0 * p99,
        arm_share={arm: by_arm.get(arm, 0.0) / scored for arm in ARMS} if scored else {},
        degraded_share=_sum(deltas, DEGRADED_SCORED) / scored if scored else None,
        scored=scored,
    )


def _codes(deltas: Mapping) -> dict[str, float]:
    out: dict[str, float] = {}
    for (name, labels), value in deltas.items():
        labels_of = dict(labels)
        if name == REQUESTS and labels_of.get("endpoint") == SCORE_PATH:
            out[labels_of.get("code", "")] = out.get(labels_of.get("code", ""), 0.0) + value
    return out


# -- the operator's files --------------------------------------------------------------------------


def open_alerts(settings: Settings) -> list[Alert]:
    """Open incidents of the event log, pages first, then most recent first."""
    incidents = EventLog(settings.paths.events).incidents()
    order = {"page": 0, "ticket": 1, "info": 2}
    incidents.sort(key=lambda i: order.get(i.last.severity, 3))
    return [
        Alert(i.last.severity, i.first.kind, i.first.subject, ", ".join(f"{k}={v}" for k, v in i.first.segment.items()) or "global",
              f"{i.first.observed_at:%m-%d %H:%M:%S}")
        for i in incidents
    ]


def with_operator_state(state: ViewState, settings: Settings, max_alerts: int = MAX_ALERTS) -> ViewState:
    """``state`` plus the alerts (event log), the champion and challenger (registry), the
    challenger's weight (traffic split) and the quarantined groups, as the files say now."""
    registry_root = Path(settings.paths.registry)
    registry = ModelRegistry(registry_root)
    champion, challenger = registry.alias("dispatch", "champion"), registry.alias("dispatch", "challenger")
    alerts = open_alerts(settings)
    quarantined = tuple(
        f"{e.feature_group} ({'regions ' + ','.join(map(str, e.region_ids)) if e.region_ids else 'all regions'})"
        for e in read_quarantine(registry_root).entries
    )
    live_challenger = challenger.version if challenger and (champion is None or challenger.version != champion.version) else None
    return replace(
        state, champion=champion.version if champion else None, challenger=live_challenger,
        challenger_weight=read_state(registry_root).challenger_weight, quarantined=quarantined,
        alerts=tuple(alerts[:max_alerts]), open_alerts=len(alerts),
    )


# -- I/O and drawing -------------------------------------------------------------------------------


def default_metrics_url(settings: Settings) -> str:
    """The router's ``/metrics`` as ``dispatchml serve up`` binds it (loopback by default)."""
    from cluster.serve import base_url

    return base_url(settings) + "/metrics"


def scrape(url: str, timeout_s: float = SCRAPE_TIMEOUT_S) -> Scrape:
    """GET ``url`` (no proxy: the service is on this machine or this cluster's network) and parse it."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s) as response:
            text = response.read().decode("utf-8")
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        raise ScrapeError(f"cannot read {url}: {exc}") from exc
    try:
        return Scrape.parse(text, time.monotonic())
    except ValueError as exc:
        raise ScrapeError(f"cannot parse {url}: {exc}") from exc


def _fmt(value: float | None, pattern: str) -> str:
    return "–" if value is None else format(value, pattern)


def render(state: ViewState) -> RenderableType:
    """The view as one rich renderable: a traffic row, the models, the open alerts."""
    from rich.console import Group
    from rich.panel import Panel
    from rich.table import Table

    traffic = Table.grid(padding=(0, 3))
    for _ in range(6):
        traffic.add_column(justify="right")
    traffic.add_row("[b]QPS", "[b]p50", "[b]p99", "[b]errors", "[b]degraded", "[b]arms  champion / challenger / fallback")
    arms = " / ".join(f"{state.arm_share.get(arm, 0.0):.0%}" for arm in ARMS) if state.arm_share else "–"
    traffic.add_row(
        _fmt(state.qps, ".1f"), f"{_fmt(state.p50_ms, '.0f')} ms", f"{_fmt(state.p99_ms, '.0f')} ms",
        _fmt(state.error_share, ".1%"), _fmt(state.degraded_share, ".1%"), arms,
    )
    models = Table.grid(padding=(0, 2))
    models.add_column(style="bold")
    models.add_column()
    models.add_row("champion", state.champion or "none")
    models.add_row("challenger", f"{state.challenger} at weight {_fmt(state.challenger_weight, '.0%')}" if state.challenger else "none")
    models.add_row("quarantined", "; ".join(state.quarantined) or "none")
    alerts = Table(box=None, show_edge=False, pad_edge=False)
    for column in ("severity", "kind", "subject", "segment", "since"):
        alerts.add_column(column)
    colours = {"page": "bold red", "ticket": "yellow", "info": "cyan"}
    for alert in state.alerts:
        alerts.add_row(f"[{colours.get(alert.severity, 'white')}]{alert.severity}", alert.kind, alert.subject, alert.segment, alert.since)
    more = state.open_alerts - len(state.alerts)
    parts: list[RenderableType] = [Panel(traffic, title="traffic" + (f" (last {state.interval_s:.1f} s)" if state.interval_s else "")),
                                   Panel(models, title="models")]
    title = f"open alerts: {state.open_alerts}" + (f" ({more} more not shown)" if more > 0 else "")
    parts.append(Panel(alerts if state.alerts else "none", title=title))
    if state.error:
        parts.append(f"[red]{state.error}")
    return Group(*parts)


class LiveView:
    """The live view on a background thread: ``with LiveView(settings, url): ...`` redraws every second.

    Each :meth:`tick` scrapes, summarizes against the previous scrape, adds the operator's
    state and redraws. A failed scrape or file read is shown in the view and counted in
    ``failures`` (logged once per kind); the next tick tries again.
    """

    def __init__(self, settings: Settings, metrics_url: str | None = None, *, interval_s: float = 1.0, console: Console | None = None) -> None:
        self.settings = settings
        self.metrics_url = metrics_url or default_metrics_url(settings)
        self.interval_s = interval_s
        self.console = console
        self.state = ViewState()
        self.failures = 0
        self._previous: Scrape | None = None
        self._logged: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._live = None

    def tick(self) -> ViewState:
        """One scrape and redraw; returns what is shown."""
        error = None
        try:
            current = scrape(self.metrics_url)
            state = summarize(self._previous, current)
            self._previous = current
        except ScrapeError as exc:
            state, error = replace(self.state, error=None), str(exc)
        try:
            state = with_operator_state(state, self.settings)
        except Exception as exc:  # noqa: BLE001 - a half-written file must not end the view; shown and counted
            error = f"cannot read the operator state: {type(exc).__name__}: {exc}"
        if error:
            self._fail(error)
        self.state = replace(state, error=error)
        if self._live is not None:
            self._live.update(render(self.state), refresh=True)
        return self.state

    def _fail(self, error: str) -> None:
        self.failures += 1
        kind = error.split(":")[0]
        if kind not in self._logged:
            self._logged.add(kind)
            log.warning("live view: %s (shown in the view; retried every %.1f s)", error, self.interval_s)

    def start(self) -> LiveView:
        from rich.live import Live

        self._live = Live(render(self.state), console=self.console, auto_refresh=False, transient=False)
        self._live.start()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="live-view", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while True:
            self.tick()
            if self._stop.wait(self.interval_s):
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._live is not None:
            self._live.stop()
            self._live = None

    def __enter__(self) -> LiveView:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

