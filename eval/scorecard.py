"""The backtest scorecard of one (version, window, segment) cell: every metric with its interval.

Pure numpy on the scored candidate rows of the cell (``ScoredRows``); the Ray job in
``eval.backtest`` groups rows and calls :func:`scorecard` per group. Point estimates reuse the
kernels of ``eval.metrics`` (ETA), ``eval.calibration`` (acceptance) and
``eval.ranking_metrics`` (ranking); intervals come from ``eval.confidence`` (which one per
metric is listed there). Rows whose label is not known by the backtest's as-of time are NaN and
left out of the metrics that need that label, so each metric carries its own ``n``.

Metric names (``family.metric``):

* ``eta.mae``, ``eta.rmse``, ``eta.bias`` (predicted − actual), ``eta.p90_abs_error``,
  ``eta.interval_coverage``: candidates with a known arrival.
* ``acceptance.auc``, ``acceptance.log_loss``, ``acceptance.brier``, ``acceptance.ece``:
  candidates with a known acceptance answer.
* ``ranking.top1_acceptance``, ``ranking.ndcg_at_{k}``: per job (see ``eval.ranking_metrics``).
* ``wait.predicted``, ``wait.realized``, ``wait.error``: per job with a realized wait, the
  expected wait (``retrain.ranking.expected_wait_minutes``) of the model's rank-1 candidate,
  the member's realized wait (request to arrival of the provider who went), and their
  difference. The model's pick and the historical pick can differ, so ``wait.error`` is the gap
  between what the model would promise and what members experienced, not a per-job residual.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from eval.calibration import brier_score, ece_bootstrap_ci, expected_calibration_error, log_loss, roc_auc
from eval.confidence import Interval, auc_ci, mean_ci, quantile_ci, rmse_ci, wilson_ci
from eval.metrics import bias, interval_coverage, mae, p90_abs_error, rmse
from eval.ranking_metrics import ndcg_at_k, top1_acceptance, top_ranked_rows

#: Columns of the scored-row table the scorecard reads.
SCORED_COLUMNS: tuple[str, ...] = (
    "job_id",
    "rank",
    "eta_minutes",
    "eta_low",
    "eta_high",
    "arrival_minutes",
    "p_accept",
    "accepted",
    "expected_wait_minutes",
    "realized_wait_minutes",
)


class ScoredRows(NamedTuple):
    """One cell's candidate rows as numpy arrays (NaN = label not known by the as-of time)."""

    job_id: np.ndarray
    rank: np.ndarray
    eta_minutes: np.ndarray
    eta_low: np.ndarray
    eta_high: np.ndarray
    arrival_minutes: np.ndarray
    p_accept: np.ndarray
    accepted: np.ndarray
    expected_wait_minutes: np.ndarray
    realized_wait_minutes: np.ndarray


class MetricValue(NamedTuple):
    metric: str
    value: float
    ci_low: float
    ci_high: float
    n: int


def _mean(x: np.ndarray) -> float:
    return float(np.mean(x)) if x.size else float("nan")


def _row(metric: str, value: float, interval: Interval, n: int) -> MetricValue:
    return MetricValue(metric, float(value), float(interval[0]), float(interval[1]), int(n))


def eta_scorecard(y: np.ndarray, eta: np.ndarray, low: np.ndarray, high: np.ndarray) -> list[MetricValue]:
    """MAE, RMSE, bias, P90 absolute error and interval coverage on rows with a known arrival."""
    n = y.size
    err = eta - y
    covered = (low <= y) & (y <= high)
    return [
        _row("eta.mae", mae(y, eta), mean_ci(np.abs(err)), n),
        _row("eta.rmse", rmse(y, eta), rmse_ci(err * err), n),
        _row("eta.bias", bias(y, eta), mean_ci(err), n),
        _row("eta.p90_abs_error", p90_abs_error(y, eta), quantile_ci(np.abs(err), 0.9) if n else (np.nan, np.nan), n),
        _row("eta.interval_coverage", interval_coverage(y, low, high), wilson_ci(float(covered.sum()), n), n),
    ]


def acceptance_scorecard(y: np.ndarray, p: np.ndarray, seed: int = 0) -> list[MetricValue]:
    """AUC, log loss, Brier and ECE on rows with a known acceptance answer."""
    n = y.size
    n_pos = int(y.sum())
    auc = roc_auc(y, p)
    eps = np.finfo(np.float64).eps
    q = np.clip(p, eps, 1.0 - eps)
    row_log_loss = -(y * np.log(q) + (1.0 - y) * np.log1p(-q))
    return [
        _row("acceptance.auc", auc, auc_ci(auc, n_pos, n - n_pos), n),
        _row("acceptance.log_loss", log_loss(y, p), mean_ci(row_log_loss), n),
        _row("acceptance.brier", brier_score(y, p), mean_ci((p - y) ** 2), n),
        _row("acceptance.ece", expected_calibration_error(y, p), ece_bootstrap_ci(y, p, seed=seed), n),
    ]


def ranking_scorecard(job_id: np.ndarray, rank: np.ndarray, accepted: np.ndarray, k: int) -> list[MetricValue]:
    """Top-1 acceptance and NDCG@k, averaged over the jobs where each is defined."""
    top1 = top1_acceptance(job_id, rank, accepted)
    top1 = top1[np.isfinite(top1)]
    ndcg = ndcg_at_k(job_id, rank, accepted, k)
    ndcg = ndcg[np.isfinite(ndcg)]
    return [
        _row("ranking.top1_acceptance", _mean(top1), wilson_ci(float(top1.sum()), top1.size), top1.size),
        _row(f"ranking.ndcg_at_{k}", _mean(ndcg), mean_ci(ndcg), ndcg.size),
    ]


def wait_scorecard(job_id: np.ndarray, rank: np.ndarray, expected_wait: np.ndarray, realized_wait: np.ndarray) -> list[MetricValue]:
    """Predicted (model's rank-1 expected wait) vs realized member wait, per job with a realized wait."""
    top = top_ranked_rows(job_id, rank)
    predicted, realized = expected_wait[top], realized_wait[top]
    known = np.isfinite(predicted) & np.isfinite(realized)
    predicted, realized = predicted[known], realized[known]
    gap = predicted - realized
    return [
        _row("wait.predicted", _mean(predicted), mean_ci(predicted), predicted.size),
        _row("wait.realized", _mean(realized), mean_ci(realized), realized.size),
        _row("wait.error", _mean(gap), mean_ci(gap), gap.size),
    ]


def scorecard(rows: ScoredRows, ndcg_k: int = 3, seed: int = 0) -> list[MetricValue]:
    """Every backtest metric of one cell, each on the rows where its labels are known."""
    arrived = np.isfinite(rows.arrival_minutes)
    answered = np.isfinite(rows.accepted)
    return (
        eta_scorecard(rows.arrival_minutes[arrived], rows.eta_minutes[arrived], rows.eta_low[arrived], rows.eta_high[arrived])
        + acceptance_scorecard(rows.accepted[answered], rows.p_accept[answered], seed)
        + ranking_scorecard(rows.job_id, rows.rank, rows.accepted, ndcg_k)
        + wait_scorecard(rows.job_id, rows.rank, rows.expected_wait_minutes, rows.realized_wait_minutes)
    )
