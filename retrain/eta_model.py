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

The LightGBM plumbing (input matrices, booster parameters, thread count, artifact files) is
shared with ``retrain.acceptance_model`` and lives in ``retrain.boosting``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, NamedTuple, Self

import lightgbm as lgb
import numpy as np
import pandas as pd

from contracts.features import model_features
from retrain.boosting import (
    CATEGORICAL_FEATURES,
    Estimator,
    booster_params,
    booster_predict,
    feature_matrix,
    finite_labels,
    load_boosters,
    save_boosters,
    serving_matrix,
    training_dataset,
)

IntervalMethod = Literal["conformal", "quantile"]
PointObjective = Literal["l2", "l1"]

_BOOSTER_FILES = ("eta_point.txt", "eta_low.txt", "eta_high.txt")
_STATE_FILE = "eta_model.json"


class EtaPrediction(NamedTuple):
    """ETA in minutes with its interval, one value per candidate row."""

    eta_minutes: np.ndarray
    eta_low: np.ndarray
    eta_high: np.ndarray


class EtaModel(Estimator):
    """Point ETA plus a conformalized ``coverage`` interval, in minutes.

    Parameters are plain values (scikit-learn convention); ``fit`` sets the learned state
    (``point_booster_``, ``low_booster_``, ``high_booster_``, ``conformal_margin_``,
    ``feature_names_``).
    """

    _fitted_attribute = "point_booster_"

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
        base = booster_params(self.get_params())
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

    def save(self, directory: Path) -> list[Path]:
        """Write the boosters (LightGBM text format) and learned scalars under ``directory``."""
        self._check_fitted()
        state = {
            "params": self.get_params(),
            "feature_names_": list(self.feature_names_),
            "conformal_margin_": self.conformal_margin_,
            "n_train_rows_": self.n_train_rows_,
            "n_calibration_rows_": self.n_calibration_rows_,
        }
        boosters = (self.point_booster_, self.low_booster_, self.high_booster_)
        return save_boosters(directory, _BOOSTER_FILES, boosters, _STATE_FILE, state, indent=2)

    @classmethod
    def load(cls, directory: Path) -> EtaModel:
        """Rebuild a fitted model written by :meth:`save`."""
        state, boosters = load_boosters(directory, _BOOSTER_FILES, _STATE_FILE)
        model = cls(**state["params"])
        model.feature_names_ = tuple(state["feature_names_"])
        model.conformal_margin_ = float(state["conformal_margin_"])
        model.n_train_rows_ = int(state["n_train_rows_"])
        model.n_calibration_rows_ = int(state["n_calibration_rows_"])
        model.point_booster_, model.low_booster_, model.high_booster_ = boosters
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
