"""Property-based fuzzing of the scoring API from its own OpenAPI document (schemathesis).

The router runs in-process (``in_process_router``): the real request path without Ray Serve, so
hundreds of requests cost seconds. Schemathesis draws valid bodies (positive mode) and bodies
that break one schema rule each (negative mode) for every operation in ``/openapi.json`` and
checks each response against the document: documented status, content type and body schema,
and negative data rejected with a 4xx. On top of that, every answer must be below 500 and
every 4xx must say what was wrong.

Not checked: that every schema-valid body is accepted. Rules a JSON schema cannot state (the
clock window around ``requested_at``, the service area, each provider once) rightly turn some
schema-valid bodies into a 422; those rules have their own tests in ``test_bad_input.py``.

CI runs a fixed number of examples from a fixed seed (deterministic). For a longer run:
``DISPATCHML_FUZZ_EXAMPLES=2000 pytest tests/unit/test_api_fuzz.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from in_process_router import ADMIN_TOKEN, InProcessRouter, in_process_router
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import ignored_auth, positive_data_acceptance

from contracts.scoring import SCORE_PATH
from serve_apps.openapi import openapi_document

FUZZ_EXAMPLES = int(os.environ.get("DISPATCHML_FUZZ_EXAMPLES", "100"))
#: request ids the fuzzer got a 200 for; the last test checks each was logged.
ACCEPTED: list[str] = []


@pytest.fixture(scope="module")
def router(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessRouter]:
    with in_process_router(tmp_path_factory.mktemp("fuzz")) as app:
        yield app


class _CurrentRouter:
    """ASGI app forwarding to the module's router, so the schema can be built at import (pure)
    while the router itself is a fixture that starts and stops with this module."""

    router: InProcessRouter | None = None

    async def __call__(self, scope: dict, receive, send) -> None:
        assert self.router is not None, "the router fixture is not running"
        await self.router(scope, receive, send)


CURRENT = _CurrentRouter()
schema = schemathesis.openapi.from_dict(openapi_document())
schema.app = CURRENT
schema.config.generation.update(
    modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE], max_examples=FUZZ_EXAMPLES, deterministic=True, database="none"
)


@pytest.fixture(scope="module", autouse=True)
def _fuzz_the_router(router: InProcessRouter) -> Iterator[None]:
    CURRENT.router = router
    yield
    CURRENT.router = None


@schema.parametrize()
@settings(max_examples=FUZZ_EXAMPLES, derandomize=True, database=None, deadline=None,
          suppress_health_check=list(HealthCheck))
def test_every_fuzzed_request_is_answered_below_500_and_as_documented(case) -> None:
    excluded = [positive_data_acceptance]
    if case.path.startswith("/v1/admin") and case.meta.generation.mode == GenerationMode.POSITIVE:
        case.headers = {**(case.headers or {}), "authorization": f"Bearer {ADMIN_TOKEN}"}
        # Schemathesis takes a token it did not generate for a made-up one and expects a 401;
        # missing and wrong tokens are tested directly in test_privacy.py.
        excluded.append(ignored_auth)
    if case.path == SCORE_PATH and case.meta.generation.mode == GenerationMode.POSITIVE and isinstance(case.body, dict):
        # Valid bodies with a timestamp near now reach scoring instead of the clock-window rule.
        # A new dict: schemathesis may hand out the OpenAPI example itself, shared with other tests.
        case.body = {**case.body, "requested_at": datetime.now(UTC).isoformat()}
    response = case.call_and_validate(base_url="http://testserver", excluded_checks=excluded)
    assert response.status_code < 500, response.text
    if case.path == SCORE_PATH and response.status_code == 200:
        ACCEPTED.append(response.json()["request_id"])
    if 400 <= response.status_code < 500:
        body = response.json()
        assert body["error"], body
        if response.status_code == 422 and body["error"] == "invalid_request":
            assert all(p["field"] and p["rule"] for p in body["problems"]), body


def test_every_request_the_fuzzer_got_scored_is_in_the_prediction_log(router: InProcessRouter) -> None:
    """Runs after the fuzzer in this module: bad requests between good ones lost nothing."""
    from serve_apps.prediction_log import read_prediction_log

    assert ACCEPTED, "the fuzzer never reached scoring: the positive examples are not realistic enough"
    assert router.router.log.flush(timeout=30)
    table = read_prediction_log(router.prediction_log).to_pandas()
    served = table[table.role == "served"]
    assert set(ACCEPTED) == set(served.request_id)
