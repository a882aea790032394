"""The scoring service's Prometheus exposition: conventional names, bounded labels, no PII, exact sums.

Each test reads the exposition the way Prometheus does (``text_string_to_metric_families``), so
it checks what a scrape sees, not how the module stores it.
"""

from __future__ import annotations

import inspect
import math
import shutil
import subprocess

import pytest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from serve_apps.breaker import BreakerState
from serve_apps.metrics import ServingMetrics

PRICE = 0.0001  # dollars per CPU second
LIVE = {"champion": "20260101T000000000000Z-aaaa0001", "challenger": "20260108T000000000000Z-bbbb0002", "fallback": "fb-1"}
LOG_SNAPSHOT = {
    "backlog_rows": 120,
    "rows_appended": 1000,
    "rows_written": 870,
    "rows_dropped": 7,
    "rows_invalid": 3,
    "write_errors": 2,
    "files_committed": 4,
    "last_flush_age_s": 1.5,
}
ALLOWED_LABELS = {
    "arm",
    "model_version",
    "code",
    "reason",
    "feature_group",
    "region",
    "endpoint",
    "role",
    "outcome",
    "dependency",
}
#: name -> (type, label names); histograms add ``le`` on their buckets.
EXPECTED = {
    "dispatchml_requests": ("counter", {"endpoint", "code"}),
    "dispatchml_request_duration_seconds": ("histogram", {"endpoint"}),
    "dispatchml_scored_requests": ("counter", {"arm", "model_version"}),
    "dispatchml_region_scored_requests": ("counter", {"region", "arm"}),
    "dispatchml_shadow_scores": ("counter", {"model_version", "outcome"}),
    "dispatchml_degraded_requests": ("counter", {"reason"}),
    "dispatchml_degraded_scored_requests": ("counter", {"arm"}),
    "dispatchml_fallback_requests": ("counter", {"reason"}),
    "dispatchml_breaker_state": ("gauge", {"dependency"}),
    "dispatchml_open_breakers": ("gauge", {"dependency"}),
    "dispatchml_breaker_rejections": ("counter", {"dependency"}),
    "dispatchml_feature_age_seconds": ("histogram", {"feature_group"}),
    "dispatchml_feature_null_ratio": ("gauge", {"feature_group"}),
    "dispatchml_feature_refresh_failures": ("counter", {"feature_group"}),
    "dispatchml_predicted_eta_seconds": ("histogram", {"arm"}),
    "dispatchml_predicted_p_accept_ratio": ("histogram", {"arm"}),
    "dispatchml_prediction_log_backlog_rows": ("gauge", set()),
    "dispatchml_prediction_log_rows_written": ("counter", set()),
    "dispatchml_prediction_log_rows_dropped": ("counter", set()),
    "dispatchml_prediction_log_write_errors": ("counter", set()),
    "dispatchml_prediction_log_last_flush_age_seconds": ("gauge", set()),
    "dispatchml_cpu_seconds": ("counter", set()),
    "dispatchml_cost_per_1k_predictions_dollars": ("gauge", set()),
    "dispatchml_challenger_weight_ratio": ("gauge", set()),
    "dispatchml_policy_generation": ("gauge", set()),
    "dispatchml_model_version_info": ("gauge", {"role", "model_version"}),
    "dispatchml_rejected_metric_inputs": ("counter", {"reason"}),
}


def busy_replica(**kwargs: int) -> ServingMetrics:
    """A replica that has seen one of everything."""
    metrics = ServingMetrics(price_per_cpu_second=PRICE, **kwargs)
    metrics.record_policy(7, 0.25, LIVE)
    metrics.record_request("/v1/dispatch/score", 200, 0.042)
    metrics.record_request("/v1/dispatch/score", 422, 0.003)
    metrics.record_scored("champion", LIVE["champion"], 3)
    metrics.record_scored("fallback", LIVE["fallback"], 5, degraded=True)
    metrics.record_prediction("champion", 23.5, 0.71)
    metrics.record_shadow(LIVE["challenger"], "timeout")
    metrics.record_degraded("stale_features")
    metrics.record_fallback("model_unavailable")
    metrics.record_breaker_rejection("feature_store")
    metrics.observe_breakers("feature_store", [BreakerState.CLOSED, BreakerState.HALF_OPEN])
    metrics.record_features("cell_traffic", 14.0, 3, 60)
    metrics.record_features("provider_batch", 30_000.0, 0, 120)
    metrics.record_feature_refresh_failure("region_load")
    metrics.record_cpu(0.003)
    metrics.observe_log(LOG_SNAPSHOT)
    metrics.record_scored("champion", "not-announced", 3)  # one refusal, so the rejection counter shows
    return metrics


def scrape(metrics: ServingMetrics) -> dict[str, Metric]:
    body, content_type = metrics.exposition()
    assert content_type.startswith("text/plain; version=0.0.4")
    return {family.name: family for family in text_string_to_metric_families(body.decode())}


def value(family: Metric, sample_name: str | None = None, **labels: str) -> float:
    sample_name = sample_name or family.name
    found = [s.value for s in family.samples if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (sample_name, labels, family.samples)
    return found[0]


def series(family: Metric, sample_name: str) -> list[dict[str, str]]:
    return [s.labels for s in family.samples if s.name == sample_name]


def test_names_types_units_and_labels_follow_prometheus_conventions() -> None:
    families = scrape(busy_replica())
    for name, (kind, labels) in EXPECTED.items():
        assert name in families, f"{name} missing from the exposition"
        family = families[name]
        assert family.type == kind, name
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, (name, sample)
    for name, family in families.items():
        assert name.startswith("dispatchml_"), name
        assert not name.endswith("_created"), "created timestamps double the series count"
        for sample in family.samples:
            assert set(sample.labels) - {"le"} <= ALLOWED_LABELS, sample
            if family.type == "counter":
                assert sample.name == f"{name}_total", sample.name
        assert not any(unit in name for unit in ("_minutes", "_milliseconds", "_percent", "_ms")), f"{name}: use base units"


def test_request_latency_has_a_bucket_at_the_120ms_budget() -> None:
    metrics = ServingMetrics(PRICE)
    metrics.record_request("score", 200, 0.115)
    metrics.record_request("score", 200, 0.125)
    duration = scrape(metrics)["dispatchml_request_duration_seconds"]
    bucket = "dispatchml_request_duration_seconds_bucket"
    assert "0.12" in {s.labels["le"] for s in duration.samples if s.name == bucket}
    assert value(duration, bucket, le="0.1") == 0
    assert value(duration, bucket, le="0.12") == 1
    assert value(duration, bucket, le="0.15") == 2


def test_predictions_are_bucketed_in_base_units() -> None:
    metrics = ServingMetrics(PRICE)
    metrics.record_prediction("challenger", 17.0, 0.42)
    families = scrape(metrics)
    eta, p_accept = families["dispatchml_predicted_eta_seconds"], families["dispatchml_predicted_p_accept_ratio"]
    eta_bounds = sorted(float(s.labels["le"]) for s in eta.samples if s.name.endswith("_bucket"))
    assert eta_bounds[0] == 300.0 and eta_bounds[-2] == 180 * 60.0 and math.isinf(eta_bounds[-1])
    assert value(eta, "dispatchml_predicted_eta_seconds_sum", arm="challenger") == pytest.approx(17.0 * 60)
    assert value(eta, "dispatchml_predicted_eta_seconds_bucket", arm="challenger", le="1200.0") == 1
    assert value(eta, "dispatchml_predicted_eta_seconds_bucket", arm="challenger", le="900.0") == 0
    p_bounds = sorted(float(s.labels["le"]) for s in p_accept.samples if s.name.endswith("_bucket"))
    assert p_bounds[:-1] == pytest.approx([0.05 * i for i in range(1, 21)])
    assert value(p_accept, "dispatchml_predicted_p_accept_ratio_bucket", arm="challenger", le="0.45") == 1
    assert value(p_accept, "dispatchml_predicted_p_accept_ratio_bucket", arm="challenger", le="0.4") == 0


@pytest.mark.parametrize("max_regions", [64, 5])
def test_ten_thousand_regions_make_at_most_max_regions_plus_one_series(max_regions: int) -> None:
    metrics = ServingMetrics(PRICE, max_regions=max_regions)
    metrics.record_policy(1, 0.0, LIVE)
    for region in range(10_000):
        metrics.record_scored("champion", LIVE["champion"], region)
    family = scrape(metrics)["dispatchml_region_scored_requests"]
    regions = [labels["region"] for labels in series(family, "dispatchml_region_scored_requests_total")]
    assert len(regions) == max_regions + 1
    assert "other" in regions
    assert sum(s.value for s in family.samples if s.name.endswith("_total")) == 10_000  # nothing lost, only pooled


def test_free_text_labels_are_capped_too() -> None:
    metrics = ServingMetrics(PRICE, max_label_values=8)
    for i in range(1_000):
        metrics.record_degraded(f"reason_{chr(97 + i % 26)}{i}")
        metrics.record_request(f"/route_{i}", 200 + i, 0.01)
        metrics.record_scored("champion", f"v{i}", 0)  # never announced
    families = scrape(metrics)
    assert len(series(families["dispatchml_degraded_requests"], "dispatchml_degraded_requests_total")) <= 9
    assert len(series(families["dispatchml_requests"], "dispatchml_requests_total")) <= 9 * 501
    assert {labels["endpoint"] for labels in series(families["dispatchml_requests"], "dispatchml_requests_total")} <= {
        f"/route_{i}" for i in range(8)
    } | {"other"}
    assert series(families["dispatchml_scored_requests"], "dispatchml_scored_requests_total") == [
        {"arm": "champion", "model_version": "other"}
    ]


def test_retired_model_versions_leave_the_exposition() -> None:
    metrics = ServingMetrics(PRICE, max_model_versions=4)
    for generation in range(20):
        champion, challenger = f"v{generation}", f"v{generation + 1}"
        metrics.record_policy(generation, 0.1, {"champion": champion, "challenger": challenger, "fallback": "fb"})
        metrics.record_scored("champion", champion, 1)
        metrics.record_shadow(challenger, "ok")
    families = scrape(metrics)
    versions = {
        labels["model_version"] for labels in series(families["dispatchml_scored_requests"], "dispatchml_scored_requests_total")
    }
    assert len(versions) <= 4
    assert "v19" in versions
    info = families["dispatchml_model_version_info"]
    assert {(s.labels["role"], s.labels["model_version"]) for s in info.samples} == {
        ("champion", "v19"),
        ("challenger", "v20"),
        ("fallback", "fb"),
    }


def test_no_member_id_or_phone_reaches_a_label() -> None:
    public = [name for name, _ in inspect.getmembers(ServingMetrics, inspect.isfunction) if not name.startswith("_")]
    for name in public:
        parameters = inspect.signature(getattr(ServingMetrics, name)).parameters
        assert not {p for p in parameters if any(w in p for w in ("member", "phone", "provider", "cell", "job"))}, name

    leaks = ["M000123456", "m000123456", "+1-555-0100123", "15550100123", "job-2026-01-15-000123", "alex example"]
    metrics = ServingMetrics(PRICE)
    metrics.record_policy(1, 0.5, LIVE)
    for leak in leaks:
        metrics.record_request(leak, 200, 0.01)
        metrics.record_scored(leak, leak, leak)  # type: ignore[arg-type]
        metrics.record_prediction(leak, 10.0, 0.5)  # type: ignore[arg-type]
        metrics.record_shadow(leak, leak)
        metrics.record_degraded(leak)
        metrics.record_fallback(leak)
        metrics.record_breaker_rejection(leak)
        metrics.record_features(leak, 1.0, 0, 1)
        metrics.record_feature_refresh_failure(leak)
    metrics.record_scored("champion", LIVE["champion"], 15550100123)  # a phone number as a region id...
    metrics.record_scored("champion", LIVE["champion"], -1)  # ...and cells.OUTSIDE
    body, _ = metrics.exposition()
    text = body.decode()
    for leak in leaks:
        assert leak not in text
    assert "555" not in text and "0100123" not in text
    rejected = scrape(metrics)["dispatchml_rejected_metric_inputs"]
    assert sum(s.value for s in rejected.samples) >= len(leaks) * 10


def test_snapshot_counters_report_the_writers_values_not_a_sum() -> None:
    metrics = ServingMetrics(PRICE)
    for _ in range(3):
        metrics.observe_log(LOG_SNAPSHOT)
        scrape(metrics)
    families = scrape(metrics)
    assert value(families["dispatchml_prediction_log_rows_written"], "dispatchml_prediction_log_rows_written_total") == 870
    assert value(families["dispatchml_prediction_log_write_errors"], "dispatchml_prediction_log_write_errors_total") == 2
    assert value(families["dispatchml_prediction_log_backlog_rows"]) == 120
    assert value(families["dispatchml_prediction_log_last_flush_age_seconds"]) == 1.5

    metrics.observe_log({**LOG_SNAPSHOT, "rows_written": 900, "backlog_rows": 0})
    families = scrape(metrics)
    assert value(families["dispatchml_prediction_log_rows_written"], "dispatchml_prediction_log_rows_written_total") == 900
    assert value(families["dispatchml_prediction_log_backlog_rows"]) == 0


def test_log_snapshot_missing_a_field_is_refused_with_the_fix() -> None:
    metrics = ServingMetrics(PRICE)
    with pytest.raises(KeyError, match="write_errors"):
        metrics.observe_log({k: v for k, v in LOG_SNAPSHOT.items() if k != "write_errors"})


def test_cost_per_1k_predictions_is_the_rolling_mean_cpu_times_price() -> None:
    metrics = ServingMetrics(price_per_cpu_second=0.00005, window_requests=4)
    assert "dispatchml_cost_per_1k_predictions_dollars" not in {s.name for f in scrape(metrics).values() for s in f.samples}, (
        "no requests yet: no cost to report"
    )
    for cpu in (0.010, 0.002, 0.004, 0.006, 0.008):  # the window keeps the last 4
        metrics.record_cpu(cpu)
    families = scrape(metrics)
    mean_cpu = (0.002 + 0.004 + 0.006 + 0.008) / 4
    assert value(families["dispatchml_cost_per_1k_predictions_dollars"]) == pytest.approx(mean_cpu * 0.00005 * 1000)
    assert value(families["dispatchml_cpu_seconds"], "dispatchml_cpu_seconds_total") == pytest.approx(0.030)


def test_null_ratio_is_over_the_last_n_requests() -> None:
    metrics = ServingMetrics(PRICE, window_requests=3)
    for nulls in (100, 0, 5, 10):  # the first falls out of the window
        metrics.record_features("cell_traffic", 5.0, nulls, 100)
    ratio = scrape(metrics)["dispatchml_feature_null_ratio"]
    assert value(ratio, feature_group="cell_traffic") == pytest.approx(15 / 300)
    assert [s.labels["feature_group"] for s in ratio.samples] == ["cell_traffic"]


def test_breaker_state_is_the_worst_breaker_of_the_dependency() -> None:
    metrics = ServingMetrics(PRICE)
    metrics.observe_breakers("feature_store", [BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.OPEN])
    metrics.observe_breakers("eta_model", [BreakerState.CLOSED])
    families = scrape(metrics)
    assert value(families["dispatchml_breaker_state"], dependency="feature_store") == 2
    assert value(families["dispatchml_open_breakers"], dependency="feature_store") == 2
    assert value(families["dispatchml_breaker_state"], dependency="eta_model") == 0


def test_bad_numbers_are_counted_not_raised_into_the_request() -> None:
    metrics = ServingMetrics(PRICE)
    metrics.record_request("score", 200, float("nan"))
    metrics.record_prediction("champion", -3.0, 1.5)
    metrics.record_cpu(-0.001)
    metrics.record_features("cell_traffic", float("nan"), 60, 60)  # nothing present: no age, all null
    families = scrape(metrics)
    reasons = {s.labels["reason"] for s in families["dispatchml_rejected_metric_inputs"].samples}
    assert {"duration_invalid", "eta_invalid", "p_accept_invalid", "cpu_seconds_invalid"} <= reasons
    assert series(families["dispatchml_request_duration_seconds"], "dispatchml_request_duration_seconds_count") == []
    assert value(families["dispatchml_requests"], "dispatchml_requests_total", endpoint="score", code="200") == 1
    assert value(families["dispatchml_feature_null_ratio"], feature_group="cell_traffic") == 1.0


def test_replicas_in_one_process_keep_separate_registries() -> None:
    first, second = ServingMetrics(PRICE), ServingMetrics(PRICE)
    first.record_degraded("stale_features")
    assert "dispatchml_degraded_requests" not in scrape(second) or not scrape(second)["dispatchml_degraded_requests"].samples
    assert value(scrape(first)["dispatchml_degraded_requests"], "dispatchml_degraded_requests_total") == 1


def test_promtool_accepts_the_exposition() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (Debian package `prometheus`, installed by install.sh)")
    body, _ = busy_replica().exposition()
    done = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True, check=False, timeout=60)
    assert done.returncode == 0, (done.stdout + done.stderr).decode()
    assert not (done.stdout + done.stderr).strip(), (done.stdout + done.stderr).decode()  # no lint warnings either


def test_importing_feast_does_not_make_replicas_share_values() -> None:
    """Feast switches prometheus_client to multiprocess (shared-file) values on import; the
    router imports Feast, so separate ServingMetrics must still count separately."""
    import feast  # noqa: F401 - the import is the point

    for _ in range(3):
        metrics = ServingMetrics(PRICE)
        metrics.record_request("score", 200, 0.01)
    assert value(scrape(metrics)["dispatchml_requests"], "dispatchml_requests_total", endpoint="score", code="200") == 1


def test_degraded_requests_count_once_per_request_whatever_their_reasons() -> None:
    metrics = ServingMetrics(PRICE)
    metrics.record_policy(1, 0.0, LIVE)
    for reasons in (["stale_features", "store_unavailable"], [], ["model_timeout"]):
        metrics.record_scored("fallback" if reasons else "champion", LIVE["fallback" if reasons else "champion"], 1, degraded=bool(reasons))
        for reason in reasons:
            metrics.record_degraded(reason)
    families = scrape(metrics)
    assert value(families["dispatchml_degraded_scored_requests"], "dispatchml_degraded_scored_requests_total", arm="fallback") == 2
    assert series(families["dispatchml_degraded_scored_requests"], "dispatchml_degraded_scored_requests_total") == [{"arm": "fallback"}]
    assert sum(s.value for s in families["dispatchml_degraded_requests"].samples if s.name.endswith("_total")) == 3
