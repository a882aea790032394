"""The scoring API contract: what dispatch may send, what it is told when it gets it wrong.

Explicit bad inputs first, then properties over generated requests: every valid request
survives a JSON round trip, every invalid mutation is rejected with a problem naming its field,
and no error body ever carries the member's id, name or phone.
"""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from contracts.features import LINES_OF_BUSINESS, SERVICE_TYPES, VEHICLE_CLASSES
from contracts.scoring import (
    EXAMPLE_SCORE_REQUEST,
    EXAMPLE_SCORE_RESPONSE,
    MAX_BODY_BYTES,
    MAX_CLOCK_SKEW,
    MAX_REQUEST_AGE,
    DegradationReason,
    RequestTimeError,
    RequestTooLargeError,
    ScoreRequest,
    ScoreResponse,
    check_request_time,
    parse_score_request,
    validation_problem,
)

NOW = datetime(2026, 1, 15, 14, 5, tzinfo=UTC)


def request(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(EXAMPLE_SCORE_REQUEST)
    body.update(changes)
    return body


def problems(body: dict[str, Any] | bytes, now: datetime = NOW) -> list[dict[str, str]]:
    """The 4xx problems the server would answer for ``body`` (sent as JSON)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(ValidationError) as raised:
        parse_score_request(raw, now)
    problem = validation_problem(raised.value)
    assert problem["error"] == "invalid_request"
    return problem["problems"]


def rules_for(found: list[dict[str, str]], field: str) -> list[str]:
    return [p["rule"] for p in found if p["field"] == field]


# --- the happy path ------------------------------------------------------------------------------


def test_the_documented_example_is_valid_and_published_in_the_schema() -> None:
    parsed = parse_score_request(json.dumps(EXAMPLE_SCORE_REQUEST).encode(), NOW)
    assert [c.provider_id for c in parsed.candidates] == [1042, 877, 3310]
    assert ScoreRequest.model_json_schema()["examples"] == [EXAMPLE_SCORE_REQUEST]
    assert ScoreResponse.model_json_schema()["examples"] == [EXAMPLE_SCORE_RESPONSE]
    ScoreResponse.model_validate(EXAMPLE_SCORE_RESPONSE)


def test_vocabularies_come_from_the_feature_catalogue() -> None:
    properties = ScoreRequest.model_json_schema()["properties"]
    assert tuple(properties["line_of_business"]["enum"]) == LINES_OF_BUSINESS
    assert tuple(properties["service_type"]["enum"]) == SERVICE_TYPES
    assert tuple(ScoreRequest.model_json_schema()["$defs"]["Vehicle"]["properties"]["vehicle_class"]["enum"]) == (
        VEHICLE_CLASSES
    )


# --- explicit bad inputs -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field", "rule"),
    [
        ({"job_id": 123}, "job_id", "must be a string"),
        ({"job_id": ""}, "job_id", "at least 1"),
        ({"job_id": "job 1"}, "job_id", "must match"),
        ({"candidates": [{"provider_id": "7"}]}, "candidates[0].provider_id", "must be an integer"),
        ({"candidates": [{"provider_id": 7.5}]}, "candidates[0].provider_id", "must be an integer"),
        ({"candidates": [{"provider_id": True}]}, "candidates[0].provider_id", "must be an integer"),
        ({"candidates": [{"provider_id": 2**63}]}, "candidates[0].provider_id", "<= 9223372036854775807"),
        ({"candidates": {"provider_id": 7}}, "candidates", "must be a list"),
        ({"location": {"lat": "31.4", "lon": -98.7}}, "location.lat", "must be a number"),
        ({"location": {"lat": 90.5, "lon": -98.7}}, "location.lat", "<= 90"),
        ({"location": {"lat": 31.4, "lon": -180.5}}, "location.lon", ">= -180"),
        ({"location": [31.4, -98.7]}, "location", "must be an object"),
        ({"vehicle": "suv"}, "vehicle", "must be an object"),
        ({"member": {"name": "Alex"}}, "member.member_id", "is required"),
    ],
)
def test_malformed_types_and_ranges_name_the_field(changes: dict[str, Any], field: str, rule: str) -> None:
    assert any(rule in r for r in rules_for(problems(request(**changes)), field))


def test_a_negative_provider_id_reads_as_documented() -> None:
    body = request(candidates=[{"provider_id": 1}, {"provider_id": 2}, {"provider_id": -4}])
    assert problems(body) == [{"field": "candidates[2].provider_id", "rule": "must be >= 0"}]


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
@pytest.mark.parametrize("field", ["lat", "lon"])
def test_nan_and_infinity_are_rejected_in_json(token: str, field: str) -> None:
    raw = json.dumps(request()).replace('"lat": 31.42' if field == "lat" else '"lon": -98.77', f'"{field}": {token}')
    assert rules_for(problems(raw.encode()), f"location.{field}") == [
        "must be a finite number (NaN and infinity are not allowed)"
    ]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_are_rejected_in_python_and_in_responses(value: float) -> None:
    with pytest.raises(ValidationError):
        ScoreRequest.model_validate(request(location={"lat": value, "lon": 0.0}))
    response = copy.deepcopy(EXAMPLE_SCORE_RESPONSE)
    response["candidates"][0]["p_accept"] = value
    with pytest.raises(ValidationError):
        ScoreResponse.model_validate(response)


def test_empty_candidates_are_rejected() -> None:
    assert rules_for(problems(request(candidates=[])), "candidates") == ["must have at least 1 item(s)"]


def test_duplicate_candidates_name_the_duplicate_provider() -> None:
    body = request(candidates=[{"provider_id": 5}, {"provider_id": 9}, {"provider_id": 5}])
    (rule,) = rules_for(problems(body), "candidates")
    assert "provider_id 5 appears more than once" in rule


def test_ten_thousand_candidates_are_refused() -> None:
    body = request(candidates=[{"provider_id": i} for i in range(10_000)])
    raw = json.dumps(body).encode()
    assert len(raw) > MAX_BODY_BYTES
    with pytest.raises(RequestTooLargeError, match="at most 50 candidates") as too_large:
        parse_score_request(raw, NOW)
    assert too_large.value.status_code == 413
    # Validated directly (no size gate), the list limit still holds.
    with pytest.raises(ValidationError) as raised:
        ScoreRequest.model_validate(body)
    assert validation_problem(raised.value)["problems"] == [{"field": "candidates", "rule": "must have at most 50 items"}]


def test_fifty_one_candidates_fit_the_body_but_not_the_contract() -> None:
    found = problems(request(candidates=[{"provider_id": i} for i in range(51)]))
    assert rules_for(found, "candidates") == ["must have at most 50 items"]


@pytest.mark.parametrize(
    ("member", "field", "limit"),
    [
        ({"member_id": "M" * 100_000}, "member.member_id", "at most 64"),
        ({"member_id": "M1", "name": "N" * 100_000}, "member.name", "at most 200"),
        ({"member_id": "M1", "phone": "5" * 100_000}, "member.phone", "at most 32"),
    ],
)
def test_huge_strings_are_rejected_by_their_limits(member: dict[str, str], field: str, limit: str) -> None:
    with pytest.raises(ValidationError) as raised:
        ScoreRequest.model_validate(request(member=member))
    (problem,) = validation_problem(raised.value)["problems"]
    assert problem["field"] == field and limit in problem["rule"]
    with pytest.raises(RequestTooLargeError):
        parse_score_request(json.dumps(request(member=member)).encode(), NOW)


def test_huge_job_id_is_rejected() -> None:
    assert rules_for(problems(request(job_id="j" * 1_000)), "job_id") == ["must have at most 64 characters"]


@pytest.mark.parametrize(
    ("requested_at", "rule"),
    [
        (NOW + MAX_CLOCK_SKEW + timedelta(seconds=1), "after the server time"),
        (NOW + timedelta(days=3650), "after the server time"),
        (NOW - MAX_REQUEST_AGE - timedelta(seconds=1), "before the server time"),
        (datetime(1970, 1, 1, tzinfo=UTC), "before the server time"),
    ],
)
def test_timestamps_outside_the_clock_window_are_rejected(requested_at: datetime, rule: str) -> None:
    (found,) = rules_for(problems(request(requested_at=requested_at.isoformat())), "requested_at")
    assert rule in found


def test_the_clock_window_is_inclusive_and_offset_aware() -> None:
    for edge in (NOW + MAX_CLOCK_SKEW, NOW - MAX_REQUEST_AGE):
        assert check_request_time(edge, NOW) == edge
        parse_score_request(json.dumps(request(requested_at=edge.isoformat())).encode(), NOW)
    # 09:06 at UTC-5 is 14:06 UTC: one minute ahead, fine.
    local = datetime(2026, 1, 15, 9, 6, tzinfo=timezone(timedelta(hours=-5)))
    parse_score_request(json.dumps(request(requested_at=local.isoformat())).encode(), NOW)
    with pytest.raises(RequestTimeError):
        check_request_time(NOW + timedelta(hours=1), NOW)


def test_the_clock_is_injected_not_read() -> None:
    old = request(requested_at="2020-01-01T00:00:00Z")
    # Without a clock in the context (a replay of logged requests), no window applies...
    assert ScoreRequest.model_validate(old).requested_at.year == 2020
    # ...and with one, the window is relative to that clock, whatever the wall clock says.
    parse_score_request(json.dumps(old).encode(), datetime(2020, 1, 1, 0, 1, tzinfo=UTC))
    with pytest.raises(TypeError, match="timezone-aware"):
        check_request_time(NOW, datetime(2026, 1, 15, 14, 5))


@pytest.mark.parametrize(
    ("requested_at", "rule"),
    [
        ("2026-01-15T14:03:00", "must include a timezone offset"),
        ("yesterday", "ISO 8601"),
        (1768485780, "ISO 8601"),
        (None, "ISO 8601"),
    ],
)
def test_naive_and_non_text_timestamps_are_rejected(requested_at: object, rule: str) -> None:
    (found,) = rules_for(problems(request(requested_at=requested_at)), "requested_at")
    assert rule in found


def test_unknown_line_of_business_lists_the_allowed_values() -> None:
    (rule,) = rules_for(problems(request(line_of_business="rental")), "line_of_business")
    assert all(lob in rule for lob in LINES_OF_BUSINESS)
    assert "rental" not in rule


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"priority": "high"}, "priority"),
        ({"member": {"member_id": "M1", "email": "a@example.com"}}, "member.email"),
        ({"candidates": [{"provider_id": 1, "eta": 3}]}, "candidates[0].eta"),
        ({"location": {"lat": 31.0, "lon": -98.0, "alt": 200.0}}, "location.alt"),
    ],
)
def test_extra_fields_are_forbidden_and_named(changes: dict[str, Any], field: str) -> None:
    assert rules_for(problems(request(**changes)), field) == ["is not a field of this request; remove it"]


@pytest.mark.parametrize("raw", [b"", b"{", b"[]", b'"job"', b"null", b"\xff\xfe"])
def test_a_body_that_is_not_a_json_object_is_a_body_problem(raw: bytes) -> None:
    assert [p["field"] for p in problems(raw)] == ["body"]


# --- the response --------------------------------------------------------------------------------


def response(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(EXAMPLE_SCORE_RESPONSE)
    body.update(changes)
    return body


def test_degradation_reasons_are_the_documented_set() -> None:
    assert {r.value for r in DegradationReason} == {
        "missing", "stale", "store_unavailable", "store_timeout", "model_error", "model_timeout", "breaker_open", "quarantined",
    }


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"arm": "canary"}, "champion"),
        ({"degraded": False}, "degraded must be true exactly when"),
        ({"degradations": [{"component": "eta_model", "reason": "flaky", "detail": ""}]}, "reason"),
    ],
)
def test_inconsistent_responses_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ScoreResponse.model_validate(response(**changes))


def test_response_ranks_and_intervals_must_be_coherent() -> None:
    shuffled = response()
    shuffled["candidates"][0]["rank"] = 2
    with pytest.raises(ValidationError, match="ranks must be 1..n"):
        ScoreResponse.model_validate(shuffled)
    outside = response()
    outside["candidates"][0]["eta_low"] = 30.0
    with pytest.raises(ValidationError, match="eta_low <= eta_minutes <= eta_high"):
        ScoreResponse.model_validate(outside)


def test_a_response_round_trips_through_json() -> None:
    parsed = ScoreResponse.model_validate(EXAMPLE_SCORE_RESPONSE)
    assert ScoreResponse.model_validate_json(parsed.model_dump_json()) == parsed


# --- properties over generated requests ----------------------------------------------------------

_text = st.characters(exclude_categories=("Cs",))
_offsets = st.sampled_from([UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=5, minutes=30))])
_window_us = st.integers(-int(MAX_REQUEST_AGE.total_seconds() * 1e6), int(MAX_CLOCK_SKEW.total_seconds() * 1e6))

#: Member PII, made distinctive (``M-``, ``Name-``, ``+``) so "it appears in the body" cannot
#: happen by coincidence with a field name or a limit.
member_ids = st.text(_text, min_size=6, max_size=62).map(lambda s: f"M-{s}")
member_names = st.text(_text, min_size=6, max_size=195).map(lambda s: f"Name-{s}")
member_phones = st.text(st.sampled_from("0123456789 -"), min_size=8, max_size=31).map(lambda s: f"+{s}")


@st.composite
def valid_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A JSON-ready request body that the contract accepts at NOW."""
    requested_at = (NOW + timedelta(microseconds=draw(_window_us))).astimezone(draw(_offsets))
    member: dict[str, Any] = {"member_id": draw(member_ids)}
    if draw(st.booleans()):
        member["name"] = draw(member_names)
    if draw(st.booleans()):
        member["phone"] = draw(member_phones)
    providers = draw(st.lists(st.integers(0, 2**63 - 1), min_size=1, max_size=50, unique=True))
    return {
        "job_id": draw(st.from_regex(r"[A-Za-z0-9._:-]{1,64}", fullmatch=True)),
        "requested_at": requested_at.isoformat(),
        "line_of_business": draw(st.sampled_from(LINES_OF_BUSINESS)),
        "service_type": draw(st.sampled_from(SERVICE_TYPES)),
        "vehicle": {"vehicle_class": draw(st.sampled_from(VEHICLE_CLASSES))},
        "location": {
            "lat": draw(st.floats(-90.0, 90.0, allow_nan=False)),
            "lon": draw(st.floats(-180.0, 180.0, allow_nan=False)),
        },
        "member": member,
        "candidates": [{"provider_id": p} for p in providers],
    }


@given(valid_requests())
def test_any_valid_request_round_trips_through_json(body: dict[str, Any]) -> None:
    parsed = parse_score_request(json.dumps(body).encode(), NOW)
    again = parse_score_request(parsed.model_dump_json().encode(), NOW)
    assert again == parsed
    assert again.model_dump(mode="json") == parsed.model_dump(mode="json")
    assert again.member.model_dump(exclude_none=True) == body["member"]


Path = tuple[str | int, ...]

#: (path, invalid values): setting the value at the path must be rejected, naming the path.
_INVALID: list[tuple[Path, list[Any]]] = [
    (("job_id",), ["", "j" * 65, "job 1", "job/1", 123, None, ["job"]]),
    (
        ("requested_at",),
        [
            "not a time",
            "2026-01-15T14:03:00",
            (NOW + timedelta(minutes=6)).isoformat(),
            (NOW - timedelta(hours=25)).isoformat(),
            1768485780,
            None,
        ],
    ),
    (("line_of_business",), ["rental", "", "AUTO_CLUB", 1, None]),
    (("service_type",), ["teleport", "", 3]),
    (("vehicle",), ["suv", None, []]),
    (("vehicle", "vehicle_class"), ["spaceship", "", 0, None]),
    (("location",), [None, [1.0, 2.0], "31,-98"]),
    (("location", "lat"), [90.0001, -91, 1e308, "31.4", True, None, float("nan"), float("inf")]),
    (("location", "lon"), [180.0001, -181, "-98", False, None, float("-inf")]),
    (("member",), [None, "M1", []]),
    (("member", "member_id"), ["", "x" * 65, 7, None]),
    (("member", "name"), ["x" * 201, 5, ["x"]]),
    (("member", "phone"), ["1" * 33, 5551234]),
    (("candidates",), [[], None, "1,2", [{"provider_id": i} for i in range(51)]]),
    (("candidates", 0, "provider_id"), [-1, 1.5, "7", 2**63, True, None]),
    (("candidates", 0), [7, None, []]),
]


def _field(path: Path) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p) for i, p in enumerate(path))


@st.composite
def invalid_mutations(draw: st.DrawFn, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A copy of ``body`` broken in one place, and the field path the error must name."""
    broken = copy.deepcopy(body)
    kind = draw(st.sampled_from(["set", "delete", "extra", "duplicate"]))
    if kind == "duplicate":
        candidates = broken["candidates"]
        candidates.append(dict(candidates[draw(st.integers(0, len(candidates) - 1))]))
        if len(candidates) > 50:
            candidates.pop(0)
        return broken, "candidates"
    if kind == "delete":
        path: Path = draw(st.sampled_from([("job_id",), ("requested_at",), ("vehicle", "vehicle_class"),
                                            ("location", "lon"), ("member", "member_id"), ("candidates",)]))
        parent = _walk(broken, path[:-1])
        del parent[path[-1]]
        return broken, _field(path)
    if kind == "extra":
        parent_path: Path = draw(st.sampled_from([(), ("vehicle",), ("location",), ("member",), ("candidates", 0)]))
        name = draw(st.sampled_from(["priority", "email", "score", "lat_lon"]))
        _walk(broken, parent_path)[name] = draw(st.sampled_from([1, "x", None]))
        return broken, _field((*parent_path, name))
    path, values = draw(st.sampled_from(_INVALID))
    if len(path) > 1 and isinstance(path[1], int):
        path = (path[0], draw(st.integers(0, len(broken["candidates"]) - 1)), *path[2:])
    _walk(broken, path[:-1])[path[-1]] = draw(st.sampled_from(values))
    return broken, _field(path)


def _walk(body: Any, path: Path) -> Any:
    for part in path:
        body = body[part]
    return body


@settings(max_examples=300)
@given(st.data())
def test_any_invalid_mutation_is_rejected_naming_its_field(data: st.DataObject) -> None:
    broken, field = data.draw(valid_requests().flatmap(invalid_mutations))
    found = problems(broken)
    assert field in [p["field"] for p in found], found
    assert all(p["rule"] for p in found)


def _pii_mutations(body: dict[str, Any]) -> st.SearchStrategy[tuple[dict[str, Any], str]]:
    """Invalid mutations, plus ones that break the member fields *with the member's own PII*."""
    member = body["member"]
    own: list[tuple[dict[str, Any], str]] = []
    for key, limit in (("member_id", 64), ("name", 200), ("phone", 32)):
        if key in member:
            broken = copy.deepcopy(body)
            broken["member"][key] = (member[key] * (limit // len(member[key]) + 2))[: limit * 2]
            own.append((broken, f"member.{key}"))
    with_bad_member = copy.deepcopy(body)
    with_bad_member["member"]["unexpected"] = member["member_id"]
    own.append((with_bad_member, "member.unexpected"))
    return st.one_of(invalid_mutations(body), st.sampled_from(own))


@settings(max_examples=300)
@given(st.data())
def test_error_bodies_never_carry_member_pii(data: st.DataObject) -> None:
    body = data.draw(valid_requests())
    broken, _ = data.draw(_pii_mutations(body))
    with pytest.raises(ValidationError) as raised:
        parse_score_request(json.dumps(broken).encode(), NOW)
    logged = json.dumps(validation_problem(raised.value), ensure_ascii=False) + str(raised.value) + repr(raised.value)
    for pii in body["member"].values():
        assert pii not in logged
