"""Fit the ETA, acceptance and fallback models on a training frame and register them.

The frame comes from ``retrain.training_set`` (point-in-time features + matured labels); this
module does not read Feast. Rows are split by request time, never at random, because the
models are used on the future and neighbouring jobs share traffic, weather and provider
state — a random split leaks that shared state into the holdout and flatters every metric::

    ───── train (window_days before holdout) ─────┬─ calibration ─┬─ holdout (holdout_days) ─┤
    holdout_start − window_days          cal start          holdout_start                  last request

The calibration slice is part of the ``window_days`` training window and is used only to
conformalize the ETA interval and to calibrate the acceptance probabilities; the holdout is
used only for the reported metrics. The ETA model learns from rows whose arrival time is known
(accepted and matured), the acceptance model from rows that were offered; the fallback tables
use every pre-holdout row.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd

from cluster.config import Settings
from contracts.features import model_features
from eval.calibration import acceptance_report
from eval.metrics import eta_report, per_segment
from retrain.acceptance_model import AcceptanceModel
from retrain.eta_model import EtaModel
from retrain.fallback import FallbackModel
from retrain.job_sample import cap_rows
from retrain.ranking import RankingPolicy
from retrain.registry import Alias, Family, ModelRegistry, TrainingWindow, VersionSpec

#: Holdout metrics are broken down by these columns; ``hour_of_day`` is the UTC request hour.
SEGMENT_COLUMNS: tuple[str, ...] = ("region_id", "provider_cohort", "line_of_business", "hour_of_day")

#: Recorded as the fallback model's feature service: it reads request fields only, no Feast.
FALLBACK_FEATURE_SERVICE = "none:request-fields-only"

#: A segment needs this many holdout rows before its metrics are reported.
MIN_SEGMENT_ROWS = 30


class TrainingWindowError(ValueError):
    """The frame does not span enough days for the configured train/calibration/holdout split."""


@dataclass(frozen=True)
class TimeSplit:
    """Boundaries of the split; each slice is ``[start, next start)``, the holdout ends inclusive."""

    train_start: pd.Timestamp
    calibration_start: pd.Timestamp
    holdout_start: pd.Timestamp
    end: pd.Timestamp


@dataclass
class TrainingResult:
    """Fitted models plus everything the registry records about them."""

    eta: EtaModel
    acceptance: AcceptanceModel
    fallback: FallbackModel
    policy: RankingPolicy
    split: TimeSplit
    rows: dict[str, int]
    #: ``{"eta" | "acceptance" | "fallback": {metric: value}}`` on the holdout.
    metrics: dict[str, dict[str, float]]
    #: ``{family: {segment column: {segment value: {metric: value}}}}`` on the holdout.
    segment_metrics: dict[str, dict[str, dict[str, dict[str, float]]]]
    data_fingerprint: str
    feature_definition_version: str
    fit_seconds: dict[str, float] = field(default_factory=dict)


def time_split(request_ts: pd.Series, holdout_days: int, window_days: int, calibration_days: int) -> TimeSplit:
    """Split points counted back from the latest request in the frame."""
    end = pd.Timestamp(request_ts.max())
    holdout_start = end - pd.Timedelta(days=holdout_days)
    calibration_start = holdout_start - pd.Timedelta(days=calibration_days)
    train_start = holdout_start - pd.Timedelta(days=window_days)
    if not train_start < calibration_start:
        raise TrainingWindowError(
            f"window_days={window_days} leaves no training days before a {calibration_days}-day calibration slice"
        )
    if pd.Timestamp(request_ts.min()) >= calibration_start:
        raise TrainingWindowError(
            f"the frame starts {request_ts.min()}, after the calibration slice starts {calibration_start}; "
            f"it needs more than {holdout_days + calibration_days} days of history"
        )
    return TimeSplit(train_start, calibration_start, holdout_start, end)


def data_fingerprint(frame: pd.DataFrame) -> str:
    """sha256 over the sorted row hashes and the column names: order-independent, content-exact."""
    row_hashes = np.sort(pd.util.hash_pandas_object(frame, index=False).to_numpy())
    digest = hashlib.sha256("\x1f".join(map(str, frame.columns)).encode())
    digest.update(row_hashes.tobytes())
    return digest.hexdigest()


def feature_definition_version(frame: pd.DataFrame) -> str:
    """The feature-definition version the frame was built with.

    ``retrain.training_set`` records it in ``frame.attrs``; otherwise it is today's
    ``feature_repo.feature_services.FEATURE_DEFINITION_VERSION`` (imported only then, since that
    module loads Feast). Serving refuses a model whose version differs from the live definitions.
    """
    recorded = frame.attrs.get("feature_definition_version")
    if recorded:
        return str(recorded)
    from feature_repo.feature_services import FEATURE_DEFINITION_VERSION

    return FEATURE_DEFINITION_VERSION


def train_models(
    frame: pd.DataFrame,
    settings: Settings,
    *,
    calibration_days: int | None = None,
    policy: RankingPolicy | None = None,
    feature_names: Sequence[str] | None = None,
    eta_params: Mapping[str, Any] | None = None,
    acceptance_params: Mapping[str, Any] | None = None,
    seed: int = 0,
    num_threads: int = 0,
    fitted: Mapping[str, EtaModel | AcceptanceModel] | None = None,
) -> TrainingResult:
    """Split by time, fit the three models, and score them on the holdout.

    ``fitted`` maps ``eta`` / ``acceptance`` to an already fitted model to keep instead of fitting
    one (a retrain of one family keeps the champion's other model); it is scored like the rest.

    ``calibration_days`` defaults to half the holdout (at least one day). ``eta_params`` and
    ``acceptance_params`` override constructor arguments (e.g. ``min_data_in_leaf``); the
    capacity settings come from ``settings.train``. ``num_threads`` should equal the CPUs the
    calling task reserved (0 = all cores): LightGBM's OpenMP threads slow down sharply when
    they oversubscribe cores shared with other work.
    """
    train_settings = settings.train
    names = tuple(feature_names) if feature_names is not None else model_features()
    cal_days = calibration_days if calibration_days is not None else max(1, train_settings.holdout_days // 2)
    split = time_split(frame["request_ts"], train_settings.holdout_days, train_settings.window_days, cal_days)
    in_window = frame.loc[frame["request_ts"] >= split.train_start].sort_values("request_ts", kind="stable")
    train = cap_rows(in_window.loc[in_window["request_ts"] < split.calibration_start], train_settings.max_training_rows)
    in_calibration = (in_window["request_ts"] >= split.calibration_start) & (in_window["request_ts"] < split.holdout_start)
    calibration = in_window.loc[in_calibration]
    holdout = in_window.loc[in_window["request_ts"] >= split.holdout_start]

    capacity = {
        "num_boost_round": train_settings.num_boost_round,
        "num_leaves": train_settings.num_leaves,
        "learning_rate": train_settings.learning_rate,
        "seed": seed,
        "num_threads": num_threads,
        "feature_names": names,
    }
    fit_seconds: dict[str, float] = {}

    fitted = fitted or {}
    started = time.perf_counter()
    eta_train, eta_cal = _known(train, "arrival_minutes"), _known(calibration, "arrival_minutes")
    eta = fitted.get("eta")
    if eta is None:
        eta = EtaModel(**{"coverage": train_settings.interval_coverage, **capacity, **(eta_params or {})})
        eta.fit(eta_train, eta_train["arrival_minutes"], eta_cal, eta_cal["arrival_minutes"])
    fit_seconds["eta"] = time.perf_counter() - started

    started = time.perf_counter()
    acc_train, acc_cal = _known(train, "accepted"), _known(calibration, "accepted")
    acceptance = fitted.get("acceptance")
    if acceptance is None:
        acceptance = AcceptanceModel(**{**capacity, **(acceptance_params or {})})
        acceptance.fit(acc_train, acc_train["accepted"], acc_cal, acc_cal["accepted"])
    fit_seconds["acceptance"] = time.perf_counter() - started

    started = time.perf_counter()
    before_holdout = pd.concat([train, calibration])
    fallback = FallbackModel(coverage=train_settings.interval_coverage).fit(before_holdout)
    fit_seconds["fallback"] = time.perf_counter() - started

    metrics, segment_metrics = evaluate_holdout(holdout, eta, acceptance, fallback)
    return TrainingResult(
        eta=eta,
        acceptance=acceptance,
        fallback=fallback,
        policy=policy or RankingPolicy(),
        split=split,
        rows={
            "train": len(train),
            "calibration": len(calibration),
            "holdout": len(holdout),
            "eta_train": len(eta_train),
            "eta_calibration": len(eta_cal),
            "acceptance_train": len(acc_train),
            "acceptance_calibration": len(acc_cal),
        },
        metrics=metrics,
        segment_metrics=segment_metrics,
        data_fingerprint=data_fingerprint(before_holdout),
        feature_definition_version=feature_definition_version(frame),
        fit_seconds=fit_seconds,
    )


def _known(frame: pd.DataFrame, label: str) -> pd.DataFrame:
    return frame.loc[frame[label].notna()]


def evaluate_holdout(
    holdout: pd.DataFrame, eta: EtaModel, acceptance: AcceptanceModel, fallback: FallbackModel
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, dict[str, dict[str, float]]]]]:
    """Overall and per-segment holdout metrics of each model, ``fallback`` scored on both tasks.

    The fallback is scored on the same rows as the models it backs up, so "how much worse is
    degraded mode" is a like-for-like comparison.
    """
    holdout = holdout.reset_index(drop=True)
    scored = holdout_segments(holdout)
    fallback_pred = fallback.predict_frame(holdout)
    eta_rows = holdout["arrival_minutes"].notna().to_numpy()
    acc_rows = holdout["accepted"].notna().to_numpy()

    eta_frame = scored.loc[eta_rows].assign(y=holdout.loc[eta_rows, "arrival_minutes"].to_numpy())
    eta_frame = eta_frame.join(eta.predict(holdout.loc[eta_rows]))
    fb_eta = fallback_pred.loc[eta_rows, ["eta_minutes", "eta_low", "eta_high"]].add_prefix("fb_")
    eta_frame = eta_frame.join(fb_eta)

    acc_frame = scored.loc[acc_rows].assign(
        y=holdout.loc[acc_rows, "accepted"].to_numpy(),
        p=acceptance.predict_proba(holdout.loc[acc_rows]),
        fb_p=fallback_pred.loc[acc_rows, "p_accept"].to_numpy(),
    )

    eta_cols = ["y", "eta_minutes", "eta_low", "eta_high"]
    fb_eta_cols = ["y", "fb_eta_minutes", "fb_eta_low", "fb_eta_high"]
    metrics = {
        "eta": _overall(eta_frame, eta_report, eta_cols),
        "acceptance": _overall(acc_frame, acceptance_report, ["y", "p"]),
        "fallback": {
            **_prefixed("eta_", _overall(eta_frame, eta_report, fb_eta_cols)),
            **_prefixed("acceptance_", _overall(acc_frame, acceptance_report, ["y", "fb_p"])),
        },
    }
    segment_metrics = {
        "eta": _by_segment(eta_frame, eta_report, eta_cols),
        "acceptance": _by_segment(acc_frame, acceptance_report, ["y", "p"]),
        "fallback": _merge_segments(
            _by_segment(eta_frame, eta_report, fb_eta_cols, "eta_"),
            _by_segment(acc_frame, acceptance_report, ["y", "fb_p"], "acceptance_"),
        ),
    }
    return metrics, segment_metrics


def holdout_segments(frame: pd.DataFrame) -> pd.DataFrame:
    """The :data:`SEGMENT_COLUMNS` of ``frame``, ``hour_of_day`` derived from ``request_ts``."""
    out = pd.DataFrame(index=frame.index)
    for column in SEGMENT_COLUMNS:
        if column == "hour_of_day":
            out[column] = pd.to_datetime(frame["request_ts"], utc=True).dt.hour
        elif column in frame.columns:
            out[column] = frame[column]
    return out


def _overall(frame: pd.DataFrame, report: Any, columns: list[str]) -> dict[str, float]:
    metrics = dict(report(*(frame[c].to_numpy(dtype=np.float64) for c in columns)))
    metrics["n"] = float(len(frame))
    return metrics


def _by_segment(
    frame: pd.DataFrame, report: Any, columns: list[str], prefix: str = ""
) -> dict[str, dict[str, dict[str, float]]]:
    return {
        segment: {value: _prefixed(prefix, m) for value, m in per_segment(frame, segment, report, columns, MIN_SEGMENT_ROWS).items()}
        for segment in SEGMENT_COLUMNS
        if segment in frame.columns
    }


def _prefixed(prefix: str, metrics: Mapping[str, float]) -> dict[str, float]:
    return {f"{prefix}{k}": v for k, v in metrics.items()}


def _merge_segments(
    *parts: dict[str, dict[str, dict[str, float]]],
) -> dict[str, dict[str, dict[str, float]]]:
    merged: dict[str, dict[str, dict[str, float]]] = {}
    for part in parts:
        for segment, values in part.items():
            for value, metrics in values.items():
                merged.setdefault(segment, {}).setdefault(value, {}).update(metrics)
    return merged


def register_models(
    result: TrainingResult,
    registry: ModelRegistry,
    *,
    feature_services: Mapping[str, str] | None = None,
    lineage: Mapping[str, Any] | None = None,
    set_alias: Alias | None = None,
    moved_by: str = "retrain",
    at: datetime | None = None,
) -> dict[str, str]:
    """Register eta, acceptance, fallback and the dispatch bundle; optionally point an alias at them.

    Each version's parent is its family's current champion, so lineage can be walked back.
    ``feature_services`` maps ``eta``/``acceptance`` to the Feast feature service each model
    reads; by default ``feature_repo.feature_services.FEATURE_SERVICES`` (which loads Feast).
    Returns ``{family: version}``. Whether a challenger becomes champion is the release
    policy's decision, not this function's; ``set_alias="challenger"`` is the usual call.
    """
    window = TrainingWindow(start=result.split.train_start, end=result.split.holdout_start)
    services = _feature_services(feature_services)
    common: dict[str, Any] = {
        "training_window": window,
        "data_fingerprint": result.data_fingerprint,
        "feature_definition_version": result.feature_definition_version,
        "lineage": {**(lineage or {}), "rows": result.rows, "fit_seconds": result.fit_seconds},
    }

    def spec(family: Family, hyperparameters: dict[str, Any], metrics_of: Sequence[str], **extra: Any) -> VersionSpec:
        """``metrics_of`` names the result families whose metrics the version carries (prefixed if several)."""
        champion = registry.alias(family, "champion")
        metrics: dict[str, float] = {}
        segments: list[dict[str, dict[str, dict[str, float]]]] = []
        for source in metrics_of:
            prefix = f"{source}_" if len(metrics_of) > 1 else ""
            metrics.update(_prefixed(prefix, result.metrics[source]))
            segments.append(
                {s: {v: _prefixed(prefix, m) for v, m in vals.items()} for s, vals in result.segment_metrics[source].items()}
            )
        return VersionSpec(
            family=family,
            feature_service=services[family],
            hyperparameters=hyperparameters,
            metrics=metrics,
            segment_metrics=_merge_segments(*segments),
            parent_version=champion.version if champion else None,
            **common,
            **extra,
        )

    versions: dict[str, str] = {}
    single_models: tuple[tuple[Family, Any], ...] = (
        ("eta", result.eta),
        ("acceptance", result.acceptance),
        ("fallback", result.fallback),
    )
    for family, model in single_models:
        versions[family] = registry.register_model(spec(family, _hyperparameters(model), [family]), model).version
    dispatch_spec = spec(
        "dispatch",
        asdict(result.policy),
        ["eta", "acceptance"],
        components={"eta": versions["eta"], "acceptance": versions["acceptance"]},
    )
    versions["dispatch"] = registry.register(dispatch_spec, result.policy.save).version
    if set_alias is not None:
        reason = f"registered by train run ({(lineage or {}).get('trigger', 'manual')})"
        for name, version in versions.items():
            registry.set_alias(name, set_alias, version, moved_by=moved_by, reason=reason, at=at)
    return versions


def _feature_services(given: Mapping[str, str] | None) -> dict[str, str]:
    """Feature service per registry family; the dispatch bundle reads both models' services."""
    if given is None:
        from feature_repo.feature_services import FEATURE_SERVICES

        given = FEATURE_SERVICES
    missing = [f for f in ("eta", "acceptance") if f not in given]
    if missing:
        raise KeyError(f"feature_services lacks {missing}; pass the Feast service name each model reads")
    services = {"eta": given["eta"], "acceptance": given["acceptance"], "fallback": FALLBACK_FEATURE_SERVICE}
    services["dispatch"] = "+".join(dict.fromkeys((given["eta"], given["acceptance"])))
    return services


def _hyperparameters(model: Any) -> dict[str, Any]:
    """Constructor parameters minus the feature list, which ``feature_definition_version`` covers."""
    return {k: v for k, v in model.get_params().items() if k != "feature_names"}
