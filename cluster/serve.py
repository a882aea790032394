"""Starting, stopping and inspecting the scoring service on the local Ray (``dispatchml serve``).

``up`` starts a Ray head on this machine if none is running (with Serve's HAProxy ingress when
``serving.ha_proxy``), deploys ``serve_apps.app.build_app`` bound to loopback, and returns once
``/readyz`` answers 200, so the service is usable the moment the command ends. The same app
deploys unchanged on a multi-node cluster through ``cluster/serve_config.yaml``.
"""

from __future__ import annotations

import logging
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
#: The GCS port of the Ray head ``start_ray`` launches. Every call here addresses this cluster
#: by it, never ``address="auto"``: other local clusters (a test's or a job's ``ray.init()``)
#: may run on the same machine and must neither be joined nor stopped.
RAY_PORT = 6390
RAY_ADDRESS = f"127.0.0.1:{RAY_PORT}"


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
    """Whether the Ray head of ``start_ray`` runs (its GCS server is up), whatever else runs."""
    return _head_session_dir() is not None


def _head_session_dir() -> str | None:
    """The session directory of the head on ``RAY_PORT``, read off its GCS server's command line."""
    import psutil

    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        if proc.info.get("name") == "gcs_server" and f"--gcs_server_port={RAY_PORT}" in cmdline:
            for arg in cmdline:
                if arg.startswith("--log_dir="):
                    return str(Path(arg.split("=", 1)[1]).parent)
    return None


def start_ray(settings: Settings) -> None:
    if ray_running():
        return
    done = subprocess.run(
        [_ray(), "start", "--head", f"--port={RAY_PORT}", "--disable-usage-stats", "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1", "--num-cpus=2"],
        capture_output=True, text=True, env=_env(settings), check=False,
    )
    if done.returncode != 0:
        raise ServeError(f"ray start failed: {done.stderr.strip()[-500:]}")


def connect() -> None:
    """Join the head ``start_ray`` launched as a driver (idempotent).

    ``ray start`` turns token authentication on when a token exists (``~/.ray/auth_token``), and
    ``ray.init`` only looks for one when it finds the cluster itself (``address="auto"``), never
    for an explicit address; this does the same look-up first (Ray's own function for it), and
    an explicit ``RAY_AUTH_MODE`` still wins.
    """
    import ray
    from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    ray.init(address=RAY_ADDRESS, ignore_reinit_error=True, log_to_driver=False, logging_level=logging.WARNING)
    # Serve's driver-side INFO lines ("Started Serve", "Deleting app") would scroll through the CLI's output.
    logging.getLogger("ray.serve").setLevel(logging.WARNING)


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
    from ray import serve

    from serve_apps.app import build_app

    start_ray(settings)
    os.environ.update({k: v for k, v in _env(settings).items() if k.startswith("RAY_SERVE")})
    connect()
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
        from ray import serve

        connect()
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

        connect()
        # Deleting the app first blocks until every replica finished its graceful shutdown,
        # which is where the router flushes its prediction-log backlog to disk.
        try:
            serve.delete(APP_NAME)
        except Exception as exc:
            if not any(gone in str(exc).lower() for gone in ("not found", "does not exist", "no serve instance")):
                raise
        serve.shutdown()
        ray.shutdown()
    if stop_ray:
        stop_head()
        _stop_serve_haproxy()


def head_processes() -> list:
    """Every process of the head ``start_ray`` launched (``psutil.Process``), none of other clusters.

    Its daemons (GCS server, raylet, dashboard, monitors) name its session directory on their
    command lines; its workers are the raylet's children (their titles are rewritten to
    ``ray::...``, so they are found through the process tree).
    """
    import psutil

    session = _head_session_dir()
    if session is None:
        return []
    found: dict[int, psutil.Process] = {}
    for proc in psutil.process_iter(["cmdline"]):
        if any(session in arg for arg in proc.info.get("cmdline") or []):
            found[proc.pid] = proc
            try:
                found.update({child.pid: child for child in proc.children(recursive=True)})
            except psutil.NoSuchProcess:
                pass
    return list(found.values())


def stop_head(grace_s: float = 10.0) -> int:
    """Stop the Ray head ``start_ray`` launched, and only it; returns how many processes ended.

    ``ray stop`` would end every Ray process on the machine, other users' clusters included.
    Each of ``head_processes()`` gets SIGTERM, and SIGKILL after ``grace_s``, as ``ray stop
    --force`` does for its own processes.
    """
    import psutil

    doomed = {proc.pid: proc for proc in head_processes()}
    doomed.pop(os.getpid(), None)
    for proc in doomed.values():
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(list(doomed.values()), timeout=grace_s)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_s)
    return len(doomed)


def _stop_serve_haproxy() -> None:
    """Ray Serve's HAProxy ingress can outlive ``ray stop``; it holds the service port."""
    import psutil

    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = " ".join(proc.info.get("cmdline") or [])
        if proc.info.get("name") == "haproxy" and "haproxy-serve" in cmdline:
            proc.terminate()
