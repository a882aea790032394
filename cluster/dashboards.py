"""Grafana dashboards as provisioned JSON, generated from the compact panel lists below.

``dispatchml alerts render`` writes ``cluster/grafana/dashboards/*.json``; Grafana loads them
through the providers file ``cluster/grafana/provisioning/dashboards/dispatchml.yaml`` and the
Prometheus datasource in ``provisioning/datasources/prometheus.yaml`` (uid ``prometheus``).
The committed JSON is this module's output (a unit test checks it), so edit here.

Panels query only series that exist: the serving app's registry (``serve_apps/metrics.py``),
the SLO recording rules (``cluster/alert_rules.py``), Prometheus's own ``ALERTS``, and the
model-quality monitor's declared metrics (``contracts/monitor_metrics.py``; the drift, data
quality and business panels stay empty until the monitor exports them).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cluster.alert_rules import ERROR_RATIO, OBJECTIVE

GRAFANA_DIR = Path(__file__).with_name("grafana")
DASHBOARDS_DIR = GRAFANA_DIR / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
SCORE = 'endpoint="/v1/dispatch/score"'
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Panel:
    """A time series (or stat) panel: ``queries`` maps a legend to a PromQL expression."""

    title: str
    queries: dict[str, str]
    unit: str = "short"
    description: str = ""
    kind: str = "timeseries"


@dataclass(frozen=True)
class Dashboard:
    uid: str
    title: str
    description: str
    panels: tuple[Panel, ...]
    #: Template variables: name -> ``label_values(metric, label)``.
    variables: dict[str, str] = field(default_factory=dict)


def _share(numerator: str, denominator: str) -> str:
    return f"sum(rate({numerator}[{RATE}])) / sum(rate({denominator}[{RATE}]))"


def _quantile(q: float, histogram: str, by: str = "", selector: str = "") -> str:
    keys = ", ".join(filter(None, (by, "le")))
    matchers = f"{{{selector}}}" if selector else ""
    return f"histogram_quantile({q}, sum by ({keys}) (rate({histogram}_bucket{matchers}[{RATE}])))"


def _burn(window: str) -> str:
    return f"{ERROR_RATIO}{window} / on (slo) (1 - {OBJECTIVE})"


#: On the service overview and the business dashboard alike.
FALLBACK_PANEL = Panel(
    "Fallback share of scored requests",
    {"fallback": _share('dispatchml_scored_requests_total{arm="fallback"}', "dispatchml_scored_requests_total")},
    "percentunit",
)
COST_PANEL = Panel("Cost per 1,000 predictions", {"cost": "dispatchml_cost_per_1k_predictions_dollars"}, "currencyUSD")

SERVICE = Dashboard(
    "dispatchml-service",
    "dispatchml / service overview",
    "Score endpoint traffic, the availability and latency SLOs with their burn rates, and the alerts they fire.",
    (
        Panel("Score requests by status code", {"{{code}}": f"sum by (code) (rate(dispatchml_requests_total{{{SCORE}}}[{RATE}]))"}, "reqps"),
        Panel(
            "Latency quantiles (SLO: 99 % within 120 ms)",
            {f"p{int(q * 100)}": _quantile(q, "dispatchml_request_duration_seconds", selector=SCORE) for q in (0.5, 0.9, 0.99)},
            "s",
        ),
        Panel(
            "SLI error ratios over 5 min and 1 h",
            {f"{{{{slo}}}} {w}": f"{ERROR_RATIO}{w}" for w in ("5m", "1h")},
            "percentunit",
            "Availability: share of 5xx answers. Latency: share slower than 120 ms.",
        ),
        Panel(
            "Error-budget burn rate (page > 14.4 on 1 h, > 6 on 6 h; ticket > 1 on 3 d)",
            {f"{{{{slo}}}} {w}": _burn(w) for w in ("1h", "6h", "3d")},
            description="Burn rate 1 spends exactly the 30-day budget in 30 days.",
        ),
        Panel("Firing SLO alerts", {"{{alertname}} {{severity}}": 'ALERTS{alertstate="firing", alertname=~"Score.*BudgetBurn.*"}'}),
        FALLBACK_PANEL,
        Panel("Fallbacks and degraded requests by reason", {
            "fallback {{reason}}": f"sum by (reason) (rate(dispatchml_fallback_requests_total[{RATE}]))",
            "degraded {{reason}}": f"sum by (reason) (rate(dispatchml_degraded_requests_total[{RATE}]))",
        }, "reqps"),
        Panel("Circuit breakers (0 closed, 1 half-open, 2 open)", {"{{dependency}}": "dispatchml_breaker_state"}),
        Panel("Prediction log: backlog and drops", {
            "backlog rows": "dispatchml_prediction_log_backlog_rows",
            "dropped rows/s": f"rate(dispatchml_prediction_log_rows_dropped_total[{RATE}])",
            "write errors/s": f"rate(dispatchml_prediction_log_write_errors_total[{RATE}])",
        }),
        COST_PANEL,
    ),
)

MODEL_VERSIONS = Dashboard(
    "dispatchml-model-versions",
    "dispatchml / per model version",
    "Traffic, shadow outcomes and prediction distributions per arm and model version.",
    (
        Panel("Live versions by role", {"{{role}} {{model_version}}": "dispatchml_model_version_info"}, kind="table"),
        Panel("Scored requests by arm and version", {
            "{{arm}} {{model_version}}": f'sum by (arm, model_version) (rate(dispatchml_scored_requests_total{{model_version=~"$model_version"}}[{RATE}]))',
        }, "reqps"),
        Panel("Challenger weight and policy generation", {
            "challenger weight": "dispatchml_challenger_weight_ratio", "generation": "dispatchml_policy_generation",
        }),
        Panel("Shadow scorings by outcome", {
            "{{model_version}} {{outcome}}": f'sum by (model_version, outcome) (rate(dispatchml_shadow_scores_total{{model_version=~"$model_version"}}[{RATE}]))',
        }, "reqps"),
        Panel("Median predicted ETA by arm", {"{{arm}}": _quantile(0.5, "dispatchml_predicted_eta_seconds", "arm")}, "s"),
        Panel("Mean predicted acceptance by arm", {
            "{{arm}}": f"sum by (arm) (rate(dispatchml_predicted_p_accept_ratio_sum[{RATE}])) / sum by (arm) (rate(dispatchml_predicted_p_accept_ratio_count[{RATE}]))",
        }, "percentunit"),
        Panel("Scored requests by region and arm", {
            "region {{region}} {{arm}}": f"sum by (region, arm) (rate(dispatchml_region_scored_requests_total[{RATE}]))",
        }, "reqps"),
    ),
    {"model_version": "label_values(dispatchml_scored_requests_total, model_version)"},
)

REGION = 'region=~"$region"'
DRIFT = Dashboard(
    "dispatchml-drift",
    "dispatchml / drift",
    "Feature, prediction and concept drift and calibration from the monitor (contracts/monitor_metrics.py), "
    "next to the served prediction distributions.",
    (
        Panel("Feature drift PSI (1 d window)", {
            "{{feature_group}}.{{feature}} r{{region}}": f'dispatchml_monitor_feature_drift_psi{{{REGION}, window="1d"}}',
        }),
        Panel("Features with detected drift", {
            "{{feature_group}}": f"sum by (feature_group) (dispatchml_monitor_feature_drift_detected{{{REGION}}})",
        }),
        Panel("Prediction drift PSI", {"{{model}} r{{region}}": f"dispatchml_monitor_prediction_drift_psi{{{REGION}}}"}),
        Panel("Concept drift detections (matured errors)", {
            "{{model}} r{{region}} {{detector}}": f"increase(dispatchml_monitor_concept_drift_detections_total{{{REGION}}}[1d])",
        }),
        Panel("Calibration ECE of p_accept", {"r{{region}} {{window}}": f"dispatchml_monitor_calibration_ece_ratio{{{REGION}}}"}),
        Panel("ETA MAE: label-free estimate vs matured", {
            "estimated r{{region}}": f"dispatchml_monitor_estimated_eta_mae_seconds{{{REGION}}}",
            "matured r{{region}}": f"dispatchml_monitor_matured_eta_mae_seconds{{{REGION}}}",
        }, "s"),
        Panel("Served p_accept quantiles by arm", {
            f"p{int(q * 100)} {{{{arm}}}}": _quantile(q, "dispatchml_predicted_p_accept_ratio", "arm") for q in (0.1, 0.5, 0.9)
        }, "percentunit"),
    ),
    {"region": "label_values(dispatchml_region_scored_requests_total, region)"},
)

DATA_QUALITY = Dashboard(
    "dispatchml-data-quality",
    "dispatchml / data quality",
    "Feature freshness and nulls as served (router metrics) and upstream (monitor), per feature group.",
    (
        Panel("Served feature age p99 by group", {
            "{{feature_group}}": _quantile(0.99, "dispatchml_feature_age_seconds", "feature_group"),
        }, "s"),
        Panel("Served null ratio by group (last 1,000 requests)", {"{{feature_group}}": "dispatchml_feature_null_ratio"}, "percentunit"),
        Panel("Feature refresh failures", {
            "{{feature_group}}": f"sum by (feature_group) (rate(dispatchml_feature_refresh_failures_total[{RATE}]))",
        }),
        Panel("Upstream freshness (batch and near-real-time)", {
            "{{feature_group}} {{cadence}}": "dispatchml_monitor_freshness_seconds",
        }, "s"),
        Panel("Upstream null and out-of-range ratios", {
            "null {{feature_group}} r{{region}}": f"dispatchml_monitor_feature_null_ratio{{{REGION}}}",
            "out of range {{feature_group}} r{{region}}": f"dispatchml_monitor_out_of_range_ratio{{{REGION}}}",
        }, "percentunit"),
        Panel("Upstream volume vs a week earlier", {"{{feature_group}} {{window}}": "dispatchml_monitor_volume_ratio"}),
        Panel("Schema violations", {
            "{{feature_group}}": f"sum by (feature_group) (increase(dispatchml_monitor_schema_violations_total[{RATE}]))",
        }),
        Panel("Metric inputs refused by the cardinality and PII guards", {
            "{{reason}}": f"sum by (reason) (rate(dispatchml_rejected_metric_inputs_total[{RATE}]))",
        }),
    ),
    {"region": "label_values(dispatchml_region_scored_requests_total, region)"},
)

BUSINESS = Dashboard(
    "dispatchml-business",
    "dispatchml / business",
    "Member wait, acceptance, reassignments and fallback share, and the model-quality SLIs on matured labels.",
    (
        Panel("Member wait p50 / p90 by line of business", {
            f"p{int(q * 100)} {{{{line_of_business}}}}": _quantile(q, "dispatchml_monitor_member_wait_seconds", "line_of_business", REGION)
            for q in (0.5, 0.9)
        }, "s"),
        Panel("Offer acceptance ratio", {
            "r{{region}}": f'sum by (region) (rate(dispatchml_monitor_offers_total{{{REGION}, outcome="accepted"}}[1h])) '
            f"/ sum by (region) (rate(dispatchml_monitor_offers_total{{{REGION}}}[1h]))",
        }, "percentunit"),
        Panel("Reassignments per completed job", {
            "r{{region}}": f"sum by (region) (rate(dispatchml_monitor_reassignments_total{{{REGION}}}[1h])) "
            f"/ sum by (region) (rate(dispatchml_monitor_jobs_completed_total{{{REGION}}}[1h]))",
        }, "percentunit"),
        FALLBACK_PANEL,
        Panel("ETA interval hit ratio and top-rank acceptance (matured)", {
            "ETA hit r{{region}}": f"dispatchml_monitor_eta_interval_hit_ratio{{{REGION}}}",
            "top rank accepted r{{region}}": f"dispatchml_monitor_top_rank_accepted_ratio{{{REGION}}}",
        }, "percentunit"),
        Panel("Model-quality SLO burn rates", {"{{slo}} {{window}}": "dispatchml_monitor_quality_burn_rate"}),
        Panel("Label watermark lag", {"{{stream}}": "dispatchml_monitor_label_watermark_lag_seconds"}, "s"),
        COST_PANEL,
    ),
    {"region": "label_values(dispatchml_region_scored_requests_total, region)"},
)

DASHBOARDS: tuple[Dashboard, ...] = (SERVICE, MODEL_VERSIONS, DRIFT, DATA_QUALITY, BUSINESS)


def _panel_json(panel: Panel, panel_id: int) -> dict[str, Any]:
    width, height = 12, 8
    return {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"h": height, "w": width, "x": ((panel_id - 1) % 2) * width, "y": ((panel_id - 1) // 2) * height},
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
        "targets": [
            {"refId": chr(ord("A") + i), "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
            for i, (legend, expr) in enumerate(panel.queries.items())
        ],
    }


def _variable_json(name: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": name},
        "definition": query,
        "refresh": 2,
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"text": "All", "value": "$__all"},
    }


def dashboard_json(dashboard: Dashboard) -> dict[str, Any]:
    """Grafana's dashboard JSON model (schema 39, Grafana 10/11) for provisioning."""
    return {
        "uid": dashboard.uid,
        "title": dashboard.title,
        "description": dashboard.description,
        "tags": ["dispatchml"],
        "timezone": "utc",
        "editable": False,
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [_variable_json(name, query) for name, query in dashboard.variables.items()]},
        "panels": [_panel_json(panel, i) for i, panel in enumerate(dashboard.panels, start=1)],
    }


def render_dashboards() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {f"{d.uid}.json": json.dumps(dashboard_json(d), indent=2) + "\n" for d in DASHBOARDS}


def write(out: Path = DASHBOARDS_DIR) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for filename, text in render_dashboards().items():
        path = out / filename
        path.write_text(text)
        written.append(path)
    return written
