"""The offline gate, the retrain window and the trigger lineage, on hand-made inputs: no Ray, no registry."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from cluster.config import RetrainSettings, Settings
from cluster.event_log import EventLog
from contracts.events import Event
from retrain.gate import gate, paired_regression
from retrain.pipeline import RetrainTriggerError, trigger_lineage
from retrain.tune import RetrainWindowError, mix_history, retrain_window

SETTINGS = RetrainSettings(gate_min_rows=200, eta_mae_tolerance=0.03, log_loss_tolerance=0.02, overall_tolerance=0.0)


def _eta_frame(rng: np.random.Generator, rows_per_region: dict[int, int]) -> pd.DataFrame:
    """Arrival minutes with champion errors of ~6 min; the candidate starts as the champion."""
    region = np.concatenate([np.full(n, r) for r, n in rows_per_region.items()])
    y = rng.gamma(4.0, 6.0, size=region.size)
    champion = y + rng.normal(0.0, 7.5, size=region.size)
    return pd.DataFrame({"region_id": region, "y": y, "champion": champion, "candidate": champion.copy()})


def _acceptance_frame(rng: np.random.Generator, n: int) -> pd.DataFrame:
    p = rng.uniform(0.2, 0.8, size=n)
    y = (rng.random(n) < p).astype(float)
    return pd.DataFrame({"region_id": rng.integers(1, 3, size=n), "y": y, "champion": p, "candidate": p.copy()})


def _check(result, metric: str, segment: str, value: str):
    return next(c for c in result.checks if (c.metric, c.segment, c.value) == (metric, segment, value))


def test_segment_regressing_beyond_tolerance_fails_even_when_overall_improves() -> None:
    rng = np.random.default_rng(1)
    eta = _eta_frame(rng, {1: 3000, 2: 3000, 3: 600})
    errors = eta["champion"] - eta["y"]
    # Regions 1 and 2 get 20 % smaller errors; region 3's errors grow by 15 %.
    scale = np.where(eta["region_id"] == 3, 1.15, 0.8)
    eta["candidate"] = eta["y"] + errors * scale
    result = gate(eta, _acceptance_frame(rng, 2000), SETTINGS)

    assert not result.passed
    region3 = _check(result, "eta_mae", "region_id", "3")
    assert region3.verdict == "fail" and region3.relative_change == pytest.approx(0.15, abs=1e-9)
    assert _check(result, "eta_mae", "overall", "all").verdict == "pass"
    assert [(c.segment, c.value) for c in result.failures] == [("region_id", "3")]
    assert "region_id=3" in result.reason


def test_noise_within_tolerance_passes() -> None:
    rng = np.random.default_rng(2)
    eta = _eta_frame(rng, {1: 300, 2: 300, 3: 300, 4: 300})
    # An equally good candidate: independent errors of the same size, so segment MAEs differ by noise only.
    eta["candidate"] = eta["y"] + rng.normal(0.0, 7.5, size=len(eta))
    acceptance = _acceptance_frame(rng, 4000)
    acceptance["candidate"] = np.clip(acceptance["champion"] + rng.normal(0.0, 0.01, size=len(acceptance)), 0.01, 0.99)
    result = gate(eta, acceptance, SETTINGS)

    assert result.passed, result.reason
    judged = [c for c in result.checks if c.verdict != "ignored"]
    assert len(judged) == (1 + 4) + (1 + 2)  # overall + regions, for each metric
    # On 300 rows noise alone moves a segment's MAE past the 3 % tolerance; the paired test sees it is noise.
    beyond = [c for c in judged if c.relative_change > c.tolerance]
    assert beyond and all(c.z < 1.645 for c in beyond)


def test_small_segments_are_listed_but_not_judged() -> None:
    rng = np.random.default_rng(3)
    eta = _eta_frame(rng, {1: 3000, 2: 50})
    errors = eta["champion"] - eta["y"]
    # Twice the error on 50 rows, 10 % less on the 3,000 others: better overall, one tiny segment worse.
    eta["candidate"] = eta["y"] + errors * np.where(eta["region_id"] == 2, 2.0, 0.9)
    result = gate(eta, _acceptance_frame(rng, 1000), SETTINGS)

    small = _check(result, "eta_mae", "region_id", "2")
    assert small.verdict == "ignored" and small.rows == 50 and small.relative_change == pytest.approx(1.0)
    assert result.passed
    assert set(result.table()["verdict"]) == {"pass", "ignored"}


def test_worse_acceptance_overall_fails_and_an_empty_holdout_fails() -> None:
    rng = np.random.default_rng(4)
    eta = _eta_frame(rng, {1: 1000})
    acceptance = _acceptance_frame(rng, 5000)
    acceptance["candidate"] = np.clip(acceptance["champion"] + 0.15, 0.0, 0.99)  # miscalibrated
    result = gate(eta, acceptance, SETTINGS)
    assert _check(result, "acceptance_log_loss", "overall", "all").verdict == "fail"

    empty = gate(eta.iloc[:0], acceptance, SETTINGS)
    assert not empty.passed and _check(empty, "eta_mae", "overall", "all").rows == 0


def test_paired_z_matches_a_one_sample_t_test_on_the_excess_loss() -> None:
    rng = np.random.default_rng(5)
    champion = rng.exponential(5.0, size=400)
    candidate = champion * rng.normal(1.05, 0.1, size=400)
    out = paired_regression(champion, candidate, 0.03)
    t = stats.ttest_1samp(candidate - 1.03 * champion, 0.0)
    assert out["z"] == pytest.approx(t.statistic, rel=1e-12)
    assert out["relative_change"] == pytest.approx(candidate.mean() / champion.mean() - 1.0)
    assert math.isnan(paired_regression(np.array([]), np.array([]), 0.03)["z"])


def _candidates(start: datetime, days: int, jobs_per_day: int, providers: int = 3) -> pd.DataFrame:
    rows = []
    for job in range(days * jobs_per_day):
        ts = start + timedelta(days=job / jobs_per_day)
        rows += [{"job_id": f"{start:%m%d}-{job:05d}", "provider_id": p, "request_ts": ts} for p in range(providers)]
    return pd.DataFrame(rows)


def test_mix_history_keeps_every_recent_row_and_whole_jobs_of_the_stated_fraction() -> None:
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    history = _candidates(t0, days=8, jobs_per_day=100)
    recent = _candidates(t0 + timedelta(days=8), days=2, jobs_per_day=100)
    recent.attrs["feature_definition_version"] = "v1"
    mixed = mix_history(recent, history, 0.25)

    assert mixed.attrs["feature_definition_version"] == "v1"
    assert mixed["request_ts"].is_monotonic_increasing
    old = mixed[mixed["request_ts"] < recent["request_ts"].min()]
    assert len(mixed) - len(old) == len(recent)
    assert abs(len(old) - 0.25 * len(history)) <= 3  # whole jobs of 3 candidates
    assert (old.groupby("job_id").size() == 3).all()
    # The same jobs on every run, and nested: a larger fraction keeps a superset.
    again = mix_history(recent.sample(frac=1.0, random_state=0), history.sample(frac=1.0, random_state=1), 0.25)
    assert set(again["job_id"]) == set(mixed["job_id"])
    assert set(old["job_id"]) <= set(mix_history(recent, history, 0.5)["job_id"])
    # The fraction is of the full history when the frame passed in was capped.
    assert len(mix_history(recent, history, 0.25, history_rows=4 * len(history))) == len(recent) + len(history)
    assert len(mix_history(recent, history, 0.0)) == len(recent)


def test_retrain_window_counts_back_from_the_holdout_and_clips_history() -> None:
    data_start = datetime(2026, 1, 1, tzinfo=UTC)
    holdout = datetime(2026, 1, 30, 12, tzinfo=UTC)
    window = retrain_window(data_start, holdout, holdout + timedelta(days=2), recent_days=14, history_days=42, history_fraction=0.25)
    assert window.recent_start == holdout - timedelta(days=14)
    assert window.history_start == data_start  # 42 days asked, 15.5 available
    assert window.training_days == 30
    assert window.lineage()["history"] == [data_start.isoformat(), window.recent_start.isoformat()]
    with pytest.raises(RetrainWindowError, match="recent-days"):
        retrain_window(data_start, holdout, holdout, recent_days=40, history_days=0, history_fraction=0.25)


def test_trigger_lineage_reads_the_event_log_and_refuses_unknown_ids(tmp_path: Path) -> None:
    settings = Settings().model_copy(update={"paths": Settings().paths.model_copy(update={"events": tmp_path})})
    observed = datetime(2026, 2, 11, tzinfo=UTC)
    event = Event(
        event_id="e1", kind="concept_drift", severity="ticket", source="page_hinkley", subject="eta",
        segment={"region_id": 3}, observed_at=observed, detected_at=observed, summary="ETA residuals rose in region 3",
    )
    EventLog(tmp_path).append([event])

    lineage = trigger_lineage(settings, "e1")
    assert lineage == trigger_lineage(settings, event)
    assert lineage["trigger"] == "e1" and lineage["trigger_event"]["segment"] == {"region_id": 3}
    assert trigger_lineage(settings, None) == {"trigger": "manual"}
    with pytest.raises(RetrainTriggerError, match="not in the event log"):
        trigger_lineage(settings, "missing")


def test_a_retrain_refits_only_the_family_its_quality_event_is_about() -> None:
    from retrain.pipeline import retrain_families

    def lineage(kind: str, subject: str) -> dict:
        return {"trigger": "e1", "trigger_event": {"kind": kind, "source": "x", "subject": subject, "segment": {"region_id": 16}}}

    assert retrain_families(lineage("concept_drift", "eta")) == ("eta",)
    assert retrain_families(lineage("slo_burn", "eta_interval_slo")) == ("eta",)
    assert retrain_families(lineage("slo_burn", "top_rank_accepted_slo")) == ("acceptance",)
    # Input drift or a manual run says nothing about which model erred: both are refitted.
    assert retrain_families(lineage("drift", "cell_traffic__speed_kmh")) == ("eta", "acceptance")
    assert retrain_families({"trigger": "manual"}) == ("eta", "acceptance")
