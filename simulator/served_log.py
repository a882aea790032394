"""Replays simulated jobs through the real serving code in-process and writes the prediction log.

Monitoring needs a prediction log without starting Ray Serve: skew, delayed-label and
calibration jobs read what serving *logged*. ``replay_served_log`` takes the jobs requested in a
window of a simulated warehouse and, per job in request order, does what the router does
(``serve_apps.router.DispatchRouter.score``) minus HTTP, traffic split and shadow:

1. the replica-local feature cache (``serve_apps.features.FeatureCache``) is brought up to the
   job's request time with every row the feeds pushed by then (``event_timestamp <= requested_at``,
   the same point-in-time rule Feast's historical retrieval applies, so a correct world has no
   skew at all);
2. ``serve_apps.scoring.prepare_job`` builds the model matrix (cache gather + the shared request
   features), ``feature_degradations`` decides champion or fallback;
3. the registered ``dispatch@champion`` bundle (or ``fallback@champion``) scores the job;
4. ``contracts.prediction_log.prediction_columns`` builds the rows and the real
   ``serve_apps.prediction_log.PredictionLogWriter`` commits them.

What the online feed reports can differ from the warehouse
    The simulator's ``unit_change`` writes the wrong unit into the warehouse feature tables: it
    models a feed whose stored history is wrong too, so serving and offline recomputation agree
    (no training-serving skew; the drift scan is what sees it). The skew case is a live push path
    that is wrong while the warehouse, rebuilt by the batch pipeline from raw data, is right.
    ``feed_scenario`` models that: its ``unit_change`` incidents are applied only to the values
    pushed into this replay's online cache, never to the warehouse it reads them from. Simulate
    the warehouse without those incidents.

Routing follows the live state, as the router does
    The traffic split (``serve_apps.traffic_state``: champion/challenger aliases, challenger
    weight, shadow) assigns each job its arm with the router's sticky ``assign_arm``; champion
    jobs are shadow-scored by the challenger when the policy says so (``role=shadow`` rows), and
    a feature-group quarantine sends the affected regions' jobs to the fallback. Replaying a
    window, changing the state, and replaying the next window is how the closed loop
    (``cluster/closed_loop.py``) runs a release on simulated traffic.

Not modelled: the router's 5 s cache refresh lag (values here are as fresh as the push), model
timeouts and breakers.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from contracts.features import FEATURE_GROUPS, FeatureGroup
from contracts.prediction_log import ModelVersions, prediction_columns
from contracts.scoring import ScoreRequest
from contracts.warehouse import feature_dir, world_path
from retrain.registry import ModelRegistry
from retrain.training_set import entity_frame
from serve_apps.cells import CellIndex
from serve_apps.features import US, FeatureCache
from serve_apps.model_server import fallback_scores, load_version, split_batch
from serve_apps.prediction_log import PredictionLogWriter
from serve_apps.providers import ProviderDirectory
from serve_apps.pseudonym import KeyRing
from serve_apps.scoring import ArmScores, PreparedJob, distance_km, feature_degradations, prepare_job, scored_candidates
from serve_apps.traffic import assign_arm
from serve_apps.traffic_state import live_policy, read_quarantine, read_state
from simulator.scenarios import ActiveIncidents, Scenario

_PARTITIONING = ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive")
#: Replay writer id: one writer per log root, like one router replica.
REPLICA_ID = "replay"


@dataclass(frozen=True)
class FeedPushes:
    """One group's pushed rows in event-time order: entity keys, event times (UTC us), values."""

    keys: np.ndarray
    event_us: np.ndarray
    values: np.ndarray


def _segment_columns(g: FeatureGroup, keys: np.ndarray, cell_region: pd.Series, provider_region: pd.Series) -> dict[str, np.ndarray]:
    """What an incident's segment is matched against for a group's rows (as the simulator does)."""
    if g.entity == "cell":
        return {"cell_id": keys, "region_id": cell_region.reindex(keys).to_numpy(np.int64)}
    if g.entity == "provider":
        return {"region_id": provider_region.reindex(keys).to_numpy(np.int64)}
    return {"region_id": keys}


def read_feed(
    data_root: Path,
    g: FeatureGroup,
    start: datetime,
    end: datetime,
    feed: ActiveIncidents | None,
    cell_region: pd.Series,
    provider_region: pd.Series,
) -> FeedPushes:
    """The rows of ``g`` with event time in ``[start - ttl, end)``, as the online feed pushed them."""
    lo = start - g.ttl
    days = [(lo.date() + timedelta(days=i)).isoformat() for i in range((end.date() - lo.date()).days + 1)]
    dataset = ds.dataset(feature_dir(data_root, g.name), format="parquet", partitioning=_PARTITIONING)
    ts = ds.field("event_timestamp")
    selection = ds.field("date").isin(days) & (ts >= pa.scalar(lo, pa.timestamp("us", tz="UTC"))) & (ts < pa.scalar(end, pa.timestamp("us", tz="UTC")))
    table = dataset.to_table(columns=[g.join_key, "event_timestamp", *g.features], filter=selection)
    keys = table.column(g.join_key).to_numpy().astype(np.int64)
    event_us = table.column("event_timestamp").cast(pa.int64()).to_numpy()
    values = np.column_stack([table.column(f).to_numpy(zero_copy_only=False).astype(np.float64) for f in g.features]) if len(keys) else np.zeros((0, len(g.features)))
    if feed is not None and len(keys):
        segment = _segment_columns(g, keys, cell_region, provider_region)
        for incident, s, e in feed.of_kind("unit_change"):
            group_name, column = (incident.feature or ".").split(".", 1)
            if group_name == g.name:
                values[feed.mask(incident, s, e, event_us, segment), g.features.index(column)] *= incident.size
    order = np.argsort(event_us, kind="stable")
    return FeedPushes(keys[order], event_us[order], values[order])


def score_requests(data_root: Path, start: datetime, end: datetime, candidates: pd.DataFrame | None = None) -> list[ScoreRequest]:
    """The scoring requests dispatch sent for jobs requested in ``[start, end)``, in request order.

    The member id and coordinates (PII) are read here because a real request carries them;
    ``prepare_job`` pseudonymises the one and reduces the other to cell and region, as in serving.
    Candidates are listed by provider id (the log's ``candidate_index`` follows that order).
    ``candidates`` is the window's ``entity_frame`` when the caller has it already.
    """
    candidates = entity_frame(data_root, start, end) if candidates is None else candidates
    days = sorted({ts.date().isoformat() for ts in candidates["request_ts"]})
    jobs = pd.read_parquet(
        Path(data_root) / "raw" / "requests",
        columns=["job_id", "member_id"],
        filters=[("date", "in", days), ("job_id", "in", candidates["job_id"].unique().tolist())],
    ).drop_duplicates("job_id").set_index("job_id")
    requests = []
    for job_id, rows in candidates.sort_values(["request_ts", "job_id", "provider_id"]).groupby("job_id", sort=False):
        first = rows.iloc[0]
        requests.append(
            ScoreRequest.model_validate(
                {
                    "job_id": job_id,
                    "requested_at": first.request_ts.to_pydatetime(),
                    "line_of_business": first.line_of_business,
                    "service_type": first.service_type,
                    "vehicle": {"vehicle_class": first.vehicle_class},
                    "location": {"lat": float(first.job_lat), "lon": float(first.job_lon)},
                    "member": {"member_id": str(jobs.at[job_id, "member_id"])},
                    "candidates": [{"provider_id": int(p)} for p in rows.provider_id],
                }
            )
        )
    return sorted(requests, key=lambda r: r.requested_at)


def replay_served_log(
    data_root: Path,
    registry_root: Path,
    log_root: Path,
    start: datetime,
    end: datetime,
    *,
    feed_scenario: Scenario | None = None,
    sim_start: datetime | None = None,
    keys: KeyRing | None = None,
) -> int:
    """Score every job requested in ``[start, end)`` as the router would; returns the rows logged.

    ``feed_scenario`` incidents (resolved against ``sim_start``, the simulation's first day)
    change only what the online feed pushed; see the module docstring.
    """
    data_root, registry = Path(data_root), ModelRegistry(registry_root)
    policy = live_policy(registry, read_state(registry_root))
    if policy is None:
        raise RuntimeError(f"dispatch@champion is not set in {registry_root}; train and register first")
    bundles = {"champion": load_version(registry, "dispatch", policy.champion)}
    if policy.challenger is not None:
        bundles["challenger"] = load_version(registry, "dispatch", policy.challenger)
    fallback = load_version(registry, "fallback", "champion")
    quarantine = read_quarantine(registry_root)
    cells = CellIndex.from_parquet(world_path(data_root, "cells"))
    providers = ProviderDirectory.from_parquet(world_path(data_root, "providers"))
    cell_region = pd.read_parquet(world_path(data_root, "cells"), columns=["cell_id", "region_id"]).set_index("cell_id")["region_id"]
    provider_region = pd.read_parquet(world_path(data_root, "providers"), columns=["provider_id", "region_id"]).set_index("provider_id")["region_id"]
    feed = ActiveIncidents(feed_scenario, sim_start or start) if feed_scenario is not None else None
    pushes = {g.name: read_feed(data_root, g, start, end, feed, cell_region, provider_region) for g in FEATURE_GROUPS}
    pushed = dict.fromkeys(pushes, 0)
    cache = FeatureCache()
    keys = keys or KeyRing.ephemeral()

    prepared: list[PreparedJob] = []
    for n, request in enumerate(score_requests(data_root, start, end)):
        now_us = int(request.requested_at.timestamp() * US)
        for name, push in pushes.items():
            upto = int(np.searchsorted(push.event_us, now_us, side="right"))
            if upto > pushed[name]:
                rows = slice(pushed[name], upto)
                cache.upsert(name, push.keys[rows], push.values[rows], push.event_us[rows])
                pushed[name] = upto
        prepared.append(prepare_job(request, f"replay-{start:%Y%m%d%H%M}-{n:08d}", cells, cache, providers, keys, now_us / US))

    writer = PredictionLogWriter(log_root, replica_id=REPLICA_ID, flush_seconds=3600.0, max_backlog_rows=10_000_000, flush_rows=10_000_000)
    rows = 0
    try:
        routed = [(job, *feature_degradations(job.features, quarantine.groups_for(job.region_id))) for job in prepared]
        arms = {job.job_id: assign_arm(job.job_id, policy) for job, _, _ in routed}
        scores = {
            arm: _bundle_scores(bundle.model, [job for job, use_fallback, _ in routed if not use_fallback and (arm == arms[job.job_id] or policy.shadows(arms[job.job_id]))])
            for arm, bundle in bundles.items()
        }
        logged_at = datetime.now(UTC)
        for job, use_fallback, degradations in routed:
            arm = arms[job.job_id]
            if not use_fallback:
                bundle = bundles[arm]
                arm_versions, arm_scores = ModelVersions(bundle.version, bundle.eta_version, bundle.acceptance_version), scores[arm][job.job_id]
            else:
                raw = fallback_scores(fallback, job.cell_id, job.region_id, job.hour_of_week, job.provider_ids, distance_km(job))
                arm, arm_scores = "fallback", ArmScores(*(np.asarray(raw[k]) for k in ("eta_minutes", "eta_low", "eta_high", "p_accept", "rank")))
                arm_versions = ModelVersions(None, raw["versions"].get("eta"), raw["versions"].get("acceptance"))
            candidates = scored_candidates(job, "served", arm, arm_versions, arm_scores, 0.0, degradations)
            writer.append(prediction_columns(job.request, candidates, logged_at))
            rows += len(job.provider_ids)
            if arm == "champion" and "challenger" in bundles and policy.shadows(arm):
                shadow = bundles["challenger"]
                shadow_versions = ModelVersions(shadow.version, shadow.eta_version, shadow.acceptance_version)
                writer.append(prediction_columns(job.request, scored_candidates(job, "shadow", "challenger", shadow_versions, scores["challenger"][job.job_id], 0.0, degradations), logged_at))
                rows += len(job.provider_ids)
    finally:
        if not writer.close(timeout=120):
            raise RuntimeError(f"the replay's prediction log under {log_root} did not flush; see the writer's errors")
    return rows


def _bundle_scores(bundle, jobs: list[PreparedJob]) -> dict[str, ArmScores]:
    """Score one version's jobs in one batch, as the router's micro-batcher does."""
    if not jobs:
        return {}
    job_ids, slices = split_batch([len(job.provider_ids) for job in jobs])
    scores = bundle.score_array(np.concatenate([job.matrix for job in jobs]), job_ids)
    return {
        job.job_id: ArmScores(scores.eta_minutes[s], scores.eta_low[s], scores.eta_high[s], scores.p_accept[s], scores.rank[s])
        for job, s in zip(jobs, slices, strict=True)
    }
