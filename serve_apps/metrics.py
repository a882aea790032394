"""Prometheus metrics of the scoring service: one :class:`ServingMetrics` per router replica.

Names follow the Prometheus naming practice (https://prometheus.io/docs/practices/naming/):
a ``dispatchml_`` prefix, base units in the name (``_seconds``, ``_ratio``, ``_dollars``),
``_total`` on counters, ``_info`` on the constant-1 version gauge. Predicted ETAs are therefore
exported in seconds (``dispatchml_predicted_eta_seconds``, buckets 5-180 min x 60), although the
API takes minutes like the rest of the codebase.

Usage in the router replica::

    metrics = ServingMetrics(price_per_cpu_second=settings.price_per_cpu_second)
    metrics.record_policy(policy.generation, policy.challenger_weight,
                          {"champion": policy.champion, "challenger": policy.challenger, "fallback": fallback})
    # per score request, after answering:
    metrics.record_request(SCORE_PATH, 200, elapsed)
    metrics.record_scored(arm, version, region_id)
    metrics.record_prediction(arm, eta_minutes, p_accept)  # per candidate, or the top one
    metrics.record_features(group, max_age_s, nulls, values)  # per feature group
    metrics.record_cpu(time.process_time() - cpu_started)
    # GET /metrics:
    metrics.observe_log(dataclasses.asdict(writer.snapshot()))
    metrics.observe_breakers("feature_store", (s.state for s in breakers.stats().values()))
    body, content_type = metrics.exposition()

Each instance owns its own :class:`~prometheus_client.CollectorRegistry`, never the global
default one, so tests and several replicas in one process do not collide, and
:meth:`ServingMetrics.exposition` renders only this replica's series with ``generate_latest``.

Bounded labels (a series per label value costs memory here and in Prometheus forever)
    The API has no parameter for a job, member, provider or cell, so none of them can become a
    label. Every label value goes through a guard that maps what it does not accept to
    ``"other"`` and counts the refusal in ``dispatchml_rejected_metric_inputs_total{reason}``
    (``reason`` such as ``region_over_cap``; never the refused value, which may be PII). A
    number that cannot be observed (NaN, negative duration, ``p_accept`` outside [0, 1]) is
    counted there too (``duration_invalid``) and not observed, rather than raised into a request:

    * closed sets: ``arm`` and ``role`` (``contracts.scoring.Arm``), ``feature_group``
      (``contracts.features.FEATURE_GROUPS``), shadow ``outcome``, ``code`` (HTTP 100-599);
    * ``region``: an integer region id below 1000; the first ``max_regions`` distinct ids get
      their own series, later ones share ``"other"`` (so 10,000 regions make at most
      ``max_regions + 1``);
    * ``model_version``: only versions announced by :meth:`ServingMetrics.record_policy` (the
      few live ones), at most ``max_model_versions``; announcing more retires the oldest version
      that is no longer live and removes its series;
    * ``endpoint``, ``reason``, ``dependency``: lower-case words (``score``,
      ``/v1/dispatch/score``, ``feature_store_unavailable``) without a run of four digits, which
      every identifier and phone number has; at most ``max_label_values`` distinct values each.

Cost per call
    Label children are resolved once and cached, so a ``record_*`` call is a few dict lookups
    plus prometheus_client's locked increment. Measured on the 2-core dev machine (Python 3.11,
    prometheus_client 0.24), median of 5 x 100K calls, against a bare ``Counter.inc()`` of
    0.29 us in the same run:

    =====================================  =======================================
    ``record_request``                     1.5 us (counter + 13-bucket histogram)
    ``record_scored``                      1.2 us (two counters)
    ``record_prediction`` (per candidate)  2.1 us (two histograms)
    ``record_features`` (per group)        1.3 us (histogram + rolling window)
    ``record_cpu``                         0.6 us
    ``record_degraded`` and the like       0.6 us
    =====================================  =======================================

    A score request with six feature groups and its top prediction costs ~14 us (~25 us with
    predictions of six candidates), about 0.01-0.02 % of the 120 ms budget. ``exposition()`` is
    the only O(series) call: 3.4 ms for a fully populated replica (585 samples: 64 regions x 3
    arms, all groups, reasons and codes). The rolling windows (``dispatchml_feature_null_ratio``,
    the cost gauge) are O(1) to update and summed once per scrape instead of per request.

Feature age is a histogram, not a gauge of the last request
    A gauge holds whichever request came last before a scrape, one in thousands, so a minute of
    stale features between two scrapes may never show, and gauges of several replicas cannot be
    combined. A histogram counts every request, sums across replicas (``sum by (le)``) and
    answers the question alerts ask: the share of requests served with features older than the
    group's ``freshness_limit``. It costs one bucket search per (request, group).

One replica, one /metrics, and the multi-replica trade-off
    The router serves :meth:`ServingMetrics.exposition` on ``GET /metrics``. Through Ray Serve's
    HTTP proxy that route reaches *one replica chosen per request*, so with several replicas each
    scrape sees a different replica's counters, which Prometheus reads as resets: the route is
    only right for one replica. With several replicas, either

    * scrape every replica directly (each replica also serves this registry on its own port, and
      the targets are listed by file-based service discovery); Prometheus's ``instance`` label
      tells them apart, the per-call cost stays as above and custom collectors keep working; or
    * mirror into ``ray.serve.metrics`` (Ray's metrics export): Serve adds ``deployment`` and
      ``replica`` tags and each node's metrics agent exports all its replicas from one target,
      so no discovery is needed, but each record crosses into Ray's core worker (more per call
      than a prometheus_client increment), names get a ``ray_`` prefix, values arrive on the
      agent's report interval, and there are no custom collectors, so snapshot counters such as
      the prediction log's must be re-expressed.

    This module keeps the first shape; a Ray-export mirror would wrap the same ``record_*`` calls.
"""

from __future__ import annotations

import logging
import math
import re
import threading
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from numbers import Integral
from typing import Generic, TypeVar, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from contracts.features import FEATURE_GROUPS
from contracts.scoring import Arm
from serve_apps.breaker import BreakerState

logger = logging.getLogger(__name__)

PREFIX = "dispatchml"
OTHER = "other"
SHADOW_OUTCOMES: tuple[str, ...] = ("ok", "error", "timeout", "dropped")
ARMS: tuple[str, ...] = get_args(Arm)

#: Latency buckets around the 120 ms scoring budget; 0.12 is a bucket bound so the SLO ratio
#: ``le="0.12"`` / count is exact rather than interpolated.
REQUEST_DURATION_BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.12, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
ETA_BUCKETS_MINUTES: tuple[float, ...] = (5, 10, 15, 20, 25, 30, 40, 50, 60, 75, 90, 105, 120, 150, 180)
ETA_BUCKETS_SECONDS: tuple[float, ...] = tuple(60.0 * m for m in ETA_BUCKETS_MINUTES)
P_ACCEPT_BUCKETS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 21))
#: From pushed near-real-time groups (seconds to minutes) to daily batch groups (a day and more).
FEATURE_AGE_BUCKETS: tuple[float, ...] = (
    *(1.0, 5.0, 15.0, 30.0),
    *(60.0 * minutes for minutes in (1, 2, 5, 10, 30)),
    *(3600.0 * hours for hours in (1, 2, 4, 8, 16, 24, 30, 48, 72)),
)

#: Gauge value of ``dispatchml_breaker_state``; higher is worse, so a set reports its worst breaker.
BREAKER_STATE_VALUES: dict[BreakerState, int] = {BreakerState.CLOSED: 0, BreakerState.HALF_OPEN: 1, BreakerState.OPEN: 2}

#: ``PredictionLogWriter.snapshot()`` field (``dataclasses.asdict``) -> exported metric.
LOG_COUNTERS: dict[str, str] = {
    "rows_appended": "prediction_log_rows_appended",
    "rows_written": "prediction_log_rows_written",
    "rows_dropped": "prediction_log_rows_dropped",
    "rows_invalid": "prediction_log_rows_invalid",
    "write_errors": "prediction_log_write_errors",
    "files_committed": "prediction_log_files_committed",
}
LOG_GAUGES: dict[str, str] = {
    "backlog_rows": "prediction_log_backlog_rows",
    "last_flush_age_s": "prediction_log_last_flush_age_seconds",
}

# A lower-case word or path; the look-ahead refuses a run of 4 digits (ids, phones, dates).
_WORD = re.compile(r"^(?!.*\d{4})[a-z][a-z0-9_]{0,63}$")
_ENDPOINT = re.compile(r"^(?!.*\d{4})(?=.{1,64}$)/?[a-z][a-z0-9_.-]*(?:/[a-z][a-z0-9_.-]*)*$")
#: Region ids are small integers (the full-size world has 40); larger ones look like identifiers.
MAX_REGION_ID = 1000
_HTTP_CODES: dict[int, str] = {code: str(code) for code in range(100, 600)}


class MetricsConfigError(ValueError):
    """A ServingMetrics parameter is out of range; fix the router's metrics settings."""


class _Refusals:
    """Counts inputs refused by the guards, and logs each refusal reason once.

    The log line names the reason only: a refused value may be a member id or phone number.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._counter = Counter(
            f"{PREFIX}_rejected_metric_inputs",
            "Label values pooled into 'other' (cardinality and PII guards) and numbers not observed, by reason.",
            ["reason"],
            registry=registry,
        )
        self._children: dict[str, Counter] = {}
        self._lock = threading.Lock()

    def __call__(self, reason: str) -> str:
        child = self._children.get(reason)
        if child is None:
            with self._lock:
                first = reason not in self._children
                child = self._children.setdefault(reason, self._counter.labels(reason))
            if first:
                logger.warning("metrics: refused an input (%s): a label value goes to 'other', a number is not observed", reason)
        child.inc()
        return OTHER


class _Vocabulary:
    """The values one label may take, each admitted on first sight up to ``cap`` distinct ones.

    ``canonical`` returns the label text for an acceptable value or ``None``. Admitted values are
    cached, so the common case is one dict lookup; refused values are never cached, so the cache
    stays bounded by ``cap`` whatever the caller passes.
    """

    def __init__(self, label: str, cap: int, canonical: Callable[[object], str | None], refuse: _Refusals) -> None:
        self.label = label
        self.cap = cap
        self._canonical = canonical
        self._refuse = refuse
        self._admitted: dict[Hashable, str] = {}
        self._lock = threading.Lock()

    def __call__(self, value: object) -> str:
        try:
            text = self._admitted.get(value)  # type: ignore[arg-type]
        except TypeError:  # unhashable: certainly not a label value
            return self._refuse(f"{self.label}_invalid")
        return text if text is not None else self._admit(value)

    def _admit(self, value: object) -> str:
        text = self._canonical(value)
        if text is None:
            return self._refuse(f"{self.label}_invalid")
        with self._lock:
            if value not in self._admitted:
                if len(self._admitted) >= self.cap:
                    return self._refuse(f"{self.label}_over_cap")
                self._admitted[value] = text  # type: ignore[index]
            return self._admitted[value]  # type: ignore[index]


def _closed(values: Iterable[str]) -> Callable[[object], str | None]:
    allowed = frozenset(values)
    return lambda value: value if isinstance(value, str) and value in allowed else None


def _matching(pattern: re.Pattern[str]) -> Callable[[object], str | None]:
    return lambda value: value if isinstance(value, str) and pattern.match(value) else None


def _region_id(value: object) -> str | None:
    # int or numpy integer, never bool; negative ids (cells.OUTSIDE) are not regions, and four
    # digits are refused as in every other label (a phone number passed as an int).
    if isinstance(value, Integral) and not isinstance(value, bool) and 0 <= int(value) < MAX_REGION_ID:
        return str(int(value))
    return None


_Metric = TypeVar("_Metric", Counter, Gauge, Histogram)


class _Children(Generic[_Metric]):
    """A labelled metric's children, cached by label tuple: ``labels()`` costs ~1 us, a hit ~50 ns."""

    def __init__(self, metric: _Metric) -> None:
        self.metric = metric
        self._cache: dict[tuple[str, ...], _Metric] = {}

    def __call__(self, *labels: str) -> _Metric:
        child = self._cache.get(labels)
        if child is None:
            child = self._cache[labels] = self.metric.labels(*labels)
        return child

    def clear(self) -> None:
        self._cache.clear()
        self.metric.clear()

    def remove_where(self, position: int, value: str) -> None:
        """Drop every series whose label at ``position`` equals ``value`` (a retired version)."""
        for labels in [key for key in list(self._cache) if key[position] == value]:
            self._cache.pop(labels, None)
            self.metric.remove(*labels)


class _RollingRatio:
    """sum(numerators) / sum(denominators) over the last ``size`` observations.

    ``add`` writes two slots of a ring under a lock: O(1), no allocation. ``ratio`` sums the ring
    at scrape time, exactly (integers stay exact; floats are summed with ``math.fsum``), so no
    running sum drifts over a replica's lifetime.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._numerators = [0.0] * size
        self._denominators = [0.0] * size
        self._next = 0
        self._lock = threading.Lock()

    def add(self, numerator: float, denominator: float) -> None:
        with self._lock:
            slot = self._next
            self._numerators[slot] = numerator
            self._denominators[slot] = denominator
            self._next = (slot + 1) % self.size

    def ratio(self) -> float | None:
        with self._lock:
            numerators, denominators = list(self._numerators), list(self._denominators)
        total = math.fsum(denominators)
        return math.fsum(numerators) / total if total > 0 else None


class ServingMetrics:
    """The router replica's metrics. Every ``record_*`` is O(1); a label value or number it cannot
    use is counted in ``dispatchml_rejected_metric_inputs_total`` instead of raising into a request.

    ``price_per_cpu_second`` (dollars) turns CPU time into ``dispatchml_cost_per_1k_predictions_dollars``.
    ``window_requests`` is the length of the rolling windows behind that gauge and
    ``dispatchml_feature_null_ratio``. The caps bound the labels described in the module docstring.
    """

    def __init__(
        self,
        price_per_cpu_second: float,
        max_regions: int = 64,
        *,
        max_model_versions: int = 16,
        max_label_values: int = 32,
        window_requests: int = 1000,
    ) -> None:
        _require(
            math.isfinite(price_per_cpu_second) and price_per_cpu_second >= 0,
            f"price_per_cpu_second must be a finite number >= 0, got {price_per_cpu_second}",
        )
        _require(max_regions >= 1, f"max_regions must be >= 1, got {max_regions}")
        _require(
            max_model_versions >= len(ARMS), f"max_model_versions must be >= {len(ARMS)} (one per role), got {max_model_versions}"
        )
        _require(max_label_values >= 1, f"max_label_values must be >= 1, got {max_label_values}")
        _require(window_requests >= 1, f"window_requests must be >= 1, got {window_requests}")
        self.price_per_cpu_second = price_per_cpu_second
        self.max_regions = max_regions
        self.max_model_versions = max_model_versions
        self.window_requests = window_requests
        _use_in_process_values()
        self.registry = CollectorRegistry()
        registry = self.registry

        self._refuse = _Refusals(registry)
        feature_groups = tuple(g.name for g in FEATURE_GROUPS)
        self._arm = _Vocabulary("arm", len(ARMS), _closed(ARMS), self._refuse)
        self._role = _Vocabulary("role", len(ARMS), _closed(ARMS), self._refuse)
        self._outcome = _Vocabulary("outcome", len(SHADOW_OUTCOMES), _closed(SHADOW_OUTCOMES), self._refuse)
        self._feature_group = _Vocabulary("feature_group", len(feature_groups), _closed(feature_groups), self._refuse)
        self._region = _Vocabulary("region", max_regions, _region_id, self._refuse)
        self._endpoint = _Vocabulary("endpoint", max_label_values, _matching(_ENDPOINT), self._refuse)
        self._reason = _Vocabulary("reason", max_label_values, _matching(_WORD), self._refuse)
        self._dependency = _Vocabulary("dependency", max_label_values, _matching(_WORD), self._refuse)
        # Announced by record_policy only; insertion order = announcement order, for retirement.
        self._versions: dict[str, str] = {}
        self._live_versions: frozenset[str] = frozenset()
        self._policy_lock = threading.Lock()

        def counter(name: str, doc: str, labels: Iterable[str]) -> _Children[Counter]:
            return _Children(Counter(f"{PREFIX}_{name}", doc, list(labels), registry=registry))

        def histogram(name: str, doc: str, labels: Iterable[str], buckets: Iterable[float]) -> _Children[Histogram]:
            return _Children(Histogram(f"{PREFIX}_{name}", doc, list(labels), registry=registry, buckets=tuple(buckets)))

        def gauge(name: str, doc: str, labels: Iterable[str] = ()) -> _Children[Gauge]:
            return _Children(Gauge(f"{PREFIX}_{name}", doc, list(labels), registry=registry))

        self._requests = counter("requests", "HTTP requests answered, by endpoint and status code.", ["endpoint", "code"])
        self._request_duration = histogram(
            "request_duration_seconds", "Time to answer a request, by endpoint.", ["endpoint"], REQUEST_DURATION_BUCKETS
        )
        self._scored = counter(
            "scored_requests", "Score requests answered, by serving arm and model version.", ["arm", "model_version"]
        )
        self._region_scored = counter(
            "region_scored_requests",
            f"Score requests answered, by region (first {max_regions} regions, then 'other') and arm.",
            ["region", "arm"],
        )
        self._degraded_scored = counter(
            "degraded_scored_requests",
            "Score requests answered with at least one degradation (each request once, whatever its reasons), by arm.",
            ["arm"],
        )
        self._shadow = counter("shadow_scores", "Shadow scorings by the challenger, by outcome.", ["model_version", "outcome"])
        self._degraded = counter(
            "degraded_requests", "Requests served with degraded inputs (stale or missing features), by reason.", ["reason"]
        )
        self._fallback = counter("fallback_requests", "Requests served by the fallback model, by reason.", ["reason"])
        self._breaker_rejections = counter(
            "breaker_rejections", "Calls refused by an open or half-open circuit breaker.", ["dependency"]
        )
        self._breaker_state = gauge(
            "breaker_state", "Worst breaker state of the dependency: 0 closed, 1 half-open, 2 open.", ["dependency"]
        )
        self._open_breakers = gauge(
            "open_breakers", "Breakers of the dependency that are open (e.g. regions cut off).", ["dependency"]
        )
        self._feature_age = histogram(
            "feature_age_seconds",
            "Age of the oldest value of a feature group used by a request.",
            ["feature_group"],
            FEATURE_AGE_BUCKETS,
        )
        self._refresh_failures = counter(
            "feature_refresh_failures", "Failed refreshes of a feature group's online copy.", ["feature_group"]
        )
        self._eta = histogram(
            "predicted_eta_seconds", "Predicted ETA of scored candidates, by arm.", ["arm"], ETA_BUCKETS_SECONDS
        )
        self._p_accept = histogram(
            "predicted_p_accept_ratio", "Predicted probability that a candidate accepts, by arm.", ["arm"], P_ACCEPT_BUCKETS
        )
        self._cpu = Counter(
            f"{PREFIX}_cpu_seconds", "Process CPU time spent scoring (time.process_time deltas).", registry=registry
        )
        self._challenger_weight = Gauge(
            f"{PREFIX}_challenger_weight_ratio", "Share of jobs the traffic policy sends to the challenger.", registry=registry
        )
        self._policy_generation = Gauge(
            f"{PREFIX}_policy_generation", "Generation of the live traffic policy.", registry=registry
        )
        self._version_info = gauge("model_version_info", "1 for each live model version, by role.", ["role", "model_version"])

        self._cpu_window = _RollingRatio(window_requests)
        self._null_windows = {name: _RollingRatio(window_requests) for name in feature_groups}
        self._log_snapshot: Mapping[str, float] = {}
        registry.register(_SnapshotCollector(self))

    # -- the request path ----------------------------------------------------------------------

    def record_request(self, endpoint: str, code: int, duration_seconds: float) -> None:
        """One answered HTTP request (any endpoint, any status), with its wall-clock duration."""
        endpoint_label = self._endpoint(endpoint)
        code_label = _HTTP_CODES.get(code) if type(code) is int else None  # bool is not a status code
        if code_label is None:
            code_label = self._refuse("code_invalid")
        self._requests(endpoint_label, code_label).inc()
        if 0 <= duration_seconds < math.inf:  # False for NaN
            self._request_duration(endpoint_label).observe(duration_seconds)
        else:
            self._refuse("duration_invalid")

    def record_scored(self, arm: Arm, model_version: str, region: int, *, degraded: bool = False) -> None:
        """A score request answered by ``arm`` (``"fallback"`` included) with ``model_version``.

        ``region`` is the job's integer region id (``cells`` lookup); ``OUTSIDE`` counts as other.
        ``degraded`` says the answer had at least one degradation: counted once per request in
        ``dispatchml_degraded_scored_requests_total``, so the degraded *share* of requests is a
        ratio of two counters (``dispatchml_degraded_requests_total`` counts each reason apart,
        and a request with two reasons there counts twice).
        """
        arm_label = self._arm(arm)
        self._scored(arm_label, self._version(model_version)).inc()
        self._region_scored(self._region(region), arm_label).inc()
        if degraded:
            self._degraded_scored(arm_label).inc()

    def record_prediction(self, arm: Arm, eta_minutes: float, p_accept: float) -> None:
        """One candidate's prediction; call it per scored candidate (cost x candidates) or for the top one."""
        arm_label = self._arm(arm)
        if 0 <= eta_minutes < math.inf:
            self._eta(arm_label).observe(60.0 * eta_minutes)
        else:
            self._refuse("eta_invalid")
        if 0.0 <= p_accept <= 1.0:
            self._p_accept(arm_label).observe(p_accept)
        else:
            self._refuse("p_accept_invalid")

    def record_shadow(self, model_version: str, outcome: str) -> None:
        """A shadow scoring by ``model_version`` that ended ``ok``, ``error``, ``timeout`` or ``dropped``."""
        self._shadow(self._version(model_version), self._outcome(outcome)).inc()

    def record_degraded(self, reason: str) -> None:
        self._degraded(self._reason(reason)).inc()

    def record_fallback(self, reason: str) -> None:
        self._fallback(self._reason(reason)).inc()

    def record_breaker_rejection(self, dependency: str) -> None:
        """``breaker.allow()`` returned False for ``dependency`` (counted here, once, by the caller)."""
        self._breaker_rejections(self._dependency(dependency)).inc()

    def record_features(self, feature_group: str, max_age_seconds: float, null_values: int, total_values: int) -> None:
        """One request's use of a feature group: the oldest value's age and how many values were null.

        ``max_age_seconds`` is NaN when the request had no value of the group at all; that request
        shows in the null ratio only.
        """
        group = self._feature_group(feature_group)
        if 0 <= max_age_seconds < math.inf:
            self._feature_age(group).observe(max_age_seconds)
        elif max_age_seconds < 0:  # a pushed timestamp ahead of our clock: skew, counted, seen as fresh
            self._refuse("feature_age_negative")
            self._feature_age(group).observe(0.0)
        elif max_age_seconds == math.inf:
            self._refuse("feature_age_invalid")
        window = self._null_windows.get(group)
        if window is not None and 0 <= null_values <= total_values:
            window.add(null_values, total_values)
        elif window is not None:
            self._refuse("null_values_invalid")

    def record_cpu(self, cpu_seconds: float) -> None:
        """Process CPU seconds one score request consumed (a ``time.process_time()`` delta)."""
        if 0 <= cpu_seconds < math.inf:
            self._cpu.inc(cpu_seconds)
            self._cpu_window.add(cpu_seconds, 1)
        else:
            self._refuse("cpu_seconds_invalid")

    # -- off the request path ------------------------------------------------------------------

    def record_feature_refresh_failure(self, feature_group: str) -> None:
        self._refresh_failures(self._feature_group(feature_group)).inc()

    def observe_breakers(self, dependency: str, states: Iterable[BreakerState]) -> None:
        """Set the state gauges of ``dependency`` from all its breakers (one, or a ``BreakerSet``'s).

        Call it from the ``/metrics`` handler just before :meth:`exposition`, e.g.
        ``observe_breakers("feature_store", (s.state for s in breakers.stats().values()))``.
        """
        values = [BREAKER_STATE_VALUES[state] for state in states]
        label = self._dependency(dependency)
        self._breaker_state(label).set(max(values, default=0))
        self._open_breakers(label).set(values.count(BREAKER_STATE_VALUES[BreakerState.OPEN]))

    def record_policy(self, generation: int, challenger_weight: float, live_versions: Mapping[str, str | None]) -> None:
        """A new traffic policy is live: its generation, challenger weight and versions by role.

        ``live_versions`` maps ``champion``, ``challenger`` and ``fallback`` to version ids (None
        for no challenger). Only versions announced here are ever used as ``model_version``
        label values; keep announcing the fallback's version with every policy. Call it from
        ``__init__`` and ``reconfigure``.
        """
        live: dict[str, str] = {}
        for role, version in live_versions.items():
            role_label = self._role(role)
            if version is None or role_label == OTHER:
                continue
            if isinstance(version, str) and 0 < len(version) <= 128:
                live[role_label] = version
            else:
                self._refuse("model_version_invalid")
        with self._policy_lock:
            # In-flight requests may still report the previous policy's versions: keep both.
            protected = self._live_versions | frozenset(live.values())
            for version in live.values():
                self._announce(version, protected)
            self._live_versions = frozenset(live.values())
            self._version_info.clear()
            for role, version in live.items():
                self._version_info(role, self._versions.get(version, OTHER)).set(1)
        self._challenger_weight.set(challenger_weight)
        self._policy_generation.set(generation)

    def observe_log(self, snapshot: Mapping[str, float]) -> None:
        """The prediction log writer's counters: ``dataclasses.asdict(writer.snapshot())``.

        The values are reported as they are (custom collector), never added up, so observing
        the same snapshot twice does not double count. Call it from the ``/metrics`` handler
        just before :meth:`exposition` so the values are current.
        """
        missing = [key for key in (*LOG_COUNTERS, *LOG_GAUGES) if key not in snapshot]
        if missing:
            raise KeyError(f"prediction-log snapshot lacks {missing}; pass dataclasses.asdict(PredictionLogWriter.snapshot())")
        self._log_snapshot = {key: float(snapshot[key]) for key in (*LOG_COUNTERS, *LOG_GAUGES)}

    def exposition(self) -> tuple[bytes, str]:
        """The ``GET /metrics`` body and its content type (Prometheus text format 0.0.4)."""
        # generate_latest writes the classic text format (legacy names need no escaping), whose
        # content type is 0.0.4; every Prometheus 2.x and 3.x scraper parses it.
        return generate_latest(_WithoutCreated(self.registry)), CONTENT_TYPE_PLAIN_0_0_4

    # -- helpers -------------------------------------------------------------------------------

    def _version(self, model_version: object) -> str:
        try:
            label = self._versions.get(model_version)  # type: ignore[arg-type]
        except TypeError:
            label = None
        return label if label is not None else self._refuse("model_version_unannounced")

    def _announce(self, version: str, protected: frozenset[str]) -> None:
        """Admit ``version`` as a label value, retiring the oldest unprotected one beyond the cap."""
        if version in self._versions:
            return
        if len(self._versions) >= self.max_model_versions:
            retired = next((v for v in self._versions if v not in protected), None)
            if retired is None:
                self._refuse("model_version_over_cap")
                return
            self._retire(retired)
        self._versions[version] = version

    def _retire(self, version: str) -> None:
        del self._versions[version]
        self._scored.remove_where(1, version)
        self._shadow.remove_where(0, version)


class _SnapshotCollector(Collector):
    """Metrics computed at scrape time: rolling ratios, cost, and the prediction log snapshot."""

    def __init__(self, metrics: ServingMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> Iterator[Metric]:
        return self._families(with_samples=False)

    def collect(self) -> Iterator[Metric]:
        return self._families(with_samples=True)

    def _families(self, *, with_samples: bool) -> Iterator[Metric]:
        m = self._metrics
        nulls = GaugeMetricFamily(
            f"{PREFIX}_feature_null_ratio",
            f"Share of null feature values over the last {m.window_requests} requests, by group.",
            labels=["feature_group"],
        )
        cost = GaugeMetricFamily(
            f"{PREFIX}_cost_per_1k_predictions_dollars",
            f"Mean scoring CPU seconds per request over the last {m.window_requests} requests x price per CPU second x 1000.",
        )
        if with_samples:
            for group, window in m._null_windows.items():
                ratio = window.ratio()
                if ratio is not None:
                    nulls.add_metric([group], ratio)
            cpu_per_request = m._cpu_window.ratio()
            if cpu_per_request is not None:
                cost.add_metric([], cpu_per_request * m.price_per_cpu_second * 1000.0)
        yield nulls
        yield cost
        snapshot = m._log_snapshot if with_samples else {}
        for key, name in LOG_COUNTERS.items():
            family = CounterMetricFamily(f"{PREFIX}_{name}", f"Prediction log writer: {key.replace('_', ' ')} (monotonic).")
            if key in snapshot:
                family.add_metric([], snapshot[key])
            yield family
        for key, name in LOG_GAUGES.items():
            family = GaugeMetricFamily(f"{PREFIX}_{name}", f"Prediction log writer: {key.removesuffix('_s').replace('_', ' ')}.")
            if key in snapshot:
                family.add_metric([], snapshot[key])
            yield family


class _WithoutCreated:
    """The registry minus prometheus_client's ``*_created`` samples.

    In the classic text format each counter and histogram child also writes a ``<name>_created``
    timestamp, which Prometheus stores as one more gauge series: it doubles this replica's series
    for a value that only OpenMetrics scrapers use. Dropped here rather than with the
    process-wide ``disable_created_metrics()``, which would change every other registry in the
    process too.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for metric in self._registry.collect():  # fresh Metric objects on every collect
            created = metric.name + "_created"
            metric.samples = [sample for sample in metric.samples if sample.name != created]
            yield metric


def _use_in_process_values() -> None:
    """Keep this replica's metric values in its own memory.

    Importing Feast (``feast/metrics.py``) sets ``PROMETHEUS_MULTIPROC_DIR`` for the whole
    process, which makes prometheus_client store every value in shared mmap files keyed by
    metric name: two ``ServingMetrics`` in one process would then add into each other, and
    files pile up in /tmp. Our registries are per replica by design, so the value class is
    pinned to the in-process one before any metric is created (Feast's own metrics, which we
    do not serve, are unaffected in meaning).
    """
    if values.ValueClass is not values.MutexValue:
        values.ValueClass = values.MutexValue


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise MetricsConfigError(message)
