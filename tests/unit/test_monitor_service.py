"""The monitor service without data: a pass on empty paths, its metrics on a loopback port."""

from __future__ import annotations

import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cluster.config import Settings
from cluster.monitor import MonitorService, load_state, state_path


def _settings(root: Path) -> Settings:
    base = Settings()
    paths = base.paths.model_copy(update={"root": root, "data": root / "data", "events": root / "events", "reports": root / "reports"})
    return base.model_copy(update={"paths": paths, "monitor": base.monitor.model_copy(update={"metrics_port": 0})})


def test_service_runs_a_pass_on_empty_paths_and_serves_metrics_on_loopback(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    service = MonitorService(settings)
    try:
        as_of = datetime(2026, 1, 5, tzinfo=UTC)
        assert service.run_pass(as_of) == {"as_of": as_of.isoformat(), "rows_read": 0, "labels_read": 0, "events_written": 0}
        assert load_state(state_path(settings)).as_of == as_of.timestamp()
        assert service.metrics_server.server_address[0] == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/metrics", timeout=10) as answer:
            assert answer.status == 200
            assert b"dispatchml_monitor_feature_null_ratio" in answer.read()
    finally:
        service.close()


def test_a_pass_before_the_last_one_is_refused(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    service = MonitorService(settings)
    try:
        service.run_pass(datetime(2026, 1, 5, tzinfo=UTC))
        with pytest.raises(ValueError, match="already ran up to"):  # the sums already hold later data
            service.run_pass(datetime(2026, 1, 4, tzinfo=UTC))
    finally:
        service.close()
