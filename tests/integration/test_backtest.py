"""``dispatchml backtest`` on a small simulated world, two registry versions, on a local Ray.

The world is tiny (60 cells, 3 regions, 120 providers, ~300 events/day) and spans a simulated
year, so the whole module stays within its CI budget: the champion is backtested over the
whole year (every week and month window), and two versions side by side over its last two
weeks, where the check that matters runs: every metric the Ray job reports equals the pure
kernels recomputed here with pandas on the same rows (one point-in-time frame for the whole
window, no Ray), for every version, window and segment.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pytest

from cluster.config import Settings
from cluster.feature_store import apply
from contracts.features import model_features
from contracts.warehouse import MEMBER_PII_COLUMNS, table_dir
from eval.backtest import BacktestResult, BacktestSpec, realized_wait_minutes, run_backtest, window_start
from eval.calibration import brier_score, expected_calibration_error, log_loss, roc_auc
from eval.metrics import bias, interval_coverage, mae, p90_abs_error, rmse
from eval.ranking_metrics import ndcg_at_k, top1_acceptance, top_ranked_rows
from retrain.pipeline import train_from_warehouse
from retrain.ranking import RankingPolicy
from retrain.registry import ModelRegistry, VersionSpec
from retrain.training_set import attach_labels, build_training_set, read_labels
from simulator.run import SimulationSpec, simulate

pytestmark = [pytest.mark.integration, pytest.mark.slow]

START = date(2025, 2, 6)
DAYS = 365
BACKTEST_START = datetime(2026, 1, 26, tzinfo=UTC)  # a Monday
AS_OF = datetime(2026, 2, 6, tzinfo=UTC)  # the end of the simulated span
SEGMENTS = ("region_id", "line_of_business", "hour_of_day")


def _settings(root: Path) -> Settings:
    base = Settings()
    return base.model_copy(update={
        "paths": base.paths.model_copy(update={
            "root": root, "data": root / "data", "registry": root / "registry",
            "feature_store": root / "feature_store", "reports": root / "reports",
        }),
        "world": base.world.model_copy(update={"cells": 60, "regions": 3, "providers": 120}),
        "train": base.train.model_copy(update={
            "window_days": 7, "holdout_days": 2, "num_boost_round": 15, "num_leaves": 7, "num_threads": 1,
        }),
    })


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    settings = _settings(tmp_path_factory.mktemp("backtest"))
    simulate(SimulationSpec(
        out=Path(settings.paths.data), days=DAYS, events_per_day=300, seed=5, start=START,
        cells=60, regions=3, providers=120,
    ))
    apply(settings)
    train_from_warehouse(settings, as_of=datetime(2026, 1, 22, tzinfo=UTC), set_alias="champion")
    _register_policy_challenger(settings, reoffer_delay_minutes=3.0)
    return settings


def _register_policy_challenger(settings: Settings, reoffer_delay_minutes: float) -> str:
    """A second dispatch version: the champion's models under another ranking policy.

    A real challenger would be retrained too; changing only the policy keeps the fixture to one
    fit (the CI budget) and still moves the ranking and member-wait metrics between versions.
    """
    registry = ModelRegistry(settings.paths.registry)
    champion = registry.metadata("dispatch", "champion")
    spec = VersionSpec(**{
        **champion.model_dump(include=set(VersionSpec.model_fields)),
        "hyperparameters": {"reoffer_delay_minutes": reoffer_delay_minutes},
        "parent_version": champion.version,
    })
    version = registry.register(spec, RankingPolicy(reoffer_delay_minutes).save).version
    registry.set_alias("dispatch", "challenger", version, moved_by="test", reason="policy challenger")
    return version


@pytest.fixture(scope="module")
def backtest(world: Settings, local_ray: object) -> tuple[BacktestSpec, BacktestResult]:
    spec = BacktestSpec(
        versions=("champion", "challenger"), start=BACKTEST_START, end=AS_OF, as_of=AS_OF,
        out=Path(world.paths.reports) / "backtest", segments=SEGMENTS, chunk_days=6,
    )
    return spec, run_backtest(world, spec)


@pytest.fixture(scope="module")
def year_backtest(world: Settings, local_ray: object) -> BacktestResult:
    spec = BacktestSpec(
        versions=("champion",), start=datetime.combine(START, datetime.min.time(), UTC), end=AS_OF, as_of=AS_OF,
        out=Path(world.paths.reports) / "backtest-year", segments=("region_id",), chunk_days=28,
    )
    return run_backtest(world, spec)


def test_a_simulated_year_is_backtested_in_every_week_and_month(year_backtest: BacktestResult) -> None:
    metrics = year_backtest.metrics
    months = set(pd.to_datetime(metrics.loc[metrics["window"] == "month", "window_start"], utc=True))
    weeks = set(pd.to_datetime(metrics.loc[metrics["window"] == "week", "window_start"], utc=True))
    assert months == set(pd.date_range("2025-02-01", "2026-02-01", freq="MS", tz="UTC"))
    assert weeks == set(pd.date_range("2025-02-03", "2026-02-02", freq="W-MON", tz="UTC"))
    monthly_mae = metrics[(metrics["window"] == "month") & (metrics["segment"] == "all") & (metrics["metric"] == "eta.mae")]
    assert len(monthly_mae) == 13 and (monthly_mae["n"] > 0).all() and np.isfinite(monthly_mae["value"]).all()
    per_region = metrics[(metrics["window"] == "month") & (metrics["segment"] == "region_id")]
    assert set(per_region["segment_value"]) == {"0", "1", "2"}


def _recomputed_rows(settings: Settings, versions: dict[str, str]) -> pd.DataFrame:
    """The backtest's scored rows rebuilt in one pass, without Ray."""
    root = Path(settings.paths.data)
    frame = build_training_set(settings, root, BACKTEST_START, AS_OF, "eta")
    frame["hour_of_day"] = frame["request_ts"].dt.hour
    frame = attach_labels(frame, read_labels(root, AS_OF), AS_OF)
    events = ds.dataset(table_dir(root, "dispatch/events"), format="parquet", partitioning="hive").to_table().to_pandas()
    accepts = events[(events["event_type"] == "accept") & (events["event_ts"] <= AS_OF)]
    frame["realized_wait_minutes"] = realized_wait_minutes(frame, accepts)
    X = frame[list(model_features())].to_numpy(dtype=np.float64)
    registry = ModelRegistry(settings.paths.registry)
    scored = []
    for version in versions.values():
        s = registry.load_model("dispatch", version).score_array(X, frame["job_id"].to_numpy())
        scored.append(frame.assign(
            version=version, rank=s.rank, eta_minutes=s.eta_minutes, eta_low=s.eta_low, eta_high=s.eta_high,
            p_accept=s.p_accept, expected_wait_minutes=s.expected_wait_minutes,
        ))
    return pd.concat(scored, ignore_index=True)


def _expected_metrics(cell: pd.DataFrame) -> dict[str, tuple[float, int]]:
    """Every metric of one cell straight from the kernels: ``{metric: (value, n)}``."""
    arrived = cell[cell["arrival_minutes"].notna()]
    y, eta = arrived["arrival_minutes"].to_numpy(), arrived["eta_minutes"].to_numpy()
    answered = cell[cell["accepted"].notna()]
    a, p = answered["accepted"].to_numpy(), answered["p_accept"].to_numpy()
    jobs, ranks = cell["job_id"].to_numpy(), cell["rank"].to_numpy(dtype=float)
    top1 = top1_acceptance(jobs, ranks, cell["accepted"].to_numpy())
    ndcg = ndcg_at_k(jobs, ranks, cell["accepted"].to_numpy(), 3)
    top = cell.iloc[top_ranked_rows(jobs, ranks)]
    top = top[top["realized_wait_minutes"].notna()]
    n_y, n_a = len(arrived), len(answered)
    return {
        "eta.mae": (mae(y, eta), n_y),
        "eta.rmse": (rmse(y, eta), n_y),
        "eta.bias": (bias(y, eta), n_y),
        "eta.p90_abs_error": (p90_abs_error(y, eta), n_y),
        "eta.interval_coverage": (interval_coverage(y, arrived["eta_low"], arrived["eta_high"]), n_y),
        "acceptance.auc": (roc_auc(a, p), n_a),
        "acceptance.log_loss": (log_loss(a, p), n_a),
        "acceptance.brier": (brier_score(a, p), n_a),
        "acceptance.ece": (expected_calibration_error(a, p), n_a),
        "ranking.top1_acceptance": (float(np.nanmean(top1)), int(np.isfinite(top1).sum())),
        "ranking.ndcg_at_3": (float(np.nanmean(ndcg)), int(np.isfinite(ndcg).sum())),
        "wait.predicted": (float(top["expected_wait_minutes"].mean()), len(top)),
        "wait.realized": (float(top["realized_wait_minutes"].mean()), len(top)),
        "wait.error": (float((top["expected_wait_minutes"] - top["realized_wait_minutes"]).mean()), len(top)),
    }


def test_every_version_has_week_and_month_windows_for_every_segment(backtest: tuple[BacktestSpec, BacktestResult]) -> None:
    spec, result = backtest
    metrics = result.metrics
    assert set(metrics["version"]) == set(result.versions.values()) and len(result.versions) == 2
    weeks = {pd.Timestamp(d, tz="UTC") for d in ("2026-01-26", "2026-02-02")}
    months = {pd.Timestamp(d, tz="UTC") for d in ("2026-01-01", "2026-02-01")}
    for version in result.versions.values():
        for window, starts in (("week", weeks), ("month", months)):
            for segment in ("all", *SEGMENTS):
                cells = metrics[(metrics["version"] == version) & (metrics["window"] == window) & (metrics["segment"] == segment)]
                assert set(pd.to_datetime(cells["window_start"], utc=True)) == starts, (version, window, segment)
                assert cells.groupby(["window_start", "segment_value"])["metric"].nunique().eq(14).all()
    overall = metrics[(metrics["segment"] == "all") & (metrics["window"] == "month")]
    assert overall["n"].min() > 0
    bounded = overall[overall["ci_low"].notna()]
    assert (bounded["ci_low"] <= bounded["value"] + 1e-12).all() and (bounded["value"] <= bounded["ci_high"] + 1e-12).all()


def test_metrics_equal_the_kernels_recomputed_with_pandas(world: Settings, backtest: tuple[BacktestSpec, BacktestResult]) -> None:
    _, result = backtest
    rows = _recomputed_rows(world, result.versions)
    assert len(rows) == result.scored_rows * len(result.versions)
    expected = []
    for window in ("week", "month"):
        rows["window_start"] = window_start(rows["request_ts"], window)
        for segment in ("all", *SEGMENTS):
            keys = ["version", "window_start"] + ([] if segment == "all" else [segment])
            for key, cell in rows.groupby(keys):
                value = "all" if segment == "all" else str(key[2])
                for metric, (v, n) in _expected_metrics(cell).items():
                    expected.append({"version": key[0], "window": window, "window_start": key[1], "segment": segment,
                                     "segment_value": value, "metric": metric, "expected": v, "expected_n": n})
    expected_frame = pd.DataFrame(expected)
    expected_frame["window_start"] = expected_frame["window_start"].astype("datetime64[ns, UTC]")
    joined = expected_frame.merge(result.metrics, on=["version", "window", "window_start", "segment", "segment_value", "metric"], how="outer", indicator=True)
    assert (joined["_merge"] == "both").all(), joined[joined["_merge"] != "both"].head()
    assert (joined["n"] == joined["expected_n"]).all()
    np.testing.assert_allclose(joined["value"], joined["expected"], rtol=1e-9, atol=1e-12, equal_nan=True)


def test_outputs_are_parquet_and_an_html_report_with_plots(backtest: tuple[BacktestSpec, BacktestResult]) -> None:
    _, result = backtest
    assert pd.read_parquet(result.paths["metrics"]).shape == result.metrics.shape
    assert {"mean_predicted", "fraction_positive", "count"} <= set(pd.read_parquet(result.paths["calibration"]).columns)
    report = result.paths["report"].read_text()
    for title in ("metrics per week, by region_id", "metrics per month, by hour_of_day", "acceptance calibration by all"):
        assert title in report
    identifying = {"job_id", "provider_id", *MEMBER_PII_COLUMNS}
    assert not identifying & set(result.metrics.columns) and not identifying & set(result.calibration.columns)
