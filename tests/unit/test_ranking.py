"""The expected-wait ranking policy: hand cases and the dominance property."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrain.ranking import (
    RankingPolicy,
    expected_wait_minutes,
    rank_by_proxy,
    rank_candidates,
    rank_within_jobs,
)


def test_a_likely_acceptor_can_outrank_a_closer_unlikely_one() -> None:
    eta = np.array([10.0, 12.0])
    p = np.array([0.5, 1.0])
    # scores 10 + 0.5·8 = 14 and 12 + 0 = 12
    np.testing.assert_allclose(expected_wait_minutes(eta, p, 8.0), [14.0, 12.0])
    assert list(rank_candidates(eta, p, policy=RankingPolicy(8.0))) == [2, 1]
    assert list(rank_candidates(eta, p, policy=RankingPolicy(0.0))) == [1, 2]


def test_ranks_are_one_to_n_within_each_job() -> None:
    jobs = np.array(["b", "a", "b", "a", "a", "c"])
    ranks = rank_candidates(np.array([5.0, 9.0, 3.0, 7.0, 8.0, 1.0]), np.ones(6), jobs)
    assert list(ranks) == [2, 3, 1, 1, 2, 1]


def test_ties_break_on_eta_then_acceptance_then_input_order() -> None:
    # equal scores of 12: (12, p=1) and (8, p=0.5) → the lower ETA first
    assert list(rank_candidates(np.array([12.0, 8.0]), np.array([1.0, 0.5]))) == [2, 1]
    assert list(rank_within_jobs(np.array([1.0, 1.0, 1.0]))) == [1, 2, 3]


def test_unknown_scores_rank_last() -> None:
    ranks = rank_candidates(np.array([np.nan, 20.0, 5.0]), np.array([0.9, 0.9, np.nan]))
    assert list(ranks) == [3, 1, 2]  # both unknown rows last, the one with a known ETA first


def test_fallback_ranks_by_distance_when_given() -> None:
    eta = np.full(3, 30.0)
    p = np.array([0.2, 0.9, 0.5])
    assert list(rank_by_proxy(eta, p, np.array([4.0, 9.0, 1.0]))) == [2, 3, 1]
    assert list(rank_by_proxy(eta, p)) == [3, 1, 2]


def test_negative_reoffer_delay_is_rejected() -> None:
    with pytest.raises(ValueError, match="reoffer"):
        RankingPolicy(-1.0)


@settings(max_examples=200, deadline=None)
@given(
    etas=st.lists(st.floats(0, 120, allow_nan=False), min_size=2, max_size=12),
    seed=st.integers(0, 2**32 - 1),
    delay=st.floats(0.1, 30),
)
def test_lower_eta_and_higher_acceptance_never_rank_worse(etas: list[float], seed: int, delay: float) -> None:
    rng = np.random.default_rng(seed)
    eta = np.asarray(etas)
    p = rng.random(eta.size)
    jobs = rng.integers(0, 3, eta.size)
    ranks = rank_candidates(eta, p, jobs, RankingPolicy(delay))
    for i in range(eta.size):
        for j in range(eta.size):
            if jobs[i] != jobs[j] or i == j:
                continue
            if eta[i] <= eta[j] and p[i] >= p[j] and (eta[i] < eta[j] or p[i] > p[j]):
                assert ranks[i] < ranks[j]
    for job in np.unique(jobs):
        assert sorted(ranks[jobs == job]) == list(range(1, int(np.sum(jobs == job)) + 1))
