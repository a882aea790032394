"""The anytime-valid challenger test: error rates under optional stopping at every job."""

from __future__ import annotations

import numpy as np
import pytest

from eval.sequential import (
    CONTINUE,
    PROMOTE,
    REJECT,
    confidence_sequences,
    decision_path,
    mixture_half_width,
    mixture_rho,
    sequential_test,
)

ALPHA = 0.05
MARGINS = np.array([0.25, 0.01])  # ETA minutes, acceptance nats
MIN_SAMPLES, TARGET_N, JOBS = 100, 1000, 4000


def loss_differences(rng: np.random.Generator, n: int, *, eta_scale: float = 1.0, eta_bias: float = 0.0) -> np.ndarray:
    """Per-job (challenger − champion) ETA absolute error and acceptance log loss, jobs × 2.

    Both models share part of their error (they learn from the same data); heavy-tailed ETA
    errors (Student t, 4 df), 20 % of jobs without a matured arrival and 30 % without an
    acceptance label (NaN). With the defaults the two models are exchangeable: no difference.
    """
    common = rng.standard_t(4, n) * 2.0
    champion_error = common + rng.standard_t(4, n) * 2.0
    challenger_error = (common + rng.standard_t(4, n) * 2.0) * eta_scale + eta_bias
    eta = np.abs(challenger_error) - np.abs(champion_error)
    p_true = rng.uniform(0.2, 0.9, n)
    accepted = rng.random(n) < p_true
    shared = rng.normal(0.0, 0.1, n)
    champion_p = np.clip(p_true + shared + rng.normal(0.0, 0.02, n), 0.01, 0.99)
    challenger_p = np.clip(p_true + shared + rng.normal(0.0, 0.02, n), 0.01, 0.99)

    def log_loss(p: np.ndarray) -> np.ndarray:
        return -(accepted * np.log(p) + (~accepted) * np.log1p(-p))

    acceptance = log_loss(challenger_p) - log_loss(champion_p)
    eta[rng.random(n) < 0.2] = np.nan
    acceptance[rng.random(n) < 0.3] = np.nan
    return np.column_stack([eta, acceptance])


def first_decision(codes: np.ndarray) -> tuple[int, int]:
    """(code, job index) of the first non-continue decision: stopping at the first chance."""
    acted = np.flatnonzero(codes != CONTINUE)
    return (int(codes[acted[0]]), int(acted[0])) if acted.size else (CONTINUE, codes.size)


def test_half_width_is_the_normal_mixture_boundary_by_hand() -> None:
    rho = mixture_rho(1000, 0.05)
    # ρ₀ = t/(2 log(1/α) + log(1 + 2 log(1/α))) with 2 log 20 = 5.991: 1000 / (5.991 + 1.944).
    assert rho == pytest.approx(1000 / (2 * np.log(20) + np.log(1 + 2 * np.log(20))))
    assert rho == pytest.approx(126.0, abs=0.1)
    n, sd = 400.0, 3.0
    expected = sd / n * np.sqrt((n + rho) * np.log((n + rho) / (rho * 0.05**2)))
    assert mixture_half_width(n, sd, 0.05, rho) == pytest.approx(expected)
    # The same boundary in Waudby-Smith et al.'s parametrisation (ρ² = 1/ρ₀).
    rho2 = 1 / rho
    ws = sd * np.sqrt(2 * (n * rho2 + 1) / (n**2 * rho2) * np.log(np.sqrt(n * rho2 + 1) / 0.05))
    assert mixture_half_width(n, sd, 0.05, rho) == pytest.approx(ws)


def test_running_moments_and_p_value_match_direct_computation() -> None:
    rng = np.random.default_rng(3)
    d = rng.normal(0.3, 2.0, 500)
    d[rng.random(500) < 0.1] = np.nan
    path = confidence_sequences(d, 0.05, 200)
    seen = d[:300][~np.isnan(d[:300])]
    assert path.count[299, 0] == seen.size
    assert path.mean[299, 0] == pytest.approx(seen.mean())
    half = mixture_half_width(seen.size, seen.std(ddof=1), 0.05, mixture_rho(200, 0.05))
    assert path.upper[299, 0] == pytest.approx(seen.mean() + half)
    # The CS excludes 0 exactly when the mixture martingale for δ = 0 reaches 1/α, so the
    # always-valid p-value is at most α from the first exclusion on, and never increases.
    excludes = (path.lower[:, 0] > 0) | (path.upper[:, 0] < 0)
    assert excludes.any()
    first = int(np.argmax(excludes))
    assert path.p_value[first, 0] <= 0.05 + 1e-12
    assert path.p_value[first - 1, 0] > 0.05 - 1e-9 or excludes[first - 1]
    assert np.all(np.diff(path.p_value[:, 0]) <= 1e-15)


def test_false_promotion_rate_under_no_difference_stays_below_alpha_with_a_look_after_every_job() -> None:
    repetitions = 400
    promoted = 0
    for seed in range(repetitions):
        codes, _ = decision_path(loss_differences(np.random.default_rng(seed), JOBS), MARGINS,
                                 alpha=ALPHA, min_samples=MIN_SAMPLES, target_n=TARGET_N)
        promoted += bool(np.any(codes == PROMOTE))  # promoted at any look, not only the first
    assert promoted / repetitions < ALPHA
    # Stated here so a regression that makes the test far more conservative is noticed too.
    assert promoted / repetitions < 0.02


def test_a_real_improvement_is_promoted_within_a_bounded_number_of_jobs() -> None:
    # 20 % smaller ETA errors: about 0.58 minutes less absolute error per job, acceptance unchanged.
    for seed in range(30):
        codes, path = decision_path(loss_differences(np.random.default_rng(1000 + seed), JOBS, eta_scale=0.8), MARGINS,
                                    alpha=ALPHA, min_samples=MIN_SAMPLES, target_n=TARGET_N)
        code, at = first_decision(codes)
        assert code == PROMOTE, f"seed {seed}: first decision {code} at job {at}"
        assert at < 3500
        assert path.upper[at, 0] < 0.0 and path.upper[at, 1] < MARGINS[1]


def test_a_worse_challenger_is_rejected_and_never_promoted() -> None:
    # A +4 minute ETA bias: about 1.8 minutes more absolute error per job.
    for seed in range(30):
        codes, _ = decision_path(loss_differences(np.random.default_rng(2000 + seed), JOBS, eta_bias=4.0), MARGINS,
                                 alpha=ALPHA, min_samples=MIN_SAMPLES, target_n=TARGET_N)
        code, at = first_decision(codes)
        assert code == REJECT and at < 1000, f"seed {seed}: first decision {code} at job {at}"
        assert not np.any(codes == PROMOTE)


def test_no_decision_before_min_samples_and_evidence_is_reported() -> None:
    d = loss_differences(np.random.default_rng(5), 5000, eta_bias=4.0)
    early = sequential_test({"eta_abs_error": d[:90, 0], "accept_log_loss": d[:90, 1]}, {"eta_abs_error": 0.25, "accept_log_loss": 0.01},
                            alpha=ALPHA, min_samples=MIN_SAMPLES, target_n=TARGET_N)
    assert early.decision == "continue"
    assert {m.verdict for m in early.metrics} == {"insufficient"}
    late = sequential_test({"eta_abs_error": d[:, 0], "accept_log_loss": d[:, 1]}, {"eta_abs_error": 0.25, "accept_log_loss": 0.01},
                           alpha=ALPHA, min_samples=MIN_SAMPLES, target_n=TARGET_N)
    assert late.decision == "reject"
    eta = late.metrics[0]
    assert eta.verdict == "worse" and eta.lower > 0.25 and eta.p_value < ALPHA / 2
    evidence = late.evidence()
    assert evidence["test"] == "reject" and evidence["eta_abs_error_verdict"] == "worse"
    assert "eta_abs_error worse" in late.reason


def test_identical_models_never_decide() -> None:
    zeros = np.zeros(3000)
    result = sequential_test({"eta_abs_error": zeros, "accept_log_loss": zeros}, {"eta_abs_error": 0.25, "accept_log_loss": 0.01},
                             alpha=ALPHA, min_samples=MIN_SAMPLES, target_n=TARGET_N)
    # Zero variance: the sequence is the point 0, non-inferior on both, better on neither.
    assert result.decision == "continue"
    assert [m.verdict for m in result.metrics] == ["non_inferior", "non_inferior"]


def test_empty_and_misaligned_streams() -> None:
    margins = {"eta_abs_error": 0.25, "accept_log_loss": 0.01}
    empty = sequential_test({"eta_abs_error": [], "accept_log_loss": []}, margins, alpha=ALPHA, min_samples=10, target_n=100)
    assert empty.decision == "continue" and empty.metrics[0].n == 0
    with pytest.raises(ValueError, match="aligned"):
        sequential_test({"eta_abs_error": [1.0], "accept_log_loss": []}, margins, alpha=ALPHA, min_samples=10, target_n=100)
    with pytest.raises(ValueError, match="margin"):
        sequential_test({"eta_abs_error": [1.0]}, margins, alpha=ALPHA, min_samples=10, target_n=100)
