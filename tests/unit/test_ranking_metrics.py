"""Top-1 acceptance and NDCG@k: hand-computed cases, unlabelled candidates, job order."""

from __future__ import annotations

import numpy as np
import pytest

from eval.ranking_metrics import job_order, ndcg_at_k, top1_acceptance, top_ranked_rows

NAN = np.nan


def test_top1_is_the_label_of_each_jobs_rank_one_candidate() -> None:
    jobs = np.array(["b", "a", "b", "a", "c"])
    rank = np.array([2, 1, 1, 2, 1])
    accepted = np.array([1.0, 0.0, 0.0, 1.0, NAN])
    # jobs sorted a, b, c: a's rank 1 declined, b's rank 1 declined, c's rank 1 never offered
    np.testing.assert_array_equal(top_ranked_rows(jobs, rank), [1, 2, 4])
    np.testing.assert_array_equal(top1_acceptance(jobs, rank, accepted), [0.0, 0.0, NAN])


def test_ndcg_hand_case_relevant_candidate_second() -> None:
    # one job, the only acceptor ranked 2nd of 3: DCG = 1/log2(3), IDCG = 1
    out = ndcg_at_k(np.array(["j"] * 3), np.array([1, 2, 3]), np.array([0.0, 1.0, 0.0]), k=3)
    assert out == pytest.approx([1.0 / np.log2(3.0)], rel=1e-12)


def test_ndcg_graded_two_relevant_and_cutoff() -> None:
    # relevance in model order [0, 2, 1]: DCG@2 = 2/log2(3); ideal [2, 1]: 2 + 1/log2(3)
    rel = np.array([0.0, 2.0, 1.0])
    out = ndcg_at_k(np.zeros(3), np.array([1, 2, 3]), rel, k=2)
    assert out == pytest.approx([(2 / np.log2(3)) / (2 + 1 / np.log2(3))], rel=1e-12)
    # with k = 1 only the first position counts: DCG 0, IDCG 2
    assert ndcg_at_k(np.zeros(3), np.array([1, 2, 3]), rel, k=1) == pytest.approx([0.0])


def test_ndcg_uses_only_labelled_candidates_and_is_nan_without_a_positive() -> None:
    jobs = np.array(["a", "a", "a", "b", "b"])
    rank = np.array([1, 2, 3, 1, 2])
    # job a: rank 1 never offered, rank 2 accepted -> first labelled position -> NDCG 1
    # job b: both declined -> IDCG 0 -> NaN
    out = ndcg_at_k(jobs, rank, np.array([NAN, 1.0, 0.0, 0.0, 0.0]), k=3)
    np.testing.assert_array_equal(out, [1.0, NAN])


def test_perfect_and_reversed_orders_bound_ndcg() -> None:
    rel = np.array([1.0, 0.0, 0.0, 0.0])
    assert ndcg_at_k(np.zeros(4), np.array([1, 2, 3, 4]), rel, k=4) == pytest.approx([1.0])
    assert ndcg_at_k(np.zeros(4), np.array([4, 3, 2, 1]), rel, k=4) == pytest.approx([1 / np.log2(5)])


def test_job_layout_positions_restart_per_job_and_empty_input() -> None:
    layout = job_order(np.array([2, 1, 2, 1, 1]), np.array([5.0, 3.0, 4.0, 1.0, 2.0]))
    assert layout.n_jobs == 2
    np.testing.assert_array_equal(layout.order, [3, 4, 1, 2, 0])
    np.testing.assert_array_equal(layout.position, [0, 1, 2, 0, 1])
    assert job_order(np.array([]), np.array([])).n_jobs == 0
    assert ndcg_at_k(np.array([]), np.array([]), np.array([]), k=3).size == 0
    with pytest.raises(ValueError, match="k must be"):
        ndcg_at_k(np.zeros(1), np.ones(1), np.ones(1), k=0)
