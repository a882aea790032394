"""The scale-out files are real configs: Ray's own validator accepts the launcher config, and the
cluster settings file loads into the same typed settings as the embedded default."""

from pathlib import Path

import yaml

from cluster.config import load_settings

ROOT = Path(__file__).resolve().parents[2]


def test_ray_cluster_launcher_config_passes_rays_validator() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(yaml.safe_load((ROOT / "ray_config.yaml").read_text()))
    validate_config(config)
    assert config["provider"]["type"] == "local"


def test_cluster_settings_select_redis_and_shared_roots() -> None:
    settings = load_settings(ROOT / "cluster" / "cluster.yaml", environ={})
    assert settings.features.online_store == "redis"
    assert str(settings.paths.registry).startswith("/mnt/")


def test_serve_config_passes_serves_schema_and_names_the_app_builder() -> None:
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(yaml.safe_load((ROOT / "cluster" / "serve_config.yaml").read_text()))
    (app,) = config.applications
    assert app.import_path == "serve_apps.app:app_builder"
    assert {d["name"] if isinstance(d, dict) else d.name for d in app.deployments} == {"router", "champion", "challenger", "fallback"}
