"""Fixtures shared by the integration tests: the label world (built once per run) and a local Ray."""

from __future__ import annotations

import pytest

from tests.integration.label_world import LabelWorld, build_label_world


@pytest.fixture(scope="session")
def label_world(tmp_path_factory: pytest.TempPathFactory) -> LabelWorld:
    """``label_world.build_label_world``: the skew, label and monitor tests read it, none changes it
    (the monitor writes only under its own events and reports directories)."""
    return build_label_world(tmp_path_factory.mktemp("label-world"))


@pytest.fixture(scope="module")
def local_ray() -> object:
    import ray

    # address="local": our own cluster, never one another test or a `serve up` left running.
    # Ray gives its raylet a fixed 30 s to register; on a saturated machine that can lapse, so
    # the start is retried rather than failing the suite on load.
    if ray.is_initialized():  # a connection an earlier test left open would make init refuse
        ray.shutdown()
    for attempt in range(3):
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
            break
        except Exception as exc:  # Ray raises a bare Exception for the startup timeout
            ray.shutdown()
            if attempt == 2 or "timed out during startup" not in str(exc):
                raise
    yield ray
    ray.shutdown()
