"""Ranking policy: order a job's candidate providers by the member's expected wait.

Offering a job to a provider who declines costs time: the offer has to time out or be declined,
then the dispatcher offers the next candidate. To first order, if candidate ``i`` has ETA
``ηᵢ`` and accepts with probability ``pᵢ``, and a decline costs a re-offer delay ``D`` after
which a comparable provider is found, the member's expected wait is::

    score_i = pᵢ·ηᵢ + (1 − pᵢ)·(D + η_next)  ≈  ηᵢ + (1 − pᵢ)·D      (taking η_next ≈ ηᵢ)

Candidates are ranked by ascending ``score`` (rank 1 is offered first). The approximation
keeps the score strictly increasing in ETA and strictly decreasing in ``p_accept`` (for
``D > 0``), so a candidate that is both closer and likelier to accept is never ranked below
one that is neither; the exact form is not monotone in ETA when ``p`` is small. ``D`` is a
policy parameter: estimate it from ``dispatch/events`` as the mean time from offer to decline
or timeout plus the time to the next offer, plus the typical ETA gap to the next candidate.
Ties break on lower ETA, then higher ``p_accept``, then input order, so ranks are deterministic.
Candidates whose score is unknown (NaN) rank last.

Everything here is a pure function of numpy arrays, except :class:`DispatchBundle`, which
bundles the two fitted models with the policy so serving loads one registry version.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from retrain.acceptance_model import AcceptanceModel
from retrain.eta_model import EtaModel

#: Minutes a decline costs before the next offer lands; a placeholder until estimated from events.
DEFAULT_REOFFER_DELAY_MINUTES = 8.0

_POLICY_FILE = "ranking_policy.json"


@dataclass(frozen=True)
class RankingPolicy:
    """Parameters of the expected-wait ranking; versioned with the models it combines."""

    reoffer_delay_minutes: float = DEFAULT_REOFFER_DELAY_MINUTES

    def __post_init__(self) -> None:
        if not self.reoffer_delay_minutes >= 0:
            raise ValueError(f"reoffer_delay_minutes must be ≥ 0, got {self.reoffer_delay_minutes}")

    def save(self, directory: Path) -> list[Path]:
        path = Path(directory) / _POLICY_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), sort_keys=True))
        return [path]

    @classmethod
    def load(cls, directory: Path) -> RankingPolicy:
        return cls(**json.loads((Path(directory) / _POLICY_FILE).read_text()))


def expected_wait_minutes(
    eta_minutes: np.ndarray, p_accept: np.ndarray, reoffer_delay_minutes: float = DEFAULT_REOFFER_DELAY_MINUTES
) -> np.ndarray:
    """``η + (1 − p)·D``: ETA plus the expected delay a decline adds (see module docstring)."""
    eta = np.asarray(eta_minutes, dtype=np.float64)
    p = np.asarray(p_accept, dtype=np.float64)
    return eta + (1.0 - p) * reoffer_delay_minutes


def rank_within_jobs(score: np.ndarray, *tiebreaks: np.ndarray, job_ids: np.ndarray | None = None) -> np.ndarray:
    """Ranks ``1..n_j`` of ascending ``score`` within each job (all rows one job if ``job_ids`` is None).

    ``tiebreaks`` are further ascending sort keys, most important first; remaining ties keep
    input order (``np.lexsort`` is stable). NaN scores sort last.
    """
    score = np.asarray(score, dtype=np.float64)
    n = score.size
    if n == 0:
        return np.empty(0, dtype=np.int64)
    jobs = np.zeros(n, dtype=np.int64) if job_ids is None else np.unique(np.asarray(job_ids), return_inverse=True)[1]
    keys = [np.asarray(t, dtype=np.float64) for t in reversed(tiebreaks)]
    order = np.lexsort((*keys, score, jobs))
    sorted_jobs = jobs[order]
    starts = np.flatnonzero(np.r_[True, sorted_jobs[1:] != sorted_jobs[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    ranks = np.empty(n, dtype=np.int64)
    ranks[order] = np.arange(n) - group_start + 1
    return ranks


def rank_candidates(
    eta_minutes: np.ndarray,
    p_accept: np.ndarray,
    job_ids: np.ndarray | None = None,
    policy: RankingPolicy = RankingPolicy(),
) -> np.ndarray:
    """Expected-wait ranks per job: 1 = offer first."""
    eta = np.asarray(eta_minutes, dtype=np.float64)
    p = np.asarray(p_accept, dtype=np.float64)
    score = expected_wait_minutes(eta, p, policy.reoffer_delay_minutes)
    return rank_within_jobs(score, eta, -p, job_ids=job_ids)


def rank_by_proxy(
    eta_minutes: np.ndarray,
    p_accept: np.ndarray,
    distance_km: np.ndarray | None = None,
    job_ids: np.ndarray | None = None,
) -> np.ndarray:
    """Fallback ranking when the online features are unavailable.

    Orders by straight-line distance when the request carried it (the one candidate-specific
    signal that needs no feature store), else by the fallback ETA; ties go to the likelier
    acceptor. The fallback ETA comes from a cell × hour table and is the same for every
    candidate of a job, so without distance the acceptance prior decides.
    """
    p = np.asarray(p_accept, dtype=np.float64)
    eta = np.asarray(eta_minutes, dtype=np.float64)
    if distance_km is None:
        return rank_within_jobs(eta, -p, job_ids=job_ids)
    return rank_within_jobs(np.asarray(distance_km, dtype=np.float64), -p, eta, job_ids=job_ids)


class DispatchScores(NamedTuple):
    """Everything the router returns per candidate."""

    eta_minutes: np.ndarray
    eta_low: np.ndarray
    eta_high: np.ndarray
    p_accept: np.ndarray
    expected_wait_minutes: np.ndarray
    rank: np.ndarray


@dataclass(frozen=True)
class DispatchBundle:
    """ETA model + acceptance model + ranking policy, served and promoted as one version.

    The ranking depends on both models jointly (a recalibrated acceptance model changes how
    much ETA a decline is worth), so they move through champion/challenger together; the
    registry's ``dispatch`` family stores the policy and references the component versions.
    """

    eta: EtaModel
    acceptance: AcceptanceModel
    policy: RankingPolicy

    def score_array(self, X: np.ndarray, job_ids: np.ndarray | None = None) -> DispatchScores:
        """Score and rank candidate rows (``model_features()`` order); one job if ``job_ids`` is None."""
        eta = self.eta.predict_array(X)
        p = self.acceptance.predict_array(X)
        wait = expected_wait_minutes(eta.eta_minutes, p, self.policy.reoffer_delay_minutes)
        ranks = rank_candidates(eta.eta_minutes, p, job_ids, self.policy)
        return DispatchScores(eta.eta_minutes, eta.eta_low, eta.eta_high, p, wait, ranks)
