"""Starting, stopping and inspecting the scoring service on the local Ray (``dispatchml serve``).

``up`` starts a Ray head on this machine if none is running (with Serve's HAProxy ingress when
``serving.ha_proxy``), deploys ``serve_apps.app.build_app`` bound to loopback, and returns once
``/readyz`` answers 200, so the service is usable the moment the command ends. The same app
deploys unchanged on a multi-node cluster through ``cluster/serve_config.yaml``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from cluster.config import Settings

APP_NAME = "dispatch"


class ServeError(RuntimeError):
    """The service could not be started or reached; the message says what to do."""


@dataclass
class ServeStatus:
    url: str
    ready: bool
    detail: str
    deployments: dict[str, str]


def _ray() -> str:
    return str(Path(sys.executable).with_name("ray"))


def _env(settings: Settings) -> dict[str, str]:
    env = dict(os.environ)
    if settings.serving.ha_proxy:
        env["RAY_SERVE_ENABLE_HA_PROXY"] = "1"
    return env


def ray_running() -> bool:
    done = subprocess.run([_ray(), "status"], capture_output=True, text=True, check=False)
    return done.returncode == 0


def start_ray(settings: Settings) -> None:
    if ray_running():
        return
    done = subprocess.run(
        [_ray(), "start", "--head", "--port=6390", "--disable-usage-stats", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", "--num-cpus=2"],
        capture_output=True, text=True, env=_env(settings), check=False,
    )
    if done.returncode != 0:
        raise ServeError(f"ray start failed: {done.stderr.strip()[-500:]}")


def base_url(settings: Settings) -> str:
    return f"http://{settings.serving.host}:{settings.serving.port}"


def probe(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def up(settings: Settings, timeout_s: float = 300.0) -> ServeStatus:
    import ray
    from ray import serve

    from serve_apps.app import build_app

    start_ray(settings)
    os.environ.update({k: v for k, v in _env(settings).items() if k.startswith("RAY_SERVE")})
    ray.init(address="auto", ignore_reinit_error=True, log_to_driver=False)
    serve.start(http_options={"host": settings.serving.host, "port": settings.serving.port})
    serve.run(build_app(settings), name=APP_NAME, route_prefix="/", blocking=False)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        code, body = probe(base_url(settings) + "/readyz")
        if code == 200:
            return status(settings)
        time.sleep(1.0)
    raise ServeError(f"the app did not become ready in {timeout_s:.0f} s; last /readyz: {body.strip()[:300]}")


def status(settings: Settings) -> ServeStatus:
    code, body = probe(base_url(settings) + "/readyz")
    deployments: dict[str, str] = {}
    if ray_running():
        import ray
        from ray import serve

        ray.init(address="auto", ignore_reinit_error=True, log_to_driver=False)
        try:
            app = serve.status().applications.get(APP_NAME)
            if app is not None:
                deployments = {name: str(d.status) for name, d in app.deployments.items()}
        except Exception as exc:  # noqa: BLE001 - status reports what it can
            deployments = {"error": str(exc)}
    return ServeStatus(base_url(settings), code == 200, body.strip(), deployments)


def down(settings: Settings, stop_ray: bool = True) -> None:
    if ray_running():
        import ray
        from ray import serve

        ray.init(address="auto", ignore_reinit_error=True, log_to_driver=False)
        # Deleting the app first blocks until every replica finished its graceful shutdown,
        # which is where the router flushes its prediction-log backlog to disk.
        try:
            serve.delete(APP_NAME)
        except Exception as exc:
            if "not found" not in str(exc).lower() and "does not exist" not in str(exc).lower():
                raise
        serve.shutdown()
        ray.shutdown()
    if stop_ray:
        subprocess.run([_ray(), "stop", "--force"], capture_output=True, check=False)
        _stop_serve_haproxy()


def _stop_serve_haproxy() -> None:
    """Ray Serve's HAProxy ingress can outlive ``ray stop``; it holds the service port."""
    import psutil

    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if proc.info.get("name") == "haproxy" and "haproxy-serve" in cmdline:
            proc.terminate()
