"""Ranking quality per job: top-1 acceptance and NDCG@k, on the candidates whose outcome is known.

Rows are candidates: a job id, the rank the model gave (1 = offer first, as
``retrain.ranking.rank_candidates`` returns) and a relevance, here the acceptance label.
History only labels the candidates dispatch actually offered (nearest first, until one accepted),
so relevance is NaN for the rest. Both metrics are therefore *off-policy* estimates on the
logged offers, and say how the model orders the candidates we have outcomes for, not what
would have happened had it dispatched (which needs counterfactual evaluation):

* **top-1 acceptance** per job is the relevance of the model's rank-1 candidate; jobs whose
  rank-1 candidate was never offered are left out (NaN).
* **NDCG@k** per job orders the job's *labelled* candidates by the model's rank and computes
  ``DCG@k / IDCG@k`` with linear gain and ``1/log₂(i+1)`` discount at 1-based position ``i``
  (Järvelin & Kekäläinen 2002, "Cumulated gain-based evaluation of IR techniques", ACM TOIS).
  Jobs with no relevant labelled candidate have IDCG 0 and are NaN (LightGBM scores them 1,
  which would reward a model for jobs nobody accepted).

Per-job arrays come back in the order of :func:`job_order` (jobs sorted by id), so callers can
average them with ``np.nanmean`` or attach them to job-level columns.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class JobLayout(NamedTuple):
    """Rows sorted by (job, key): ``order`` indexes the input, ``starts`` the first row of each job."""

    order: np.ndarray
    starts: np.ndarray
    position: np.ndarray  # 0-based position of each sorted row within its job
    n_jobs: int


def job_order(job_ids: np.ndarray, key: np.ndarray) -> JobLayout:
    """Sort rows by job, then ascending ``key`` within a job (stable, so ties keep input order)."""
    jobs = np.unique(np.asarray(job_ids), return_inverse=True)[1].ravel()
    n = jobs.size
    if n == 0:
        empty = np.empty(0, dtype=np.int64)
        return JobLayout(empty, empty, empty, 0)
    order = np.lexsort((np.asarray(key, dtype=np.float64), jobs))
    sorted_jobs = jobs[order]
    starts = np.flatnonzero(np.r_[True, sorted_jobs[1:] != sorted_jobs[:-1]])
    position = np.arange(n) - np.repeat(starts, np.diff(np.r_[starts, n]))
    return JobLayout(order, starts, position, starts.size)


def top_ranked_rows(job_ids: np.ndarray, rank: np.ndarray) -> np.ndarray:
    """Index of each job's best-ranked row (lowest ``rank``), jobs in :func:`job_order` order."""
    layout = job_order(job_ids, rank)
    return layout.order[layout.starts]


def top1_acceptance(job_ids: np.ndarray, rank: np.ndarray, accepted: np.ndarray) -> np.ndarray:
    """Per job, the acceptance label of its rank-1 candidate (NaN if that candidate has no label)."""
    return np.asarray(accepted, dtype=np.float64)[top_ranked_rows(job_ids, rank)]


def _dcg(relevance_sorted: np.ndarray, layout: JobLayout, k: int) -> np.ndarray:
    discount = np.where(layout.position < k, 1.0 / np.log2(layout.position + 2.0), 0.0)
    return np.add.reduceat(relevance_sorted * discount, layout.starts)


def ndcg_at_k(job_ids: np.ndarray, rank: np.ndarray, relevance: np.ndarray, k: int) -> np.ndarray:
    """Per-job NDCG@k over the labelled candidates (see module docstring); NaN where IDCG is 0.

    Returns one value per job that has at least one labelled candidate, in :func:`job_order`
    order of those jobs.
    """
    if k < 1:
        raise ValueError(f"k must be ≥ 1, got {k}")
    rel = np.asarray(relevance, dtype=np.float64)
    known = np.isfinite(rel)
    jobs, ranks, rel = np.asarray(job_ids)[known], np.asarray(rank, dtype=np.float64)[known], rel[known]
    if rel.size == 0:
        return np.empty(0)
    by_model = job_order(jobs, ranks)
    by_ideal = job_order(jobs, -rel)
    dcg = _dcg(rel[by_model.order], by_model, k)
    idcg = _dcg(rel[by_ideal.order], by_ideal, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(idcg > 0, dcg / idcg, np.nan)
