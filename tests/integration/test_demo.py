"""The README's main job, shortened: ``dispatchml demo`` from an empty directory to registered models.

Also where the model-quality promises are checked on the simulated world itself (not a
synthetic frame): the ETA champion beats the feature-free fallback on held-out MAE in every
region, and the acceptance champion's held-out ECE is reported and below 0.05.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from retrain.registry import ModelRegistry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DISPATCHML = Path(sys.executable).with_name("dispatchml")


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    workdir = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run(
        [
            str(DISPATCHML), "demo", "--workdir", str(workdir), "--days", "24", "--events-per-day", "20000",
            "--cells", "1200", "--regions", "6", "--providers", "4000",
        ],
        capture_output=True, text=True, timeout=900, env=env,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return workdir, done


def test_demo_prints_what_it_did_and_where(demo_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    workdir, done = demo_run
    out = done.stdout
    for expected in ("simulated", "holdout metrics", "registered versions", "eta@champion", str(workdir / "registry")):
        assert expected in out, f"{expected!r} missing from demo output"
    assert (workdir / "dispatchml.yaml").exists()


def test_champion_aliases_and_metadata_are_recorded(demo_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    registry = ModelRegistry(demo_run[0] / "registry")
    for family in ("eta", "acceptance", "dispatch"):
        meta = registry.metadata(family, "champion")
        assert meta.training_window.start < meta.training_window.end
        assert len(meta.data_fingerprint) == 64
        assert meta.feature_definition_version.startswith("fd-")
    assert registry.alias("fallback", "fallback") is not None


def test_eta_champion_beats_fallback_in_every_region(demo_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    registry = ModelRegistry(demo_run[0] / "registry")
    eta = registry.metadata("eta", "champion").segment_metrics["region_id"]
    fallback = registry.metadata("fallback", "champion").segment_metrics["region_id"]
    regions = sorted(eta)
    assert len(regions) == 6, f"holdout metrics cover regions {regions}"
    worse = {r: (eta[r]["mae"], fallback[r]["eta_mae"]) for r in regions if eta[r]["mae"] >= fallback[r]["eta_mae"]}
    assert not worse, f"ETA model not better than fallback in regions (model MAE, fallback MAE): {worse}"


def test_acceptance_ece_is_reported_and_below_005(demo_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    meta = ModelRegistry(demo_run[0] / "registry").metadata("acceptance", "champion")
    assert "ece" in meta.metrics
    assert meta.metrics["ece"] < 0.05, json.dumps(meta.metrics)
    assert meta.metrics["n"] > 1000
