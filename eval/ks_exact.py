"""Exact two-sided p-value of the two-sample Kolmogorov–Smirnov statistic, compiled, many tests per call.

``scipy.stats.ks_2samp(x, y)`` (default ``method="auto"``) uses the exact null distribution when
both samples have at most 10,000 values. With ``D = h / lcm(m, n)`` it is

* for ``m == n``: ``P(D_{n,n} >= h/n) = 2 Σ_k (−1)^k binom(2n, n − k·h) / binom(2n, n)``, evaluated
  Horner-style to avoid cancellation (scipy's ``_compute_prob_outside_square``), O(n);
* otherwise: the lattice-path count of Hodges (1958, "The significance probability of the Smirnov
  two-sample test", Arkiv för Matematik 3:469) through the band ``|x/m − y/n| < h/lcm``, in the
  numerically stable form that tracks one minus the probability directly (Viehmann 2021,
  "Numerically more stable computation of the p-values for the two-sample Kolmogorov–Smirnov
  test", arXiv:2102.08037; scipy's ``_compute_outer_prob_inside_method``). O(m × band), band ≈ 2hn/lcm.

This module computes the same recursions as scipy, in a different order for the band: scipy
fills the lattice column by column, and within a column each cell needs the one below it, so its
inner loop is a chain of dependent divisions (about 20 cycles a cell). Here the band is filled
anti-diagonal by anti-diagonal (``x + y = d``): a cell needs only the previous diagonal, and
``1/d`` is shared by the diagonal, so each diagonal is one vectorised loop (about 0.3 ns a cell
on this machine against scipy's ~5 ns). Same cells, same recursion, one multiplication by ``1/d``
in place of a division: the p-values agree with scipy's to rounding (``tests/unit/test_ks_exact.py``
checks 1e-12 on a thousand ``(m, n, h)``). Each distinct ``(m, n, h)`` of a batch is computed once.
"""

from __future__ import annotations

import numba
import numpy as np

#: How far above 1 the band recursion's rounding can put a p-value of 1 (a few ulps; see exact_pvalues).
_BAND_ROUNDING = 1e-12
#: Anti-diagonals with fewer cells than this are filled by a scalar loop.
_SHORT_DIAGONAL = 16


@numba.njit(cache=True, nogil=True)
def _prob_outside_square(n: int, h: int) -> float:
    """``P(D_{n,n} >= h/n)``: scipy's ``_compute_prob_outside_square`` step for step."""
    p = 0.0
    k = n // h
    while k >= 0:
        p1 = 1.0
        for j in range(h):
            p1 = (n - k * h - j) * p1 / (n + k * h + j + 1)
        p = p1 * (1.0 - p)
        k -= 1
    return 2.0 * p


@numba.njit(cache=True, nogil=True)
def _antidiagonal(out: np.ndarray, left: np.ndarray, below: np.ndarray, first: float, d: float, reciprocal: float) -> None:
    """One anti-diagonal of the path recursion: ``A(i, j) = (i·A(i−1, j) + j·A(i, j−1)) / d`` for ``i + j = d``.

    Its cells depend only on the previous anti-diagonal, so this loop has no carried dependency and
    vectorises (kept a separate function with array arguments so numba's LLVM does vectorise it).
    """
    for k in range(out.size):
        i = first + k
        out[k] = (i * left[k] + (d - i) * below[k]) * reciprocal


@numba.njit(cache=True, nogil=True)
def _prob_outside_band(m: int, n: int, g: int, h: int) -> float:
    """Share of lattice paths (0,0)→(m,n) that leave the band ``|n·x/g − m·y/g| < h`` (Viehmann's recursion).

    ``A(x, y)`` is the probability that a uniformly random path to ``(x, y)`` has left the band:
    1 outside it, ``A(0, 0) = 0``, and the recursion of :func:`_antidiagonal` inside; the answer
    is ``A(m, n)``. scipy fills the band column by column (its sliding window stores the cells
    inside the band, the ones outside read as 1); this fills it anti-diagonal by anti-diagonal,
    the same cells with the same recursion, so each diagonal is one vector loop.
    ``line[i + 1]`` holds ``A(i, d − i)``; ``line[0]`` stands for ``i = −1`` (weight 0).
    """
    if m < n:
        m, n = n, m
    mg = m // g
    ng = n // g
    step = mg + ng
    previous = np.ones(m + 3)
    line = np.ones(m + 3)
    previous[1] = 0.0  # A(0, 0)
    for d in range(1, m + n + 1):
        # inside: |ng·i − mg·(d − i)| < h, 0 <= i <= m, 0 <= d − i <= n
        lo = max((mg * d - h) // step + 1, d - n, 0)
        hi = min(-(-(mg * d + h) // step) - 1, m, d)
        if hi < lo:  # every path leaves the band here
            return 1.0
        if hi - lo < _SHORT_DIAGONAL:  # too short to pay for a vector loop's set-up
            reciprocal = 1.0 / d
            for i in range(lo, hi + 1):
                line[i + 1] = (i * previous[i] + (d - i) * previous[i + 1]) * reciprocal
        else:
            _antidiagonal(line[lo + 1 : hi + 2], previous[lo : hi + 1], previous[lo + 1 : hi + 2], float(lo), float(d), 1.0 / d)
        line[lo] = 1.0  # the cells just outside this diagonal's band, which the next one reads
        line[hi + 2] = 1.0
        previous, line = line, previous
    return previous[m + 1]


@numba.njit(cache=True, nogil=True)
def _exact_batch(n1: np.ndarray, n2: np.ndarray, h: np.ndarray) -> np.ndarray:
    out = np.empty(n1.size)
    for k in range(n1.size):
        a, b, hk = n1[k], n2[k], h[k]
        if hk == 0:
            out[k] = 1.0
        elif a == b:
            out[k] = _prob_outside_square(a, hk)
        else:
            x, y = a, b
            while y:
                x, y = y, x % y
            out[k] = _prob_outside_band(a, b, x, hk)
    return out


def exact_pvalues(n1: np.ndarray, n2: np.ndarray, statistic: np.ndarray) -> np.ndarray:
    """Exact two-sided KS p-values for tests with sample sizes ``n1``, ``n2`` and statistic ``D``.

    As scipy, ``D`` is first snapped to the lattice, ``h = round(D · lcm(n1, n2))``. A result
    outside [0, 1] means a failed exact computation to scipy, which then falls back to the
    asymptotic distribution: such results come back ``nan`` so the caller does the same. The one
    exception is the band recursion's rounding, which can land a p-value of 1 a few ulps above it
    where scipy's lands on 1: those are 1 (scipy's own near-1 failures are reproduced bit for bit by
    the ``m == n`` branch, which keeps scipy's arithmetic).
    """
    n1 = np.asarray(n1, dtype=np.int64)
    n2 = np.asarray(n2, dtype=np.int64)
    if n1.size == 0:
        return np.empty(0)
    lcm = n1 // np.gcd(n1, n2) * n2
    h = np.round(np.asarray(statistic, dtype=np.float64) * lcm).astype(np.int64)
    # The probability is symmetric in (n1, n2): order each pair so both orders are computed once.
    tests, inverse = np.unique(np.stack([np.maximum(n1, n2), np.minimum(n1, n2), h]), axis=1, return_inverse=True)
    prob = _exact_batch(tests[0].copy(), tests[1].copy(), tests[2].copy())[inverse.ravel()]
    prob = np.where((n1 != n2) & (prob > 1.0) & (prob <= 1.0 + _BAND_ROUNDING), 1.0, prob)
    return np.where((prob >= 0.0) & (prob <= 1.0), prob, np.nan)
