"""Probability that a provider accepts an offered job: LightGBM classifier + post-hoc calibration.

The ranking policy prices a decline as ``(1 − p_accept) × re-offer delay``, so ``p_accept``
must be a probability, not just a score that orders candidates. Gradient-boosted trees trained
on log loss are usually close but drift over-confident at the extremes as trees are added, so
the booster's raw margin is mapped through a monotone calibrator fitted on a *separate*
calibration split (Niculescu-Mizil & Caruana 2005, ICML; Zadrozny & Elkan 2002, KDD):

* ``calibration="isotonic"`` (default): pool-adjacent-violators on the margin, non-parametric,
  needs a few thousand calibration offers to be smooth;
* ``calibration="platt"``: a two-parameter sigmoid on the margin (Platt 1999), safer when the
  calibration split is small.

Being monotone, either calibrator keeps the booster's ordering (and AUC, up to ties isotonic
introduces). The fitting kernels live in ``eval.calibration``; this class holds their state.

Rows whose candidate was never offered have an unknown ``accepted`` label and must be dropped by
the caller: the model answers "if we offer, will they accept", not "were they offered".
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Self

import lightgbm as lgb
import numpy as np
import pandas as pd

from contracts.features import model_features
from eval.calibration import isotonic_fit, platt_apply, platt_fit
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

CalibrationMethod = Literal["isotonic", "platt"]

#: Calibrated probabilities are kept inside this band: isotonic regression returns exactly 0 or
#: 1 at its ends, which would make one unlucky decline cost infinite log loss and let the
#: ranking treat a provider as certain.
PROBABILITY_BOUNDS: tuple[float, float] = (1e-4, 1.0 - 1e-4)

_BOOSTER_FILES = ("acceptance_booster.txt",)
_STATE_FILE = "acceptance_model.json"


class AcceptanceModel(Estimator):
    """Calibrated P(accept | offered) per candidate.

    Learned state: ``booster_``, ``feature_names_``, ``calibration_thresholds_`` and
    ``calibration_values_`` (isotonic) or ``platt_a_``/``platt_b_`` (Platt).
    """

    _fitted_attribute = "booster_"

    def __init__(
        self,
        *,
        calibration: CalibrationMethod = "isotonic",
        calibration_fraction: float = 0.2,
        num_boost_round: int = 300,
        num_leaves: int = 63,
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
        self.calibration = calibration
        self.calibration_fraction = calibration_fraction
        self.num_boost_round = num_boost_round
        self.num_leaves = num_leaves
        self.learning_rate = learning_rate
        self.min_data_in_leaf = min_data_in_leaf
        self.feature_fraction = feature_fraction
        self.bagging_fraction = bagging_fraction
        self.lambda_l2 = lambda_l2
        self.seed = seed
        self.num_threads = num_threads
        self.feature_names = feature_names
        self.categorical_features = categorical_features

    def fit(
        self,
        X: pd.DataFrame | np.ndarray,
        y: np.ndarray | pd.Series,
        X_cal: pd.DataFrame | np.ndarray | None = None,
        y_cal: np.ndarray | pd.Series | None = None,
    ) -> Self:
        """Fit the booster on ``(X, y)`` and the calibrator on ``(X_cal, y_cal)``.

        Without a calibration split, the last ``calibration_fraction`` of the rows is held out
        for it. Pass rows in time order then: the tail is the most recent offers, closest to
        the traffic the model will serve.
        """
        if self.calibration not in ("isotonic", "platt"):
            raise ValueError(f"calibration must be 'isotonic' or 'platt', got {self.calibration!r}")
        names = tuple(self.feature_names) if self.feature_names is not None else model_features()
        matrix = feature_matrix(X, names)
        target = finite_labels(y, "acceptance labels")
        if X_cal is None or y_cal is None:
            n_cal = round(target.size * self.calibration_fraction)
            if not 0 < n_cal < target.size:
                raise ValueError(f"calibration_fraction={self.calibration_fraction} leaves no calibration rows")
            matrix, cal_matrix = matrix[:-n_cal], matrix[-n_cal:]
            target, cal_target = target[:-n_cal], target[-n_cal:]
        else:
            cal_matrix = feature_matrix(X_cal, names)
            cal_target = finite_labels(y_cal, "calibration acceptance labels")
        dataset = training_dataset(matrix, target, names, self.categorical_features, self.min_data_in_leaf)
        params = booster_params(self.get_params())
        self.feature_names_ = names
        self.booster_ = lgb.train({**params, "objective": "binary"}, dataset, self.num_boost_round)
        margin = booster_predict(self.booster_, cal_matrix, self.num_threads, raw_score=True)
        self._fit_calibrator(margin, cal_target)
        self.n_train_rows_ = int(target.size)
        self.n_calibration_rows_ = int(cal_target.size)
        return self

    def _fit_calibrator(self, margin: np.ndarray, y: np.ndarray) -> None:
        self.calibration_thresholds_ = np.empty(0)
        self.calibration_values_ = np.empty(0)
        self.platt_a_, self.platt_b_ = 1.0, 0.0
        if self.calibration == "isotonic":
            self.calibration_thresholds_, self.calibration_values_ = isotonic_fit(margin, y)
        else:
            self.platt_a_, self.platt_b_ = platt_fit(margin, y)

    def predict_margin(self, X: np.ndarray) -> np.ndarray:
        """Uncalibrated booster log-odds for a serving matrix (for diagnostics and drift checks)."""
        self._check_fitted()
        matrix = serving_matrix(X, len(self.feature_names_))
        return booster_predict(self.booster_, matrix, self.num_threads, raw_score=True)

    def predict_array(self, X: np.ndarray) -> np.ndarray:
        """Calibrated acceptance probability for a ``(n, n_features)`` float matrix (serving path)."""
        margin = self.predict_margin(X)
        if self.calibration == "isotonic":
            p = np.interp(margin, self.calibration_thresholds_, self.calibration_values_)
        else:
            p = platt_apply(margin, self.platt_a_, self.platt_b_)
        return np.clip(p, *PROBABILITY_BOUNDS)

    def predict_proba(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Calibrated P(accept) as a 1-D array, one value per row.

        Unlike scikit-learn's ``(n, 2)`` output this returns the positive class only: every
        caller wants exactly that, and it saves an allocation per request.
        """
        self._check_fitted()
        return self.predict_array(feature_matrix(X, self.feature_names_))

    def save(self, directory: Path) -> list[Path]:
        """Write the booster (LightGBM text format) and the calibrator under ``directory``."""
        self._check_fitted()
        state = {
            "params": self.get_params(),
            "feature_names_": list(self.feature_names_),
            "calibration_thresholds_": self.calibration_thresholds_.tolist(),
            "calibration_values_": self.calibration_values_.tolist(),
            "platt_a_": self.platt_a_,
            "platt_b_": self.platt_b_,
            "n_train_rows_": self.n_train_rows_,
            "n_calibration_rows_": self.n_calibration_rows_,
        }
        return save_boosters(directory, _BOOSTER_FILES, (self.booster_,), _STATE_FILE, state)

    @classmethod
    def load(cls, directory: Path) -> AcceptanceModel:
        """Rebuild a fitted model written by :meth:`save`."""
        state, (booster,) = load_boosters(directory, _BOOSTER_FILES, _STATE_FILE)
        model = cls(**state["params"])
        model.feature_names_ = tuple(state["feature_names_"])
        model.calibration_thresholds_ = np.asarray(state["calibration_thresholds_"], dtype=np.float64)
        model.calibration_values_ = np.asarray(state["calibration_values_"], dtype=np.float64)
        model.platt_a_ = float(state["platt_a_"])
        model.platt_b_ = float(state["platt_b_"])
        model.n_train_rows_ = int(state["n_train_rows_"])
        model.n_calibration_rows_ = int(state["n_calibration_rows_"])
        model.booster_ = booster
        return model
