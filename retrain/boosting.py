"""LightGBM plumbing shared by ``retrain.eta_model`` and ``retrain.acceptance_model``.

Both models are gradient-boosted trees over the same request features, so they must read their
inputs, pick their threads and store their boosters the same way; each module keeps only what
makes it that model (quantiles and conformal margin, calibrator). The helpers exist because:

* **One input matrix.** Training and serving both go through :func:`feature_matrix` or
  :func:`serving_matrix`: ``model_features()`` column order, float, C-contiguous. A column in
  the wrong place would be scored silently, so a frame missing a feature raises instead.
* **Single-threaded prediction below** :data:`SINGLE_THREAD_MAX_ROWS` **rows.** A request scores
  1–20 candidates; OpenMP threads on cores shared with other Ray Serve replicas oversubscribe
  them and cost ~100× in latency (measurements in :func:`predict_threads`).
* **Reproducible boosters.** :func:`booster_params` fixes ``seed`` and ``deterministic``, so a
  retrain on the same frame yields the same trees and a changed champion means changed data or
  code.
* **Pickle-free artifacts.** Boosters are saved in LightGBM's text format and learned scalars
  as JSON (:func:`save_boosters`), the files the registry checksums.

:class:`Estimator` is scikit-learn's estimator convention (``sklearn.base.BaseEstimator``):
constructor arguments are plain attributes, ``get_params`` reads them back by introspecting the
constructor signature, and learned state ends in ``_``. ``retrain.fallback`` uses it too.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import lightgbm as lgb
import numpy as np
import pandas as pd

#: Request features holding integer category codes; LightGBM splits them as categories.
CATEGORICAL_FEATURES: tuple[str, ...] = ("lob_code", "service_code", "vehicle_code")

#: Predictions on fewer rows than this run single-threaded; see :func:`predict_threads`.
SINGLE_THREAD_MAX_ROWS = 1000


class ModelNotFittedError(RuntimeError):
    """Raised when a model is used before ``fit`` (or ``load``)."""


class Estimator:
    """Constructor parameters read back by name, and a fitted check (scikit-learn convention).

    As in ``BaseEstimator.get_params`` (scikit-learn ``sklearn/base.py``), the parameter list is
    the ``__init__`` signature, so ``__init__`` must name every parameter (no ``*args`` or
    ``**kwargs``) and store each one unchanged as an attribute of the same name. Then
    ``type(model)(**model.get_params())`` rebuilds an unfitted copy, which is how ``load`` works.
    """

    #: A learned attribute that ``fit`` and ``load`` always set; its absence means "not fitted".
    _fitted_attribute: ClassVar[str]

    @classmethod
    def _param_names(cls) -> tuple[str, ...]:
        """``__init__``'s parameter names in signature order (``BaseEstimator._get_param_names``)."""
        parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]  # drop self
        if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters):
            raise TypeError(f"{cls.__name__}.__init__ must name its parameters (no *args/**kwargs) for get_params()")
        return tuple(p.name for p in parameters)

    def get_params(self) -> dict[str, Any]:
        """Constructor parameters, JSON-serialisable (sequences as lists), for the registry's metadata."""
        return {name: _json_value(getattr(self, name)) for name in self._param_names()}

    def _check_fitted(self) -> None:
        if not hasattr(self, self._fitted_attribute):
            name = type(self).__name__
            raise ModelNotFittedError(f"{name} is not fitted; call fit() or {name}.load() first")


def _json_value(value: Any) -> Any:
    """``value`` with any non-string iterable (feature names as a tuple or index) as a list."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        return value
    return list(value)


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


def booster_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """LightGBM parameters common to every booster here, from a model's ``get_params()``.

    The caller adds the objective. ``deterministic`` + a fixed ``seed`` make a retrain on the
    same frame reproduce the same trees, so a changed champion always means changed data or code.
    """
    return {
        "num_leaves": params["num_leaves"],
        "learning_rate": params["learning_rate"],
        "min_data_in_leaf": params["min_data_in_leaf"],
        "feature_fraction": params["feature_fraction"],
        "bagging_fraction": params["bagging_fraction"],
        "bagging_freq": 1 if params["bagging_fraction"] < 1.0 else 0,
        "lambda_l2": params["lambda_l2"],
        "seed": params["seed"],
        "deterministic": True,
        "force_col_wise": True,
        "num_threads": params["num_threads"],
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


def save_boosters(
    directory: Path,
    booster_files: Sequence[str],
    boosters: Sequence[lgb.Booster],
    state_file: str,
    state: Mapping[str, Any],
    *,
    indent: int | None = None,
) -> list[Path]:
    """Write each booster to its file (LightGBM text format), then ``state`` as JSON.

    Returns the written paths, boosters first: the artifacts the registry checksums.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for file_name, booster in zip(booster_files, boosters, strict=True):
        booster.save_model(directory / file_name)
    (directory / state_file).write_text(json.dumps(state, indent=indent, sort_keys=True))
    return [directory / name for name in (*booster_files, state_file)]


def load_boosters(directory: Path, booster_files: Sequence[str], state_file: str) -> tuple[dict[str, Any], list[lgb.Booster]]:
    """The JSON state and the boosters written by :func:`save_boosters`, boosters in ``booster_files`` order."""
    directory = Path(directory)
    state = json.loads((directory / state_file).read_text())
    return state, [lgb.Booster(model_file=str(directory / name)) for name in booster_files]
