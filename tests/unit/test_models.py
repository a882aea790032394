"""ETA, acceptance and fallback models on a synthetic frame whose generating process is known.

The frame follows the training-set contract (keys, every ``model_features()`` column, labels
with NaN where unknown). Arrival time grows with distance, traffic and the provider's queue
and has multiplicative noise; acceptance depends on the provider's propensity, distance and
line of business. Most of the 241 columns are noise, as many are for any one job.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cluster.config import Settings, TrainSettings
from contracts.features import LINES_OF_BUSINESS, model_features
from eval.calibration import expected_calibration_error
from eval.metrics import interval_coverage, mae
from retrain.acceptance_model import AcceptanceModel
from retrain.boosting import ModelNotFittedError
from retrain.eta_model import EtaModel, conformal_quantile
from retrain.fallback import FallbackModel, hour_of_week
from retrain.job_sample import cap_rows
from retrain.ranking import DispatchBundle
from retrain.registry import ModelRegistry
from retrain.train import data_fingerprint, register_models, train_models

FEATURES = model_features()
START = pd.Timestamp("2026-01-05", tz="UTC")  # a Monday
DAYS = 21


def synthetic_frame(n_jobs: int = 7000, candidates: int = 5, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n_regions, cells_per_region, n_providers = 4, 25, 300
    n = n_jobs * candidates
    job = np.repeat(np.arange(n_jobs), candidates)

    request_ts = START + pd.to_timedelta(np.sort(rng.uniform(0, DAYS * 86400, n_jobs)), unit="s")
    cell = rng.integers(0, n_regions * cells_per_region, n_jobs)
    lob = rng.integers(0, len(LINES_OF_BUSINESS), n_jobs)
    provider = rng.integers(0, n_providers, n)
    propensity = rng.beta(4, 3, n_providers)

    features = rng.normal(size=(n, len(FEATURES))).astype(np.float32)
    col = {name: i for i, name in enumerate(FEATURES)}
    distance = rng.gamma(2.0, 3.0, n)
    traffic = rng.uniform(0.0, 1.0, n)
    queue = rng.poisson(0.8, n).astype(float)
    hour = request_ts.hour.to_numpy()[job]
    features[:, col["distance_km"]] = distance
    features[:, col["naive_travel_min"]] = distance * 1.5 + rng.normal(0, 1, n)
    features[:, col["cell_traffic__traffic_index"]] = traffic
    features[:, col["provider_status__queue_depth"]] = queue
    features[:, col["provider_batch__accept_rate_30d"]] = propensity[provider] + rng.normal(0, 0.05, n)
    features[:, col["hour_of_day"]] = hour
    features[:, col["lob_code"]] = lob[job]
    features[:, col["service_code"]] = rng.integers(0, 6, n_jobs)[job]
    features[:, col["vehicle_code"]] = rng.integers(0, 6, n_jobs)[job]
    features[rng.random(features.shape) < 0.02] = np.nan

    cell_effect = rng.normal(0, 3, n_regions * cells_per_region)
    rush = np.where((hour >= 7) & (hour <= 9), 4.0, 0.0)
    expected = 6 + 2.2 * distance * (1 + 0.6 * traffic) + 5 * queue + cell_effect[cell[job]] + rush
    arrival = expected * rng.lognormal(0.0, 0.25, n)

    logit = 6 * (propensity[provider] - 0.55) - 0.12 * distance + 0.5 * (lob[job] == 0) - 0.4 * queue
    accepted = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(float)
    offered = rng.random(n) < 0.9
    accepted[~offered] = np.nan
    arrival = np.where((accepted == 1.0) & (rng.random(n) > 0.05), arrival, np.nan)

    frame = pd.DataFrame(features, columns=list(FEATURES)).astype(np.float64)
    keys = pd.DataFrame(
        {
            "job_id": [f"job-{j}" for j in job],
            "provider_id": provider.astype(np.int64),
            "request_ts": request_ts[job],
            "cell_id": cell[job].astype(np.int64),
            "region_id": (cell[job] // cells_per_region).astype(np.int64),
            "line_of_business": np.asarray(LINES_OF_BUSINESS)[lob[job]],
            "service_type": "tow",
            "vehicle_class": "car",
            "provider_cohort": np.where(provider % 3 == 0, "new", "established"),
            "arrival_minutes": arrival,
            "accepted": accepted,
            "label_source": "gps",
        }
    )
    out = pd.concat([keys, frame], axis=1)
    out.attrs["feature_definition_version"] = "fd-synthetic"
    return out


SETTINGS = Settings(
    train=TrainSettings(
        holdout_days=5,
        window_days=16,
        num_boost_round=80,
        num_leaves=15,
        learning_rate=0.1,
        max_training_rows=1_000_000,
        interval_coverage=0.8,
    )
)
SMALL_LEAVES = {"min_data_in_leaf": 40}
SERVICES = {"eta": "eta_model", "acceptance": "acceptance_model"}


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return synthetic_frame()


@pytest.fixture(scope="module")
def result(frame: pd.DataFrame):
    return train_models(frame, SETTINGS, calibration_days=3, eta_params=SMALL_LEAVES, acceptance_params=SMALL_LEAVES)


@pytest.fixture(scope="module")
def holdout(frame: pd.DataFrame, result) -> pd.DataFrame:
    return frame.loc[frame["request_ts"] >= result.split.holdout_start].reset_index(drop=True)


def test_split_is_by_time_and_uses_every_slice(result) -> None:
    split = result.split
    assert split.train_start < split.calibration_start < split.holdout_start < split.end
    assert split.holdout_start == split.end - pd.Timedelta(days=5)
    assert result.rows["eta_calibration"] > 500 and result.rows["acceptance_calibration"] > 1000
    assert result.rows["holdout"] > 5000


def test_eta_beats_fallback_in_every_region(result, holdout: pd.DataFrame) -> None:
    known = holdout.loc[holdout["arrival_minutes"].notna()]
    eta = result.eta.predict(known)
    fallback = result.fallback.predict_frame(known)
    for region, rows in known.groupby("region_id").groups.items():
        y = known.loc[rows, "arrival_minutes"]
        model_mae = mae(y, eta.loc[rows, "eta_minutes"])
        fallback_mae = mae(y, fallback.loc[rows, "eta_minutes"])
        assert model_mae < 0.8 * fallback_mae, f"region {region}: model {model_mae:.2f} vs fallback {fallback_mae:.2f}"
    region_metrics = result.segment_metrics["eta"]["region_id"]
    fallback_metrics = result.segment_metrics["fallback"]["region_id"]
    assert set(region_metrics) == {"0", "1", "2", "3"}
    assert all(region_metrics[r]["mae"] < fallback_metrics[r]["eta_mae"] for r in region_metrics)


def test_eta_interval_covers_near_target_on_holdout(result, holdout: pd.DataFrame) -> None:
    known = holdout.loc[holdout["arrival_minutes"].notna()]
    eta = result.eta.predict(known)
    coverage = interval_coverage(known["arrival_minutes"], eta["eta_low"], eta["eta_high"])
    assert abs(coverage - 0.8) < 0.04, coverage
    assert result.metrics["eta"]["interval_coverage"] == pytest.approx(coverage)
    assert (eta["eta_low"] <= eta["eta_minutes"]).all() and (eta["eta_minutes"] <= eta["eta_high"]).all()
    assert (eta["eta_low"] >= 0).all()


def test_acceptance_is_calibrated_on_holdout(result, holdout: pd.DataFrame) -> None:
    offered = holdout.loc[holdout["accepted"].notna()]
    p = result.acceptance.predict_proba(offered)
    ece = expected_calibration_error(offered["accepted"].to_numpy(), p)
    assert ece < 0.05, ece
    assert result.metrics["acceptance"]["auc"] > 0.75
    assert result.metrics["acceptance"]["log_loss"] < result.metrics["fallback"]["acceptance_log_loss"]


def test_segment_metrics_cover_every_requested_segment(result) -> None:
    for family in ("eta", "acceptance", "fallback"):
        assert set(result.segment_metrics[family]) == {"region_id", "provider_cohort", "line_of_business", "hour_of_day"}
    assert set(result.segment_metrics["acceptance"]["line_of_business"]) == set(LINES_OF_BUSINESS)


def test_predict_array_matches_frame_path_and_accepts_float64(result, holdout: pd.DataFrame) -> None:
    rows = holdout.head(20)
    matrix = rows[list(FEATURES)].to_numpy(dtype=np.float64)
    served = result.eta.predict_array(matrix)
    offline = result.eta.predict(rows)
    np.testing.assert_allclose(served.eta_minutes, offline["eta_minutes"], rtol=1e-6)
    np.testing.assert_allclose(result.acceptance.predict_array(matrix), result.acceptance.predict_proba(rows), rtol=1e-6)
    one = result.eta.predict_array(matrix[0])
    assert one.eta_minutes.shape == (1,)


def test_registry_round_trip_serves_the_same_predictions(result, holdout: pd.DataFrame, tmp_path) -> None:
    registry = ModelRegistry(tmp_path)
    versions = register_models(
        result, registry, feature_services=SERVICES, lineage={"trigger": "unit-test"}, set_alias="champion"
    )
    bundle = registry.load_model("dispatch", "champion")
    assert isinstance(bundle, DispatchBundle)
    matrix = holdout[list(FEATURES)].head(12).to_numpy()
    job_ids = holdout["job_id"].head(12).to_numpy()
    scores = bundle.score_array(matrix, job_ids)
    np.testing.assert_allclose(scores.eta_minutes, result.eta.predict_array(matrix).eta_minutes)
    np.testing.assert_allclose(scores.p_accept, result.acceptance.predict_array(matrix))
    metadata = registry.metadata("dispatch", versions["dispatch"])
    assert metadata.components == {"eta": versions["eta"], "acceptance": versions["acceptance"]}
    assert metadata.metrics["eta_interval_coverage"] == pytest.approx(result.metrics["eta"]["interval_coverage"])
    assert metadata.lineage["trigger"] == "unit-test"
    assert metadata.feature_service == "eta_model+acceptance_model"
    assert metadata.feature_definition_version == "fd-synthetic"
    fallback = registry.load_model("fallback", "champion")
    cells = holdout["cell_id"].head(5).to_numpy()
    np.testing.assert_allclose(
        fallback.predict(cells, 0, 10).eta_minutes, result.fallback.predict(cells, 0, 10).eta_minutes
    )


def test_second_registration_records_the_champion_as_parent(result, tmp_path) -> None:
    registry = ModelRegistry(tmp_path)
    first = register_models(result, registry, feature_services=SERVICES, set_alias="champion")
    second = register_models(result, registry, feature_services=SERVICES, set_alias="challenger")
    assert registry.metadata("eta", second["eta"]).parent_version == first["eta"]
    assert registry.alias("dispatch", "challenger").version == second["dispatch"]
    assert registry.alias("dispatch", "champion").version == first["dispatch"]


def test_refitting_on_the_same_rows_reproduces_the_model() -> None:
    rng = np.random.default_rng(5)
    X = rng.normal(size=(3000, 6))
    y = 10 + 3 * X[:, 0] + rng.normal(size=3000)
    fits = [
        EtaModel(feature_names=list("abcdef"), num_boost_round=20, num_leaves=7).fit(X[:2000], y[:2000], X[2000:], y[2000:])
        for _ in range(2)
    ]
    assert fits[0].point_booster_.model_to_string() == fits[1].point_booster_.model_to_string()
    assert fits[0].conformal_margin_ == fits[1].conformal_margin_


def test_cap_rows_keeps_whole_jobs_whatever_the_row_order(frame: pd.DataFrame) -> None:
    capped = cap_rows(frame, 1000)
    shuffled = cap_rows(frame.sample(frac=1.0, random_state=1), 1000)
    assert len(capped) <= 1000
    assert set(capped["job_id"]) == set(shuffled["job_id"])
    assert (capped.groupby("job_id").size() == 5).all()
    assert data_fingerprint(capped) == data_fingerprint(shuffled)


def test_conformal_quantile_is_the_finite_sample_rank() -> None:
    scores = np.arange(1.0, 10.0)  # n = 9, coverage 0.8 → ⌈0.8·10⌉ = 8th smallest
    assert conformal_quantile(scores, 0.8) == 8.0
    with pytest.raises(ValueError, match="cannot certify"):
        conformal_quantile(np.arange(3.0), 0.8)


def test_eta_model_needs_calibration_rows_for_conformal_interval() -> None:
    X = np.random.default_rng(0).normal(size=(200, 3))
    model = EtaModel(feature_names=["a", "b", "c"], num_boost_round=5)
    with pytest.raises(ValueError, match="X_cal"):
        model.fit(X, X[:, 0] + 10)
    with pytest.raises(ModelNotFittedError):
        model.predict_array(X)


def test_eta_model_refuses_unknown_labels() -> None:
    X = np.random.default_rng(0).normal(size=(50, 2))
    y = np.where(np.arange(50) % 7 == 0, np.nan, 10.0)
    with pytest.raises(ValueError, match="unknown"):
        EtaModel(feature_names=["a", "b"], interval="quantile", num_boost_round=5).fit(X, y)


def test_acceptance_platt_calibration_also_calibrates() -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(6000, 4))
    p = 1 / (1 + np.exp(-(1.5 * X[:, 0] - X[:, 1])))
    y = (rng.random(6000) < p).astype(float)
    model = AcceptanceModel(
        calibration="platt", feature_names=list("abcd"), num_boost_round=60, num_leaves=15, min_data_in_leaf=30
    ).fit(X[:4000], y[:4000])
    assert model.n_calibration_rows_ == 800
    assert expected_calibration_error(y[4000:], model.predict_array(X[4000:])) < 0.05


def test_fallback_shrinks_sparse_cells_towards_their_region() -> None:
    ts = START + pd.Timedelta(hours=10)  # Monday 10:00 → hour of week 10
    rows = [(1, 0, 10.0)] * 100 + [(2, 0, 30.0)] * 100 + [(3, 0, 100.0)] * 2 + [(4, 1, 50.0)] * 50
    frame = pd.DataFrame(rows, columns=["cell_id", "region_id", "arrival_minutes"])
    frame["request_ts"] = ts
    frame["accepted"] = 1.0
    frame["provider_id"] = np.arange(len(frame))
    model = FallbackModel(eta_prior_rows=20).fit(frame)
    assert hour_of_week(frame["request_ts"])[0] == 10
    sparse = model.predict([3], [0], [10]).eta_minutes[0]
    dense = model.predict([1], [0], [10]).eta_minutes[0]
    region_only = model.predict([999], [0], [10]).eta_minutes[0]
    unknown = model.predict([999], [9], [10]).eta_minutes[0]
    # Region 0 and the global median are both 30 minutes, so the region value is 30 too.
    assert region_only == pytest.approx(30.0)
    assert dense == pytest.approx((100 * 10.0 + 20 * 30.0) / 120)  # 100 rows outweigh the prior
    assert sparse == pytest.approx((2 * 100.0 + 20 * 30.0) / 22)  # 2 rows barely move it
    assert unknown == pytest.approx(np.median(frame["arrival_minutes"]))
    other_hour = model.predict([1], [0], [11]).eta_minutes[0]
    assert other_hour == pytest.approx(unknown)


def test_fallback_acceptance_prior_shrinks_providers_to_region() -> None:
    frame = pd.DataFrame(
        {
            "cell_id": 1,
            "region_id": 0,
            "arrival_minutes": 20.0,
            "request_ts": START,
            "provider_id": [7] * 100 + [8] * 300,
            "accepted": [0.0] * 100 + [1.0] * 300,
        }
    )
    model = FallbackModel(provider_prior_offers=30, region_prior_offers=0).fit(frame)
    p = model.predict([1, 1, 1], [0, 0, 0], [0, 0, 0], provider_id=[7, 8, 12345]).p_accept
    assert p[0] == pytest.approx((0 + 30 * 0.75) / 130)
    assert p[2] == pytest.approx(0.75)
    ranks = model.predict([1, 1, 1], 0, 0, provider_id=[7, 8, 12345], distance_km=[1.0, 5.0, 3.0]).rank
    assert list(ranks) == [1, 3, 2]
    assert list(model.predict([1, 1, 1], 0, 0, provider_id=[7, 8, 12345]).rank) == [3, 1, 2]
