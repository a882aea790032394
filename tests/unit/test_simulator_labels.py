"""Labels arrive late and noisy exactly as ``simulator.dispatch`` documents, because every
delayed-label and label-noise monitor is judged against that ground truth.

The truth is recoverable from the events: a job's true arrival time (minutes from acceptance
to arrival) is its arrival event minus the final provider's accept event, and a label's delay
is its ``known_at`` minus the event it reports. Each distribution is checked with a
goodness-of-fit test on a few thousand draws; the seed is fixed, so the p-values are fixed, and
the sample sizes are large enough that a wrong parameter (a sigma of 1.2 instead of 1.0, a 6%
override rate instead of 4%) fails.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from simulated_warehouse import SIM_END, Warehouse

P_MIN = 1e-3
END = pd.Timestamp(SIM_END)
HOUR = pd.Timedelta(hours=1)


def _minutes(delta: pd.Series) -> np.ndarray:
    return delta.dt.total_seconds().to_numpy() / 60.0


def _events(w: Warehouse, kind: str) -> pd.DataFrame:
    ev = w.table("dispatch/events")
    return ev.loc[ev["event_type"] == kind, ["job_id", "provider_id", "event_ts"]]


@pytest.fixture(scope="module")
def arrivals(baseline: Warehouse) -> pd.DataFrame:
    """One row per arrived job: final provider, accept and arrival times, true minutes."""
    arrived = _events(baseline, "arrival").rename(columns={"event_ts": "arrival_ts"})
    accepted = _events(baseline, "accept").rename(columns={"event_ts": "accept_ts"})
    out = arrived.merge(accepted, on=["job_id", "provider_id"], how="left", validate="one_to_one")
    assert out["accept_ts"].notna().all(), "every arrival follows an acceptance by the same provider"
    out["true_min"] = _minutes(out["arrival_ts"] - out["accept_ts"])
    return out


@pytest.fixture(scope="module")
def arrival_labels(baseline: Warehouse, arrivals: pd.DataFrame) -> pd.DataFrame:
    labels = baseline.table("labels")
    labels = labels[labels["label_type"] == "arrival_minutes"]
    return labels.merge(arrivals, on=["job_id", "provider_id"], how="left", validate="many_to_one")


def test_arrival_label_delay_is_lognormal_median_20_sigma_1(arrival_labels: pd.DataFrame) -> None:
    first = arrival_labels[arrival_labels["revision"] == 0]
    # Arrivals a day before the end: a delay beyond 24 h has probability 1e-5, so none is cut off.
    early = first[first["arrival_ts"] < END - 24 * HOUR]
    delay = _minutes(early["known_at"] - early["arrival_ts"])
    assert len(delay) > 5_000
    z = np.log(delay / 20.0)
    assert stats.kstest(z, "norm").pvalue > P_MIN
    assert np.median(delay) == pytest.approx(20.0, rel=0.05)
    assert z.std() == pytest.approx(1.0, rel=0.03)


def test_every_arrival_gets_one_first_label_and_cancelled_jobs_none(baseline: Warehouse, arrivals: pd.DataFrame, arrival_labels: pd.DataFrame) -> None:
    first = arrival_labels[arrival_labels["revision"] == 0]
    assert not first.duplicated("job_id").any()
    early = arrivals[arrivals["arrival_ts"] < END - 24 * HOUR]
    assert set(early["job_id"]) <= set(first["job_id"])
    assert set(arrival_labels["job_id"]) <= set(arrivals["job_id"])
    cancelled = set(_events(baseline, "cancel")["job_id"])
    assert len(cancelled) > 200
    assert not cancelled & set(arrival_labels["job_id"])
    # A job ends once: arrival or cancellation, never both.
    assert not cancelled & set(arrivals["job_id"])


def test_gps_labels_carry_normal_noise_sd_1_5(arrival_labels: pd.DataFrame) -> None:
    gps = arrival_labels[(arrival_labels["source"] == "gps") & (arrival_labels["revision"] == 0)]
    noise = gps["value"].to_numpy() - gps["true_min"].to_numpy()
    assert len(noise) > 5_000
    assert stats.kstest(noise, "norm", args=(0.0, 1.5)).pvalue > P_MIN
    assert noise.std() == pytest.approx(1.5, rel=0.03)


def test_four_percent_manual_overrides_rounded_and_biased_low(baseline: Warehouse, arrival_labels: pd.DataFrame) -> None:
    first = arrival_labels[arrival_labels["revision"] == 0]
    manual = first[first["source"] == "manual_override"]
    assert set(first["source"]) == {"gps", "manual_override"}
    assert stats.binomtest(len(manual), len(first), 0.04).pvalue > P_MIN
    assert (manual["value"] % 5.0 == 0).all(), "dispatchers round to 5 minutes"
    # value = round(true x U(0.7, 1.2) / 5) x 5: 5% low on average.
    assert manual["value"].sum() / manual["true_min"].sum() == pytest.approx(0.95, abs=0.02)
    # The dispatcher's override is logged as an event when its label lands.
    overrides = _events(baseline, "override")
    logged = manual.merge(overrides, on=["job_id", "provider_id"], how="outer", validate="one_to_one", indicator=True)
    assert (logged["_merge"] == "both").all()
    assert (logged["known_at"] == logged["event_ts"]).all()


def test_three_percent_corrections_restore_the_truth_6_to_72_hours_later(arrival_labels: pd.DataFrame) -> None:
    first = arrival_labels[arrival_labels["revision"] == 0].set_index("job_id")
    corr = arrival_labels[arrival_labels["revision"] == 1]
    assert (corr["source"] == "correction").all()
    assert set(corr["job_id"]) <= set(first.index)
    np.testing.assert_allclose(corr["value"], corr["true_min"], atol=1e-6)
    # A correction lands U(6 h, 72 h) after the first label; only those before the end are
    # written. So P(written correction | first label at k) = 0.03 x clip((end - k - 6h) / 66h).
    room = (END - first["known_at"] - 6 * HOUR) / HOUR
    p = 0.03 * np.clip(room / 66.0, 0.0, 1.0)
    z = (len(corr) - p.sum()) / np.sqrt((p * (1 - p)).sum())
    assert len(corr) > 100
    assert abs(z) < 3.5, f"{len(corr)} corrections, expected {p.sum():.0f}"
    lag_h = (corr["known_at"].reset_index(drop=True) - first.loc[corr["job_id"], "known_at"].reset_index(drop=True)) / HOUR
    cap = np.minimum(66.0, room.loc[corr["job_id"]].to_numpy())
    assert stats.kstest((lag_h.to_numpy() - 6.0) / cap, "uniform").pvalue > P_MIN


def test_acceptance_labels_land_half_to_three_minutes_after_the_offer(baseline: Warehouse) -> None:
    labels = baseline.table("labels")
    acc = labels[labels["label_type"] == "accepted"]
    offers = _events(baseline, "offer").rename(columns={"event_ts": "offer_ts"})
    both = acc.merge(offers, on=["job_id", "provider_id"], how="outer", validate="one_to_one", indicator=True)
    # Every offer is answered, and the answer is the label; offers still open at the end are pending.
    unanswered = both[both["_merge"] == "right_only"]
    assert (unanswered["offer_ts"] > END - 3.5 * pd.Timedelta(minutes=1)).all()
    both = both[both["_merge"] == "both"]
    wait = _minutes(both["known_at"] - both["offer_ts"])
    assert wait.min() >= 0.5 - 1e-6 and wait.max() <= 3.0 + 1e-6
    assert stats.kstest(wait, "uniform", args=(0.5, 2.5)).pvalue > P_MIN
    accepts = set(map(tuple, _events(baseline, "accept")[["job_id", "provider_id"]].to_numpy()))
    said_yes = [(j, p) in accepts for j, p in both[["job_id", "provider_id"]].to_numpy()]
    np.testing.assert_array_equal(both["value"].to_numpy(), np.asarray(said_yes, dtype=float))
