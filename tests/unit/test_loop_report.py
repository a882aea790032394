"""The closed-loop report's pure pieces on small hand-made frames (``eval/loop_report.py``)."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from cluster.closed_loop import LoopStep
from contracts.events import ActionRecord, Event
from eval.calibration import expected_calibration_error, log_loss
from eval.loop_report import (
    MIN_LABELLED_ROWS,
    Period,
    acted_on_regions,
    group_metrics,
    period_of,
    periods_of,
    regions_over_cells,
    release_stages,
    timeline_frame,
    volume_over_time,
)

T0 = datetime(2026, 1, 5, tzinfo=UTC)


def _step(hour: int, champion: str = "v1", challenger: str | None = None, weight: float = 0.0,
          quarantined: tuple[str, ...] = (), reason: str = "r") -> LoopStep:
    return LoopStep(start=T0 + timedelta(hours=hour - 1), end=T0 + timedelta(hours=hour), logged_rows=0, events=(), actions=(),
                    release="code", release_reason=reason, champion=champion, challenger=challenger, challenger_weight=weight,
                    quarantined=quarantined)


def test_volume_counts_requests_once_and_shares_per_request() -> None:
    # Two requests in the first 10-minute bin (one of 3 candidates by the fallback, degraded), one in the second.
    log = pd.DataFrame({
        "request_id": ["a", "a", "a", "b", "c", "c"],
        "role": ["served"] * 3 + ["served", "served", "shadow"],
        "requested_at": [T0 + timedelta(minutes=1)] * 3 + [T0 + timedelta(minutes=5), T0 + timedelta(minutes=12), T0 + timedelta(minutes=12)],
        "region_id": [1] * 6,
        "arm": ["fallback"] * 3 + ["champion", "champion", "challenger"],
        "degraded": [True] * 3 + [False, False, False],
    })
    volume = volume_over_time(log, T0, T0 + timedelta(minutes=20), bins=2)
    assert volume["bin_seconds"].iloc[0] == 600
    assert volume["requests"].tolist() == [2, 1]
    assert volume["fallback_share"].tolist() == [0.5, 0.0] and volume["degraded_share"].tolist() == [0.5, 0.0]
    assert volume["shadow_scored"].tolist() == [0, 1]


def test_periods_split_at_the_incident_and_the_promotion() -> None:
    end = T0 + timedelta(days=3)
    incident, promotion = T0 + timedelta(days=1), T0 + timedelta(days=2)
    periods = periods_of(T0, end, incident, promotion)
    assert [(p.name, p.start, p.end) for p in periods] == [
        ("before incident", T0, incident), ("after incident", incident, promotion), ("after promotion", promotion, end)]
    assert periods_of(T0, end, None, None) == [Period("span", T0, end)]
    assert [p.name for p in periods_of(T0, end, end + timedelta(hours=1), None)] == ["span"]
    times = pd.Series([T0, incident - timedelta(seconds=1), incident, end])
    assert period_of(times, periods).tolist() == ["before incident", "before incident", "after incident", None]


def test_release_stages_follow_the_routing_changes() -> None:
    steps = [
        _step(1), _step(2, challenger="v2", reason="start shadow"), _step(3, challenger="v2", weight=0.05, reason="test passed"),
        _step(4, challenger="v2", weight=0.05, quarantined=("cell_traffic",)), _step(5, champion="v2", reason="promote"),
        _step(6, champion="v2", challenger="v3"), _step(7, champion="v2", reason="rolled back"),
    ]
    stages = release_stages(steps)
    assert stages["stage"].tolist() == ["shadow", "canary 5%", "quarantine", "promote", "lift quarantine", "shadow", "stopped"]
    assert stages["time"].tolist() == [T0 + timedelta(hours=h) for h in (2, 3, 4, 5, 5, 6, 7)]
    assert stages["reason"].iloc[1] == "test passed"


def test_group_metrics_equal_the_kernels_on_matured_rows_only() -> None:
    rng = np.random.default_rng(3)
    n = 200
    rows = pd.DataFrame({
        "arrival_minutes": rng.gamma(4.0, 5.0, n), "eta_minutes": rng.gamma(4.0, 5.0, n), "p_accept": rng.uniform(0.05, 0.95, n),
        "accepted": rng.integers(0, 2, n).astype(float), "eta_ok": np.arange(n) < 150, "acc_ok": np.arange(n) >= 20,
    })
    rows["eta_low"], rows["eta_high"] = rows["eta_minutes"] - 8, rows["eta_minutes"] + 8
    got = group_metrics(rows)
    eta, acc = rows[rows.eta_ok], rows[rows.acc_ok]
    assert got["eta_mae"] == pytest.approx(np.mean(np.abs(eta.arrival_minutes - eta.eta_minutes)))
    inside = (eta.arrival_minutes >= eta.eta_low) & (eta.arrival_minutes <= eta.eta_high)
    assert got["eta_coverage"] == pytest.approx(inside.mean())
    assert got["accept_log_loss"] == pytest.approx(log_loss(acc.accepted.to_numpy(), acc.p_accept.to_numpy()))
    assert got["accept_ece"] == pytest.approx(expected_calibration_error(acc.accepted.to_numpy(), acc.p_accept.to_numpy()))
    assert (got["eta_labelled"], got["accept_labelled"]) == (150, 180)
    few = group_metrics(rows.assign(eta_ok=np.arange(n) < MIN_LABELLED_ROWS - 1))
    assert math.isnan(few["eta_mae"]) and math.isnan(few["eta_coverage"])


def test_region_rows_are_painted_on_every_cell_of_the_region() -> None:
    drift = pd.DataFrame({
        "region_id": pd.array([0, 0, 1, None], dtype="Int64"), "cell_id": pd.array([5, None, None, None], dtype="Int64"),
        "feature": ["x"] * 4, "psi": [9.0, 0.4, 0.05, 0.1], "q_value": [0.01] * 4, "drift": [True, True, False, False],
    })
    cells = pd.DataFrame({"cell_id": [4, 5, 6], "region_id": [0, 0, 1], "row": [0, 0, 1], "col": [0, 1, 0]})
    painted = regions_over_cells(drift, cells).sort_values("cell_id")
    assert painted["cell_id"].tolist() == [4, 5, 6] and painted["psi"].tolist() == [0.4, 0.4, 0.05]


def _event(kind: str, severity: str, region: int, hour: int, state: str = "firing") -> Event:
    at = T0 + timedelta(hours=hour)
    return Event(event_id=f"{kind}-{region}-{hour}-{state}", kind=kind, severity=severity, state=state, source="s", subject="f",
                 segment={"region_id": region}, observed_at=at, detected_at=at, summary=f"{kind} in {region}")


def _action(event: Event, action: str, status: str = "taken", at: datetime | None = None) -> ActionRecord:
    return ActionRecord(action_id=f"{event.event_id}-{action}", event_id=event.event_id, incident_key=event.incident_key(),
                        action=action, status=status, reason=f"because {action}", decided_at=at or event.observed_at)


def test_acted_on_regions_and_the_timeline_lanes() -> None:
    ticket, paged, retrained = _event("drift", "ticket", 1, 1), _event("data_quality", "page", 2, 2), _event("concept_drift", "ticket", 3, 3)
    outside = _event("data_quality", "page", 4, 30)
    actions = [_action(ticket, "ticket"), _action(paged, "fallback_feature_group"), _action(retrained, "retrain"),
               _action(retrained, "none"), _action(paged, "promote", at=T0 + timedelta(days=300))]
    events = [ticket, paged, retrained, outside]
    end = T0 + timedelta(hours=24)
    assert acted_on_regions(events, actions, T0, end) == [2, 3]
    lanes = timeline_frame(events, actions, T0, end)
    assert lanes["lane"].tolist() == ["event: drift", "action: ticket", "event: data_quality", "action: fallback_feature_group",
                                      "event: concept_drift", "action: retrain"]
    assert lanes.loc[lanes.lane == "action: retrain", "segment"].item() == "region_id=3"
    with_steps = timeline_frame(events, actions, T0, end, [_step(1), _step(5, challenger="v2")])
    assert with_steps["lane"].iloc[-1] == "release: shadow" and with_steps["time"].iloc[-1] == T0 + timedelta(hours=5)
