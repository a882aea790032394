"""Session fixtures: small simulated warehouses, each simulated once per (scenario, seed)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from simulated_warehouse import SEED, Warehouse, run_simulation

from simulator.scenarios import Scenario


@pytest.fixture(scope="session")
def simulate_small(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Warehouse]:
    """``simulate_small(scenario=None, seed=SEED)``: the small world simulated into a session tmp dir."""
    runs: dict[tuple[str, int], Warehouse] = {}

    def run(scenario: Scenario | None = None, seed: int = SEED) -> Warehouse:
        key = (scenario.model_dump_json() if scenario else "", seed)
        if key not in runs:
            name = scenario.name if scenario else "baseline"
            runs[key] = run_simulation(tmp_path_factory.mktemp(f"{name}-seed{seed}"), scenario, seed)
        return runs[key]

    return run


@pytest.fixture(scope="session")
def baseline(simulate_small: Callable[..., Warehouse]) -> Warehouse:
    """The small world with no incidents: the reference every scenario is compared with."""
    return simulate_small()
