"""Every Grafana panel and every rule queries series that exist.

A series exists when the serving app's metric registry exposes it (``serve_apps/metrics.py``),
the SLO recording rules record it (``cluster/prometheus/rules.yml``), Prometheus writes it
itself (``ALERTS``), or the model-quality monitor declares it (``contracts/monitor_metrics.py``,
the contract for metrics the monitor does not export yet).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import yaml

from cluster import alert_rules, dashboards
from contracts.monitor_metrics import MONITOR_METRICS, monitor_series_names
from serve_apps.metrics import ServingMetrics

PROMETHEUS_BUILTIN = frozenset({"ALERTS", "ALERTS_FOR_STATE"})
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
#: An identifier not preceded by a digit, dot or $ and not followed by "(" (a function call).
_NAME = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)\b(?!\s*\()")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right", "Inf", "NaN"})


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression selects (strings, matchers, ranges and groupings removed)."""
    stripped = _GROUPING.sub(" ", _RANGE.sub(" ", _MATCHERS.sub(" ", _STRING.sub('""', expr))))
    return {name for name in _NAME.findall(stripped) if name not in _KEYWORDS}


def test_the_extractor_finds_metric_names_and_skips_functions_labels_and_keywords() -> None:
    expr = 'histogram_quantile(0.99, sum by (le, arm) (rate(a_bucket{x="y{z}"}[5m]))) / on (slo) (1 - b:c:d) > bool 0.5 or vector(0)'
    assert metric_names(expr) == {"a_bucket", "b:c:d"}


def _registry_series() -> set[str]:
    names = set()
    for family in ServingMetrics(price_per_cpu_second=0.0).registry.collect():
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}.get(family.type, ("",))
        names.update(family.name + suffix for suffix in suffixes)
    return names


def _rules() -> list[dict]:
    return [rule for group in yaml.safe_load((alert_rules.PROMETHEUS_DIR / alert_rules.RULES_FILE).read_text())["groups"] for rule in group["rules"]]


def _known_series() -> set[str]:
    return _registry_series() | {r["record"] for r in _rules() if "record" in r} | monitor_series_names() | PROMETHEUS_BUILTIN


def _dashboard_queries() -> Iterator[tuple[str, str]]:
    for path in sorted(dashboards.DASHBOARDS_DIR.glob("*.json")):
        board = json.loads(path.read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                yield f"{path.name}: {panel['title']}", target["expr"]
        for variable in board["templating"]["list"]:
            metric = re.fullmatch(r"label_values\((\w+), *\w+\)", variable["definition"])
            assert metric, f"{path.name}: variable {variable['name']} is not label_values(metric, label)"
            yield f"{path.name}: ${variable['name']}", metric.group(1)


def test_every_dashboard_query_names_only_existing_series() -> None:
    known = _known_series()
    unknown = {(where, name) for where, expr in _dashboard_queries() for name in metric_names(expr) - known}
    assert not unknown, f"panels query series nobody exports: {sorted(unknown)}"


def test_every_rule_names_only_series_the_app_exposes_or_the_rules_record() -> None:
    known = _registry_series() | {r["record"] for r in _rules() if "record" in r}
    unknown = {(r.get("record") or r["alert"], name) for r in _rules() for name in metric_names(r["expr"]) - known}
    assert not unknown, f"rules select series the app does not expose: {sorted(unknown)}"
    assert alert_rules.REQUESTS in known and f"{alert_rules.DURATION}_bucket" in known


def test_the_five_dashboards_query_the_provisioned_datasource() -> None:
    provisioned = yaml.safe_load((dashboards.GRAFANA_DIR / "provisioning/datasources/prometheus.yaml").read_text())
    uid = provisioned["datasources"][0]["uid"]
    boards = [json.loads(p.read_text()) for p in dashboards.DASHBOARDS_DIR.glob("*.json")]
    assert {b["uid"] for b in boards} == {"dispatchml-service", "dispatchml-model-versions", "dispatchml-drift", "dispatchml-data-quality", "dispatchml-business"}
    assert {t["datasource"]["uid"] for b in boards for p in b["panels"] for t in p["targets"]} == {uid}
    assert yaml.safe_load((dashboards.GRAFANA_DIR / "provisioning/dashboards/dispatchml.yaml").read_text())["providers"][0]["type"] == "file"


def test_monitor_metric_names_are_unique_and_prefixed() -> None:
    names = [m.name for m in MONITOR_METRICS]
    assert len(names) == len(set(names)) and all(n.startswith("dispatchml_monitor_") for n in names)
