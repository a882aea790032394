"""The real ``DispatchRouter`` as a plain ASGI app, without Ray Serve, for fuzzing and bad-input tests.

Everything on the request path is the product's code: parsing, cell lookup, the feature cache,
the degradation policy, the prediction log, metrics and the admin endpoints. Only what lives in
other processes is replaced: the champion/challenger/fallback deployments by in-process handles
with Serve's ``.method.remote(...)`` shape, and the Feast refresh by one cache load at start.

The cell grid spans the whole globe (4 x 4 cells of 45 x 90 degrees), so most locations a fuzzer
draws are inside it and reach scoring instead of stopping at "outside the service area".
Providers 0..99 have live features; any other id is an unknown provider (missing features).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from starlette.requests import Request

from cluster.config import Settings
from contracts.features import FEATURE_GROUPS, model_features
from contracts.scoring import SCORE_PATH
from contracts.warehouse import world_path
from retrain.fallback import FallbackModel
from retrain.registry import ModelRegistry, TrainingWindow, VersionSpec
from serve_apps.features import US
from serve_apps.pseudonym import KEYS_ENV
from serve_apps.router import ADMIN_TOKEN_ENV, DispatchRouter, FeatureRefresher

ADMIN_TOKEN = "in-process-admin-token-4c1d"
#: ``k1`` then ``k2``: rotation tests write under one and read under both.
PSEUDONYM_KEY_K1 = "k1:ZTJlLXBzZXVkb255bS1rZXktMDAwMDAwMDAwMDAwMDAwMDAwMDA="
PSEUDONYM_KEY_K2 = "k2:cm90YXRlZC1wc2V1ZG9ueW0ta2V5LTAwMDAwMDAwMDAwMDAwMDA="
KNOWN_PROVIDERS = np.arange(100, dtype=np.int64)
_DISTANCE = model_features().index("distance_km")


def _world(data: Path) -> None:
    rows, cols = np.divmod(np.arange(16), 4)
    world_path(data, "cells").parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({
        "cell_id": np.arange(16), "region_id": (rows >= 2).astype(np.int64), "row": rows, "col": cols,
        "center_lat": -90.0 + (rows + 0.5) * 45.0, "center_lon": -180.0 + (cols + 0.5) * 90.0,
    }), world_path(data, "cells"))
    pq.write_table(pa.table({"provider_id": KNOWN_PROVIDERS, "provider_cohort": ["established"] * len(KNOWN_PROVIDERS)}),
                   world_path(data, "providers"))


def _spec(family: str, **extra: Any) -> VersionSpec:
    return VersionSpec(
        family=family, training_window=TrainingWindow(start=datetime(2026, 1, 1, tzinfo=UTC), end=datetime(2026, 2, 1, tzinfo=UTC)),
        data_fingerprint="in-process", feature_service="dispatch_candidate_features", feature_definition_version="test", **extra,
    )


def _registry(root: Path) -> None:
    """A dispatch champion and challenger (their artifacts are never loaded: the fake handles score); kept if present."""
    registry = ModelRegistry(root)
    if registry.alias("dispatch", "champion") is not None:
        return
    for family in ("eta", "acceptance"):
        registry.register(_spec(family), lambda d: (d / "model.txt").write_text("stub"), version=f"{family}-v1")
    # A real fallback model: the router's in-process last resort when the fallback deployment
    # misses its 30 ms deadline (which a loaded test machine can make it do).
    rng = np.random.default_rng(7)
    history = pd.DataFrame({
        "request_ts": pd.date_range("2026-01-01", periods=400, freq="37min", tz="UTC"), "cell_id": rng.integers(0, 16, 400),
        "arrival_minutes": rng.gamma(4.0, 6.0, 400), "accepted": rng.random(400) < 0.6, "provider_id": rng.integers(0, 100, 400),
    })
    history["region_id"] = (history.cell_id >= 8).astype(np.int64)
    registry.register(_spec("fallback"), FallbackModel().fit(history).save, version="fallback-v1")
    registry.set_alias("fallback", "champion", "fallback-v1", moved_by="test", reason="in-process router")
    for version, alias in (("dispatch-v1", "champion"), ("dispatch-v2", "challenger")):
        registry.register(_spec("dispatch", components={"eta": "eta-v1", "acceptance": "acceptance-v1"}),
                          lambda d: (d / "policy.json").write_text("{}"), version=version)
        registry.set_alias("dispatch", alias, version, moved_by="test", reason="in-process router")


def _scores(distance_km: np.ndarray, versions: dict[str, str | None]) -> dict[str, Any]:
    """Nearest first; ETA from distance at 40 km/h, finite even where the distance is unknown."""
    distance = np.where(np.isfinite(distance_km), distance_km, 50.0)
    eta = 5.0 + distance * 1.5
    order = np.argsort(eta, kind="stable")
    rank = np.empty(len(eta), np.int64)
    rank[order] = np.arange(1, len(eta) + 1)
    return {"eta_minutes": eta, "eta_low": eta * 0.8, "eta_high": eta * 1.3, "p_accept": np.full(len(eta), 0.5),
            "rank": rank, "versions": versions}


class _Remote:
    def __init__(self, fn) -> None:
        self.fn = fn

    def remote(self, *args: Any):
        async def call():
            await asyncio.sleep(0)
            return self.fn(*args)

        return call()


class FakeDispatchHandle:
    """``score_batch.remote(matrices)`` like ``DispatchModelServer``; ``eta_bias`` minutes makes a worse model."""

    def __init__(self, distance_column: int, version: str = "dispatch-v1", eta_bias: float = 0.0) -> None:
        self.distance_column, self.version, self.eta_bias = distance_column, version, eta_bias
        self.score_batch = _Remote(lambda matrices: [self.score(m) for m in matrices])

    def current(self) -> tuple[str, float]:
        """The version that scores and its ETA bias (a subclass may follow a registry alias)."""
        return self.version, self.eta_bias

    def score(self, matrix: np.ndarray) -> dict[str, Any]:
        version, eta_bias = self.current()
        scores = _scores(matrix[:, self.distance_column].astype(np.float64), {"dispatch": version, "eta": "eta-v1", "acceptance": "acceptance-v1"})
        for name in ("eta_minutes", "eta_low", "eta_high"):
            scores[name] = scores[name] + eta_bias
        return scores


class FakeFallbackHandle:
    """``score.remote(cell, region, hour, providers, distance)`` like ``FallbackModelServer``."""

    def __init__(self) -> None:
        self.score = _Remote(lambda cell, region, hour, providers, distance: _scores(distance, {"dispatch": None, "eta": "fb-v1", "acceptance": "fb-v1"}))


def _load_features(router: Any) -> None:
    now_us = int(time.time() * US)
    ids = {"provider": KNOWN_PROVIDERS, "cell": np.arange(16), "region": np.arange(2)}
    for g in FEATURE_GROUPS:
        keys = ids[g.entity]
        values = np.ones((len(keys), len(g.features)), np.float32)
        if g.name == "provider_status":
            values[:, g.features.index("provider_lat")] = 22.5 + keys * 0.01
            values[:, g.features.index("provider_lon")] = -45.0
        router.cache.refresh(g, keys, lambda group, ids, v=values, k=keys: (k, v, np.full(len(k), now_us)))
    router.refresher.loaded_once.set()


@dataclass
class InProcessRouter:
    router: Any
    settings: Settings

    async def __call__(self, scope: dict, receive, send) -> None:
        """ASGI: what Serve's proxy does, minus the proxy."""
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        response = await self.router(Request(scope, receive))
        await response(scope, receive, send)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One HTTP request through the ASGI interface (each on its own event loop, as Serve's
        replica would run it on its own)."""

        async def send() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=self), base_url="http://127.0.0.1") as client:
                return await client.request(method, path, **kwargs)

        return asyncio.run(send())

    def score(self, body: Any) -> httpx.Response:
        return self.request("POST", SCORE_PATH, json=body)

    @property
    def prediction_log(self) -> Path:
        return Path(self.settings.paths.root) / "prediction_log"


@contextmanager
def in_process_router(
    root: Path,
    *,
    admin_token: str | None = ADMIN_TOKEN,
    keys: str = PSEUDONYM_KEY_K1,
    champion: FakeDispatchHandle | None = None,
    challenger: FakeDispatchHandle | None = None,
) -> Iterator[InProcessRouter]:
    """A router over a world under ``root`` (made on first use, so a second router on the same
    root is a restart); closes its prediction log on exit. ``champion`` and ``challenger`` replace
    the model deployments (by default both score as ``dispatch-v1``)."""
    settings = Settings.model_validate({"paths": {"root": root, "data": root / "data", "registry": root / "registry",
                                                  "feature_store": root / "feature_store", "reports": root / "reports",
                                                  "events": root / "events"}})
    _world(settings.paths.data)
    _registry(settings.paths.registry)
    env = {KEYS_ENV: keys, ADMIN_TOKEN_ENV: admin_token}
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            if value is None:
                patch.delenv(name, raising=False)
            else:
                patch.setenv(name, value)
        patch.delenv("DISPATCHML_PSEUDONYM_KEYS_FILE", raising=False)
        patch.setattr(FeatureRefresher, "start", lambda self: None)  # no Feast: features are loaded below
        router = DispatchRouter.func_or_class(settings.model_dump(mode="json"), champion or FakeDispatchHandle(_DISTANCE),
                                              challenger or FakeDispatchHandle(_DISTANCE), FakeFallbackHandle(), replica_tag="in-process")
    _load_features(router)
    try:
        yield InProcessRouter(router, settings)
    finally:
        router.local_fallback.stop()
        assert router.log.close(timeout=30), "the prediction log did not drain"
