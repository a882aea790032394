"""Session fixtures shared by integration modules: the label world is built once per run."""

from __future__ import annotations

import pytest

from tests.integration.label_world import LabelWorld, build_label_world


@pytest.fixture(scope="session")
def label_world(tmp_path_factory: pytest.TempPathFactory) -> LabelWorld:
    """``label_world.build_label_world``: the skew, label and monitor tests read it, none changes it
    (the monitor writes only under its own events and reports directories)."""
    return build_label_world(tmp_path_factory.mktemp("label-world"))
