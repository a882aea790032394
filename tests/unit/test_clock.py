"""The service clock: the wall clock in production, a replay's accelerated clock in the demo."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cluster.config import load_settings
from serve_apps.clock import ServiceClock, start_replay_clock, stop_replay_clock

START = datetime(2026, 3, 2, 5, tzinfo=UTC)


def _settings(tmp_path: Path, speed: float):
    base = load_settings(None, environ={})
    return base.model_copy(update={
        "paths": base.paths.model_copy(update={"registry": tmp_path}),
        "serving": base.serving.model_copy(update={"replay_speed": speed, "replay_start": START if speed > 1 else None}),
    })


def test_production_reads_the_wall_clock_and_never_the_replay_file(tmp_path: Path) -> None:
    start_replay_clock(tmp_path, 0.0)  # ignored: the speed is 1
    clock = ServiceClock.from_settings(_settings(tmp_path, 1.0))
    assert not clock.simulated
    before = time.time()
    assert before <= clock.now() <= time.time()
    assert clock.at_wall(123.0) == 123.0 and clock.wall_at(123.0) == 123.0


def test_a_replay_clock_stands_still_until_started_then_runs_at_its_speed_and_can_be_stopped(tmp_path: Path) -> None:
    settings = _settings(tmp_path, 120.0)
    assert ServiceClock.from_settings(settings).at_wall(time.time() + 50) == START.timestamp()
    assert ServiceClock.from_settings(settings).wall_at(START.timestamp()) is None
    origin = start_replay_clock(tmp_path, 1_000_000.0)
    clock = ServiceClock.from_settings(settings)
    assert clock.at_wall(origin + 30.0) == START.timestamp() + 3600.0  # 30 s at 120x is an hour
    assert clock.at_wall(origin - 5.0) == START.timestamp()
    assert clock.wall_at(START.timestamp() + 7200.0) == pytest.approx(origin + 60.0)
    stop_replay_clock(tmp_path, START.timestamp() + 6 * 3600)
    stopped = ServiceClock.from_settings(settings)
    assert stopped.now() == stopped.at_wall(time.time() + 1e6) == START.timestamp() + 6 * 3600


def test_a_replay_speed_needs_its_start(tmp_path: Path) -> None:
    settings = _settings(tmp_path, 120.0)
    settings = settings.model_copy(update={"serving": settings.serving.model_copy(update={"replay_start": None})})
    with pytest.raises(ValueError, match="replay_start"):
        ServiceClock.from_settings(settings)
