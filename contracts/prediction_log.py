"""The prediction log: one row per (request, candidate, role), written by every router replica.

Every scored request and every shadow score is logged for monitoring (drift, calibration,
latency, degradation) and for training on what was actually served. The schema is defined here
once; ``serve_apps/prediction_log.py`` writes it and ``read_prediction_log`` reads it back.

Rows
    ``role`` is ``served`` for the scores returned to dispatch and ``shadow`` for the challenger's
    scores on the same request, which are computed and logged but never returned. ``arm`` is the
    model that produced the row (``champion``, ``challenger`` or ``fallback``): a served row can
    come from the fallback when the champion degrades. The ``feature__*`` columns hold the feature
    vector the model actually saw (after defaults for missing groups), as float32, one column per
    ``contracts.features.model_features()`` name with a ``feature__`` prefix: request features
    such as ``hour_of_day`` and ``n_candidates`` would otherwise collide with the request columns
    of the same name. ``status__<group>`` and ``age_s__<group>`` say, per candidate, whether each
    feature group was ``ok``, ``stale``, ``missing`` or ``store_unavailable`` and how old it was.

No member PII, by construction
    The log carries ``member_pseudonym`` (a keyed pseudonym) and ``pseudonym_key_id`` (which key
    made it, so keys can rotate), never the member id, name or phone, and no coordinates: the
    job's location is only ``cell_id`` and ``region_id``. The builder (``LoggedRequest`` plus
    ``prediction_columns``) has no field that could take a raw member id, and ``to_record_batch``
    refuses any column the schema does not name, so a ``member_id`` column cannot be added on the
    way to disk. The schema is checked against ``contracts.warehouse.MEMBER_PII_COLUMNS`` on import.
    The exact feature vector would leak the job's location indirectly: the provider's pushed
    position (``provider_status__provider_lat/lon``) with the provider-to-job ``distance_km``
    and bearing pins the member to within metres. ``LOCATION_QUANTA`` therefore rounds those
    columns (and the naive travel time derived from distance) before they are logged, to a grid
    whose combined uncertainty is a few km, the size of a cell: the log keeps what drift, skew
    and error analysis need at cell resolution and nothing finer. Every other feature is logged
    exactly as the model saw it.

Joining late labels
    Labels (``contracts.warehouse.LABELS``) arrive minutes to days later, partitioned by the date
    they became known. A label's ``(job_id, provider_id)`` is a log row's ``(job_id,
    provider_id)``, and its ``request_ts`` equals the row's ``requested_at`` (the job's request
    time, not the time the row was logged), so ``requested_at`` prunes both sides to the same
    days. Join served rows to evaluate what dispatch saw and shadow rows to evaluate the
    challenger on the same jobs. Take, per label type, the highest ``revision`` with ``known_at``
    at or before the evaluation watermark; a job that was scored more than once (re-dispatch)
    has one ``request_id`` per scoring, so which scoring to evaluate is the evaluator's choice.

Delivery and partitioning
    Delivery is at least once: a flush that committed a file but failed to report it is retried,
    and a retried request may be logged twice. Readers de-duplicate on ``DEDUPE_KEY``
    ``(request_id, provider_id, role)``, keeping the row logged first. Files are partitioned by
    the UTC date of ``requested_at`` (``date=YYYY-MM-DD``) rather than of ``logged_at``, so that
    duplicates always share a partition, a partition holds exactly the requests its labels join
    to, and a date range read by request time needs no neighbouring partitions. A request made
    just before midnight may be logged after it; its rows still go to the earlier date.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, get_args

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from contracts.features import FEATURE_GROUPS, model_features
from contracts.scoring import Arm, Degradation
from contracts.warehouse import MEMBER_PII_COLUMNS, TS

Role = Literal["served", "shadow"]
FeatureStatus = Literal["ok", "stale", "missing", "store_unavailable"]

ROLES: tuple[str, ...] = get_args(Role)
ARMS: tuple[str, ...] = get_args(Arm)
FEATURE_STATUSES: tuple[str, ...] = get_args(FeatureStatus)

#: A row is identified by these columns; readers keep one row per key (delivery is at least once).
DEDUPE_KEY: tuple[str, ...] = ("request_id", "provider_id", "role")
#: Files are partitioned by the UTC date of this column.
PARTITION_COLUMN = "requested_at"
#: Separates the ``component:reason`` pairs in ``degradation_reasons``:
#: ``cell_traffic:stale;provider_status:store_unavailable``.
REASON_SEPARATOR = ";"

STATUS_TYPE = pa.dictionary(pa.int8(), pa.string())


def status_column(group_name: str) -> str:
    return f"status__{group_name}"


def age_column(group_name: str) -> str:
    return f"age_s__{group_name}"


def feature_column(feature: str) -> str:
    """Log column of a model feature (``feature__cell_traffic__speed_kmh``, ``feature__distance_km``)."""
    return f"feature__{feature}"


MODEL_FEATURES: tuple[str, ...] = model_features()
FEATURE_COLUMNS: tuple[str, ...] = tuple(feature_column(f) for f in MODEL_FEATURES)
GROUP_NAMES: tuple[str, ...] = tuple(g.name for g in FEATURE_GROUPS)


def _schema() -> pa.Schema:
    def required(name: str, type_: pa.DataType) -> pa.Field:
        return pa.field(name, type_, nullable=False)

    fields = [
        required("request_id", pa.string()),
        required("job_id", pa.string()),
        required("role", pa.string()),
        required("logged_at", TS),
        required("requested_at", TS),
        required("arm", pa.string()),
        pa.field("dispatch_version", pa.string()),
        pa.field("eta_version", pa.string()),
        pa.field("acceptance_version", pa.string()),
        required("member_pseudonym", pa.string()),
        required("pseudonym_key_id", pa.string()),
        required("cell_id", pa.int64()),
        required("region_id", pa.int64()),
        required("provider_id", pa.int64()),
        pa.field("provider_cohort", pa.string()),
        required("line_of_business", pa.string()),
        required("service_type", pa.string()),
        required("vehicle_class", pa.string()),
        required("hour_of_day", pa.int32()),
        required("candidate_index", pa.int32()),
        required("n_candidates", pa.int32()),
        pa.field("eta_minutes", pa.float64()),
        pa.field("eta_low", pa.float64()),
        pa.field("eta_high", pa.float64()),
        pa.field("p_accept", pa.float64()),
        required("rank", pa.int32()),
        required("latency_ms", pa.float32()),
        required("degraded", pa.bool_()),
        required("degradation_reasons", pa.string()),
    ]
    for name in GROUP_NAMES:
        fields.append(required(status_column(name), STATUS_TYPE))
        fields.append(pa.field(age_column(name), pa.float32()))
    fields += [pa.field(c, pa.float32()) for c in FEATURE_COLUMNS]
    return pa.schema(fields)


#: The Arrow schema of every prediction-log file.
PREDICTION_LOG: pa.Schema = _schema()

_leaked = set(PREDICTION_LOG.names) & set(MEMBER_PII_COLUMNS)
if _leaked:
    raise RuntimeError(f"the prediction-log schema names member PII columns {sorted(_leaked)}; remove them")


class PredictionLogError(ValueError):
    """Rows that do not fit the prediction-log contract; the message names the offending column."""


@dataclass(frozen=True, slots=True)
class LoggedRequest:
    """What the log keeps of a scoring request: identifiers, pseudonymised member, location cells.

    ``member_pseudonym`` must come from the pseudonymiser (a keyed hash under ``pseudonym_key_id``);
    there is deliberately no field for the member id, name, phone or the job's coordinates.
    """

    request_id: str
    job_id: str
    requested_at: datetime
    member_pseudonym: str
    pseudonym_key_id: str
    cell_id: int
    region_id: int
    line_of_business: str
    service_type: str
    vehicle_class: str
    hour_of_day: int


@dataclass(frozen=True, slots=True)
class ModelVersions:
    """Registry versions behind one arm's scores (``dispatch`` bundles one ETA and one acceptance version)."""

    dispatch: str | None
    eta: str | None
    acceptance: str | None


@dataclass(frozen=True, slots=True)
class ScoredCandidates:
    """One arm's scores for every candidate of a request, in candidate order.

    ``features`` is the ``(n_candidates, len(MODEL_FEATURES))`` matrix the model scored, columns
    in ``MODEL_FEATURES`` order. ``feature_status`` and ``feature_age_s`` give, per feature group,
    one value for all candidates or one per candidate (``provider_status`` differs by provider).
    ``degradations`` are the response's (``contracts.scoring.Degradation``), or the shadow arm's
    own; any makes the rows ``degraded``, logged as ``component:reason`` pairs.
    """

    role: Role
    arm: Arm
    versions: ModelVersions
    provider_id: Sequence[int]
    provider_cohort: Sequence[str | None]
    eta_minutes: Sequence[float]
    eta_low: Sequence[float]
    eta_high: Sequence[float]
    p_accept: Sequence[float]
    rank: Sequence[int]
    features: np.ndarray
    feature_status: Mapping[str, str | Sequence[str]]
    feature_age_s: Mapping[str, float | None | Sequence[float | None]]
    latency_ms: float
    degradations: Sequence[Degradation] = field(default_factory=tuple)


#: Logged precision of the features from which a job's location could be recomputed: a value is
#: rounded to the nearest multiple. Provider position to ~2 km, distance to 1 km, bearing to ~15
#: degrees: at a typical 10 km the triangulation error is then a few km, about one 4 km cell.
LOCATION_QUANTA: dict[str, float] = {
    "provider_status__provider_lat": 0.02,
    "provider_status__provider_lon": 0.02,
    "distance_km": 1.0,
    "naive_travel_min": 2.0,
    "bearing_sin": 0.25,
    "bearing_cos": 0.25,
}


def coarsen_location(by_feature: np.ndarray) -> np.ndarray:
    """``by_feature`` (features x candidates, in ``MODEL_FEATURES`` order) with the location
    columns rounded to ``LOCATION_QUANTA``, in place."""
    for name, quantum in LOCATION_QUANTA.items():
        row = MODEL_FEATURES.index(name)
        by_feature[row] = np.round(by_feature[row] / quantum) * quantum
    return by_feature


def prediction_columns(
    request: LoggedRequest, scored: ScoredCandidates, logged_at: datetime | None = None
) -> dict[str, Any]:
    """The log rows of one arm's scores as a column dict, cheap enough for the request path.

    Validation here is O(columns); conversion to Arrow (O(rows x columns)) is left to
    ``to_record_batch``, which the log writer runs off the request path. The feature matrix is
    copied once (transposed to float32) so the caller may reuse its buffer afterwards.
    """
    n = len(scored.provider_id)
    logged_at = logged_at or datetime.now(UTC)
    _check_utc("requested_at", request.requested_at)
    _check_utc("logged_at", logged_at)
    _check_choice("role", scored.role, ROLES)
    _check_choice("arm", scored.arm, ARMS)
    if not request.member_pseudonym or not request.pseudonym_key_id:
        raise PredictionLogError("member_pseudonym and pseudonym_key_id are required; pseudonymise the member first")
    features = np.asarray(scored.features)
    if features.shape != (n, len(MODEL_FEATURES)):
        raise PredictionLogError(
            f"features has shape {features.shape}, expected ({n}, {len(MODEL_FEATURES)}): "
            "one row per candidate, columns in contracts.prediction_log.MODEL_FEATURES order"
        )
    per_candidate = {
        "provider_cohort": scored.provider_cohort,
        "eta_minutes": scored.eta_minutes,
        "eta_low": scored.eta_low,
        "eta_high": scored.eta_high,
        "p_accept": scored.p_accept,
        "rank": scored.rank,
    }
    for name, values in per_candidate.items():
        if len(values) != n:
            raise PredictionLogError(f"{name} has {len(values)} values for {n} candidates")
    reasons = [f"{d.component}:{d.reason.value}" for d in scored.degradations]
    if any(REASON_SEPARATOR in reason for reason in reasons):
        raise PredictionLogError(f"degradation components must not contain {REASON_SEPARATOR!r}: {reasons}")

    columns: dict[str, Any] = {
        "request_id": [request.request_id] * n,
        "job_id": [request.job_id] * n,
        "role": [scored.role] * n,
        "logged_at": [logged_at] * n,
        "requested_at": [request.requested_at] * n,
        "arm": [scored.arm] * n,
        "dispatch_version": [scored.versions.dispatch] * n,
        "eta_version": [scored.versions.eta] * n,
        "acceptance_version": [scored.versions.acceptance] * n,
        "member_pseudonym": [request.member_pseudonym] * n,
        "pseudonym_key_id": [request.pseudonym_key_id] * n,
        "cell_id": [request.cell_id] * n,
        "region_id": [request.region_id] * n,
        "provider_id": list(scored.provider_id),
        "line_of_business": [request.line_of_business] * n,
        "service_type": [request.service_type] * n,
        "vehicle_class": [request.vehicle_class] * n,
        "hour_of_day": [request.hour_of_day] * n,
        "candidate_index": list(range(n)),
        "n_candidates": [n] * n,
        "latency_ms": [scored.latency_ms] * n,
        "degraded": [bool(reasons)] * n,
        "degradation_reasons": [REASON_SEPARATOR.join(reasons)] * n,
    }
    columns.update({name: list(values) for name, values in per_candidate.items()})
    for by_group in (scored.feature_status, scored.feature_age_s):
        unknown = set(by_group) - set(GROUP_NAMES)
        if unknown:
            raise PredictionLogError(f"unknown feature groups {sorted(unknown)}; known: {list(GROUP_NAMES)}")
    for name in GROUP_NAMES:
        columns[status_column(name)] = _per_candidate(scored.feature_status, name, n, FEATURE_STATUSES)
        columns[age_column(name)] = _per_candidate(scored.feature_age_s, name, n, None)
    by_feature = coarsen_location(np.array(features.T, dtype=np.float32, order="C"))
    columns.update(zip(FEATURE_COLUMNS, by_feature, strict=True))
    return columns


def to_record_batch(rows: pa.RecordBatch | Mapping[str, Any]) -> pa.RecordBatch:
    """Rows (a column dict or a record batch) as a batch of exactly ``PREDICTION_LOG``.

    Refuses missing or unknown columns (an unknown column is how PII would get in), values that
    do not convert to the column's type, and nulls in required columns.
    """
    names = set(rows.schema.names) if isinstance(rows, pa.RecordBatch) else set(rows)
    unknown = names - set(PREDICTION_LOG.names)
    missing = set(PREDICTION_LOG.names) - names
    if unknown or missing:
        raise PredictionLogError(
            f"prediction-log rows must have exactly the PREDICTION_LOG columns; "
            f"unknown: {sorted(unknown)[:5]}, missing: {sorted(missing)[:5]}"
        )
    arrays = []
    for f in PREDICTION_LOG:
        try:
            if isinstance(rows, pa.RecordBatch):
                array = rows.column(f.name).cast(f.type)
            else:
                array = pa.array(rows[f.name], type=f.type)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise PredictionLogError(f"column {f.name!r} does not convert to {f.type}: {exc}") from exc
        if not f.nullable and array.null_count:
            raise PredictionLogError(f"column {f.name!r} is required but has {array.null_count} nulls")
        arrays.append(array)
    return pa.RecordBatch.from_arrays(arrays, schema=PREDICTION_LOG)


def _check_utc(name: str, value: datetime) -> None:
    if value.tzinfo is None or value.utcoffset() is None:
        raise PredictionLogError(f"{name} must be a timezone-aware datetime (UTC), got naive {value!r}")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise PredictionLogError(f"{name} {value!r} is not one of {list(allowed)}")


def _per_candidate(
    by_group: Mapping[str, Any], group_name: str, n: int, allowed: tuple[str, ...] | None
) -> list[Any]:
    if group_name not in by_group:
        raise PredictionLogError(f"no value for feature group {group_name!r}; every group in FEATURE_GROUPS is logged")
    value = by_group[group_name]
    scalar = value is None or isinstance(value, str | int | float | np.generic)
    values = [value] * n if scalar else list(value)
    if len(values) != n:
        raise PredictionLogError(f"feature group {group_name!r} has {len(values)} values for {n} candidates")
    if allowed is not None:
        for v in values:
            _check_choice(f"status of {group_name}", v, allowed)
    return values


def deduplicate(table: pa.Table) -> pa.Table:
    """One row per ``DEDUPE_KEY``, the one logged first; the survivors keep their order in ``table``.

    The log is delivered at least once, so every reader applies this before counting anything.
    """
    if table.num_rows == 0:
        return table
    by_logged_at = pc.sort_indices(table, sort_keys=[("logged_at", "ascending")]).to_numpy()
    position = np.empty(table.num_rows, dtype=np.int64)
    position[by_logged_at] = np.arange(table.num_rows)
    keys = table.select(list(DEDUPE_KEY)).append_column("position", pa.array(position))
    first = keys.group_by(list(DEDUPE_KEY), use_threads=False).aggregate([("position", "min")])
    rows = np.sort(by_logged_at[first.column("position_min").to_numpy()])
    return table.take(pa.array(rows))
