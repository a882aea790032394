"""The fast fault drills of ``dispatchml drill`` on one shared drill world and app.

Each runs the real app on loopback under steady, bounded load (40 req/s for about half a
minute) with a real Redis behind a loopback proxy. Only outcomes that do not depend on the
machine's speed are asserted: every request answered, the fault visible in the answers, no
prediction-log record lost, a corrupt artifact refused. Latency figures are the drill's own
report (``dispatchml drill all``, README "Drills"), never asserted here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.drills import (
    REDIS_SERVER,
    DrillWorld,
    drill_challenger_raising,
    drill_corrupt_artifact,
    drill_store_down,
    drill_world,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DrillWorld]:
    if not REDIS_SERVER.exists():
        pytest.skip(f"{REDIS_SERVER} is not installed (./install.sh installs it)")
    with drill_world(Path(tmp_path_factory.mktemp("drills")) / "world", rate=40.0) as w:
        yield w


def test_feature_store_down_then_restarted_answers_everything_and_loses_nothing(world: DrillWorld) -> None:
    result = drill_store_down(world)
    assert result.availability == 1.0, result.line()
    assert result.observed, "no answer was flagged store_unavailable: the outage went unnoticed"
    assert result.lost_records == 0, result.line()


def test_a_challenger_raising_in_shadow_and_canary_costs_no_answer(world: DrillWorld) -> None:
    result = drill_challenger_raising(world)
    assert result.availability == 1.0, result.line()
    assert result.observed, result.line()
    assert result.lost_records == 0, result.line()


def test_a_corrupt_artifact_is_refused_and_the_champion_kept(world: DrillWorld) -> None:
    result = drill_corrupt_artifact(world)
    assert result.observed, "the corrupt version was promoted"
    assert result.availability == 1.0 and result.lost_records == 0, result.line()
    assert not [p for p in result.problems if "champion changed" in p], result.line()
