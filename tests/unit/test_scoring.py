"""From a validated request to model inputs: features in contract order, request features from
the shared kernel, the member pseudonymised, and the degradation policy per job."""

from __future__ import annotations

from dataclasses import fields
from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pytest

from contracts.features import FEATURE_GROUPS, model_features
from contracts.scoring import ScoreRequest
from serve_apps.cells import CellIndex
from serve_apps.features import US, FeatureCache
from serve_apps.providers import ProviderDirectory
from serve_apps.pseudonym import KeyRing
from serve_apps.scoring import PreparedJob, feature_degradations, prepare_job

NOW = datetime(2026, 3, 2, 14, 0, tzinfo=UTC)
COLUMNS = {name: i for i, name in enumerate(model_features())}


def _cells() -> CellIndex:
    rows, cols = np.divmod(np.arange(16), 4)
    return CellIndex.from_table(pa.table({
        "cell_id": np.arange(16), "region_id": (rows >= 2).astype(np.int64) * 1, "row": rows, "col": cols,
        "center_lat": 30.0 + (rows + 0.5) * 0.036, "center_lon": -100.0 + (cols + 0.5) * 0.043,
    }))


def _cache(age: dict[str, timedelta], skip: set[str] = frozenset()) -> FeatureCache:
    cache = FeatureCache(clock=lambda: NOW.timestamp())
    ids = {"provider": np.arange(10), "cell": np.arange(16), "region": np.arange(2)}
    for g in FEATURE_GROUPS:
        if g.name in skip:
            continue
        keys = ids[g.entity]
        values = np.ones((len(keys), len(g.features)), np.float32)
        if g.name == "provider_status":
            values[:, g.features.index("provider_lat")] = 30.05
            values[:, g.features.index("provider_lon")] = -99.9 + keys * 0.01
        if g.name == "cell_traffic":
            values[:, g.features.index("speed_kmh")] = 30.0
        event = np.full(len(keys), int((NOW - age.get(g.name, timedelta(0))).timestamp() * US))
        cache.refresh(g, keys, lambda group, ids, v=values, e=event, k=keys: (k, v, e))
    return cache


def _request(**overrides) -> ScoreRequest:
    body = {
        "job_id": "J-1", "requested_at": NOW.isoformat(), "line_of_business": "fleet", "service_type": "tire",
        "vehicle": {"vehicle_class": "van"}, "location": {"lat": 30.05, "lon": -99.95},
        "member": {"member_id": "M-secret-1", "name": "Pat Secret", "phone": "+1-555-000"},
        "candidates": [{"provider_id": p} for p in (3, 1, 7)],
    }
    body.update(overrides)
    return ScoreRequest.model_validate(body)


def _prepare(cache: FeatureCache, keys: KeyRing | None = None) -> PreparedJob:
    return prepare_job(_request(), "req-1", _cells(), cache, ProviderDirectory(np.arange(10), np.array(["c"] * 10, dtype=object)),
                       keys or KeyRing.ephemeral(), NOW.timestamp())


def test_matrix_has_model_features_in_order_with_request_features_from_the_kernel() -> None:
    job = _prepare(_cache({}))
    assert job.matrix.shape == (3, len(model_features()))
    assert job.matrix[:, COLUMNS["lob_code"]].tolist() == [3.0] * 3  # fleet
    assert job.matrix[:, COLUMNS["n_candidates"]].tolist() == [3.0] * 3
    distance = job.matrix[:, COLUMNS["distance_km"]]
    assert np.all(distance > 0) and job.matrix[np.argmin(distance), COLUMNS["candidate_rank_by_distance"]] == 1
    assert job.matrix[:, COLUMNS["hour_of_day"]].tolist() == [14.0] * 3
    assert job.cell_id == 5 and job.region_id == 0  # row 1, col 1 of the 4 x 4 grid


def test_the_prepared_job_carries_no_member_pii() -> None:
    keys = KeyRing.ephemeral()
    job = _prepare(_cache({}), keys)
    text = repr(job.request) + repr([f.name for f in fields(job.request)])
    for secret in ("M-secret-1", "Pat Secret", "+1-555-000", "30.05", "-99.95"):
        assert secret not in text
    assert (job.request.pseudonym_key_id, job.request.member_pseudonym) == keys.pseudonymize("M-secret-1")


def test_fresh_features_score_with_the_champion_undegraded() -> None:
    use_fallback, degradations = feature_degradations(_prepare(_cache({})).features)
    assert not use_fallback and degradations == []


def test_a_stale_live_group_is_flagged_but_the_champion_still_answers() -> None:
    use_fallback, degradations = feature_degradations(_prepare(_cache({"cell_traffic": timedelta(minutes=20)})).features)
    assert not use_fallback
    assert [(d.component, d.reason.value) for d in degradations] == [("cell_traffic", "stale")]


@pytest.mark.parametrize("group", ["cell_traffic", "region_load", "provider_status"])
def test_a_missing_live_group_sends_the_job_to_the_fallback(group: str) -> None:
    use_fallback, degradations = feature_degradations(_prepare(_cache({}, skip={group})).features)
    assert use_fallback
    assert (group, "missing") in [(d.component, d.reason.value) for d in degradations]
