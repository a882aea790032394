"""Bad input through the real router (in-process) and into the log reader: 4xx naming the field and
the rule, never a 5xx, and nothing already accepted is lost.

The contract's own rules (types, NaN, ranges, limits, clock window, vocabularies) are tested on
the parser in ``test_scoring_contract.py`` and against the running service in
``tests/e2e/test_serving.py``; here are what those do not reach: arbitrary JSON anywhere in a
body, the HTTP layer (content type, methods, bytes that are not UTF-8), candidates the service
does not know, good and bad requests interleaved, and a log directory holding duplicates and
debris.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from in_process_router import InProcessRouter, in_process_router
from pydantic import ValidationError
from test_prediction_log import rows
from test_scoring_contract import NOW, valid_requests

from contracts.prediction_log import DEDUPE_KEY, to_record_batch
from contracts.scoring import MAX_BODY_BYTES, SCORE_PATH, RequestTooLargeError, parse_score_request, validation_problem
from serve_apps.prediction_log import partition_dir, read_prediction_log

MEMBER_ID, MEMBER_NAME, MEMBER_PHONE = "M-bad-input-0042", "Quill Badinput-Fakename", "+1-555-0142-9090"


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessRouter]:
    with in_process_router(tmp_path_factory.mktemp("bad-input")) as app:
        yield app


def good(job_id: str, providers: tuple[int, ...] = (3, 1, 7)) -> dict[str, Any]:
    """A request the router scores: inside the grid, fresh timestamp, known providers."""
    return {
        "job_id": job_id, "requested_at": datetime.now(UTC).isoformat(), "line_of_business": "insurer",
        "service_type": "tow", "vehicle": {"vehicle_class": "suv"}, "location": {"lat": 22.61, "lon": -45.13},
        "member": {"member_id": MEMBER_ID, "name": MEMBER_NAME, "phone": MEMBER_PHONE},
        "candidates": [{"provider_id": p} for p in providers],
    }


# --- the parser on arbitrary input -------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


def _paths(body: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(body, dict):
        for key, value in body.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(body, list):
        for i, value in enumerate(body):
            out += _paths(value, (*prefix, i))
    return out


@st.composite
def corrupted_bodies(draw: st.DrawFn) -> bytes:
    """A valid body with any JSON value at any path, or raw bytes, or a cut-off body."""
    body = draw(valid_requests())
    kind = draw(st.sampled_from(["replace", "replace", "bytes", "truncate"]))
    raw = json.dumps(body, allow_nan=True).encode()
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "truncate":
        return raw[: draw(st.integers(0, len(raw) - 1))]
    broken = copy.deepcopy(body)
    path = draw(st.sampled_from(_paths(broken)))
    value = draw(json_values)
    if not path:
        broken = value
    else:
        parent = broken
        for part in path[:-1]:
            parent = parent[part]
        parent[path[-1]] = value
    return json.dumps(broken, allow_nan=True).encode()


@settings(max_examples=150, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(corrupted_bodies())
def test_any_body_is_parsed_or_refused_with_field_and_rule_never_an_unexpected_error(raw: bytes) -> None:
    """Anything but these two exceptions would reach the router's catch-all as a 500."""
    try:
        parse_score_request(raw, NOW)
    except RequestTooLargeError:
        assert len(raw) > MAX_BODY_BYTES
    except ValidationError as exc:
        problem = validation_problem(exc)
        json.dumps(problem)  # serialisable as the 4xx body
        assert problem["problems"] and all(p["field"] and p["rule"] for p in problem["problems"]), problem


# --- the router, end to end in-process ---------------------------------------------------------

BAD_REQUESTS: list[tuple[str, dict[str, Any], int, str]] = [
    # (case, request kwargs, status, text the answer must contain)
    ("non-UTF-8 bytes", {"content": b"\xff\xfe{\x00", "headers": {"content-type": "application/json"}}, 422, "must be valid JSON"),
    ("nesting past the parser's limit", {"content": b"[" * 5000 + b"]" * 5000, "headers": {"content-type": "application/json"}},
     422, "must be valid JSON"),
    ("JSON with a BOM", {"content": b"\xef\xbb\xbf" + json.dumps(good("J-bom")).encode(), "headers": {"content-type": "application/json"}},
     422, "must be valid JSON"),
    ("form body", {"content": b"job_id=1", "headers": {"content-type": "application/x-www-form-urlencoded"}}, 415, "application/json"),
    ("NaN latitude", {"content": json.dumps(good("J-nan")).replace("22.61", "NaN").encode(), "headers": {"content-type": "application/json"}},
     422, "location.lat"),
    ("-Infinity longitude", {"content": json.dumps(good("J-inf")).replace("-45.13", "-Infinity").encode(),
                             "headers": {"content-type": "application/json"}}, 422, "location.lon"),
    ("provider id above int64", {"json": good("J-big") | {"candidates": [{"provider_id": 2**64}]}}, 422, "candidates[0].provider_id"),
    ("10,000 candidates", {"json": good("J-many") | {"candidates": [{"provider_id": i} for i in range(10_000)]}}, 413, "at most 50"),
    ("a 1 MB name", {"json": good("J-name") | {"member": {"member_id": "M1", "name": "x" * 1_000_000}}}, 413, "limit is"),
    ("a year-9999 timestamp", {"json": good("J-future") | {"requested_at": "9999-12-31T23:59:59-23:59"}}, 422, "requested_at"),
    ("a year-1 timestamp", {"json": good("J-past") | {"requested_at": "0001-01-01T00:00:00+23:59"}}, 422, "requested_at"),
    ("an unknown line of business", {"json": good("J-lob") | {"line_of_business": "spaceship"}}, 422, "line_of_business"),
    ("longitude past 180", {"json": good("J-lon") | {"location": {"lat": 90.0, "lon": 180.000001}}}, 422, "location.lon"),
]


@pytest.mark.parametrize(("kwargs", "status", "text"), [c[1:] for c in BAD_REQUESTS], ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_get_a_4xx_that_says_what_is_wrong(router: InProcessRouter, kwargs: dict, status: int, text: str) -> None:
    r = router.request("POST", SCORE_PATH, **kwargs)
    assert r.status_code == status, r.text
    assert text in r.text
    assert r.json()["error"]
    for pii in (MEMBER_ID, MEMBER_NAME, MEMBER_PHONE):
        assert pii not in r.text


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("GET", SCORE_PATH, "POST"), ("PUT", SCORE_PATH, "POST"), ("TRACE", SCORE_PATH, "POST"),
    ("DELETE", "/v1/admin/traffic", "POST"), ("POST", "/healthz", "GET, HEAD"), ("PATCH", "/metrics", "GET, HEAD"),
])
def test_a_wrong_method_is_405_with_an_allow_header(router: InProcessRouter, method: str, path: str, allow: str) -> None:
    """Regression (found by the schemathesis run): a 405 without ``Allow`` breaks RFC 9110 15.5.6."""
    r = router.request(method, path)
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == allow
    assert r.json()["error"] == "method_not_allowed"


def test_unknown_candidates_are_answered_by_the_fallback_and_flagged(router: InProcessRouter) -> None:
    """Providers onboarded since the last directory load are normal, not a client error: the
    answer comes from the feature-free fallback and says which features were missing."""
    r = router.score(good("J-unknown-providers", providers=(10**9, 10**9 + 1, 2**63 - 1)))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["arm"] == "fallback" and body["degraded"] is True
    assert {"provider_status"} <= {d["component"] for d in body["degradations"]}
    assert sorted(c["provider_id"] for c in body["candidates"]) == [10**9, 10**9 + 1, 2**63 - 1]


def test_bad_requests_between_good_ones_lose_nothing_and_log_nothing(router: InProcessRouter) -> None:
    accepted: list[str] = []
    for i, (_, kwargs, status, _) in enumerate(BAD_REQUESTS):
        r = router.score(good(f"J-interleaved-{i}"))
        assert r.status_code == 200, r.text
        accepted.append(r.json()["request_id"])
        assert router.request("POST", SCORE_PATH, **kwargs).status_code == status
    assert router.router.log.flush(timeout=30)
    log = read_prediction_log(router.prediction_log).to_pandas()
    served = log[log.role == "served"]
    assert set(accepted) <= set(served.request_id)
    assert (served[served.request_id.isin(accepted)].groupby("request_id").size() == 3).all()
    assert not served.job_id.isin([c[1].get("json", {}).get("job_id") for c in BAD_REQUESTS]).any()
    stats = router.router.log.snapshot()
    assert stats.rows_dropped == 0 and stats.rows_invalid == 0


# --- the log reader on at-least-once delivery and debris ---------------------------------------

DAY = datetime(2026, 3, 1, 14, 0, tzinfo=UTC)


@st.composite
def deliveries(draw: st.DrawFn) -> list[tuple[int, str, int]]:
    """Batches as replicas deliver them, repeats allowed: (request number, role, retry delay ms)."""
    batch = st.tuples(st.integers(0, draw(st.integers(0, 4))), st.sampled_from(["served", "shadow"]), st.integers(0, 3))
    return draw(st.lists(batch, min_size=1, max_size=8))


#: What a crashed or foreign writer leaves in a partition; readers list only ``part-*.parquet``.
DEBRIS = {
    ".part-router-1-000000099.parquet.tmp": b"PAR1 half written",
    "part-router-1-000000100.parquet.tmp": b"not a committed name either",
    "_SUCCESS": b"",
    "notes.txt": b"operator notes",
}


def _write_part(root: Path, seq: int, batch: pa.RecordBatch, requested_at: datetime) -> Path:
    directory = partition_dir(root, requested_at.date())
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"part-router-{seq % 2}-{seq:09d}.parquet"
    pq.write_table(pa.Table.from_batches([batch]), path)
    return directory


@settings(max_examples=15, derandomize=True, database=None, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(deliveries(), st.booleans())
def test_the_reader_keeps_exactly_the_first_delivery_of_every_row_and_ignores_debris(
    tmp_path_factory: pytest.TempPathFactory, batches: list[tuple[int, str, int]], debris: bool
) -> None:
    root = tmp_path_factory.mktemp("log")
    copies: dict[tuple[str, str], list[tuple[datetime, float]]] = {}
    for seq, (number, role, delay_ms) in enumerate(batches):
        request_id, requested_at = f"r{number}", DAY + timedelta(days=number % 3)
        # A redelivery differs in logged_at and, to tell copies apart here, in its values.
        logged_at, p_accept = requested_at + timedelta(milliseconds=5 + delay_ms), (seq + 1) / (len(batches) + 1)
        batch = to_record_batch(rows(request_id, requested_at, n=2, role=role, p_accept=p_accept, logged_at=logged_at))
        directory = _write_part(root, seq, batch, requested_at)
        copies.setdefault((request_id, role), []).append((logged_at, p_accept))
        if debris:
            for name, blob in DEBRIS.items():
                (directory / name).write_bytes(blob)
    frame = read_prediction_log(root).to_pandas()
    assert len(frame) == 2 * len(copies)
    assert not frame.duplicated(list(DEDUPE_KEY)).any()
    for (request_id, role), delivered in copies.items():
        kept = frame[(frame.request_id == request_id) & (frame.role == role)].p_accept
        earliest = min(at for at, _ in delivered)
        assert kept.nunique() == 1, "one delivery's rows, not a mix"
        assert kept.iloc[0] in {p for at, p in delivered if at == earliest}
    window = read_prediction_log(root, DAY + timedelta(days=1), DAY + timedelta(days=2))
    assert set(window.column("request_id").to_pylist()) == {r for r, _ in copies if int(r[1:]) % 3 == 1}


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_corrupt_committed_part_is_an_error_naming_the_file_not_a_silent_loss(tmp_path: Path, damage: str) -> None:
    """Commits are atomic, so a broken ``part-*.parquet`` is disk damage: the reader must say which
    file, never skip it (that would drop rows without a trace)."""
    directory = _write_part(tmp_path, 0, to_record_batch(rows("r1", DAY)), DAY)
    whole = (directory / "part-router-0-000000000.parquet").read_bytes()
    broken = directory / "part-router-1-000000001.parquet"
    broken.write_bytes(whole[: len(whole) // 2] if damage == "truncated" else b"PAR1" + b"\x00" * 64)
    with pytest.raises(pa.ArrowInvalid, match="part-router-1-000000001"):
        read_prediction_log(tmp_path)
