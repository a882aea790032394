"""The compiled exact KS p-values equal scipy's exact two-sample computation on many (n1, n2, D)."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats
from scipy.stats._stats_py import _attempt_exact_2kssamp

from eval.ks_exact import exact_pvalues


def _scipy_exact(n1: int, n2: int, d: float) -> float:
    success, _, prob = _attempt_exact_2kssamp(n1, n2, math.gcd(n1, n2), d, "two-sided")
    return float(prob) if success else float("nan")


def test_exact_pvalues_equal_scipy_on_random_lattice_points() -> None:
    """Sizes 1..800 (equal and unequal, one much larger than the other), D anywhere on the lattice and near the null."""
    rng = np.random.default_rng(21)
    n1 = rng.integers(1, 800, 1200)
    n2 = rng.integers(1, 800, 1200)
    n2[:150] = n1[:150]  # the m == n formula
    n2[150:300] = rng.integers(1, 12, 150)  # very unequal sizes
    lcm = n1 // np.gcd(n1, n2) * n2
    typical = np.sqrt((n1 + n2) / (n1 * n2)) * rng.uniform(0.2, 2.5, n1.size)
    d = np.where(np.arange(n1.size) % 2 == 0, rng.uniform(0, 1, n1.size), np.minimum(typical, 1.0))
    d = np.round(d * lcm) / lcm
    d[300:310] = 0.0
    d[310:320] = 1.0
    ours = exact_pvalues(n1, n2, d)
    expected = np.array([_scipy_exact(int(a), int(b), float(x)) for a, b, x in zip(n1, n2, d, strict=True)])
    usable = np.isfinite(expected) & (expected <= 1.0)
    assert np.array_equal(np.isnan(ours[usable]), np.zeros(usable.sum(), bool))
    np.testing.assert_allclose(ours[usable], expected[usable], rtol=0, atol=1e-12)
    # where scipy's exact attempt fails (a p-value a rounding step above 1, then the asymptotic
    # p-value, also 1 to 1e-9) ours fails too or says 1
    assert (np.isnan(ours[~usable]) | (ours[~usable] == 1.0)).all()


def test_exact_pvalues_equal_ks_2samp_at_large_sizes() -> None:
    rng = np.random.default_rng(22)
    for n1, n2, shift in ((10_000, 9_000, 0.0), (9_999, 10_000, 0.04), (6_000, 4_100, 0.02)):
        ref, cur = rng.standard_normal(n1), rng.standard_normal(n2) + shift
        expected = stats.ks_2samp(ref, cur)
        ours = exact_pvalues(np.array([n1]), np.array([n2]), np.array([expected.statistic]))[0]
        assert abs(ours - expected.pvalue) <= 1e-12
