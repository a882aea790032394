"""The scoring API's data contract: ``POST /v1/dispatch/score`` request and response, defined once.

Dispatch sends one job and its candidate providers; we answer, per candidate, the ETA in minutes
with an interval, the probability of accepting the offer, and a rank. Serving, tests, the load
generator and the fuzzers all import these classes, so a field or a limit is written down here
only.

Validation happens at the edge and fails closed:

- every model forbids unknown fields and NaN/±inf (``allow_inf_nan=False``);
- identifiers, codes and coordinates are strict (``"7"`` is not a provider id, ``true`` is not a
  latitude), strings have maximum lengths, and the server refuses bodies above
  :data:`MAX_BODY_BYTES` before parsing them at all (:func:`parse_score_request`);
- ``requested_at`` must carry a timezone and, when the caller passes its clock as the validation
  context ``{"now": ...}``, lie within :data:`MAX_REQUEST_AGE` before and :data:`MAX_CLOCK_SKEW`
  after it. The clock is injected, never read here, so replays and tests are deterministic.

Member PII (member id, name, phone) arrives in the request and must never reach a log. Every
model sets ``hide_input_in_errors`` so even ``str(ValidationError)`` carries no input values, and
:func:`validation_problem` builds the 4xx body from field paths and rules only.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from contracts.features import LINES_OF_BUSINESS, SERVICE_TYPES, VEHICLE_CLASSES

SCORE_PATH = "/v1/dispatch/score"
#: The server refuses larger bodies with 413 before parsing; 50 candidates fit in ~3 KiB.
MAX_BODY_BYTES = 64 * 1024
MAX_CANDIDATES = 50
#: ``requested_at`` may lead the server clock by this much (client clock skew) ...
MAX_CLOCK_SKEW = timedelta(minutes=5)
#: ... and lag it by this much (a day-old job is a replay or a bug, not a dispatch).
MAX_REQUEST_AGE = timedelta(hours=24)
#: Provider ids are stored as int64 in the warehouse and the prediction log.
MAX_PROVIDER_ID = 2**63 - 1

LineOfBusiness = Literal[LINES_OF_BUSINESS]  # type: ignore[valid-type]
ServiceType = Literal[SERVICE_TYPES]  # type: ignore[valid-type]
VehicleClass = Literal[VEHICLE_CLASSES]  # type: ignore[valid-type]
Arm = Literal["champion", "challenger", "fallback"]

JobId = Annotated[StrictStr, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._:-]+$")]
ProviderId = Annotated[StrictInt, Field(ge=0, le=MAX_PROVIDER_ID)]
Minutes = Annotated[float, Field(ge=0.0)]


class _Contract(BaseModel):
    """Shared policy: closed schemas, finite numbers, and no input values in error text."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, hide_input_in_errors=True, frozen=True)


class RequestTooLargeError(ValueError):
    """The body exceeds :data:`MAX_BODY_BYTES`; the server answers 413 without parsing it."""

    status_code = 413

    def __init__(self, size: int) -> None:
        super().__init__(
            f"request body is {size} bytes; the limit is {MAX_BODY_BYTES} bytes "
            f"(at most {MAX_CANDIDATES} candidates per job)"
        )


class RequestTimeError(ValueError):
    """``requested_at`` is outside the accepted window around the server clock."""


# --- request -------------------------------------------------------------------------------------


class Vehicle(_Contract):
    vehicle_class: VehicleClass


class Location(_Contract):
    """Where the member is, WGS84 degrees. PII: used to find the cell, never logged."""

    lat: Annotated[StrictFloat, Field(ge=-90.0, le=90.0)]
    lon: Annotated[StrictFloat, Field(ge=-180.0, le=180.0)]


class Member(_Contract):
    """The member who needs help. Every field is PII: pseudonymise before logging."""

    member_id: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    name: Annotated[StrictStr, Field(max_length=200)] | None = None
    phone: Annotated[StrictStr, Field(max_length=32)] | None = None


class Candidate(_Contract):
    provider_id: ProviderId


def check_request_time(requested_at: datetime, now: datetime) -> datetime:
    """Return ``requested_at`` if it is within [now - 24 h, now + 5 min]; else RequestTimeError.

    Pure so the server, a replay and a test can each pass their own clock.
    """
    if now.tzinfo is None:
        # TypeError, not ValueError: a server bug must not turn into the client's 422.
        raise TypeError("the server clock `now` must be timezone-aware")
    if requested_at > now + MAX_CLOCK_SKEW:
        raise RequestTimeError(
            f"must not be more than {_minutes(MAX_CLOCK_SKEW)} minutes after the server time "
            f"{now.isoformat()}; check the client clock"
        )
    if requested_at < now - MAX_REQUEST_AGE:
        raise RequestTimeError(
            f"must not be more than {_minutes(MAX_REQUEST_AGE)} minutes before the server time "
            f"{now.isoformat()}; stale jobs are not scored"
        )
    return requested_at


def _minutes(span: timedelta) -> int:
    return int(span.total_seconds() // 60)


EXAMPLE_SCORE_REQUEST: dict[str, Any] = {
    "job_id": "job-2026-01-15-000123",
    "requested_at": "2026-01-15T14:03:00Z",
    "line_of_business": "auto_club",
    "service_type": "tow",
    "vehicle": {"vehicle_class": "suv"},
    "location": {"lat": 31.42, "lon": -98.77},
    "member": {"member_id": "M000123", "name": "Alex Example", "phone": "+1-555-0100"},
    "candidates": [{"provider_id": 1042}, {"provider_id": 877}, {"provider_id": 3310}],
}


class ScoreRequest(_Contract):
    """One job and the providers dispatch may offer it to."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_SCORE_REQUEST]})

    job_id: JobId
    requested_at: AwareDatetime
    line_of_business: LineOfBusiness
    service_type: ServiceType
    vehicle: Vehicle
    location: Location
    member: Member
    candidates: Annotated[list[Candidate], Field(min_length=1, max_length=MAX_CANDIDATES)]

    @field_validator("requested_at", mode="before")
    @classmethod
    def _timestamp_text(cls, value: object) -> object:
        # Lax datetime parsing would read a bare number as Unix seconds *or* milliseconds.
        if not isinstance(value, str | datetime):
            raise PydanticCustomError("datetime_type", "Input should be an ISO 8601 timestamp with a timezone offset")
        return value

    @field_validator("requested_at")
    @classmethod
    def _within_clock_window(cls, value: datetime, info: ValidationInfo) -> datetime:
        now = (info.context or {}).get("now")
        return value if now is None else check_request_time(value, now)

    @field_validator("candidates")
    @classmethod
    def _unique_providers(cls, candidates: list[Candidate]) -> list[Candidate]:
        seen: set[int] = set()
        for candidate in candidates:
            if candidate.provider_id in seen:
                raise ValueError(f"provider_id {candidate.provider_id} appears more than once; send each provider once")
            seen.add(candidate.provider_id)
        return candidates


def parse_score_request(body: bytes, now: datetime) -> ScoreRequest:
    """The server's one entry point: size check, then JSON parse and validation against ``now``.

    Raises RequestTooLargeError (413) or pydantic.ValidationError (turn it into a 422 body with
    :func:`validation_problem`).
    """
    if len(body) > MAX_BODY_BYTES:
        raise RequestTooLargeError(len(body))
    return ScoreRequest.model_validate_json(body, context={"now": now})


# --- response ------------------------------------------------------------------------------------


class DegradationReason(StrEnum):
    MISSING = "missing"
    STALE = "stale"
    STORE_UNAVAILABLE = "store_unavailable"
    STORE_TIMEOUT = "store_timeout"
    MODEL_ERROR = "model_error"
    MODEL_TIMEOUT = "model_timeout"
    BREAKER_OPEN = "breaker_open"
    #: The group is quarantined by a data-quality incident (``serve_apps.traffic_state``).
    QUARANTINED = "quarantined"


class Degradation(_Contract):
    """One thing the answer had to do without, and why.

    ``component`` is a feature group name from ``contracts.features`` (``cell_traffic``...) or a
    serving component (``feature_store``, ``eta_model``, ``acceptance_model``).
    """

    component: Annotated[str, Field(min_length=1, max_length=64)]
    reason: DegradationReason
    detail: Annotated[str, Field(max_length=500)] = ""


class CandidateScore(_Contract):
    provider_id: ProviderId
    eta_minutes: Minutes
    eta_low: Minutes
    eta_high: Minutes
    p_accept: Annotated[float, Field(ge=0.0, le=1.0)]
    rank: Annotated[int, Field(ge=1)]

    @model_validator(mode="after")
    def _interval_contains_eta(self) -> CandidateScore:
        if not self.eta_low <= self.eta_minutes <= self.eta_high:
            raise ValueError("eta interval must satisfy eta_low <= eta_minutes <= eta_high")
        return self


EXAMPLE_SCORE_RESPONSE: dict[str, Any] = {
    "request_id": "7f3c2a9e-3a51-4c4e-9a43-0d1d2b6f8e11",
    "job_id": "job-2026-01-15-000123",
    "arm": "champion",
    "model_versions": {"eta": "eta-20260114-0200", "acceptance": "acceptance-20260114-0200"},
    "candidates": [
        {"provider_id": 877, "eta_minutes": 18.4, "eta_low": 12.9, "eta_high": 26.0, "p_accept": 0.82, "rank": 1},
        {"provider_id": 1042, "eta_minutes": 16.1, "eta_low": 11.0, "eta_high": 24.3, "p_accept": 0.41, "rank": 2},
        {"provider_id": 3310, "eta_minutes": 27.5, "eta_low": 19.8, "eta_high": 38.2, "p_accept": 0.77, "rank": 3},
    ],
    "degraded": True,
    "degradations": [{"component": "cell_traffic", "reason": "stale", "detail": "newest value 14 min old; limit 10 min"}],
}


class ScoreResponse(_Contract):
    """Per-candidate scores, which arm produced them, and what the answer did without."""

    model_config = ConfigDict(json_schema_extra={"examples": [EXAMPLE_SCORE_RESPONSE]})

    request_id: Annotated[str, Field(min_length=1, max_length=64)]
    job_id: JobId
    arm: Arm
    #: Model family (``eta``, ``acceptance``, ``fallback``...) -> registry version that scored.
    model_versions: dict[str, str]
    candidates: list[CandidateScore]
    degraded: bool
    degradations: list[Degradation] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> ScoreResponse:
        ranks = sorted(c.rank for c in self.candidates)
        if ranks != list(range(1, len(self.candidates) + 1)):
            raise ValueError("candidate ranks must be 1..n, each once")
        if len({c.provider_id for c in self.candidates}) != len(self.candidates):
            raise ValueError("each provider_id must appear once")
        if self.degraded != bool(self.degradations):
            raise ValueError("degraded must be true exactly when degradations are listed")
        return self


# --- 4xx bodies ----------------------------------------------------------------------------------

_KIND = {
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number (NaN and infinity are not allowed)",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "datetime_type": "must be an ISO 8601 timestamp with a timezone offset",
    "datetime_parsing": "must be an ISO 8601 timestamp with a timezone offset",
    "datetime_from_date_parsing": "must be an ISO 8601 timestamp with a timezone offset",
    "timezone_aware": "must include a timezone offset (e.g. 'Z' or '+02:00')",
    "missing": "is required",
    "extra_forbidden": "is not a field of this request; remove it",
    "json_invalid": "must be valid JSON",
    "json_type": "must be a JSON object",
}


def _rule(error: Any) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in _KIND:
        return _KIND[kind]
    if kind == "literal_error":
        return f"must be one of: {ctx['expected']}"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        symbol = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        return f"must be {symbol} {next(iter(ctx.values()))}"
    if kind == "string_too_short":
        return f"must have at least {ctx['min_length']} character(s)"
    if kind == "string_too_long":
        return f"must have at most {ctx['max_length']} characters"
    if kind == "string_pattern_mismatch":
        return f"must match {ctx['pattern']}"
    if kind == "too_short":
        return f"must have at least {ctx['min_length']} item(s)"
    if kind == "too_long":
        return f"must have at most {ctx['max_length']} items"
    if kind == "value_error":
        # Our own validators' messages: written here, never containing input values.
        return str(ctx["error"])
    return _without_input(error["msg"], error.get("input"))


def _without_input(message: str, value: object) -> str:
    """Pydantic's fallback message, with the input value cut out in case the message quotes it."""
    if isinstance(value, str) and value and value in message:
        return message.replace(value, "<redacted>")
    return message


def field_path(loc: tuple[str | int, ...]) -> str:
    """Dotted path of a pydantic error location: ``('candidates', 2, 'provider_id')`` -> ``candidates[2].provider_id``."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    # An unknown field's key is client text: bound it so it cannot flood a log line.
    return path[:200]


def validation_problem(exc: ValidationError) -> dict[str, Any]:
    """The 4xx body for a rejected request: each field by dotted path and the rule it broke.

    Never carries input values, so it is safe to log: a member's name or phone in an error
    message would leak PII into every log pipeline downstream.
    """
    problems = [{"field": field_path(error["loc"]) or "body", "rule": _rule(error)} for error in exc.errors(include_url=False)]
    return {"error": "invalid_request", "problems": problems}
