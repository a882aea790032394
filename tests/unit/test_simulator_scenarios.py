"""Each incident kind changes the warehouse only inside its segment and time span, and in the
direction it claims.

Every test simulates the small world with one incident and the same seed as the baseline, then
pairs rows by key (job, candidate, event, label) or by position (near-real-time pushes, one per
job or candidate in a fixed order). Counter-based randomness (``simulator.randomness``) makes
the claim exact: a draw is keyed by what it is about, so an incident cannot move a random number
outside its segment, and any difference outside is a leak.

What "inside" means is stated per test, at the level where the claim is exact:

* Job-level effects (arrival times, acceptance, labels, events) are confined to *jobs* in the
  segment and span. Inside a job they legitimately spread: when one candidate declines, the
  offer goes to the next, so every later offer, the final provider and the arrival label of
  that job change.
* Near-real-time pushes are stamped a few minutes (up to 4) before the request they serve, and
  the traffic lags look 15-60 minutes back, so pushes are in scope by their own timestamps.
* Batch history features fold in realised outcomes: after onset they legitimately change for
  any provider who served an affected job (wherever that provider lives), and regional
  active-provider counts change with them. Snapshots published before onset are identical; for
  region-segmented incidents, cell history outside the segment stays identical throughout.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import get_args

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from simulated_warehouse import (
    BATCH_TABLES,
    DAILY_TABLES,
    NRT_TABLES,
    Warehouse,
    assert_same_rows,
    assert_sub_multiset,
    assert_tables_identical,
    changed_jobs,
    in_window,
    paired,
    scenario_of,
    window,
)

from cluster.config import load_settings
from contracts.features import FEATURE_GROUPS, LINES_OF_BUSINESS
from simulator.scenarios import IncidentKind, Scenario
from simulator.world import FLEET_BANDS, RATING_TIERS, TENURE_BANDS

START_DAY = 1.25  # 06:00 on the second day
DURATION = timedelta(hours=24)
W_START, W_END = window(START_DAY, DURATION)
REGIONS = [3, 5]
PUSH_LAG = pd.Timedelta(minutes=4)
SCENARIO_DIR = Path(__file__).resolve().parents[2] / "scenarios"

Simulate = Callable[..., Warehouse]


def _jobs(requests: pd.DataFrame, mask: pd.Series) -> set[str]:
    return set(requests.loc[mask, "job_id"])


def _region_jobs(base: Warehouse, start: pd.Timestamp, end: pd.Timestamp, regions: list[int]) -> set[str]:
    req = base.table("raw/requests")
    return _jobs(req, req["region_id"].isin(regions) & in_window(req["request_ts"], start, end))


def _entity_in(base: Warehouse, rows: pd.DataFrame, regions: list[int]) -> pd.Series:
    """Feature rows whose entity (region, cell, or provider's home) lies in ``regions``."""
    if "region_id" in rows:
        region = rows["region_id"].to_numpy()
    elif "cell_id" in rows:
        region = base.cell_region()[rows["cell_id"]]
    else:
        region = base.provider_region()[rows["provider_id"]]
    return pd.Series(np.isin(region, regions), index=rows.index)


def _assert_confined(changed: set[str], scope: set[str], what: str) -> None:
    leaked = changed - scope
    assert not leaked, f"{what}: {len(leaked)} jobs outside the segment/span changed, e.g. {sorted(leaked)[:3]}"
    assert changed, f"{what}: no job changed at all"


def _assert_history_confined(base: Warehouse, scen: Warehouse, regions: list[int] | None = None) -> None:
    """Batch snapshots before onset are identical; so is cell history outside a region segment."""
    for name in BATCH_TABLES:
        b, s = base.table(name), scen.table(name)
        assert_same_rows(b[b["event_timestamp"] <= W_START], s[s["event_timestamp"] <= W_START], f"{name} before onset")
    if regions is not None:
        region = base.cell_region()
        b, s = base.table("features/cell_batch"), scen.table("features/cell_batch")
        outside_b, outside_s = b[~np.isin(region[b["cell_id"]], regions)], s[~np.isin(region[s["cell_id"]], regions)]
        assert_same_rows(outside_b, outside_s, "cell_batch outside the segment")


def _arrival_labels(w: Warehouse) -> pd.DataFrame:
    labels = w.table("labels")
    return labels[(labels["label_type"] == "arrival_minutes") & (labels["revision"] == 0)]


def _paired_arrivals(base: Warehouse, scen: Warehouse) -> pd.DataFrame:
    """First arrival labels of the jobs that arrived in both runs (``value_b``, ``value_s``...)."""
    arr = paired(_arrival_labels(base), _arrival_labels(scen), ["job_id"])
    return arr[arr["_merge"] == "both"]


def _assert_arrivals_longer(base: Warehouse, scen: Warehouse, jobs: set[str], factor: float) -> None:
    arr = _paired_arrivals(base, scen)
    arr = arr[arr["job_id"].isin(jobs)]
    assert len(arr) > 100
    assert arr["value_s"].mean() > factor * arr["value_b"].mean()


def _acceptance_labels(w: Warehouse) -> pd.DataFrame:
    labels = w.table("labels")
    return labels[labels["label_type"] == "accepted"]


def _paired_acceptance(base: Warehouse, scen: Warehouse) -> pd.DataFrame:
    """Offers made in both runs, with the candidate's cohort and the job's service type."""
    both = paired(_acceptance_labels(base), _acceptance_labels(scen), ["job_id", "provider_id"])
    both = both[both["_merge"] == "both"]
    cands = base.table("dispatch/candidates")[["job_id", "provider_id", "provider_cohort", "service_type"]]
    return both.merge(cands, on=["job_id", "provider_id"], how="left", validate="one_to_one")


def _positional(base: pd.DataFrame, scen: pd.DataFrame, key: str) -> None:
    """Pushes are one per job/candidate in a fixed order: without drops, row i is the same push."""
    assert len(base) == len(scen)
    for col in (key, "event_timestamp", "partition_date"):
        assert (base[col].to_numpy() == scen[col].to_numpy()).all(), f"push {col} moved"


def test_covariate_drift_raises_traffic_only_in_segment_and_span(baseline: Warehouse, simulate_small: Simulate) -> None:
    size = 0.5
    scen = simulate_small(
        scenario_of(kind="covariate_drift", start_day=START_DAY, duration=DURATION, segment={"region_id": REGIONS}, size=size)
    )
    assert_tables_identical(baseline, scen, ("raw/requests", "dispatch/candidates", "features/region_load", "features/provider_status"))

    b, s = baseline.table("features/cell_traffic"), scen.table("features/cell_traffic")
    _positional(b, s, "cell_id")
    in_segment = np.isin(baseline.cell_region()[b["cell_id"]], REGIONS)
    hit = {lag: in_segment & in_window(b["event_timestamp"] - pd.Timedelta(minutes=lag), W_START, W_END).to_numpy() for lag in (0, 15, 30, 60)}
    for column, lag, factor in (
        ("traffic_index", 0, 1 + size),
        ("speed_kmh", 0, 1 / (1 + size)),
        ("traffic_index_lag_15m", 15, 1 + size),
        ("traffic_index_lag_60m", 60, 1 + size),
    ):
        ratio = s[column].to_numpy() / b[column].to_numpy()
        np.testing.assert_allclose(ratio, np.where(hit[lag], factor, 1.0), rtol=1e-12, err_msg=column)
    untouched = ~(hit[0] | hit[15] | hit[30] | hit[60])
    pd.testing.assert_frame_equal(b[untouched], s[untouched], obj="cell_traffic outside segment and span")

    # Slower roads make arrivals in the segment longer; nothing else moves.
    scope = _region_jobs(baseline, W_START, W_END + PUSH_LAG, REGIONS)
    _assert_confined(changed_jobs(baseline, scen), scope, "covariate_drift")
    _assert_arrivals_longer(baseline, scen, scope, 1.05)
    _assert_history_confined(baseline, scen, REGIONS)


def test_concept_drift_slows_arrivals_with_features_unchanged(baseline: Warehouse, simulate_small: Simulate) -> None:
    scen = simulate_small(
        scenario_of(kind="concept_drift", start_day=START_DAY, duration=DURATION, segment={"region_id": REGIONS}, size=0.5)
    )
    # P(X) is untouched: requests, candidates and every pushed feature are identical.
    assert_tables_identical(baseline, scen, ("raw/requests", "dispatch/candidates", *NRT_TABLES))
    # Acceptance does not depend on travel time, so no acceptance label moves anywhere.
    pd.testing.assert_frame_equal(
        _acceptance_labels(baseline).reset_index(drop=True), _acceptance_labels(scen).reset_index(drop=True), obj="acceptance labels"
    )

    scope = _region_jobs(baseline, W_START, W_END, REGIONS)
    _assert_confined(changed_jobs(baseline, scen), scope, "concept_drift")
    # Same job, same provider, same GPS noise draw: the reported arrival can only grow.
    arr = _paired_arrivals(baseline, scen)
    inside = arr["job_id"].isin(scope)
    assert (arr.loc[inside, "value_s"] >= arr.loc[inside, "value_b"] - 1e-9).all()
    assert (arr.loc[~inside, "value_s"] == arr.loc[~inside, "value_b"]).all()
    _assert_arrivals_longer(baseline, scen, scope, 1.1)
    # Longer waits only add cancellations (the cancel draw is fixed, its probability rises).
    cancelled_b, cancelled_s = (set(w.table("dispatch/events").query("event_type == 'cancel'")["job_id"]) for w in (baseline, scen))
    assert cancelled_b < cancelled_s
    _assert_history_confined(baseline, scen, REGIONS)


def test_unit_change_rescales_one_reported_column_in_one_region(baseline: Warehouse, simulate_small: Simulate) -> None:
    region = REGIONS[0]
    scen = simulate_small(
        scenario_of(
            kind="unit_change", start_day=START_DAY, duration=DURATION, segment={"region_id": [region]},
            feature="cell_traffic.speed_kmh", size=0.621,
        )
    )
    # The world is unchanged: only what the traffic feed reports differs.
    others = [t for t in (*DAILY_TABLES, *BATCH_TABLES, *NRT_TABLES) if t != "features/cell_traffic"]
    assert_tables_identical(baseline, scen, tuple(others))
    b, s = baseline.table("features/cell_traffic"), scen.table("features/cell_traffic")
    _positional(b, s, "cell_id")
    hit = (baseline.cell_region()[b["cell_id"]] == region) & in_window(b["event_timestamp"], W_START, W_END).to_numpy()
    assert hit.sum() > 100
    np.testing.assert_allclose(s["speed_kmh"] / b["speed_kmh"], np.where(hit, 0.621, 1.0), rtol=1e-12)
    pd.testing.assert_frame_equal(b.drop(columns="speed_kmh"), s.drop(columns="speed_kmh"))


def test_stale_batch_drops_only_the_segments_snapshots_in_span(baseline: Warehouse, simulate_small: Simulate) -> None:
    region, groups = REGIONS[0], ["provider_batch", "cell_batch"]
    start_day, duration = 1.0, timedelta(days=1)  # misses the 02:00 publish of the second day
    start, end = window(start_day, duration)
    scen = simulate_small(
        scenario_of(kind="stale_batch", start_day=start_day, duration=duration, segment={"region_id": [region]}, groups=groups)
    )
    # The pipeline's *output* stops; its state keeps folding in history, and the world goes on.
    assert_tables_identical(baseline, scen, (*DAILY_TABLES, *NRT_TABLES, "features/region_batch"))
    dropped = 0
    for name in groups:
        b, s = baseline.table(f"features/{name}"), scen.table(f"features/{name}")
        gone_b, gone_s = (_entity_in(baseline, f, [region]) & in_window(f["event_timestamp"], start, end) for f in (b, s))
        assert gone_b.sum() > 0
        assert gone_s.sum() == 0, f"{name} published inside the stale span"
        assert_same_rows(b[~gone_b], s, f"{name} outside the stale segment and span")
        assert scen.manifest.dropped_pushes[name] == gone_b.sum()
        dropped += int(gone_b.sum())
    assert dropped > 0


def test_feed_outage_drops_only_the_segments_pushes_in_span(baseline: Warehouse, simulate_small: Simulate) -> None:
    region, start_day, duration = REGIONS[0], START_DAY, timedelta(hours=6)
    start, end = window(start_day, duration)
    scen = simulate_small(scenario_of(kind="feed_outage", start_day=start_day, duration=duration, segment={"region_id": [region]}))
    # Dispatch goes on without the feeds: the world and the batch pipeline are untouched.
    assert_tables_identical(baseline, scen, (*DAILY_TABLES, *BATCH_TABLES))

    for name in ("cell_traffic", "region_load"):
        b, s = baseline.table(f"features/{name}"), scen.table(f"features/{name}")
        gone_b, gone_s = (_entity_in(baseline, f, [region]) & in_window(f["event_timestamp"], start, end) for f in (b, s))
        assert gone_b.sum() > 50
        assert gone_s.sum() == 0, f"{name} pushed during the outage"
        assert_same_rows(b[~gone_b], s, f"{name} outside the outage")
        assert scen.manifest.dropped_pushes[name] == gone_b.sum()

    # Provider pushes carry no job region, so bound them by the candidates the outage served:
    # every candidate of a region job whose request (and so push, <= 4 min earlier) is inside
    # the span lost its push, and nothing beyond the candidates of region jobs near the span did.
    b, s = baseline.table("features/provider_status"), scen.table("features/provider_status")
    assert len(s) < len(b)
    outside = ~in_window(b["event_timestamp"], start, end)
    assert_same_rows(b[outside], s[~in_window(s["event_timestamp"], start, end)], "provider_status outside the span")
    lost = len(b) - len(s)
    assert scen.manifest.dropped_pushes["provider_status"] == lost
    cand = baseline.table("dispatch/candidates")
    cand = cand[cand["region_id"] == region]
    surely = in_window(cand["request_ts"], start + PUSH_LAG, end).sum()
    maybe = in_window(cand["request_ts"], start, end + PUSH_LAG).sum()
    assert surely <= lost <= maybe
    kept = s[in_window(s["event_timestamp"], start, end)]
    assert_sub_multiset(kept, b[~outside], "provider_status pushes kept during the outage")


def test_new_line_of_business_appears_only_in_segment_and_span(baseline: Warehouse, simulate_small: Simulate) -> None:
    value, size = "rideshare", 0.4
    assert value not in LINES_OF_BUSINESS
    scen = simulate_small(
        scenario_of(
            kind="new_line_of_business", start_day=START_DAY, duration=DURATION, segment={"region_id": REGIONS}, size=size, value=value
        )
    )
    assert_tables_identical(baseline, scen, NRT_TABLES)
    req = scen.table("raw/requests")
    new = req["line_of_business"] == value
    scope = _region_jobs(baseline, W_START, W_END, REGIONS)
    converted = set(req.loc[new, "job_id"])
    assert converted <= scope
    # The converted share of in-scope jobs is the configured size (a binomial draw per job).
    assert stats.binomtest(len(converted), len(scope), size).pvalue > 1e-3
    for name in ("dispatch/candidates", "dispatch/events"):
        table = scen.table(name)
        assert set(table.loc[table["line_of_business"] == value, "job_id"]) == converted, name
    _assert_confined(changed_jobs(baseline, scen), converted, "new_line_of_business")
    # The new members are farther from providers: their arrivals are longer.
    _assert_arrivals_longer(baseline, scen, converted, 1.1)
    _assert_history_confined(baseline, scen, REGIONS)


def test_cohort_acceptance_drop_lowers_only_that_cohorts_acceptance(baseline: Warehouse, simulate_small: Simulate) -> None:
    cohorts = ["mid-solo-B", "veteran-solo-B"]
    scen = simulate_small(
        scenario_of(kind="cohort_acceptance_drop", start_day=START_DAY, duration=DURATION, segment={"provider_cohort": cohorts}, size=1.5)
    )
    assert_tables_identical(baseline, scen, ("raw/requests", "dispatch/candidates", *NRT_TABLES))
    cand = baseline.table("dispatch/candidates")
    assert set(cohorts) <= set(cand["provider_cohort"])
    offered_cohort = cand["provider_cohort"].isin(cohorts) & in_window(cand["request_ts"], W_START, W_END)
    scope = set(cand.loc[offered_cohort, "job_id"])
    # A decline passes the offer on, so everything about a job with a cohort candidate can move.
    _assert_confined(changed_jobs(baseline, scen), scope, "cohort_acceptance_drop")

    acc = _paired_acceptance(baseline, scen)
    target = acc["provider_cohort"].isin(cohorts) & in_window(acc["request_ts_b"], W_START, W_END)
    # The accept draw is fixed per offer: a lower probability can only turn accepts into declines.
    assert (acc.loc[target, "value_s"] <= acc.loc[target, "value_b"]).all()
    assert (acc.loc[~target, "value_s"] == acc.loc[~target, "value_b"]).all()
    assert acc.loc[target, "value_b"].mean() - acc.loc[target, "value_s"].mean() > 0.15
    _assert_history_confined(baseline, scen)


def test_label_delay_stretches_only_arrival_label_latency(baseline: Warehouse, simulate_small: Simulate) -> None:
    size = 2.0
    scen = simulate_small(
        scenario_of(kind="label_delay", start_day=START_DAY, duration=DURATION, segment={"region_id": REGIONS}, size=size)
    )
    # Outcomes are unchanged; only when they become known moves.
    assert_tables_identical(baseline, scen, ("raw/requests", "dispatch/candidates", *NRT_TABLES, *BATCH_TABLES))
    pd.testing.assert_frame_equal(
        _acceptance_labels(baseline).reset_index(drop=True), _acceptance_labels(scen).reset_index(drop=True), obj="acceptance labels"
    )
    scope = _region_jobs(baseline, W_START, W_END, REGIONS)
    # Overrides are logged when the label lands, so their events move with it.
    _assert_confined(changed_jobs(baseline, scen), scope, "label_delay")

    ev = baseline.table("dispatch/events")
    arrived_at = ev[ev["event_type"] == "arrival"].set_index("job_id")["event_ts"]
    arr = _paired_arrivals(baseline, scen)
    assert (arr["value_s"] == arr["value_b"]).all()
    delay_b = (arr["known_at_b"] - arr["job_id"].map(arrived_at)).dt.total_seconds()
    delay_s = (arr["known_at_s"] - arr["job_id"].map(arrived_at)).dt.total_seconds()
    inside = arr["job_id"].isin(scope).to_numpy()
    assert inside.sum() > 500
    np.testing.assert_allclose(delay_s[inside], (1 + size) * delay_b[inside], atol=1e-5)
    np.testing.assert_array_equal(delay_s[~inside], delay_b[~inside])
    # Seen from the request, as a label-latency monitor would: known_at - request_ts grows.
    latency_b, latency_s = ((arr[f"known_at_{side}"] - arr[f"request_ts_{side}"])[inside].median() for side in "bs")
    assert latency_s > latency_b


def test_calibration_shift_moves_acceptance_only_in_segment(baseline: Warehouse, simulate_small: Simulate) -> None:
    service = "tow"
    scen = simulate_small(
        scenario_of(kind="calibration_shift", start_day=START_DAY, duration=DURATION, segment={"service_type": [service]}, size=1.0)
    )
    assert_tables_identical(baseline, scen, ("raw/requests", "dispatch/candidates", *NRT_TABLES))
    req = baseline.table("raw/requests")
    scope = _jobs(req, (req["service_type"] == service) & in_window(req["request_ts"], W_START, W_END))
    _assert_confined(changed_jobs(baseline, scen), scope, "calibration_shift")
    acc = _paired_acceptance(baseline, scen)
    target = acc["job_id"].isin(scope)
    assert (acc.loc[target, "value_s"] >= acc.loc[target, "value_b"]).all()
    assert (acc.loc[~target, "value_s"] == acc.loc[~target, "value_b"]).all()
    assert acc.loc[target, "value_s"].mean() - acc.loc[target, "value_b"].mean() > 0.1
    _assert_history_confined(baseline, scen)


# The shipped scenario files ------------------------------------------------------------------

def _scenario_files() -> list[Path]:
    return sorted(SCENARIO_DIR.glob("*.yaml"))


def test_every_incident_kind_has_a_scenario_file() -> None:
    kinds = {inc.kind for path in _scenario_files() for inc in Scenario.load(path).incidents}
    assert kinds == set(get_args(IncidentKind))


@pytest.mark.parametrize("path", _scenario_files(), ids=lambda p: p.stem)
def test_scenario_file_is_self_describing_and_fits_the_default_world(path: Path) -> None:
    settings = load_settings(environ={})
    scenario = Scenario.load(path)
    assert scenario.name and len(scenario.description) > 80, "say what a monitor should find"
    assert scenario.incidents
    cohorts = {f"{t}-{f}-{r}" for t in TENURE_BANDS for f in FLEET_BANDS for r in RATING_TIERS}
    groups = {g.name for g in FEATURE_GROUPS}
    for inc in scenario.incidents:
        assert inc.start is None and inc.start_day is not None, "relative start_day works with any --start"
        assert 0 < inc.start_day and inc.start_day + inc.duration / timedelta(days=1) <= settings.simulation.days
        assert all(0 <= r < settings.world.regions for r in inc.segment.get("region_id", []))
        assert all(0 <= c < settings.world.cells for c in inc.segment.get("cell_id", []))
        assert set(inc.segment.get("provider_cohort", [])) <= cohorts
        assert set(inc.groups or []) <= groups


def test_demo_combines_regional_concept_drift_and_a_feed_outage() -> None:
    demo = Scenario.load(SCENARIO_DIR / "demo.yaml")
    by_kind = {inc.kind: inc for inc in demo.incidents}
    assert set(by_kind) == {"concept_drift", "feed_outage"}
    assert len(by_kind["concept_drift"].segment["region_id"]) == 2
