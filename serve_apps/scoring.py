"""From a validated request to model inputs, and from model outputs to a response and log rows.

Ray-free on purpose: the router deployment calls these functions, tests call them directly.

The degradation policy (what the response says and which model answers) is decided here from
each feature group's status for the job:

- a near-real-time group the job cannot do without (``cell_traffic`` and ``region_load`` for the
  job's cell/region, ``provider_status`` for most candidates) ``missing`` (no value within its
  TTL) -> the **fallback model**, which needs no online features: a model fed a whole group of
  NaNs it rarely saw in training is worse than a simple, known one;
- any group ``stale`` (older than its freshness limit, within its TTL) or ``store_unavailable``
  (the store is down; values within their TTL come from the last-known-good copy) -> the
  champion on those values, flagged degraded with the reason;
- batch groups missing for a few candidates (providers onboarded since the last daily run) are
  normal and were normal in training: not a degradation.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC

import numpy as np

from contracts.features import LINES_OF_BUSINESS, SERVICE_TYPES, VEHICLE_CLASSES, FeatureGroup, group, model_features
from contracts.prediction_log import LoggedRequest, ModelVersions, ScoredCandidates
from contracts.scoring import CandidateScore, Degradation, DegradationReason, ScoreRequest, ScoreResponse
from feature_repo.request_transform import request_feature_matrix
from serve_apps.cells import CellIndex
from serve_apps.features import CandidateFeatures, FeatureCache, FeatureStatus
from serve_apps.providers import ProviderDirectory
from serve_apps.pseudonym import KeyRing

MODEL_FEATURES = model_features()
_COLUMN = {name: i for i, name in enumerate(MODEL_FEATURES)}
_PROVIDER_LAT = _COLUMN["provider_status__provider_lat"]
_PROVIDER_LON = _COLUMN["provider_status__provider_lon"]
_SPEED = _COLUMN["cell_traffic__speed_kmh"]
_DISTANCE = _COLUMN["distance_km"]
#: Groups without which the champion is not trusted for this job (see module docstring).
REQUIRED_LIVE_GROUPS: tuple[FeatureGroup, ...] = (group("cell_traffic"), group("region_load"), group("provider_status"))
#: provider_status may be missing for up to this share of candidates before the job falls back.
MAX_MISSING_PROVIDER_SHARE = 0.5

_STATUS_REASON = {
    FeatureStatus.STALE: DegradationReason.STALE,
    FeatureStatus.MISSING: DegradationReason.MISSING,
    FeatureStatus.STORE_UNAVAILABLE: DegradationReason.STORE_UNAVAILABLE,
}


@dataclass(frozen=True)
class PreparedJob:
    """Everything scoring and logging need, with the member already pseudonymised.

    ``request`` is the log's PII-free view of the job (``contracts.prediction_log.LoggedRequest``);
    coordinates were used for the request features and dropped.
    """

    request: LoggedRequest
    hour_of_week: int
    provider_ids: np.ndarray
    provider_cohorts: list[str]
    matrix: np.ndarray
    features: CandidateFeatures

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def job_id(self) -> str:
        return self.request.job_id

    @property
    def cell_id(self) -> int:
        return self.request.cell_id

    @property
    def region_id(self) -> int:
        return self.request.region_id


def _code(value: str, vocabulary: tuple[str, ...]) -> float:
    return float(vocabulary.index(value)) if value in vocabulary else -1.0


def prepare_job(
    request: ScoreRequest,
    request_id: str,
    cells: CellIndex,
    cache: FeatureCache,
    providers: ProviderDirectory,
    keys: KeyRing,
    now: float,
) -> PreparedJob:
    """Locate the job, gather stored features, compute request features, pseudonymise the member.

    Raises ``serve_apps.cells.OutsideServiceAreaError`` (a 4xx) for a location off the grid.
    """
    cell_id, region_id = cells.locate(request.location.lat, request.location.lon)
    provider_ids = np.fromiter((c.provider_id for c in request.candidates), dtype=np.int64, count=len(request.candidates))
    stored = cache.lookup(provider_ids, cell_id, region_id, now)
    n = len(provider_ids)
    ts = request.requested_at.astimezone(UTC)
    hour, weekday = ts.hour, ts.weekday()
    request_block = request_feature_matrix(
        job_group=np.zeros(n, np.int64),
        job_lat=np.full(n, request.location.lat),
        job_lon=np.full(n, request.location.lon),
        provider_lat=stored.matrix[:, _PROVIDER_LAT].astype(np.float64),
        provider_lon=stored.matrix[:, _PROVIDER_LON].astype(np.float64),
        speed_kmh=stored.matrix[:, _SPEED].astype(np.float64),
        hour=np.full(n, float(hour)),
        weekday=np.full(n, float(weekday)),
        lob_code=np.full(n, _code(request.line_of_business, LINES_OF_BUSINESS)),
        service_code=np.full(n, _code(request.service_type, SERVICE_TYPES)),
        vehicle_code=np.full(n, _code(request.vehicle.vehicle_class, VEHICLE_CLASSES)),
    )
    matrix = np.concatenate([stored.matrix, request_block.astype(np.float32)], axis=1)
    key_id, pseudonym = keys.pseudonymize(request.member.member_id)
    logged = LoggedRequest(
        request_id=request_id,
        job_id=request.job_id,
        requested_at=request.requested_at,
        member_pseudonym=pseudonym,
        pseudonym_key_id=key_id,
        cell_id=cell_id,
        region_id=region_id,
        line_of_business=request.line_of_business,
        service_type=request.service_type,
        vehicle_class=request.vehicle.vehicle_class,
        hour_of_day=hour,
    )
    return PreparedJob(
        request=logged,
        hour_of_week=weekday * 24 + hour,
        provider_ids=provider_ids,
        provider_cohorts=providers.cohorts(provider_ids),
        matrix=matrix,
        features=stored,
    )


def feature_degradations(features: CandidateFeatures, quarantined: frozenset[str] = frozenset()) -> tuple[bool, list[Degradation]]:
    """(use the fallback model?, what to report) from each group's status for this job.

    A ``quarantined`` group (an open data-quality incident in the job's region) sends the job to
    the fallback whatever its status: its values are present and fresh, but wrong.
    """
    degradations: list[Degradation] = [
        Degradation(component=name, reason=DegradationReason.QUARANTINED, detail=f"{name} quarantined by a data-quality incident")
        for name in sorted(quarantined)
    ]
    use_fallback = bool(quarantined)
    for g in REQUIRED_LIVE_GROUPS:
        codes = features.status[g.name]
        unusable = codes == FeatureStatus.MISSING
        share = float(unusable.mean()) if len(codes) else 1.0
        if (g.entity == "provider" and share > MAX_MISSING_PROVIDER_SHARE) or (g.entity != "provider" and share > 0):
            use_fallback = True
    for name, worst in features.degraded_groups().items():
        if name in quarantined:
            continue
        g = group(name)
        if g.cadence == "batch" and worst == FeatureStatus.MISSING and not np.all(features.status[name] == FeatureStatus.MISSING):
            continue
        degradations.append(Degradation(component=name, reason=_STATUS_REASON[worst], detail=f"{name} {worst.label}"))
    return use_fallback, degradations


@dataclass(frozen=True)
class ArmScores:
    """One arm's per-candidate outputs."""

    eta_minutes: np.ndarray
    eta_low: np.ndarray
    eta_high: np.ndarray
    p_accept: np.ndarray
    rank: np.ndarray


def response_versions(arm: str, versions: ModelVersions) -> dict[str, str]:
    """What the response names: the dispatch bundle and its components, or the fallback version."""
    if arm == "fallback":
        return {"fallback": versions.eta} if versions.eta else {}
    named = {"dispatch": versions.dispatch, "eta": versions.eta, "acceptance": versions.acceptance}
    return {family: version for family, version in named.items() if version}


def response_for(
    job: PreparedJob, arm: str, versions: ModelVersions, scores: ArmScores, degradations: list[Degradation]
) -> ScoreResponse:
    candidates = [
        CandidateScore(
            provider_id=int(pid),
            eta_minutes=float(eta),
            eta_low=float(min(lo, eta)),
            eta_high=float(max(hi, eta)),
            p_accept=float(np.clip(p, 0.0, 1.0)),
            rank=int(r),
        )
        for pid, eta, lo, hi, p, r in zip(
            job.provider_ids, scores.eta_minutes, scores.eta_low, scores.eta_high, scores.p_accept, scores.rank, strict=True
        )
    ]
    return ScoreResponse(
        request_id=job.request_id,
        job_id=job.job_id,
        arm=arm,
        model_versions=response_versions(arm, versions),
        candidates=candidates,
        degraded=bool(degradations),
        degradations=degradations,
    )


def scored_candidates(
    job: PreparedJob, role: str, arm: str, versions: ModelVersions, scores: ArmScores, latency_ms: float, degradations: list[Degradation]
) -> ScoredCandidates:
    """The log's view of one arm's scores for this job."""
    status = {name: [FeatureStatus(int(c)).label for c in codes] for name, codes in job.features.status.items()}
    ages = {name: [None if np.isnan(a) else float(a) for a in values] for name, values in job.features.age_s.items()}
    return ScoredCandidates(
        role=role,
        arm=arm,
        versions=versions,
        provider_id=job.provider_ids.tolist(),
        provider_cohort=job.provider_cohorts,
        eta_minutes=scores.eta_minutes.tolist(),
        eta_low=scores.eta_low.tolist(),
        eta_high=scores.eta_high.tolist(),
        p_accept=scores.p_accept.tolist(),
        rank=[int(r) for r in scores.rank],
        features=job.matrix,
        feature_status=status,
        feature_age_s=ages,
        latency_ms=latency_ms,
        degradations=degradations,
    )


def distance_km(job: PreparedJob) -> np.ndarray:
    return job.matrix[:, _DISTANCE].astype(np.float64)
