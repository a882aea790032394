"""The Prometheus metrics the model-quality monitor exports: names, types and labels, defined once.

The monitor service (drift, data quality, calibration, estimated performance, business KPIs)
does not exist yet; its Grafana dashboards do (``cluster/grafana``). This module is the contract
between them: the monitor must export exactly these series, and a unit test checks that every
dashboard query names only series the serving app's registry exposes, the SLO recording rules
record, or this list declares.

Naming follows ``serve_apps/metrics.py``: a ``dispatchml_monitor_`` prefix, base units in the
name, ``_total`` on counters. Labels are bounded sets only: ``region`` (integer ids, capped like
the serving metrics), ``line_of_business``, ``feature_group`` and ``feature`` (the catalogue in
``contracts/features.py``), ``model`` (``eta``, ``acceptance``), ``window`` (``5m`` ... ``30d``),
``cadence`` (``batch``, ``near_real_time``), ``slo``, ``detector``, ``outcome``; never a job,
member, provider or cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

PREFIX = "dispatchml_monitor"
MetricKind = Literal["gauge", "counter", "histogram"]


@dataclass(frozen=True)
class MonitorMetric:
    name: str
    kind: MetricKind
    labels: tuple[str, ...]
    doc: str

    def series_names(self) -> tuple[str, ...]:
        """The sample names Prometheus stores for this metric (``_total``; ``_bucket``/``_sum``/``_count``)."""
        if self.kind == "counter":
            return (f"{self.name}_total",)
        if self.kind == "histogram":
            return tuple(f"{self.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
        return (self.name,)


def _metric(name: str, kind: MetricKind, labels: tuple[str, ...], doc: str) -> MonitorMetric:
    return MonitorMetric(f"{PREFIX}_{name}", kind, labels, doc)


DRIFT: tuple[MonitorMetric, ...] = (
    _metric("feature_drift_psi", "gauge", ("feature_group", "feature", "region", "window"), "PSI of a feature vs its training reference."),
    _metric("feature_drift_detected", "gauge", ("feature_group", "feature", "region", "window"), "1 when the drift test rejects (BH-adjusted)."),
    _metric("prediction_drift_psi", "gauge", ("model", "region", "window"), "PSI of the served predictions vs the holdout's."),
    _metric("concept_drift_detections", "counter", ("model", "region", "detector"), "ADWIN / Page-Hinkley changes on matured error streams."),
    _metric("calibration_ece_ratio", "gauge", ("region", "window"), "Expected calibration error of p_accept on matured labels."),
    _metric("estimated_eta_mae_seconds", "gauge", ("region", "window"), "Label-free estimate of the ETA model's MAE."),
    _metric("matured_eta_mae_seconds", "gauge", ("region", "window"), "ETA MAE on matured labels (late: by prediction time)."),
)
DATA_QUALITY: tuple[MonitorMetric, ...] = (
    _metric("schema_violations", "counter", ("feature_group",), "Upstream rows refused for a schema mismatch."),
    _metric("feature_null_ratio", "gauge", ("feature_group", "region", "window"), "Share of null values upstream."),
    _metric("out_of_range_ratio", "gauge", ("feature_group", "region", "window"), "Share of values outside the catalogue range."),
    _metric("volume_ratio", "gauge", ("feature_group", "window"), "Rows in the window / rows in the same window a week earlier."),
    _metric("freshness_seconds", "gauge", ("feature_group", "cadence"), "Age of the newest upstream value, batch and near-real-time apart."),
)
BUSINESS: tuple[MonitorMetric, ...] = (
    _metric("member_wait_seconds", "histogram", ("region", "line_of_business"), "Request to provider arrival, completed jobs."),
    _metric("offers", "counter", ("region", "outcome"), "Offers to providers by outcome (accepted, declined, expired)."),
    _metric("reassignments", "counter", ("region",), "Jobs moved to another provider after an accepted offer."),
    _metric("jobs_completed", "counter", ("region", "line_of_business"), "Jobs completed (the denominators of the KPIs)."),
)
MODEL_QUALITY: tuple[MonitorMetric, ...] = (
    _metric("eta_interval_hit_ratio", "gauge", ("region", "window"), "Share of matured jobs whose arrival fell inside the promised interval."),
    _metric("top_rank_accepted_ratio", "gauge", ("region", "window"), "Share of matured jobs whose top-ranked provider accepted."),
    _metric("quality_burn_rate", "gauge", ("slo", "window"), "Error-budget burn rate of a model-quality SLO (eval.burn_rate)."),
    _metric("label_watermark_lag_seconds", "gauge", ("stream",), "Now minus the newest matured label the monitor has read."),
)
MONITOR_METRICS: tuple[MonitorMetric, ...] = DRIFT + DATA_QUALITY + BUSINESS + MODEL_QUALITY


def monitor_series_names() -> frozenset[str]:
    """Every sample name the monitor will export."""
    return frozenset(name for metric in MONITOR_METRICS for name in metric.series_names())
