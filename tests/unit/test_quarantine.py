"""Feature-group quarantine: a data-quality incident sends one region's jobs to the fallback, live.

The policy's ``fallback_feature_group`` action writes the quarantine beside the traffic split;
the real router (in-process) must pick it up without a restart, serve the quarantined region
from the fallback with the reason in the response, leave other regions alone, and return to the
champion once the quarantine is lifted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from in_process_router import InProcessRouter, in_process_router
from test_bad_input import good

from serve_apps.traffic_state import lift_quarantine, quarantine_group, read_quarantine

REGION_1 = {"lat": 22.61, "lon": -45.13}  # grid row 2 -> region 1
REGION_0 = {"lat": -50.0, "lon": -45.13}  # grid row 0 -> region 0


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[InProcessRouter, Path]]:
    root = tmp_path_factory.mktemp("quarantine")
    with in_process_router(root) as app:
        yield app, root / "registry"


def _score(app: InProcessRouter, job: str, location: dict) -> dict:
    body = good(job)
    body["location"] = location
    response = app.score(body)
    assert response.status_code == 200, response.text
    return response.json()


def _until(predicate, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "the router did not pick up the quarantine change"
        time.sleep(0.2)


def test_quarantine_serves_the_region_from_fallback_until_lifted(router: tuple[InProcessRouter, Path]) -> None:
    app, registry = router
    assert _score(app, "q-before", REGION_1)["arm"] == "champion"
    quarantine_group(registry, "cell_traffic", (1,), incident_key="inc-23", reason="speed_kmh out of range in region 1")
    assert read_quarantine(registry).groups_for(1) == {"cell_traffic"} and not read_quarantine(registry).groups_for(0)
    _until(lambda: _score(app, "q-probe", REGION_1)["arm"] == "fallback")
    answer = _score(app, "q-during", REGION_1)
    assert answer["degraded"] and {"component": "cell_traffic", "reason": "quarantined"} in [
        {k: d[k] for k in ("component", "reason")} for d in answer["degradations"]]
    assert _score(app, "q-other-region", REGION_0)["arm"] == "champion"
    lift_quarantine(registry, incident_key="inc-23")
    _until(lambda: _score(app, "q-probe-after", REGION_1)["arm"] == "champion")


def test_unknown_feature_group_is_refused(router: tuple[InProcessRouter, Path]) -> None:
    _, registry = router
    with pytest.raises(KeyError):
        quarantine_group(registry, "not_a_group", (1,), incident_key="x", reason="r")
