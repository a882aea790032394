"""The Serve application: router ingress bound to champion, challenger and fallback deployments.

``build_app(settings)`` is what ``dispatchml serve up`` runs locally and what a Serve config file
(``cluster/serve_config.yaml``, ``import_path: serve_apps.app:app``) deploys on a cluster.
"""

from __future__ import annotations

import os
from typing import Any

from ray.serve import Application

from cluster.config import Settings, load_settings
from serve_apps.model_server import DispatchModelServer, FallbackModelServer
from serve_apps.router import DispatchRouter


def build_app(settings: Settings) -> Application:
    registry = str(settings.paths.registry)
    replicas = settings.serving.model_replicas
    champion = DispatchModelServer.options(name="champion", num_replicas=replicas).bind(registry, "champion")
    challenger = DispatchModelServer.options(name="challenger", num_replicas=1).bind(registry, "challenger")
    fallback = FallbackModelServer.options(name="fallback", num_replicas=1).bind(registry)
    return DispatchRouter.options(name="router", num_replicas=settings.serving.router_replicas).bind(
        settings.model_dump(mode="json"), champion, challenger, fallback
    )


def app_builder(args: dict[str, Any]) -> Application:
    """Entry point for ``serve run`` / Serve config files: ``args: {config: path}`` or $DISPATCHML_CONFIG."""
    return build_app(load_settings(args.get("config") or os.environ.get("DISPATCHML_CONFIG")))
