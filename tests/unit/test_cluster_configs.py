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


KUBERAY = ROOT / "cluster" / "kuberay"


def _manifest(name: str) -> dict:
    return yaml.safe_load((KUBERAY / name).read_text())


def _parse_cli(argv: list[str]) -> None:
    """Parse a dispatchml command line down to its subcommand without running it, so a manifest's
    entrypoint cannot name a command or option the CLI does not have."""
    import typer

    from cluster.cli import app

    group = typer.main.get_command(app)
    ctx = group.make_context("dispatchml", [], resilient_parsing=True)
    rest = list(argv)
    while rest and rest[0] in ("--config", "--debug"):
        rest = rest[2:] if rest[0] == "--config" else rest[1:]
    name, *options = rest
    command = group.get_command(ctx, name)
    assert command is not None, f"dispatchml has no command {name!r}"
    command.make_context(name, options, parent=ctx)


def test_rayservice_serves_the_same_app_as_the_vm_cluster_serve_config() -> None:
    from ray.serve.schema import ServeDeploySchema

    service = _manifest("rayservice.yaml")
    assert service["apiVersion"] == "ray.io/v1" and service["kind"] == "RayService"
    embedded = yaml.safe_load(service["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(embedded)
    on_vms = yaml.safe_load((ROOT / "cluster" / "serve_config.yaml").read_text())
    assert embedded == on_vms


def test_rayjob_entrypoints_are_real_dispatchml_commands_on_the_shared_volume() -> None:
    import shlex

    cluster_root = str(load_settings(ROOT / "cluster" / "cluster.yaml", environ={}).paths.root)
    jobs = sorted(KUBERAY.glob("rayjob-*.yaml"))
    assert {p.name for p in jobs} >= {"rayjob-backtest.yaml", "rayjob-drift-scan.yaml"}
    for path in jobs:
        job = yaml.safe_load(path.read_text())
        assert job["kind"] == "RayJob" and job["spec"]["shutdownAfterJobFinishes"] is True
        argv = shlex.split(job["spec"]["entrypoint"])
        assert argv[0] == "dispatchml"
        _parse_cli(argv[1:])
        pods = [job["spec"]["rayClusterSpec"]["headGroupSpec"], *job["spec"]["rayClusterSpec"]["workerGroupSpecs"]]
        for pod in pods:
            (container,) = pod["template"]["spec"]["containers"]
            assert {m["mountPath"] for m in container["volumeMounts"]} == {cluster_root}


def test_the_image_copies_every_package_the_project_installs() -> None:
    import tomllib

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    dockerfile = (KUBERAY / "Dockerfile").read_text()
    for package in packages:
        assert f"COPY --chown=ray:users {package.rstrip('*')} " in dockerfile, package
