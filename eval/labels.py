"""Delayed labels: joining predictions to labels as they arrive, maturity curves, the watermark.

Labels (``contracts.warehouse.LABELS``) become known minutes to days after the prediction: an
acceptance 0.5-3 min after the offer, an arrival ~20 min (log-normal) after the provider got
there, corrections later still, and some never (a cancelled job has no arrival, a candidate
never offered has no acceptance). A metric computed over every prediction of the last hour is
therefore computed over the *fast* ones only, which for ETA are the short trips: biased low.

Three pieces, statistics as numpy kernels and the pandas join apart:

- ``join_labels``: each prediction-log row with, per label kind, the value and ``known_at`` of
  the highest revision known by ``as_of``. Join key (``contracts/prediction_log.py``):
  ``(job_id, provider_id)`` with ``requested_at == labels.request_ts``.
- ``maturity_curve``: the share of predictions with a label known within ``age`` of the request,
  for a grid of ages. Right-censoring aware: at age ``a`` only predictions at least ``a`` old at
  ``as_of`` are counted (a prediction 10 minutes old cannot tell whether its label comes at 30).
  This is the empirical CDF of label delay over the predictions that could have shown it; no
  survival model is needed because the only censoring is administrative (the ``as_of`` cut).
- ``completeness_watermark``: the latest request time whose labels are at least ``completeness``
  complete, judged on the delays of fully observed older predictions. Realized metrics
  are computed only for rows requested at or before it (``matured``); newer rows get label-free
  estimates (``eval.estimation``) instead.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from contracts.warehouse import LabelType

#: Label kinds and the column ``join_labels`` writes each to.
LABEL_KINDS: tuple[str, ...] = tuple(t.value for t in LabelType)
#: Share of the plateau a cohort must reach before realized metrics use it.
DEFAULT_COMPLETENESS = 0.95
#: Labels later than this after the request are not waited for (12 h, as training's
#: ``label_maturity_hours``): late corrections revise labels that already exist.
DEFAULT_HORIZON_S = 12 * 3600.0


def known_at_column(kind: str) -> str:
    return f"{kind}_known_at"


def join_labels(log: pd.DataFrame, labels: pd.DataFrame, as_of: datetime) -> pd.DataFrame:
    """``log`` rows with ``<kind>`` and ``<kind>_known_at`` per label kind, as known at ``as_of``.

    Per (job, provider, kind) the value is the highest ``revision`` with ``known_at <= as_of``
    (ties to the later ``known_at``); ``<kind>_known_at`` is when the *first* revision became
    known, i.e. when the prediction stopped being unlabelled (a later correction does not make
    a label younger). Unknown labels are NaN/NaT. Rows are kept one for one, in order.
    """
    as_of_ts = pd.Timestamp(as_of)
    if as_of_ts.tzinfo is None:
        raise ValueError(f"as_of must be timezone-aware (UTC), got {as_of!r}")
    key = ["job_id", "provider_id", "request_ts", "label_type"]
    known = labels[pd.to_datetime(labels["known_at"], utc=True) <= as_of_ts]
    latest = known.sort_values(["revision", "known_at"], kind="stable").drop_duplicates(key, keep="last").set_index(key)
    latest["known_at"] = known.groupby(key)["known_at"].min()
    latest = latest.reset_index()
    out = log.reset_index(drop=True)
    for kind in LABEL_KINDS:
        of_kind = latest.loc[latest["label_type"] == kind, ["job_id", "provider_id", "request_ts", "value", "known_at"]]
        of_kind = of_kind.rename(columns={"request_ts": "requested_at", "value": kind, "known_at": known_at_column(kind)})
        out = out.merge(of_kind, on=["job_id", "provider_id", "requested_at"], how="left", validate="many_to_one")
        out[kind] = out[kind].astype("float64")
    return out


def label_delay_s(requested_at: pd.Series, known_at: pd.Series) -> np.ndarray:
    """Seconds from request to label, ``inf`` where the label is not known (yet)."""
    delay = (pd.to_datetime(known_at, utc=True) - pd.to_datetime(requested_at, utc=True)).dt.total_seconds().to_numpy()
    return np.where(np.isnan(delay), np.inf, delay)


def maturity_curve(
    delay_s: np.ndarray, age_s: np.ndarray, ages: np.ndarray, min_count: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """``(share, n)`` at each of ``ages``: share of predictions at least that old with a label by then.

    ``delay_s`` is each prediction's label delay (``inf`` if not known by ``as_of``), ``age_s``
    its age at ``as_of``. At age ``a``: ``share(a) = #{age ≥ a, delay ≤ a} / #{age ≥ a}``, and
    ``n(a) = #{age ≥ a}``; ``nan`` where fewer than ``min_count`` predictions are that old (the
    oldest points rest on the first few requests of the window and are noise). Non-decreasing in ``a``
    only up to sampling noise, since older cohorts make up the later points.
    """
    delay = np.asarray(delay_s, dtype=np.float64)
    age = np.asarray(age_s, dtype=np.float64)
    grid = np.asarray(ages, dtype=np.float64)
    eligible = age[None, :] >= grid[:, None]
    labelled = eligible & (delay[None, :] <= grid[:, None])
    n = eligible.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = labelled.sum(axis=1) / n
    return np.where(n >= max(min_count, 1), share, np.nan), n


def completeness_age_s(
    delay_s: np.ndarray, age_s: np.ndarray, completeness: float = DEFAULT_COMPLETENESS, horizon_s: float = DEFAULT_HORIZON_S
) -> float:
    """The age by which ``completeness`` of the labels that come within ``horizon_s`` have come.

    Among predictions at least ``horizon_s`` old (so their whole horizon was observed) whose
    label came within it, the ``completeness`` quantile of the delay (inverted-CDF quantile, an
    observed delay). Normalising by the labels that do come, rather than by all predictions,
    keeps the answer free of the label *rate*, which differs between cohorts (candidates never
    offered get no acceptance label, cancelled jobs no arrival) and would otherwise make the
    oldest cohort's rate the target. ``inf`` when no prediction qualifies.
    """
    if not 0.0 < completeness <= 1.0:
        raise ValueError(f"completeness must be in (0, 1], got {completeness}")
    delay = np.asarray(delay_s, dtype=np.float64)
    age = np.asarray(age_s, dtype=np.float64)
    observed = delay[(age >= horizon_s) & (delay <= horizon_s)]
    return float(np.quantile(observed, completeness, method="inverted_cdf")) if observed.size else float("inf")


#: ``maturity_table`` drops curve points resting on fewer than this share of the predictions.
MIN_COHORT_SHARE = 0.05


def maturity_table(joined: pd.DataFrame, as_of: datetime, ages: np.ndarray) -> pd.DataFrame:
    """Long table ``(label_kind, age_s, share, n)``: one maturity curve per label kind.

    Points that rest on fewer than ``MIN_COHORT_SHARE`` of the rows (or 30) are ``nan``.
    """
    min_count = max(30, int(MIN_COHORT_SHARE * len(joined)))
    age = (pd.Timestamp(as_of) - pd.to_datetime(joined["requested_at"], utc=True)).dt.total_seconds().to_numpy()
    frames = []
    for kind in LABEL_KINDS:
        share, n = maturity_curve(label_delay_s(joined["requested_at"], joined[known_at_column(kind)]), age, ages, min_count)
        frames.append(pd.DataFrame({"label_kind": kind, "age_s": np.asarray(ages, np.float64), "share": share, "n": n}))
    return pd.concat(frames, ignore_index=True)


def completeness_watermark(
    joined: pd.DataFrame, as_of: datetime, kind: str, completeness: float = DEFAULT_COMPLETENESS, horizon_s: float = DEFAULT_HORIZON_S
) -> datetime | None:
    """``as_of`` minus the age at which ``kind``'s labels are ``completeness`` complete; None if unknown.

    ``joined`` is a ``join_labels`` frame; see ``completeness_age_s``.
    """
    age = (pd.Timestamp(as_of) - pd.to_datetime(joined["requested_at"], utc=True)).dt.total_seconds().to_numpy()
    delay = label_delay_s(joined["requested_at"], joined[known_at_column(kind)])
    waited = completeness_age_s(delay, age, completeness, horizon_s)
    return None if not np.isfinite(waited) else as_of - timedelta(seconds=waited)


def matured(joined: pd.DataFrame, watermark: datetime | None) -> pd.Series:
    """Rows whose cohort is past the watermark: the only ones realized metrics may use."""
    if watermark is None:
        return pd.Series(False, index=joined.index)
    return pd.to_datetime(joined["requested_at"], utc=True) <= pd.Timestamp(watermark)


def served_with_labels(log_root: Path, data_root: Path, start: datetime, end: datetime, as_of: datetime) -> pd.DataFrame:
    """Served prediction-log rows requested in ``[start, end)`` joined to labels known at ``as_of``."""
    from retrain.training_set import read_labels
    from serve_apps.prediction_log import read_prediction_log

    log = read_prediction_log(log_root, start, end).to_pandas()
    if log.empty:
        raise ValueError(f"no prediction-log rows under {log_root} requested between {start} and {end}")
    return join_labels(log[log["role"] == "served"], read_labels(data_root, as_of), as_of)
