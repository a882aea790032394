"""The ingress: validates, routes between champion, challenger and fallback, shadows, logs.

Every request gets an answer. The order of defences:

1. Bad input is a 4xx naming the field and the rule (``contracts.scoring``); never a 5xx.
2. Features come from the replica-local cache (``serve_apps.features``); the store being slow or
   down only ages them, and ``serve_apps.scoring.feature_degradations`` turns age into a flag
   (stale) or a switch to the fallback model (missing), per job, so one region's outage degrades
   only that region.
3. The chosen model is called under a deadline inside the latency budget and behind a circuit
   breaker per arm: a failing champion costs one deadline per breaker window, then nothing.
4. The fallback deployment answers next; if it fails too, the router's own copy of the fallback
   model does. Each fallback is a decision: counted by reason, logged, flagged in the response.

Shadow scoring runs after the response is sent, in a task of its own; its result is logged as
``role=shadow`` and can never change or delay a response.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from pydantic import ValidationError
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from cluster.config import Settings
from contracts.features import FEATURE_GROUPS
from contracts.prediction_log import ModelVersions, prediction_columns
from contracts.scoring import (
    SCORE_PATH,
    Degradation,
    DegradationReason,
    RequestTimeError,
    RequestTooLargeError,
    parse_score_request,
    validation_problem,
)
from contracts.warehouse import world_path
from retrain.registry import ModelRegistry, RegistryError
from serve_apps.batching import HandleBatcher
from serve_apps.breaker import BreakerSet, CircuitBreaker
from serve_apps.cells import CellIndex, OutsideServiceAreaError
from serve_apps.clock import ServiceClock
from serve_apps.features import FeatureCache, feast_loader, with_deadline
from serve_apps.metrics import ServingMetrics
from serve_apps.model_server import AliasFollower, fallback_scores
from serve_apps.openapi import (
    ADMIN_ROLLBACK_PATH,
    ADMIN_TOKEN_ENV,
    ADMIN_TRAFFIC_PATH,
    AdminAuthError,
    RollbackRequest,
    TrafficChange,
    check_admin_token,
    openapi_document,
)
from serve_apps.prediction_log import PredictionLogWriter
from serve_apps.providers import ProviderDirectory
from serve_apps.pseudonym import KeyRing
from serve_apps.scoring import (
    ArmScores,
    PreparedJob,
    distance_km,
    feature_degradations,
    prepare_job,
    response_for,
    scored_candidates,
)
from serve_apps.traffic import TrafficPolicy, assign_arm
from serve_apps.traffic_state import (
    Quarantine,
    change_traffic,
    live_policy,
    quarantine_path,
    read_quarantine,
    read_state,
    traffic_path,
)

log = logging.getLogger("ray.serve")

#: Deadline for a model call; the rest of the 120 ms budget is parsing, features and logging.
MODEL_DEADLINE_S = 0.06
FALLBACK_DEADLINE_S = 0.03
POLICY_POLL_S = 1.0
def _group_columns() -> dict[str, slice]:
    """Each stored group's columns in the model matrix (groups first, in catalogue order)."""
    bounds = np.cumsum([0, *(len(g.features) for g in FEATURE_GROUPS)])
    return {g.name: slice(int(a), int(b)) for g, a, b in zip(FEATURE_GROUPS, bounds[:-1], bounds[1:], strict=True)}


#: Computed once, not per request.
GROUP_COLUMNS = _group_columns()

#: A refresh that takes longer than this marks the group's store as unavailable.
REFRESH_DEADLINE_S = 3.0
#: How long a starting replica waits for every group's first load before it reports ready.
FIRST_LOAD_WAIT_S = 120.0


def _scores(raw: dict[str, Any]) -> ArmScores:
    return ArmScores(
        np.asarray(raw["eta_minutes"], np.float64),
        np.asarray(raw["eta_low"], np.float64),
        np.asarray(raw["eta_high"], np.float64),
        np.asarray(raw["p_accept"], np.float64),
        np.asarray(raw["rank"], np.int64),
    )


def _versions(raw: dict[str, Any]) -> ModelVersions:
    v = raw["versions"]
    return ModelVersions(v.get("dispatch"), v.get("eta"), v.get("acceptance"))


#: Methods per endpoint; anything else is a 405 with an ``Allow`` header.
_ALLOWED_METHODS: dict[str, tuple[str, ...]] = {
    SCORE_PATH: ("POST",),
    ADMIN_TRAFFIC_PATH: ("POST",),
    ADMIN_ROLLBACK_PATH: ("POST",),
    **{path: ("GET", "HEAD") for path in ("/healthz", "/readyz", "/metrics", "/openapi.json")},
}


def problem(status: int, error: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": error, **extra}, status_code=status)


class HotEntities:
    """Entity ids requested since the last refresh: what the frequent near-real-time reload covers.

    Reloading every provider every 5 s through Feast held this replica's GIL for hundreds of ms
    per cycle (py-spy: ~20% of the router's CPU), stalling requests past their deadlines. Ids
    that were requested are refreshed every cycle; the rest on the full reload every minute.
    Ages are per value, so an entity served from the slower cycle is still reported honestly.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: dict[str, set[int]] = {"provider": set(), "cell": set(), "region": set()}

    def touch(self, provider_ids: np.ndarray, cell_id: int, region_id: int) -> None:
        with self._lock:
            self._ids["provider"].update(provider_ids.tolist())
            self._ids["cell"].add(cell_id)
            self._ids["region"].add(region_id)

    def drain(self) -> dict[str, np.ndarray]:
        with self._lock:
            ids, self._ids = self._ids, {"provider": set(), "cell": set(), "region": set()}
        return {entity: np.fromiter(values, dtype=np.int64, count=len(values)) for entity, values in ids.items()}


class FeatureRefresher:
    """Background loads of the cache: requested near-real-time entities every few seconds, all of
    them every minute (``serving.nrt_*``), batch groups every few minutes."""

    def __init__(self, cache: FeatureCache, settings: Settings, entity_ids: dict[str, np.ndarray], metrics: ServingMetrics) -> None:
        self.cache, self.settings, self.entity_ids, self.metrics = cache, settings, entity_ids, metrics
        self.hot = HotEntities()
        self.loaded_once = threading.Event()
        self._stop = threading.Event()
        self._store = None

    def _loader(self):
        if self._store is None:
            from cluster.feature_store import get_store

            self._store = get_store(self.settings)
            self._load = with_deadline(feast_loader(self._store), REFRESH_DEADLINE_S)
        return self._load

    def refresh(self, cadence: str | None = None, only: dict[str, np.ndarray] | None = None, groups: set[str] | None = None) -> None:
        for g in FEATURE_GROUPS:
            if (cadence is not None and g.cadence != cadence) or (groups is not None and g.name not in groups):
                continue
            ids = self.entity_ids[g.entity] if only is None else only[g.entity]
            if len(ids) == 0:
                # Nothing requested lately: still probe one entity so an outage is noticed.
                ids = self.entity_ids[g.entity][:1]
            try:
                loader = self._loader()
            except Exception as exc:  # noqa: BLE001 - an unreachable store is recorded per group below
                error = exc

                def loader(group, ids, error=error):
                    raise error

            health = self.cache.refresh(g, ids, loader)
            if not health.available:
                self.metrics.record_feature_refresh_failure(g.name)

    def start(self) -> None:
        def run() -> None:
            self.refresh()
            # Ready once every group loaded once: a replica answering from an empty cache would
            # send every job to the fallback. A big group's first load can overrun the refresh
            # deadline (it goes on in the background, see ``with_deadline``), so wait for it; a
            # store that stays down lets the replica come up after FIRST_LOAD_WAIT_S anyway, to
            # serve from the fallback.
            waited = time.monotonic() + FIRST_LOAD_WAIT_S
            while not self._stop.is_set() and time.monotonic() < waited:
                unloaded = {g.name for g in FEATURE_GROUPS if self.cache.health[g.name].last_success_at is None}
                if not unloaded:
                    break
                self._stop.wait(0.5)
                self.refresh(groups=unloaded)
            self.loaded_once.set()
            last_batch = last_full = time.monotonic()
            serving = self.settings.serving
            while not self._stop.wait(serving.nrt_refresh_s):
                if time.monotonic() - last_full > serving.nrt_full_refresh_s:
                    self.hot.drain()
                    self.refresh("near_real_time")
                    last_full = time.monotonic()
                else:
                    self.refresh("near_real_time", only=self.hot.drain())
                if time.monotonic() - last_batch > serving.batch_refresh_s:
                    self.refresh("batch")
                    last_batch = time.monotonic()

        threading.Thread(target=run, name="feature-refresh", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()


@serve.deployment(max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0})
class DispatchRouter:
    def __init__(self, settings: dict[str, Any], champion, challenger, fallback, replica_tag: str | None = None) -> None:
        self.settings = Settings.model_validate(settings)
        paths = self.settings.paths
        data = Path(paths.data)
        self.cells = CellIndex.from_parquet(world_path(data, "cells"))
        self.providers = ProviderDirectory.from_parquet(world_path(data, "providers"))
        self.keys = KeyRing.from_env() if os.environ.get("DISPATCHML_PSEUDONYM_KEYS") or os.environ.get("DISPATCHML_PSEUDONYM_KEYS_FILE") else KeyRing.ephemeral()
        self.metrics = ServingMetrics(price_per_cpu_second=self.settings.serving.price_per_cpu_second)
        self.clock = ServiceClock.from_settings(self.settings)
        self.cache = FeatureCache(clock=self.clock.now)
        cells_table = pq.read_table(world_path(data, "cells"), columns=["cell_id", "region_id"])
        entity_ids = {
            "provider": self.providers.ids,
            "cell": cells_table.column("cell_id").to_numpy(),
            "region": np.unique(cells_table.column("region_id").to_numpy()),
        }
        self.refresher = FeatureRefresher(self.cache, self.settings, entity_ids, self.metrics)
        self.refresher.start()
        replica = replica_tag or serve.get_replica_context().replica_tag
        # Flush every 2 s: at most that much is at risk if a replica is killed without warning.
        self.log = PredictionLogWriter(
            Path(paths.root) / "prediction_log", replica_id=str(replica).replace("/", "_").replace("#", "_"), flush_seconds=2.0,
            max_backlog_rows=self.settings.serving.log_max_backlog_rows, flush_rows=min(20_000, self.settings.serving.log_max_backlog_rows),
        )
        self.registry = ModelRegistry(paths.registry)
        self.handles = {"champion": champion, "challenger": challenger}
        self.batchers = {arm: HandleBatcher(handle.score_batch.remote) for arm, handle in self.handles.items()}
        self.fallback_handle = fallback
        self.local_fallback = AliasFollower(str(paths.registry), "fallback", "champion")
        breaker = lambda: CircuitBreaker(failure_threshold=5, window_seconds=10, open_seconds=5, half_open_max_calls=3, slow_call_seconds=MODEL_DEADLINE_S)  # noqa: E731
        self.breakers = BreakerSet(breaker, max_keys=16)
        self.admin_token = os.environ.get(ADMIN_TOKEN_ENV) or None
        self.policy: TrafficPolicy | None = None
        self._policy_stamp: tuple[float, int] | None = None
        self.quarantine = Quarantine()
        self._quarantine_stamp: float | None = None
        self._reload_policy()
        self._shadow_tasks: set[asyncio.Task] = set()

    # -- runtime state ---------------------------------------------------------------------------------

    def _reload_policy(self) -> None:
        path = traffic_path(self.registry.root)
        champion = self.registry.alias("dispatch", "champion")
        challenger = self.registry.alias("dispatch", "challenger")
        stamp = (
            path.stat().st_mtime if path.exists() else 0.0,
            (champion.generation if champion else -1) * 1000 + (challenger.generation if challenger else -1),
        )
        if stamp != self._policy_stamp:
            self.policy = live_policy(self.registry, read_state(self.registry.root))
            self._policy_stamp = stamp
            if self.policy is not None:
                fallback = self.local_fallback.current
                self.metrics.record_policy(
                    self.policy.generation,
                    self.policy.challenger_weight,
                    {"champion": self.policy.champion, "challenger": self.policy.challenger, "fallback": fallback.version if fallback else None},
                )
        quarantine_file = quarantine_path(self.registry.root)
        quarantine_stamp = quarantine_file.stat().st_mtime if quarantine_file.exists() else 0.0
        if quarantine_stamp != self._quarantine_stamp:
            self.quarantine = read_quarantine(self.registry.root)
            self._quarantine_stamp = quarantine_stamp
        self._policy_checked = time.monotonic()

    def _current_policy(self) -> TrafficPolicy | None:
        if time.monotonic() - getattr(self, "_policy_checked", 0.0) > POLICY_POLL_S:
            self._reload_policy()
        return self.policy

    # -- HTTP ----------------------------------------------------------------------------------------------

    async def __call__(self, request: Request) -> Response:
        path, method = request.url.path, request.method
        started = time.perf_counter()
        endpoint = path if path in _ALLOWED_METHODS else "other"
        try:
            allowed = _ALLOWED_METHODS.get(path)
            if allowed is not None and method not in allowed:
                # RFC 9110 section 15.5.6: a 405 must list the methods the resource supports.
                response = problem(405, "method_not_allowed", detail=f"{path} accepts {', '.join(allowed)}")
                response.headers["Allow"] = ", ".join(allowed)
            elif path == SCORE_PATH and method == "POST":
                response = await self.score(request)
            elif path == "/healthz":
                response = Response("ok\n", media_type="text/plain")
            elif path == "/readyz":
                response = self.readyz()
            elif path == "/metrics":
                self.metrics.observe_log(dataclasses.asdict(self.log.snapshot()))
                for dependency, breaker in self.breakers.stats().items():
                    self.metrics.observe_breakers(dependency, [breaker.state])
                body, content_type = self.metrics.exposition()
                response = Response(body, media_type=content_type)
            elif path == "/openapi.json":
                response = JSONResponse(openapi_document())
            elif path in (ADMIN_TRAFFIC_PATH, ADMIN_ROLLBACK_PATH):
                response = await self.admin(request, path)
            else:
                response = problem(404, "not_found", detail=f"no endpoint {path}; see /openapi.json")
        except Exception:
            log.exception("unhandled error on %s", path)
            response = problem(500, "internal_error")
        self.metrics.record_request(endpoint, response.status_code, time.perf_counter() - started)
        return response

    def readyz(self) -> Response:
        problems = []
        if not self.refresher.loaded_once.is_set():
            problems.append("features: first load not finished")
        if self._current_policy() is None:
            problems.append("no dispatch@champion version")
        if problems:
            return Response("not ready: " + "; ".join(problems) + "\n", status_code=503, media_type="text/plain")
        return Response("ready\n", media_type="text/plain")

    async def score(self, request: Request) -> Response:
        cpu_started = time.process_time()
        started = time.perf_counter()
        if "json" not in request.headers.get("content-type", "application/json"):
            return problem(415, "unsupported_media_type", detail="send application/json")
        body = await request.body()
        now = self.clock.datetime()
        try:
            parsed = parse_score_request(body, now)
        except RequestTooLargeError as exc:
            return problem(413, "request_too_large", detail=str(exc))
        except ValidationError as exc:
            return JSONResponse(validation_problem(exc), status_code=422)
        except RequestTimeError as exc:
            return problem(422, "invalid_request", problems=[{"field": "requested_at", "rule": str(exc)}])
        except ValueError as exc:
            return problem(400, "malformed_json", detail=str(exc)[:200])
        request_id = uuid.uuid4().hex
        try:
            job = prepare_job(parsed, request_id, self.cells, self.cache, self.providers, self.keys, now.timestamp())
        except OutsideServiceAreaError as exc:
            return problem(422, "invalid_request", problems=[{"field": "location", "rule": str(exc)}])

        self.refresher.hot.touch(job.provider_ids, job.cell_id, job.region_id)
        policy = self._current_policy()
        use_fallback, degradations = feature_degradations(job.features, self.quarantine.groups_for(job.region_id))
        arm = assign_arm(job.job_id, policy) if policy is not None else "champion"
        raw: dict[str, Any] | None = None
        if policy is None:
            degradations.append(Degradation(component="dispatch_model", reason=DegradationReason.MODEL_ERROR, detail="no champion registered"))
        elif not use_fallback:
            raw = await self._call_model(arm, job, degradations)
        served_arm = arm
        if raw is None:
            served_arm = "fallback"
            reason = degradations[-1].reason.value if degradations else "features"
            self.metrics.record_fallback(reason)
            raw = await self._fallback(job, degradations)
        latency_ms = (time.perf_counter() - started) * 1000.0
        scores, versions = _scores(raw), _versions(raw)
        response = response_for(job, served_arm, versions, scores, degradations)
        self._log(job, "served", served_arm, versions, scores, latency_ms, degradations)
        self._record(served_arm, versions, scores, degradations, job)
        if policy is not None and served_arm == "champion" and policy.shadows(arm):
            task = asyncio.get_running_loop().create_task(self._shadow(job))
            self._shadow_tasks.add(task)
            task.add_done_callback(self._shadow_tasks.discard)
        self.metrics.record_cpu(time.process_time() - cpu_started)
        return Response(response.model_dump_json(), media_type="application/json")

    async def _call_model(self, arm: str, job: PreparedJob, degradations: list[Degradation]) -> dict[str, Any] | None:
        breaker = self.breakers.get(arm)
        if not breaker.allow():
            self.metrics.record_breaker_rejection(arm)
            degradations.append(Degradation(component=f"{arm}_model", reason=DegradationReason.BREAKER_OPEN, detail=f"{arm} breaker open"))
            return None
        started = time.perf_counter()
        try:
            raw = await asyncio.wait_for(self.batchers[arm].submit(job.matrix), timeout=MODEL_DEADLINE_S)
        except TimeoutError:
            breaker.record_failure()
            degradations.append(Degradation(component=f"{arm}_model", reason=DegradationReason.MODEL_TIMEOUT, detail=f"{arm} exceeded {MODEL_DEADLINE_S * 1000:.0f} ms"))
            return None
        except Exception as exc:  # noqa: BLE001 - any model failure means "answer from the fallback"
            breaker.record_failure()
            degradations.append(Degradation(component=f"{arm}_model", reason=DegradationReason.MODEL_ERROR, detail=type(exc).__name__))
            return None
        breaker.record_success(time.perf_counter() - started)
        return raw

    async def _fallback(self, job: PreparedJob, degradations: list[Degradation]) -> dict[str, Any]:
        args = (job.cell_id, job.region_id, job.hour_of_week, job.provider_ids, distance_km(job))
        breaker = self.breakers.get("fallback")
        if breaker.allow():
            started = time.perf_counter()
            try:
                raw = await asyncio.wait_for(self.fallback_handle.score.remote(*args), timeout=FALLBACK_DEADLINE_S)
                breaker.record_success(time.perf_counter() - started)
                return raw
            except Exception as exc:  # noqa: BLE001 - the in-process copy below is the last resort
                breaker.record_failure()
                reason = DegradationReason.MODEL_TIMEOUT if isinstance(exc, TimeoutError) else DegradationReason.MODEL_ERROR
                degradations.append(Degradation(component="fallback_model", reason=reason, detail=type(exc).__name__))
        current = self.local_fallback.current
        if current is None:
            raise RuntimeError("no fallback model available in the registry")
        return fallback_scores(current, *args)

    async def _shadow(self, job: PreparedJob) -> None:
        started = time.perf_counter()
        try:
            raw = await asyncio.wait_for(self.batchers["challenger"].submit(job.matrix), timeout=MODEL_DEADLINE_S * 4)
        except Exception as exc:  # noqa: BLE001 - shadow failures are counted, never surfaced
            self.metrics.record_shadow("unknown", "timeout" if isinstance(exc, TimeoutError) else "error")
            return
        scores, versions = _scores(raw), _versions(raw)
        self._log(job, "shadow", "challenger", versions, scores, (time.perf_counter() - started) * 1000.0, [])
        self.metrics.record_shadow(versions.dispatch or "unknown", "ok")

    def _record(self, arm: str, versions: ModelVersions, scores: ArmScores, degradations: list[Degradation], job: PreparedJob) -> None:
        self.metrics.record_scored(arm, versions.dispatch or versions.eta or "none", job.region_id, degraded=bool(degradations))
        top = int(np.argmin(scores.rank))
        self.metrics.record_prediction(arm, float(scores.eta_minutes[top]), float(scores.p_accept[top]))
        for reason in {d.reason.value for d in degradations}:
            self.metrics.record_degraded(reason)
        for name, ages in job.features.age_s.items():
            block = job.matrix[:, GROUP_COLUMNS[name]]
            max_age = float(np.nanmax(ages)) if np.isfinite(ages).any() else float("nan")
            self.metrics.record_features(name, max_age, int(np.isnan(block).sum()), int(block.size))

    def _log(self, job: PreparedJob, role: str, arm: str, versions: ModelVersions, scores: ArmScores, latency_ms: float, degradations: list[Degradation]) -> None:
        columns = prediction_columns(job.request, scored_candidates(job, role, arm, versions, scores, latency_ms, degradations))
        self.log.append(columns)

    # -- admin --------------------------------------------------------------------------------------------

    def _authorised(self, request: Request) -> Response | None:
        try:
            check_admin_token(request.headers.get("authorization", ""), self.admin_token)
        except AdminAuthError as exc:
            return problem(exc.status, exc.error, detail=exc.detail)
        return None

    async def admin(self, request: Request, path: str) -> Response:
        denied = self._authorised(request)
        if denied is not None:
            return denied
        body = await request.body()
        try:
            if path == ADMIN_TRAFFIC_PATH:
                change = TrafficChange.model_validate_json(body or b"{}")
                state = await asyncio.to_thread(
                    change_traffic, self.registry.root, challenger_weight=change.challenger_weight, shadow=change.shadow,
                    canary=change.canary, changed_by="admin-api", reason=change.reason,
                )
                self._reload_policy()
                return JSONResponse({"generation": state.generation, "challenger_weight": state.challenger_weight, "shadow": state.shadow, "canary_step": state.canary_step})
            rollback = RollbackRequest.model_validate_json(body or b"{}")
            record = await asyncio.to_thread(self.registry.rollback, rollback.family, rollback.alias, moved_by="admin-api", reason=rollback.reason)
            self._reload_policy()
            return JSONResponse({"family": record.family, "alias": record.alias, "version": record.version, "previous_version": record.previous_version})
        except ValidationError as exc:
            return JSONResponse(validation_problem(exc), status_code=422)
        except RegistryError as exc:
            return problem(409, "conflict", detail=str(exc))
        except ValueError as exc:
            return problem(422, "invalid_change", detail=str(exc))

    def __del__(self) -> None:
        try:
            self.refresher.stop()
            self.log.close(timeout=10)
        except Exception:  # noqa: BLE001 - best effort at teardown
            pass
