"""Settings load from one YAML file, with environment overrides, and reject unknown keys."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from cluster.config import DEFAULT_CONFIG, load_settings


def test_default_is_the_embedded_single_machine_setup() -> None:
    s = load_settings(DEFAULT_CONFIG, environ={})
    assert s.features.online_store == "sqlite"
    assert s.world.cells == 25_000 and s.world.providers == 80_000


def test_environment_overrides_nested_fields() -> None:
    s = load_settings(
        DEFAULT_CONFIG,
        environ={"DISPATCHML__FEATURES__ONLINE_STORE": "redis", "DISPATCHML__WORLD__CELLS": "1200"},
    )
    assert s.features.online_store == "redis"
    assert s.world.cells == 1200


def test_unknown_keys_are_errors_not_silently_ignored(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("world:\n  cels: 10\n")
    with pytest.raises(ValidationError, match="cels"):
        load_settings(cfg, environ={})


def test_missing_file_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="--config"):
        load_settings(tmp_path / "nope.yaml", environ={})
