"""The generated Prometheus rules: committed as generated, valid, behaving as the SRE workbook's
multiwindow, multi-burn-rate alerts under ``promtool test rules``, and each linked to a runbook."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from cluster import alert_rules, dashboards
from cluster.config import DEFAULT_CONFIG, load_settings

ROOT = Path(__file__).resolve().parents[2]
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (./install.sh installs Debian's prometheus)")


@pytest.fixture(scope="module")
def settings():
    return load_settings(DEFAULT_CONFIG, environ={})


def _promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(PROMTOOL), *args], capture_output=True, text=True, timeout=300, check=False, cwd=ROOT)


def test_committed_prometheus_and_grafana_files_are_the_generators_output(settings) -> None:
    prometheus = alert_rules.PROMETHEUS_DIR
    assert (prometheus / alert_rules.RULES_FILE).read_text() == alert_rules.to_yaml(alert_rules.render_rules(settings)), (
        "cluster/prometheus/rules.yml is stale: run `dispatchml alerts render`"
    )
    assert (prometheus / alert_rules.CONFIG_FILE).read_text() == alert_rules.to_yaml(alert_rules.render_prometheus_config(settings))
    rendered = dashboards.render_dashboards()
    assert sorted(p.name for p in dashboards.DASHBOARDS_DIR.glob("*.json")) == sorted(rendered)
    for filename, text in rendered.items():
        assert (dashboards.DASHBOARDS_DIR / filename).read_text() == text, f"{filename} is stale: run `dispatchml alerts render`"


def test_every_slo_has_a_page_and_a_ticket_alert_with_a_runbook_in_the_readme(settings) -> None:
    rules = alert_rules.render_rules(settings)
    alerts = [rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule]
    assert {(a["labels"]["slo"], a["labels"]["severity"]) for a in alerts} == {
        (slo, severity) for slo in settings.slo.service for severity in ("page", "ticket")
    }
    headings = {_github_anchor(line.lstrip("#")) for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("#")}
    for alert in alerts:
        anchor = alert["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor in headings, f"README.md has no section #{anchor} (runbook of {alert['alert']})"


def _github_anchor(heading: str) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_thresholds_follow_the_objective_in_the_settings() -> None:
    settings = load_settings(DEFAULT_CONFIG, environ={"DISPATCHML__SLO__SERVICE__AVAILABILITY__OBJECTIVE": "0.995"})
    page = next(r for g in alert_rules.render_rules(settings)["groups"] for r in g["rules"] if r.get("alert") == "ScoreAvailabilityBudgetBurnPage")
    # 14.4 x 0.005 and 6 x 0.005
    assert "> 0.072\n" in page["expr"] and "> 0.03\n" in page["expr"]


def test_a_latency_threshold_between_histogram_buckets_is_refused() -> None:
    settings = load_settings(DEFAULT_CONFIG, environ={"DISPATCHML__SLO__SERVICE__LATENCY__THRESHOLD_SECONDS": "0.11"})
    with pytest.raises(alert_rules.AlertRulesError, match="bucket bound"):
        alert_rules.render_rules(settings)


def test_durations_use_the_largest_whole_unit() -> None:
    assert [alert_rules.duration(s) for s in (300, 1800, 3600, 21600, 259200, 90)] == ["5m", "30m", "1h", "6h", "3d", "90s"]


@needs_promtool
def test_promtool_accepts_the_rules_and_the_scrape_config() -> None:
    for args in (("check", "rules", "cluster/prometheus/rules.yml"), ("check", "config", "cluster/prometheus/prometheus.yml")):
        done = _promtool(*args)
        assert done.returncode == 0, done.stdout + done.stderr


@needs_promtool
def test_promtool_rule_tests_fast_burn_pages_slow_burn_tickets_healthy_is_silent_latency_pages() -> None:
    tests = sorted(str(p.relative_to(ROOT)) for p in (alert_rules.PROMETHEUS_DIR / "tests").glob("*.yml"))
    assert tests, "no promtool rule tests under cluster/prometheus/tests"
    done = _promtool("test", "rules", *tests)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]


def test_rule_groups_parse_as_yaml_with_one_recording_and_one_alerting_group() -> None:
    groups = yaml.safe_load((alert_rules.PROMETHEUS_DIR / alert_rules.RULES_FILE).read_text())["groups"]
    assert [all("record" in r for r in g["rules"]) for g in groups] == [True, False]
