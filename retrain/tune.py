"""Retraining search: Ray Tune over LightGBM capacity, on a window that mixes recent and older rows.

The window (:class:`RetrainWindow`, :func:`mix_history`)
    A retrain follows drift, so the new rows matter most; training on them alone would forget
    what the older weeks taught about every region and cohort that did not drift (catastrophic
    forgetting; the replay remedy is old). The training rows are therefore::

        all rows of the last ``recent_days`` before the holdout
        + a job-complete ``history_fraction`` sample of the ``history_days`` before those

    Every kept row has weight 1, so one day of history counts ``history_fraction`` as much as a
    recent day: with the defaults (14 recent days, 42 history days at 0.25) history is
    42 × 0.25 / (14 + 10.5) ≈ 43 % of the training rows and each recent day weighs 4× an old
    one. Sampling whole jobs by a hash of ``job_id`` (``retrain.job_sample.cap_rows``) keeps the
    sample reproducible and each job's candidate set intact. The holdout (the last
    ``holdout_days``) is never sampled.

The search (:func:`tune_models`)
    One Ray Tune run per model family (ETA point booster, acceptance booster): their losses
    differ (MAE in minutes, log loss in nats) and ``retrain.train.train_models`` fits them with
    separate parameters, so each gets the configuration best for it. Each trial samples
    :func:`search_space` (``num_leaves``, ``learning_rate``, ``min_data_in_leaf``,
    ``feature_fraction``, ``lambda_l2``, bounded), fits one booster with 1 CPU and
    ``num_threads=1`` on the training rows before a time-later validation slice (the last
    ``validation_days`` before the calibration slice: never the holdout, which the gate uses),
    and stops with LightGBM's ``early_stopping`` on that slice. It reports its best validation
    loss so far every ``report_every`` rounds, and ASHA (Li et al. 2020, "A System for Massively
    Parallel Hyperparameter Tuning", MLSys) stops the trials that trail at each rung. Random
    search with a fixed seed (``BasicVariantGenerator(random_state=seed)``) samples the
    configurations, so a rerun tries the same ones.

    The winner's configuration and best iteration become ``eta_params`` / ``acceptance_params``
    of ``train_models``, which refits on all training rows (validation slice included) and adds
    the conformal interval and the calibrator exactly as a scheduled training run does.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from cluster.config import RetrainSettings, Settings
from contracts.features import model_features
from retrain.acceptance_model import AcceptanceModel
from retrain.boosting import booster_params, feature_matrix, finite_labels, training_dataset
from retrain.eta_model import EtaModel
from retrain.job_sample import cap_rows
from retrain.train import TrainingResult, time_split, train_models

TunedFamily = Literal["eta", "acceptance"]

#: Per family: the label column, LightGBM's validation metric and the name it is reported as.
_FAMILIES: dict[str, tuple[type[EtaModel] | type[AcceptanceModel], str, str, str]] = {
    "eta": (EtaModel, "arrival_minutes", "l1", "mae"),
    "acceptance": (AcceptanceModel, "accepted", "binary_logloss", "log_loss"),
}
#: What every trial reports; lower is better for both families.
VALIDATION_LOSS = "validation_loss"


class RetrainWindowError(ValueError):
    """The data does not cover the asked-for window; the message says what to change."""


@dataclass(frozen=True)
class RetrainWindow:
    """``[history_start, recent_start)`` sampled, ``[recent_start, holdout_start)`` whole, then the holdout."""

    history_start: datetime
    recent_start: datetime
    holdout_start: datetime
    end: datetime
    history_fraction: float

    def lineage(self) -> dict[str, Any]:
        return {
            "recent": [self.recent_start.isoformat(), self.holdout_start.isoformat()],
            "history": [self.history_start.isoformat(), self.recent_start.isoformat()],
            "history_fraction": self.history_fraction,
            "holdout": [self.holdout_start.isoformat(), self.end.isoformat()],
        }

    @property
    def training_days(self) -> int:
        """Days from the history start to the holdout: ``train.window_days`` for ``train_models``."""
        return math.ceil((self.holdout_start - self.history_start) / timedelta(days=1))


def retrain_window(
    data_start: datetime,
    holdout_start: datetime,
    end: datetime,
    recent_days: int,
    history_days: int,
    history_fraction: float,
) -> RetrainWindow:
    """The window counted back from ``holdout_start``, clipped at the start of the data."""
    if recent_days < 1:
        raise RetrainWindowError(f"recent_days must be at least 1, got {recent_days}")
    recent_start = holdout_start - timedelta(days=recent_days)
    if recent_start < data_start:
        raise RetrainWindowError(
            f"the data starts {data_start:%Y-%m-%d %H:%M}, after the {recent_days}-day recent window starts "
            f"{recent_start:%Y-%m-%d %H:%M}; lower --recent-days"
        )
    history_start = max(data_start, recent_start - timedelta(days=history_days))
    return RetrainWindow(history_start, recent_start, holdout_start, end, history_fraction)


def mix_history(recent: pd.DataFrame, history: pd.DataFrame, fraction: float, history_rows: int | None = None) -> pd.DataFrame:
    """Every recent row plus whole jobs of ``history`` totalling about ``fraction × history_rows`` rows.

    ``history_rows`` is the size of the full history when ``history`` is already capped (e.g.
    ``frame.attrs["candidate_rows"]`` of ``build_training_set``); default ``len(history)``.
    The sample keeps the jobs with the smallest ``job_id`` hashes, so it is the same on every
    run and nested across fractions. The result keeps ``recent.attrs``.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"history_fraction must be in [0, 1], got {fraction}")
    keep = round(fraction * (history_rows if history_rows is not None else len(history)))
    sampled = cap_rows(history, keep)
    mixed = pd.concat([sampled, recent], ignore_index=True).sort_values("request_ts", kind="stable").reset_index(drop=True)
    mixed.attrs = dict(recent.attrs)
    return mixed


def search_space() -> dict[str, Any]:
    """The bounded search space: capacity, step size, leaf size, column sampling, L2 penalty.

    Log scales where the effect is multiplicative. ``num_leaves`` ≤ 127 and
    ``min_data_in_leaf`` ≥ 20 keep every trial's trees small enough to serve within the
    latency budget (tree walks dominate it, see ``retrain.eta_model``).
    """
    from ray import tune

    return {
        "num_leaves": tune.lograndint(8, 128),
        "learning_rate": tune.loguniform(0.02, 0.2),
        "min_data_in_leaf": tune.lograndint(20, 300),
        "feature_fraction": tune.uniform(0.5, 1.0),
        "lambda_l2": tune.loguniform(1e-3, 10.0),
    }


@dataclass(frozen=True)
class TrialSummary:
    trial_id: str
    config: dict[str, Any]
    validation_loss: float
    best_iteration: int
    #: Boosting rounds run before early stopping or ASHA ended the trial.
    rounds: int


@dataclass(frozen=True)
class SearchResult:
    """One family's search: the winning trial and every trial tried."""

    family: TunedFamily
    #: What ``validation_loss`` is: ``mae`` (minutes) or ``log_loss`` (nats).
    metric: str
    best: TrialSummary
    trials: tuple[TrialSummary, ...]
    seconds: float
    experiment_path: str
    #: Trials that raised; the search goes on without them, and lineage records how many.
    failed_trials: int = 0

    def model_params(self) -> dict[str, Any]:
        """Constructor parameters for ``train_models``: the winning config, boosted to its best iteration."""
        return {**self.best.config, "num_boost_round": self.best.best_iteration}

    def lineage(self) -> dict[str, Any]:
        return {
            "trial_id": self.best.trial_id,
            "config": self.best.config,
            f"validation_{self.metric}": self.best.validation_loss,
            "best_iteration": self.best.best_iteration,
            "trials": len(self.trials),
            "failed_trials": self.failed_trials,
            "experiment": self.experiment_path,
        }


@dataclass
class TuneSlices:
    """Model inputs of one family: rows before the validation slice, and the slice itself."""

    train_x: np.ndarray
    train_y: np.ndarray
    valid_x: np.ndarray
    valid_y: np.ndarray
    validation_start: pd.Timestamp
    rows: dict[str, int] = field(default_factory=dict)


def tune_slices(frame: pd.DataFrame, settings: Settings, family: TunedFamily) -> TuneSlices:
    """Split the training rows (before the calibration slice) into fit rows and a time-later validation slice.

    ``settings.train.window_days`` must be the window ``train_models`` will use, so both see
    the same training rows.
    """
    _, label, _, _ = _FAMILIES[family]
    train = settings.train
    split = time_split(frame["request_ts"], train.holdout_days, train.window_days, max(1, train.holdout_days // 2))
    validation_start = split.calibration_start - pd.Timedelta(days=settings.retrain.validation_days)
    if validation_start <= split.train_start:
        raise RetrainWindowError(
            f"a {settings.retrain.validation_days}-day validation slice leaves no training rows; lengthen the window"
        )
    ts = frame["request_ts"]
    known = frame[label].notna()
    fit = frame.loc[known & (ts >= split.train_start) & (ts < validation_start)]
    valid = frame.loc[known & (ts >= validation_start) & (ts < split.calibration_start)]
    names = model_features()
    return TuneSlices(
        train_x=feature_matrix(fit, names),
        train_y=finite_labels(fit[label], f"{family} training labels"),
        valid_x=feature_matrix(valid, names),
        valid_y=finite_labels(valid[label], f"{family} validation labels"),
        validation_start=validation_start,
        rows={"fit": len(fit), "validation": len(valid)},
    )


class _ReportToTune:
    """LightGBM callback: every ``every`` rounds, report the best validation loss so far to Tune.

    Best-so-far (not the current round's loss) so that the last report of a trial that ASHA or
    early stopping ended is still its result.
    """

    order = 40  # after lgb.early_stopping (order 30)
    before_iteration = False

    def __init__(self, every: int) -> None:
        self.every = every
        self.best_loss = math.inf
        self.best_iteration = 0
        self.rounds = 0

    def __call__(self, env: Any) -> None:
        loss = float(env.evaluation_result_list[0][2])
        self.rounds = env.iteration + 1
        if loss < self.best_loss:
            self.best_loss, self.best_iteration = loss, self.rounds
        if self.rounds % self.every == 0:
            self.report()

    def report(self) -> None:
        from ray import tune

        tune.report({VALIDATION_LOSS: self.best_loss, "best_iteration": self.best_iteration, "rounds": self.rounds})


def _trial(config: dict[str, Any], *, family: TunedFamily, slices: TuneSlices, retrain: RetrainSettings) -> None:
    """One Tune trial: one booster of ``family`` with ``config``, early-stopped on the validation slice."""
    import lightgbm as lgb

    model_class, _, metric, _ = _FAMILIES[family]
    model = model_class(**config, seed=retrain.seed, num_threads=1)
    params = booster_params(model.get_params())
    objective = model.objective if isinstance(model, EtaModel) else "binary"
    names = model_features()
    dataset = training_dataset(slices.train_x, slices.train_y, names, model.categorical_features, model.min_data_in_leaf)
    validation = lgb.Dataset(slices.valid_x, label=slices.valid_y, reference=dataset)
    reporter = _ReportToTune(retrain.report_every)
    lgb.train(
        {**params, "objective": objective, "metric": metric},
        dataset,
        num_boost_round=retrain.max_boost_round,
        valid_sets=[validation],
        valid_names=["validation"],
        callbacks=[lgb.early_stopping(retrain.early_stopping_rounds, first_metric_only=True, verbose=False), reporter],
    )
    reporter.report()


def ensure_ray() -> None:
    """A fresh local Ray unless ``RAY_ADDRESS`` names a cluster; reuse a connection already open."""
    import ray

    if not ray.is_initialized():
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False, log_to_driver=False)


def search(
    family: TunedFamily,
    slices: TuneSlices,
    settings: Settings,
    *,
    trials: int | None = None,
    storage: Path | None = None,
    name: str | None = None,
) -> SearchResult:
    """Run one family's Tune search and return its trials, best first."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    ensure_ray()
    retrain = settings.retrain
    _, _, _, metric_name = _FAMILIES[family]
    storage = Path(storage or Path(settings.paths.root) / "tune").resolve()
    trainable = tune.with_resources(tune.with_parameters(_trial, family=family, slices=slices, retrain=retrain), {"cpu": 1})
    max_reports = math.ceil(retrain.max_boost_round / retrain.report_every) + 1  # + the final report
    # A grace period of every report turns pruning off (and the winner independent of trial order).
    scheduler = ASHAScheduler(
        time_attr="training_iteration",
        max_t=max_reports,
        grace_period=min(retrain.asha_grace_reports, max_reports),
        reduction_factor=2,
    )
    tuner = tune.Tuner(
        trainable,
        param_space=search_space(),
        tune_config=tune.TuneConfig(
            metric=VALIDATION_LOSS,
            mode="min",
            num_samples=trials or retrain.trials,
            scheduler=scheduler,
            # The generator limits concurrency itself (TuneConfig.max_concurrent_trials ignores it).
            search_alg=BasicVariantGenerator(random_state=retrain.seed, max_concurrent=retrain.max_concurrent_trials),
        ),
        run_config=tune.RunConfig(name=name or f"retrain-{family}-{time.strftime('%Y%m%dT%H%M%S')}", storage_path=str(storage), verbose=0),
    )
    started = time.perf_counter()
    grid = tuner.fit()
    seconds = time.perf_counter() - started
    summaries = [
        TrialSummary(
            trial_id=str(r.metrics["trial_id"]),
            config={k: r.config[k] for k in search_space()},
            validation_loss=float(r.metrics[VALIDATION_LOSS]),
            best_iteration=int(r.metrics["best_iteration"]),
            rounds=int(r.metrics["rounds"]),
        )
        for r in grid
        if r.error is None and r.metrics and r.metrics.get("best_iteration", 0) > 0
    ]
    if not summaries:
        errors = [str(r.error)[:200] for r in grid if r.error is not None]
        raise RuntimeError(f"no {family} tuning trial finished; first error: {errors[:1] or 'none reported'}")
    summaries.sort(key=lambda s: s.validation_loss)
    failed = sum(r.error is not None for r in grid)
    return SearchResult(family, metric_name, summaries[0], tuple(summaries), seconds, str(grid.experiment_path), failed)


def tune_models(
    frame: pd.DataFrame, settings: Settings, *, trials: int | None = None, storage: Path | None = None,
    families: Sequence[str] | None = None,
) -> dict[str, SearchResult]:
    """Search the ETA and the acceptance booster (or only ``families``) on ``frame`` (see the module docstring)."""
    return {family: search(family, tune_slices(frame, settings, family), settings, trials=trials, storage=storage)
            for family in _FAMILIES if families is None or family in families}


def fit_candidate(
    frame: pd.DataFrame, settings: Settings, searches: Mapping[str, SearchResult], fitted: Mapping[str, Any] | None = None
) -> TrainingResult:
    """``train_models`` with each searched family's winning parameters; ``fitted`` models are kept as they are."""
    return train_models(
        frame,
        settings,
        eta_params=searches["eta"].model_params() if "eta" in searches else None,
        acceptance_params=searches["acceptance"].model_params() if "acceptance" in searches else None,
        seed=settings.retrain.seed,
        num_threads=settings.train.num_threads,
        fitted=fitted,
    )
