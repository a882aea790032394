"""ETA regressor with a calibrated interval: LightGBM point model plus conformalized quantiles.

Three boosters share one binned ``lgb.Dataset``: a point model (L2 or L1 objective) and two
smaller quantile models at ``α/2`` and ``1 − α/2`` for a nominal coverage ``1 − α`` (0.8 by
default, ``Settings.train.interval_coverage``). Quantile boosters alone under-cover on new data, so the
interval is conformalized on a calibration split the boosters never saw (CQR: Romano,
Patterson & Candès 2019, "Conformalized Quantile Regression", NeurIPS, Algorithm 1)::

    Eᵢ = max(q̂_lo(xᵢ) − yᵢ, yᵢ − q̂_hi(xᵢ))            on the calibration rows
    Q  = the ⌈(1 − α)(n + 1)⌉-th smallest Eᵢ
    interval(x) = [q̂_lo(x) − Q, q̂_hi(x) + Q]

which covers with probability ≥ 1 − α when calibration and serving rows are exchangeable (the
guarantee weakens under drift; that is what ``eval`` monitors). ``interval="quantile"`` skips
the correction (Q = 0). The interval is then clipped at 0 minutes and widened, if needed, to
contain the point ETA, so dispatchers never see ``low > eta``; both only widen it.

Serving calls :meth:`EtaModel.predict_array` with a float32/float64 matrix in
``contracts.features.model_features()`` order: no pandas on that path, single-threaded
``Booster.predict`` calls. Cost is the tree walks, ~20 µs per row per 300-tree booster, so a
request's 1–20 candidates take ~0.1–1 ms for the three boosters.

The feature-matrix and booster-parameter helpers at the bottom are shared with
``retrain.acceptance_model`` so both models read inputs the same way.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple, Self

import lightgbm as lgb
import numpy as np
import pandas as pd

from contracts.features import model_features

#: Request features holding integer category codes; LightGBM splits them as categories.
CATEGORICAL_FEATURES: tuple[str, ...] = ("lob_code", "service_code", "vehicle_code")

#: Predictions on fewer rows than this run single-threaded; see :func:`predict_threads`.
SINGLE_THREAD_MAX_ROWS = 1000

IntervalMethod = Literal["conformal", "quantile"]
PointObjective = Literal["l2", "l1"]

_FILES = {"point": "eta_point.txt", "low": "eta_low.txt", "high": "eta_high.txt", "state": "eta_model.json"}


class ModelNotFittedError(RuntimeError):
    """Raised when a model is used before ``fit`` (or ``load``)."""


class EtaPrediction(NamedTuple):
    """ETA in minutes with its interval, one value per candidate row."""

    eta_minutes: np.ndarray
    eta_low: np.ndarray
    eta_high: np.ndarray


class EtaModel:
    """Point ETA plus a conformalized ``coverage`` interval, in minutes.

    Parameters are plain values (scikit-learn convention); ``fit`` sets the learned state
    (``point_booster_``, ``low_booster_``, ``high_booster_``, ``conformal_margin_``,
    ``feature_names_``).
    """

    def __init__(
        self,
        *,
        objective: PointObjective = "l2",
        coverage: float = 0.8,
        interval: IntervalMethod = "conformal",
        num_boost_round: int = 300,
        num_leaves: int = 63,
        interval_num_boost_round: int | None = None,
        interval_num_leaves: int | None = None,
        learning_rate: float = 0.05,
        min_data_in_leaf: int = 100,
        feature_fraction: float = 0.8,
        bagging_fraction: float = 0.8,
        lambda_l2: float = 1.0,
        seed: int = 0,
        num_threads: int = 0,
        feature_names: Sequence[str] | None = None,
        categorical_features: Sequence[str] = CATEGORICAL_FEATURES,
    ) -> None:
        self.objective = objective
        self.coverage = coverage
        self.interval = interval
        self.num_boost_round = num_boost_round
        self.num_leaves = num_leaves
        self.interval_num_boost_round = interval_num_boost_round
        self.interval_num_leaves = interval_num_leaves
        self.learning_rate = learning_rate
        self.min_data_in_leaf = min_data_in_leaf
        self.feature_fraction = feature_fraction
        self.bagging_fraction = bagging_fraction
        self.lambda_l2 = lambda_l2
        self.seed = seed
        self.num_threads = num_threads
        self.feature_names = feature_names
        self.categorical_features = categorical_features

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters, JSON-serialisable, for the registry's metadata."""
        return {
            "objective": self.objective,
            "coverage": self.coverage,
            "interval": self.interval,
            "num_boost_round": self.num_boost_round,
            "num_leaves": self.num_leaves,
            "interval_num_boost_round": self.interval_num_boost_round,
            "interval_num_leaves": self.interval_num_leaves,
            "learning_rate": self.learning_rate,
            "min_data_in_leaf": self.min_data_in_leaf,
            "feature_fraction": self.feature_fraction,
            "bagging_fraction": self.bagging_fraction,
            "lambda_l2": self.lambda_l2,
            "seed": self.seed,
            "num_threads": self.num_threads,
            "feature_names": None if self.feature_names is None else list(self.feature_names),
            "categorical_features": list(self.categorical_features),
        }

    @property
    def interval_capacity(self) -> tuple[int, int]:
        """(rounds, leaves) of each quantile booster: half the point model's unless set.

        The quantile ends only need to rank rows by spread; conformalization fixes their
        level. Smaller boosters keep the three-model prediction near the cost of 1.7 point
        models instead of 3 (tree walks dominate serving latency).
        """
        rounds = self.interval_num_boost_round or max(1, self.num_boost_round // 2)
        leaves = self.interval_num_leaves or max(2, self.num_leaves // 2)
        return rounds, leaves

    @property
    def alpha_low(self) -> float:
        return (1.0 - self.coverage) / 2.0

    @property
    def alpha_high(self) -> float:
        return 1.0 - (1.0 - self.coverage) / 2.0

    def fit(
        self,
        X: pd.DataFrame | np.ndarray,
        y: np.ndarray | pd.Series,
        X_cal: pd.DataFrame | np.ndarray | None = None,
        y_cal: np.ndarray | pd.Series | None = None,
    ) -> Self:
        """Fit the three boosters on ``(X, y)``, then the conformal margin on ``(X_cal, y_cal)``.

        ``y`` is arrival minutes and must be finite: rows whose arrival is unknown (declined,
        cancelled, not yet matured) carry no ETA information and are dropped by the caller.
        """
        if not 0.0 < self.coverage < 1.0:
            raise ValueError(f"coverage must be in (0, 1), got {self.coverage}")
        if self.interval == "conformal" and (X_cal is None or y_cal is None):
            raise ValueError("interval='conformal' needs X_cal and y_cal; pass a calibration split or use 'quantile'")
        names = tuple(self.feature_names) if self.feature_names is not None else model_features()
        matrix = feature_matrix(X, names)
        target = finite_labels(y, "arrival minutes")
        dataset = training_dataset(matrix, target, names, self.categorical_features, self.min_data_in_leaf)
        base = booster_params(
            num_leaves=self.num_leaves,
            learning_rate=self.learning_rate,
            min_data_in_leaf=self.min_data_in_leaf,
            feature_fraction=self.feature_fraction,
            bagging_fraction=self.bagging_fraction,
            lambda_l2=self.lambda_l2,
            seed=self.seed,
            num_threads=self.num_threads,
        )
        self.feature_names_ = names
        self.point_booster_ = lgb.train({**base, "objective": self.objective}, dataset, self.num_boost_round)
        rounds, leaves = self.interval_capacity
        quantile = {**base, "objective": "quantile", "num_leaves": leaves}
        self.low_booster_ = lgb.train({**quantile, "alpha": self.alpha_low}, dataset, rounds)
        self.high_booster_ = lgb.train({**quantile, "alpha": self.alpha_high}, dataset, rounds)
        self.n_train_rows_ = int(target.size)
        self.conformal_margin_ = 0.0
        self.n_calibration_rows_ = 0
        if self.interval == "conformal":
            cal_matrix = feature_matrix(X_cal, names)
            cal_target = finite_labels(y_cal, "calibration arrival minutes")
            scores = conformity_scores(
                cal_target,
                booster_predict(self.low_booster_, cal_matrix, self.num_threads),
                booster_predict(self.high_booster_, cal_matrix, self.num_threads),
            )
            self.conformal_margin_ = conformal_quantile(scores, self.coverage)
            self.n_calibration_rows_ = int(cal_target.size)
        return self

    def predict_array(self, X: np.ndarray) -> EtaPrediction:
        """ETA and interval for a ``(n, n_features)`` float matrix in ``feature_names_`` order.

        The serving path: no pandas, no copies when ``X`` is already a C-contiguous float32 or
        float64 array. Missing features are NaN; LightGBM routes them down the learned default
        branch.
        """
        self._check_fitted()
        matrix = serving_matrix(X, len(self.feature_names_))
        point = booster_predict(self.point_booster_, matrix, self.num_threads)
        low = booster_predict(self.low_booster_, matrix, self.num_threads) - self.conformal_margin_
        high = booster_predict(self.high_booster_, matrix, self.num_threads) + self.conformal_margin_
        return order_interval(point, low, high)

    def predict(self, X: pd.DataFrame | np.ndarray) -> pd.DataFrame:
        """``eta_minutes``, ``eta_low``, ``eta_high`` as a frame aligned with ``X``'s index (offline use)."""
        self._check_fitted()
        prediction = self.predict_array(feature_matrix(X, self.feature_names_))
        index = X.index if isinstance(X, pd.DataFrame) else None
        return pd.DataFrame(prediction._asdict(), index=index)

    def _check_fitted(self) -> None:
        if not hasattr(self, "point_booster_"):
            raise ModelNotFittedError("EtaModel is not fitted; call fit() or EtaModel.load() first")

    def save(self, directory: Path) -> list[Path]:
        """Write the boosters (LightGBM text format) and learned scalars under ``directory``."""
        self._check_fitted()
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {
            "params": self.get_params(),
            "feature_names_": list(self.feature_names_),
            "conformal_margin_": self.conformal_margin_,
            "n_train_rows_": self.n_train_rows_,
            "n_calibration_rows_": self.n_calibration_rows_,
        }
        for key, booster in (("point", self.point_booster_), ("low", self.low_booster_), ("high", self.high_booster_)):
            booster.save_model(directory / _FILES[key])
        (directory / _FILES["state"]).write_text(json.dumps(state, indent=2, sort_keys=True))
        return [directory / name for name in _FILES.values()]

    @classmethod
    def load(cls, directory: Path) -> EtaModel:
        """Rebuild a fitted model written by :meth:`save`."""
        directory = Path(directory)
        state = json.loads((directory / _FILES["state"]).read_text())
        model = cls(**state["params"])
        model.feature_names_ = tuple(state["feature_names_"])
        model.conformal_margin_ = float(state["conformal_margin_"])
        model.n_train_rows_ = int(state["n_train_rows_"])
        model.n_calibration_rows_ = int(state["n_calibration_rows_"])
        model.point_booster_ = lgb.Booster(model_file=str(directory / _FILES["point"]))
        model.low_booster_ = lgb.Booster(model_file=str(directory / _FILES["low"]))
        model.high_booster_ = lgb.Booster(model_file=str(directory / _FILES["high"]))
        return model


def conformity_scores(y: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """CQR conformity score ``Eᵢ = max(lowᵢ − yᵢ, yᵢ − highᵢ)`` (Romano et al. 2019, eq. 6).

    Negative when ``yᵢ`` is strictly inside the band, so a too-wide band is shrunk as well.
    """
    return np.maximum(np.asarray(low) - np.asarray(y), np.asarray(y) - np.asarray(high))


def conformal_quantile(scores: np.ndarray, coverage: float) -> float:
    """The ``⌈coverage·(n + 1)⌉``-th smallest score: the finite-sample split-conformal quantile.

    Vovk, Gammerman & Shafer 2005; Lei et al. 2018 ("Distribution-free predictive inference for
    regression", JASA), Theorem 2.2. Raises if ``n`` is too small for the level to be attainable
    (``n < coverage / (1 − coverage)``), where the honest answer is an infinite interval.
    """
    s = np.sort(np.asarray(scores, dtype=np.float64).ravel())
    n = s.size
    k = math.ceil(coverage * (n + 1))
    if k > n:
        raise ValueError(
            f"{n} calibration rows cannot certify coverage {coverage}; need at least "
            f"{math.ceil(coverage / (1 - coverage))} rows with known arrival times"
        )
    return float(s[k - 1])


def order_interval(point: np.ndarray, low: np.ndarray, high: np.ndarray) -> EtaPrediction:
    """Clip at 0 minutes, un-cross the quantiles and make ``low ≤ eta ≤ high``.

    Sorting crossed quantile estimates can only improve them (Chernozhukov, Fernández-Val &
    Galichon 2010, "Quantile and probability curves without crossing", Econometrica).
    """
    eta = np.maximum(point, 0.0)
    lo = np.minimum(low, high)
    hi = np.maximum(low, high)
    return EtaPrediction(eta, np.maximum(np.minimum(lo, eta), 0.0), np.maximum(hi, eta))


# -- shared with retrain.acceptance_model: how a LightGBM model reads its inputs ------------------


def feature_matrix(X: pd.DataFrame | np.ndarray, feature_names: Sequence[str]) -> np.ndarray:
    """The model input matrix: ``feature_names`` columns in order, float32, C-contiguous.

    float32 halves the memory of a 400k × 241 training matrix and loses nothing LightGBM keeps
    (it bins values into at most 255 buckets). A frame missing a model feature is an upstream
    contract break, so it raises instead of silently filling NaN.
    """
    if isinstance(X, pd.DataFrame):
        missing = [c for c in feature_names if c not in X.columns]
        if missing:
            raise KeyError(f"frame lacks {len(missing)} model features, e.g. {missing[:5]}; rebuild the training set")
        return np.ascontiguousarray(X.loc[:, list(feature_names)].to_numpy(dtype=np.float32, na_value=np.nan))
    matrix = np.ascontiguousarray(X, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[1] != len(feature_names):
        raise ValueError(f"expected a (n, {len(feature_names)}) matrix in model_features() order, got {matrix.shape}")
    return matrix


def serving_matrix(X: np.ndarray, n_features: int) -> np.ndarray:
    """Validate a serving matrix without copying float32/float64 input."""
    matrix = X if isinstance(X, np.ndarray) and X.dtype in (np.float32, np.float64) else np.asarray(X, np.float64)
    if matrix.ndim == 1:
        matrix = matrix.reshape(1, -1)
    if matrix.shape[1] != n_features:
        raise ValueError(f"expected {n_features} features per row in model_features() order, got {matrix.shape[1]}")
    return matrix if matrix.flags.c_contiguous else np.ascontiguousarray(matrix)


def predict_threads(n_rows: int, num_threads: int) -> int:
    """OpenMP threads for predicting ``n_rows``: one for a request's handful of candidates.

    Fanning a 20-row prediction out over OpenMP threads saves little (tree walks of a few
    microseconds each) and, where every Ray Serve replica owns one CPU, oversubscribes the
    cores: on a loaded 2-core machine one-row ETA latency went from ~0.1–0.2 ms single-threaded
    to ~20 ms with OpenMP. Batch scoring (backtests, calibration) still uses ``num_threads``.
    """
    return 1 if n_rows < SINGLE_THREAD_MAX_ROWS else num_threads


def booster_predict(booster: lgb.Booster, matrix: np.ndarray, num_threads: int, raw_score: bool = False) -> np.ndarray:
    """``booster.predict`` with the thread count chosen by :func:`predict_threads`."""
    threads = predict_threads(matrix.shape[0], num_threads)
    return np.asarray(booster.predict(matrix, raw_score=raw_score, num_threads=threads))


def finite_labels(y: np.ndarray | pd.Series, what: str) -> np.ndarray:
    """Labels as float64, refusing NaN: an unknown label must be dropped, not learned as a value."""
    target = np.asarray(y, dtype=np.float64).ravel()
    if not np.all(np.isfinite(target)):
        raise ValueError(f"{what} contain {int(np.sum(~np.isfinite(target)))} unknown values; drop those rows first")
    if target.size == 0:
        raise ValueError(f"no rows with known {what}; widen the training window or wait for labels to mature")
    return target


def booster_params(
    *,
    num_leaves: int,
    learning_rate: float,
    min_data_in_leaf: int,
    feature_fraction: float,
    bagging_fraction: float,
    lambda_l2: float,
    seed: int,
    num_threads: int,
) -> dict[str, Any]:
    """LightGBM parameters common to every booster here (objective added by the caller).

    ``deterministic`` + a fixed ``seed`` make a retrain on the same frame reproduce the same
    trees, so a changed champion always means changed data or code.
    """
    return {
        "num_leaves": num_leaves,
        "learning_rate": learning_rate,
        "min_data_in_leaf": min_data_in_leaf,
        "feature_fraction": feature_fraction,
        "bagging_fraction": bagging_fraction,
        "bagging_freq": 1 if bagging_fraction < 1.0 else 0,
        "lambda_l2": lambda_l2,
        "seed": seed,
        "deterministic": True,
        "force_col_wise": True,
        "num_threads": num_threads,
        "verbosity": -1,
    }


def training_dataset(
    matrix: np.ndarray,
    target: np.ndarray,
    feature_names: Sequence[str],
    categorical_features: Sequence[str],
    min_data_in_leaf: int,
) -> lgb.Dataset:
    """One binned dataset, constructed once and reused by every booster trained on it."""
    categorical = [c for c in categorical_features if c in feature_names]
    dataset = lgb.Dataset(
        matrix,
        label=target,
        feature_name=list(feature_names),
        categorical_feature=categorical,
        params={"min_data_in_leaf": min_data_in_leaf, "verbosity": -1, "feature_pre_filter": False},
        free_raw_data=True,
    )
    return dataset.construct()
