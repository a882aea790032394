"""Labels join a training frame as they were known at a moment: latest revision, nothing later."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from retrain.training_set import LABEL_COLUMNS, attach_labels

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _label(job: str, provider: int, label_type: str, value: float, known_after_min: int, revision: int, source: str) -> dict:
    return {
        "job_id": job,
        "provider_id": provider,
        "label_type": label_type,
        "value": value,
        "request_ts": T0,
        "known_at": T0 + timedelta(minutes=known_after_min),
        "revision": revision,
        "source": source,
    }


@pytest.fixture()
def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {"job_id": ["J1", "J1", "J2"], "provider_id": [10, 11, 10], "distance_km": [1.0, 2.0, 3.0]}
    ).assign(request_ts=T0)


@pytest.fixture()
def labels() -> pd.DataFrame:
    return pd.DataFrame(
        [
            _label("J1", 10, "accepted", 1.0, 1, 0, "provider_response"),
            _label("J1", 10, "arrival_minutes", 41.0, 60, 0, "gps"),
            _label("J1", 10, "arrival_minutes", 35.0, 600, 1, "manual_override"),  # corrected later
            _label("J1", 11, "accepted", 0.0, 2, 0, "provider_response"),
            _label("J2", 10, "accepted", 1.0, 3, 0, "provider_response"),
            _label("J2", 10, "arrival_minutes", 22.0, 2000, 0, "gps"),  # known only the next day
            _label("J9", 99, "accepted", 1.0, 1, 0, "provider_response"),  # not in the frame
        ]
    )


def test_latest_revision_known_at_as_of_wins(frame: pd.DataFrame, labels: pd.DataFrame) -> None:
    early = attach_labels(frame, labels, as_of=T0 + timedelta(hours=2)).set_index(["job_id", "provider_id"])
    late = attach_labels(frame, labels, as_of=T0 + timedelta(days=3)).set_index(["job_id", "provider_id"])

    assert early.loc[("J1", 10), "arrival_minutes"] == 41.0
    assert early.loc[("J1", 10), "label_source"] == "gps"
    assert late.loc[("J1", 10), "arrival_minutes"] == 35.0
    assert late.loc[("J1", 10), "label_source"] == "manual_override"

    assert math.isnan(early.loc[("J2", 10), "arrival_minutes"])
    assert early.loc[("J2", 10), "accepted"] == 1.0
    assert early.loc[("J2", 10), "label_source"] == "provider_response"
    assert late.loc[("J2", 10), "arrival_minutes"] == 22.0

    assert early.loc[("J1", 11), "accepted"] == 0.0 and math.isnan(early.loc[("J1", 11), "arrival_minutes"])


def test_rows_and_columns_are_preserved(frame: pd.DataFrame, labels: pd.DataFrame) -> None:
    out = attach_labels(frame, labels, as_of=T0 + timedelta(days=3))
    assert len(out) == len(frame)
    assert list(out.columns) == list(frame.columns) + list(LABEL_COLUMNS)
    assert out["accepted"].dtype == "float64" and out["arrival_minutes"].dtype == "float64"


def test_nothing_known_before_any_label(frame: pd.DataFrame, labels: pd.DataFrame) -> None:
    out = attach_labels(frame, labels, as_of=T0)
    assert out["arrival_minutes"].isna().all() and out["accepted"].isna().all() and out["label_source"].isna().all()


def test_refuses_to_attach_twice(frame: pd.DataFrame, labels: pd.DataFrame) -> None:
    once = attach_labels(frame, labels, as_of=T0 + timedelta(days=1))
    with pytest.raises(ValueError, match="already has label columns"):
        attach_labels(once, labels, as_of=T0 + timedelta(days=1))
