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

This module computes the same recursions as scipy, with one change of arithmetic in the band
recursion: scipy's step ``v ← (A·i + v·j) / (i + j)`` puts a division on the loop-carried
dependency (about 20 cycles a step); here ``v ← A·(i·r) + v·(j·r)`` with ``r = 1/(i + j)`` taken
from a table, and four steps are composed into one affine map ``v ← C + W·v`` so the carried
chain is one multiply and one add per four steps. All terms are non-negative (no cancellation),
so the results agree with scipy to rounding (``tests/unit/test_ks_exact.py`` checks 1e-12 on
thousands of ``(m, n, h)``), and each ``(m, n, h)`` of a batch is computed once.
"""

from __future__ import annotations

import numba
import numpy as np

#: How far above 1 the band recursion's rounding can put a p-value of 1 (a few ulps; see exact_pvalues).
_BAND_ROUNDING = 1e-12


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
def _prob_outside_band(m: int, n: int, g: int, h: int, reciprocal: np.ndarray) -> float:
    """Share of lattice paths (0,0)→(m,n) leaving ``|n·x/g − m·y/g| < h`` (Viehmann's inside recursion).

    ``reciprocal[k] = 1/k`` for ``k <= m + n``. Column ``x = i`` of the path-count matrix is kept
    only inside the band, ``[minj, maxj)``, in a sliding window, exactly as scipy does.
    """
    if m < n:
        m, n = n, m
    mg = m // g
    ng = n // g
    minj = 0
    maxj = min(-(-h // mg), n + 1)
    curlen = maxj - minj
    window = np.ones(min(2 * maxj + 2, n + 1))
    window[minj:maxj] = 0.0
    for i in range(1, m + 1):
        lastminj = minj
        lastlen = curlen
        minj = min(max((ng * i - h) // mg + 1, 0), n)
        maxj = min(-(-(ng * i + h) // mg), n + 1)
        if maxj <= minj:
            return 1.0
        val = 0.0 if minj == 0 else 1.0
        shift = minj - lastminj  # >= 0: reads run ahead of writes, so the column updates in place
        length = maxj - minj
        jj = 0
        fi = float(i)
        while jj + 4 <= length:
            # Four steps of v_j = c_j + w_j·v_{j-1} at once: the carried chain is one multiply-add
            # per four steps; the c's and w's of the block are combined off the chain.
            j = jj + minj
            fj = float(j)
            r0, r1, r2, r3 = reciprocal[i + j], reciprocal[i + j + 1], reciprocal[i + j + 2], reciprocal[i + j + 3]
            base = jj + shift
            c0 = window[base] * (fi * r0)
            c1 = window[base + 1] * (fi * r1)
            c2 = window[base + 2] * (fi * r2)
            c3 = window[base + 3] * (fi * r3)
            w0 = fj * r0
            w1 = (fj + 1.0) * r1
            w2 = (fj + 2.0) * r2
            w3 = (fj + 3.0) * r3
            c01 = c1 + w1 * c0
            w01 = w1 * w0
            c012 = c2 + w2 * c01
            w012 = w2 * w01
            c0123 = c3 + w3 * c012
            w0123 = w3 * w012
            window[jj] = c0 + w0 * val
            window[jj + 1] = c01 + w01 * val
            window[jj + 2] = c012 + w012 * val
            val = c0123 + w0123 * val
            window[jj + 3] = val
            jj += 4
        while jj < length:
            j = jj + minj
            r = reciprocal[i + j]
            val = window[jj + shift] * (i * r) + val * (j * r)
            window[jj] = val
            jj += 1
        curlen = maxj - minj
        if lastlen > curlen:
            window[curlen:lastlen] = 1.0
    return window[maxj - minj - 1]


@numba.njit(cache=True, nogil=True)
def _exact_batch(n1: np.ndarray, n2: np.ndarray, h: np.ndarray) -> np.ndarray:
    out = np.empty(n1.size)
    largest = 2
    for k in range(n1.size):
        largest = max(largest, n1[k] + n2[k] + 1)
    reciprocal = np.empty(largest)
    reciprocal[0] = np.inf
    for k in range(1, largest):
        reciprocal[k] = 1.0 / k
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
            out[k] = _prob_outside_band(a, b, x, hk, reciprocal)
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
