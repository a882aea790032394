"""Distribution-drift statistics between a reference and a current sample, for many segments at once.

Every kernel is a pure numpy function. The *segmented* kernels take one feature's values for
every segment of a scan (a cell, a region, ...) with an integer segment code per value and
return one statistic per segment, computed with a single sort of the pooled values: sorting by
the composite key ``(segment, value, sample)`` puts each segment's reference and current values
in one merged order, from which the empirical CDFs, the KS supremum, the Wasserstein integral,
the reference deciles and the bin counts all follow with cumulative sums and ``searchsorted``.
A 25K-cell scan is then a few array passes per feature rather than 25K Python calls.

The one-sample-pair functions (:func:`psi`, :func:`ks_2samp`, ...) are the segmented kernels
applied to a single segment; they exist to state and test the definitions against scipy.

Missing values: non-finite values (NaN, ±inf) are dropped before any statistic, and
``n_reference`` / ``n_current`` count what is left. A segment with no values on either side gets
``nan`` statistics; the scan reports it as skipped.

Definitions (each function's docstring cites its reference):

* PSI over ``PSI_BINS`` = 10 bins at the reference deciles, with empty-bin smoothing ``PSI_EPSILON``.
* KS statistic and p-value equal to ``scipy.stats.ks_2samp(ref, cur)`` (default ``method="auto"``).
* ``wasserstein_norm`` = ``scipy.stats.wasserstein_distance(ref, cur) / np.std(ref)``.
* ``js_distance`` = ``scipy.spatial.distance.jensenshannon`` (natural log) over the PSI bins.
* χ² p-value of the 2×K reference/current contingency table for categorical features.
* Benjamini–Hochberg q-values over every test of one scan, and the drift decision.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from scipy import special, stats
from scipy.stats._stats_py import _attempt_exact_2kssamp

#: PSI bins: the reference deciles (Siddiqi 2006, "Credit Risk Scorecards", ch. 8).
PSI_BINS = 10
#: Proportion given to an empty bin before the PSI logarithm, so one empty bin does not make PSI
#: infinite. 1e-4 is below the smallest non-empty proportion of any segment under 10,000 rows.
PSI_EPSILON = 1e-4
#: Effect-size gates of the drift decision (see :func:`drift_decision`).
PSI_EFFECT_THRESHOLD = 0.1
WASSERSTEIN_EFFECT_THRESHOLD = 0.1
#: A segment needs at least this many values on each side to be tested (``--min-samples``).
DEFAULT_MIN_SAMPLES = 50
#: scipy's ``ks_2samp`` computes the exact p-value when both samples have at most this many values.
KS_EXACT_MAX_N = 10_000

_DECILES = np.arange(1, PSI_BINS) / PSI_BINS


@dataclass(frozen=True)
class SegmentDrift:
    """Per-segment statistics for one feature; arrays of length ``n_segments``."""

    n_reference: np.ndarray
    n_current: np.ndarray
    psi: np.ndarray
    psi_bias: np.ndarray
    js_distance: np.ndarray
    ks_stat: np.ndarray
    ks_pvalue: np.ndarray
    wasserstein_norm: np.ndarray
    chi2_pvalue: np.ndarray


# --- ordering codes -------------------------------------------------------------------------


@dataclass(frozen=True)
class _Codes:
    """Integer codes monotone in value (equal values, equal codes) for a pooled sample.

    float32 values use their bit pattern turned into an order-preserving uint32 (no sort
    needed); other dtypes use the dense rank among the pooled distinct values.
    """

    reference: np.ndarray
    current: np.ndarray
    bits: int  # codes fit in this many bits, so a composite key is (segment << bits) | code
    distinct: np.ndarray | None  # sorted distinct values for the rank codes; None for float32 bits

    def decode(self, codes: np.ndarray) -> np.ndarray:
        if self.distinct is not None:
            return self.distinct[codes.astype(np.int64)]
        bits = codes.astype(np.uint32)
        negative = bits < np.uint32(0x80000000)
        raw = np.where(negative, ~bits, bits ^ np.uint32(0x80000000))
        return raw.view(np.float32).astype(np.float64)

    def below_or_equal(self, edges: np.ndarray) -> np.ndarray:
        """Smallest code ``c`` with ``x <= edge  <=>  code(x) < c`` for every pooled value ``x``."""
        if self.distinct is not None:
            return np.searchsorted(self.distinct, edges, side="right").astype(np.uint64)
        rounded = edges.astype(np.float32)
        rounded = np.where(rounded > edges, np.nextafter(rounded, np.float32(-np.inf)), rounded)
        return _float32_codes(rounded.astype(np.float32)) + np.uint64(1)


def _float32_codes(values: np.ndarray) -> np.ndarray:
    """Order-preserving uint32 of IEEE-754 float32 (sign flip for positives, invert negatives)."""
    bits = (values + np.float32(0.0)).view(np.uint32)  # + 0.0 turns -0.0 into +0.0: they tie
    negative = bits >= np.uint32(0x80000000)
    return np.where(negative, ~bits, bits | np.uint32(0x80000000)).astype(np.uint64)


def _codes(reference: np.ndarray, current: np.ndarray) -> _Codes:
    if reference.dtype == np.float32 and current.dtype == np.float32:
        return _Codes(_float32_codes(reference), _float32_codes(current), 32, None)
    ref = reference.astype(np.float64)
    cur = current.astype(np.float64)
    distinct, inverse = np.unique(np.concatenate([ref, cur]), return_inverse=True)
    inverse = inverse.astype(np.uint64)
    return _Codes(inverse[: ref.size], inverse[ref.size :], max(int(distinct.size), 1).bit_length(), distinct)


def _finite(values: np.ndarray, segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values)
    if values.dtype.kind not in "fc":
        values = values.astype(np.float64)
    keep = np.isfinite(values)
    if keep.all():
        return values, np.asarray(segments)
    return values[keep], np.asarray(segments)[keep]


# --- numeric features -----------------------------------------------------------------------


def numeric_drift_by_segment(
    reference: np.ndarray,
    reference_segment: np.ndarray,
    current: np.ndarray,
    current_segment: np.ndarray,
    n_segments: int,
    ks_method: str = "auto",
    min_samples: int = 1,
) -> SegmentDrift:
    """PSI, JS distance, KS and normalised Wasserstein for one numeric feature in every segment.

    ``*_segment`` are integer codes in ``[0, n_segments)``. float32 input is the fast path (no
    value sort beyond the one composite-key sort); other dtypes are compared as float64.
    ``ks_method`` is scipy's ``ks_2samp`` method (see :func:`ks_pvalues`). The KS p-value, the
    one costly statistic, is left ``nan`` for segments with fewer than ``min_samples`` values on
    either side: the scan skips them anyway.
    """
    ref, ref_seg = _finite(reference, reference_segment)
    cur, cur_seg = _finite(current, current_segment)
    codes = _codes(ref, cur)
    shift = np.uint64(codes.bits)
    # key = (segment << bits | code) << 1 | is_current: one sort orders by segment, then value.
    keys = np.concatenate(
        [
            ((ref_seg.astype(np.uint64) << shift) | codes.reference) << np.uint64(1),
            ((((cur_seg.astype(np.uint64) << shift) | codes.current) << np.uint64(1)) | np.uint64(1)),
        ]
    )
    keys.sort()
    is_current = (keys & np.uint64(1)).astype(bool)
    half = keys >> np.uint64(1)  # segment << bits | code
    del keys
    n_ref = np.bincount(ref_seg, minlength=n_segments).astype(np.int64)
    n_cur = np.bincount(cur_seg, minlength=n_segments).astype(np.int64)

    ref_half = half[~is_current]  # reference values sorted within segments
    mask = np.uint64((1 << codes.bits) - 1)
    ref_values = codes.decode(ref_half & mask)
    ref_start = np.concatenate([[0], np.cumsum(n_ref)[:-1]])
    cur_half = half[is_current]
    cur_start = np.concatenate([[0], np.cumsum(n_cur)[:-1]])

    ref_counts, cur_counts = _decile_bin_counts(ref_values, n_ref, ref_start, ref_half, cur_half, cur_start, codes, n_segments)
    psi_values, js_values = _psi_and_js(ref_counts, cur_counts)
    ks, wasserstein = _ecdf_distances(half, is_current, n_ref, n_cur, codes)
    std = _segment_std(ref_values, n_ref)
    with np.errstate(divide="ignore", invalid="ignore"):
        w_norm = np.where(std > 0, wasserstein / np.where(std > 0, std, 1.0), np.where(wasserstein > 0, np.inf, np.nan))
    tested = (n_ref > 0) & (n_cur > 0)
    nan = np.full(n_segments, np.nan)
    return SegmentDrift(
        n_reference=n_ref,
        n_current=n_cur,
        psi=np.where(tested, psi_values, np.nan),
        psi_bias=psi_null_bias(PSI_BINS, n_ref, n_cur),
        js_distance=np.where(tested, js_values, np.nan),
        ks_stat=np.where(tested, ks, np.nan),
        ks_pvalue=ks_pvalues(np.where(np.minimum(n_ref, n_cur) >= min_samples, ks, np.nan), n_ref, n_cur, ks_method),
        wasserstein_norm=np.where(tested, w_norm, np.nan),
        chi2_pvalue=nan,
    )


def _decile_bin_counts(
    ref_values: np.ndarray,
    n_ref: np.ndarray,
    ref_start: np.ndarray,
    ref_half: np.ndarray,
    cur_half: np.ndarray,
    cur_start: np.ndarray,
    codes: _Codes,
    n_segments: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference and current counts in the 10 bins ``(e_{k-1}, e_k]`` at each segment's reference deciles.

    The deciles are ``np.quantile(ref, [0.1, ..., 0.9])`` (linear interpolation, numpy's lerp),
    frozen from the reference; ties at an edge fall in the lower bin.
    """
    edges = segment_quantiles(ref_values, n_ref, ref_start, _DECILES)  # (S, 9)
    threshold = codes.below_or_equal(np.nan_to_num(edges, nan=0.0))
    seg = np.arange(n_segments, dtype=np.uint64)[:, None]
    probe = (seg << np.uint64(codes.bits)) + threshold  # x <= edge  <=>  half < probe
    ref_le = np.searchsorted(ref_half, probe, side="left") - ref_start[:, None]
    cur_le = np.searchsorted(cur_half, probe, side="left") - cur_start[:, None]
    n_cur = np.diff(np.append(cur_start, cur_half.size))
    ref_cum = np.concatenate([ref_le, n_ref[:, None]], axis=1)
    cur_cum = np.concatenate([cur_le, n_cur[:, None]], axis=1)
    return np.diff(ref_cum, axis=1, prepend=0).astype(np.float64), np.diff(cur_cum, axis=1, prepend=0).astype(np.float64)


def segment_quantiles(sorted_values: np.ndarray, counts: np.ndarray, starts: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``np.quantile(segment_values, q)`` (method "linear") for every segment of a segment-sorted array.

    Uses numpy's own interpolation ``_lerp`` (``b - (b - a)(1 - t)`` for ``t >= 0.5``) so the
    edges are bit-identical to ``np.quantile``. Empty segments give ``nan``.
    """
    n = counts.astype(np.float64)[:, None]
    virtual = q[None, :] * np.maximum(n - 1.0, 0.0)
    lower = np.floor(virtual)
    t = virtual - lower
    lo_index = starts[:, None] + lower.astype(np.int64)
    hi_index = starts[:, None] + np.minimum(lower + 1.0, np.maximum(n - 1.0, 0.0)).astype(np.int64)
    if sorted_values.size == 0:
        return np.full((counts.size, q.size), np.nan)
    a = sorted_values[np.clip(lo_index, 0, sorted_values.size - 1)]
    b = sorted_values[np.clip(hi_index, 0, sorted_values.size - 1)]
    diff = b - a
    out = np.where(t >= 0.5, b - diff * (1.0 - t), a + diff * t)
    return np.where(counts[:, None] > 0, out, np.nan)


def _psi_and_js(ref_counts: np.ndarray, cur_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise PSI (:func:`psi_from_counts`) and JS distance (:func:`js_from_counts`)."""
    return psi_from_counts(ref_counts, cur_counts), js_from_counts(ref_counts, cur_counts)


def psi_from_counts(ref_counts: np.ndarray, cur_counts: np.ndarray) -> np.ndarray:
    """Population stability index over bins (last axis): ``Σ_k (c_k − r_k) ln(c_k / r_k)``.

    ``r_k``, ``c_k`` are the reference and current proportions; a proportion that is exactly 0
    is replaced by ``PSI_EPSILON`` (1e-4) first, without renormalising (Siddiqi 2006; Yurdakul
    2018, "Statistical properties of the population stability index", WMU dissertation).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        r = ref_counts / ref_counts.sum(axis=-1, keepdims=True)
        c = cur_counts / cur_counts.sum(axis=-1, keepdims=True)
    r = np.where(ref_counts == 0, PSI_EPSILON, r)
    c = np.where(cur_counts == 0, PSI_EPSILON, c)
    return np.sum((c - r) * np.log(c / r), axis=-1)


def js_from_counts(ref_counts: np.ndarray, cur_counts: np.ndarray) -> np.ndarray:
    """Jensen–Shannon distance ``sqrt((KL(r‖m) + KL(c‖m)) / 2)``, ``m = (r + c)/2``, natural log.

    Identical to ``scipy.spatial.distance.jensenshannon(ref_counts, cur_counts)`` row by row
    (Endres & Schindelin 2003); no smoothing is needed since ``m > 0`` wherever ``r`` or ``c`` is.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        r = ref_counts / ref_counts.sum(axis=-1, keepdims=True)
        c = cur_counts / cur_counts.sum(axis=-1, keepdims=True)
        m = (r + c) / 2.0
        js = np.sum(special.rel_entr(r, m) + special.rel_entr(c, m), axis=-1) / 2.0
    return np.sqrt(js)


def psi_null_bias(bins: int | np.ndarray, n_reference: np.ndarray, n_current: np.ndarray) -> np.ndarray:
    """Expected PSI with no drift: ``(B − 1)(1/n_ref + 1/n_cur)``.

    PSI is a symmetrised KL divergence; under the null ``n·PSI`` is asymptotically χ² with
    ``B − 1`` degrees of freedom scaled by the two sample sizes (Yurdakul 2018), so small
    segments show PSI well above 0 with no drift at all (0.36 at 50 + 50 rows and 10 bins).
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        return (np.asarray(bins) - 1) * (1.0 / np.asarray(n_reference, float) + 1.0 / np.asarray(n_current, float))


def _ecdf_distances(
    half: np.ndarray,
    is_current: np.ndarray,
    n_ref: np.ndarray,
    n_cur: np.ndarray,
    codes: _Codes,
) -> tuple[np.ndarray, np.ndarray]:
    """KS ``sup |F_ref − F_cur|`` and Wasserstein-1 ``∫ |F_ref − F_cur| dx`` per segment.

    Both CDFs are evaluated at the last value of each run of equal values in the merged order
    (``side="right"`` in scipy's terms, so ties are handled as scipy does).
    """
    n_segments = n_ref.size
    if half.size == 0:
        return np.full(n_segments, np.nan), np.full(n_segments, np.nan)
    run_end = np.empty(half.size, dtype=bool)
    run_end[:-1] = half[1:] != half[:-1]
    run_end[-1] = True
    ends = np.flatnonzero(run_end)
    cum_cur = np.cumsum(is_current, dtype=np.int64)[ends]
    cum_ref = ends + 1 - cum_cur
    base_cur = np.concatenate([[0], np.cumsum(n_cur)[:-1]])
    base_ref = np.concatenate([[0], np.cumsum(n_ref)[:-1]])
    end_half = half[ends]
    end_seg = (end_half >> np.uint64(codes.bits)).astype(np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        f_ref = (cum_ref - base_ref[end_seg]) / n_ref[end_seg]
        f_cur = (cum_cur - base_cur[end_seg]) / n_cur[end_seg]
    gap = np.abs(f_ref - f_cur)
    ks = np.zeros(n_segments)
    _segment_max(ks, end_seg, gap)
    values = codes.decode(end_half & np.uint64((1 << codes.bits) - 1))
    width = np.zeros(values.size)
    same = end_seg[1:] == end_seg[:-1]
    width[:-1] = np.where(same, values[1:] - values[:-1], 0.0)
    wasserstein = np.bincount(end_seg, weights=np.nan_to_num(gap, nan=0.0) * width, minlength=n_segments)
    return ks, wasserstein


def _segment_max(out: np.ndarray, sorted_segment: np.ndarray, values: np.ndarray) -> None:
    """``out[s] = max(values[sorted_segment == s])`` for a sorted segment array (reduceat)."""
    starts = np.flatnonzero(np.r_[True, sorted_segment[1:] != sorted_segment[:-1]])
    out[sorted_segment[starts]] = np.maximum.reduceat(np.nan_to_num(values, nan=0.0), starts)


def _segment_std(sorted_values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Population standard deviation (``np.std``, ddof=0) per segment, two-pass."""
    seg = np.repeat(np.arange(counts.size), counts)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = np.bincount(seg, weights=sorted_values, minlength=counts.size) / counts
        var = np.bincount(seg, weights=(sorted_values - mean[seg]) ** 2, minlength=counts.size) / counts
    return np.sqrt(var)


def ks_pvalues(statistic: np.ndarray, n_reference: np.ndarray, n_current: np.ndarray, method: str = "auto") -> np.ndarray:
    """Two-sided KS p-values exactly as ``scipy.stats.ks_2samp(..., method=method)`` computes them.

    ``auto`` means the exact lattice-path probability (Hodges 1958) when both samples have at
    most 10,000 values, else Smirnov's limiting distribution ``kstwo.sf(D, round(mn/(m+n)))``.
    The exact branch calls scipy's own routine, memoised on ``(n1, n2, h)`` where ``D = h /
    lcm(n1, n2)``: within a scan the same segment sizes and lattice steps recur across
    features. If scipy's exact computation fails it falls back to the asymptotic one, as scipy does.

    The exact branch costs O(n1·n2) per test (a lattice-path recursion), which dominates a scan
    of busy cells; ``method="asymp"`` (scipy's ``method="asymp"``) is O(1) and is what
    ``bench/drift_scan.py`` compares against.
    """
    if method not in ("auto", "asymp"):
        raise ValueError(f"method must be 'auto' or 'asymp', got {method!r}")
    d = np.asarray(statistic, dtype=np.float64)
    n1 = np.asarray(n_reference, dtype=np.int64)
    n2 = np.asarray(n_current, dtype=np.int64)
    out = np.full(d.shape, np.nan)
    valid = (n1 > 0) & (n2 > 0) & np.isfinite(d)
    exact = valid & (np.maximum(n1, n2) <= KS_EXACT_MAX_N) & (method == "auto")
    asymp = valid & ~exact
    for i in np.flatnonzero(exact):
        a, b = int(n1[i]), int(n2[i])
        lcm = (a // math.gcd(a, b)) * b
        out[i] = _ks_exact(a, b, int(np.round(d[i] * lcm)))
    failed = exact & np.isnan(out)
    asymp = asymp | failed
    if asymp.any():
        m = np.maximum(n1[asymp], n2[asymp]).astype(float)
        n = np.minimum(n1[asymp], n2[asymp]).astype(float)
        out[asymp] = stats.kstwo.sf(d[asymp], np.round(m * n / (m + n)))
    return np.clip(out, 0.0, 1.0)


@lru_cache(maxsize=1 << 18)
def _ks_exact(n1: int, n2: int, h: int) -> float:
    g = math.gcd(n1, n2)
    lcm = (n1 // g) * n2
    success, _, prob = _attempt_exact_2kssamp(n1, n2, g, h / lcm, "two-sided")
    return float(prob) if success else float("nan")


# --- categorical features -------------------------------------------------------------------


def categorical_drift_by_segment(
    reference: np.ndarray,
    reference_segment: np.ndarray,
    current: np.ndarray,
    current_segment: np.ndarray,
    n_segments: int,
) -> SegmentDrift:
    """χ² p-value, PSI and JS distance over the categories, per segment.

    Categories are the distinct values of both samples (missing values dropped). PSI and JS use
    one bin per category; the χ² test is on the 2×K table of the categories seen in the segment
    (:func:`chi2_pvalue_from_counts`). KS and Wasserstein do not apply and are ``nan``.
    """
    ref_keep = _present(reference)
    cur_keep = _present(current)
    categories, inverse = np.unique(np.concatenate([np.asarray(reference)[ref_keep], np.asarray(current)[cur_keep]]).astype(str),
                                    return_inverse=True)
    k = max(categories.size, 1)
    n_ref_rows = int(ref_keep.sum())
    ref_cells = np.asarray(reference_segment)[ref_keep].astype(np.int64) * k + inverse[:n_ref_rows]
    cur_cells = np.asarray(current_segment)[cur_keep].astype(np.int64) * k + inverse[n_ref_rows:]
    ref_counts = np.bincount(ref_cells, minlength=n_segments * k).reshape(n_segments, k).astype(np.float64)
    cur_counts = np.bincount(cur_cells, minlength=n_segments * k).reshape(n_segments, k).astype(np.float64)
    n_ref = ref_counts.sum(axis=1).astype(np.int64)
    n_cur = cur_counts.sum(axis=1).astype(np.int64)
    tested = (n_ref > 0) & (n_cur > 0)
    seen = ((ref_counts + cur_counts) > 0).sum(axis=1)
    nan = np.full(n_segments, np.nan)
    return SegmentDrift(
        n_reference=n_ref,
        n_current=n_cur,
        psi=np.where(tested, psi_from_counts(ref_counts, cur_counts), np.nan),
        psi_bias=psi_null_bias(np.maximum(seen, 1), n_ref, n_cur),
        js_distance=np.where(tested, js_from_counts(ref_counts, cur_counts), np.nan),
        ks_stat=nan,
        ks_pvalue=nan,
        wasserstein_norm=nan,
        chi2_pvalue=np.where(tested, chi2_pvalue_from_counts(ref_counts, cur_counts), np.nan),
    )


def _present(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    if values.dtype.kind == "f":
        return ~np.isnan(values)
    if values.dtype.kind == "O":
        return np.array([v is not None and v == v for v in values], dtype=bool)
    return np.ones(values.shape, dtype=bool)


def chi2_pvalue_from_counts(ref_counts: np.ndarray, cur_counts: np.ndarray) -> np.ndarray:
    """Pearson χ² test of homogeneity on each row's 2×K table, no continuity correction.

    ``χ² = Σ (O − E)² / E`` with ``E = row total × column total / N`` over the K categories seen
    in either sample, ``K − 1`` degrees of freedom; equals
    ``scipy.stats.chi2_contingency([ref_counts, cur_counts], correction=False).pvalue`` for the
    seen columns (Pearson 1900). One category seen means no evidence of change: p = 1.
    """
    table = np.stack([ref_counts, cur_counts], axis=-2)  # (..., 2, K)
    col = table.sum(axis=-2, keepdims=True)
    row = table.sum(axis=-1, keepdims=True)
    total = row.sum(axis=-2, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = row * col / total
        terms = np.where(col > 0, (table - expected) ** 2 / np.where(expected > 0, expected, 1.0), 0.0)
    chi2 = terms.sum(axis=(-2, -1))
    dof = (col[..., 0, :] > 0).sum(axis=-1) - 1
    return np.where(dof > 0, stats.chi2.sf(chi2, np.maximum(dof, 1)), 1.0)


# --- one sample pair ------------------------------------------------------------------------


def _one_segment(reference: np.ndarray, current: np.ndarray) -> SegmentDrift:
    ref = np.asarray(reference)
    cur = np.asarray(current)
    return numeric_drift_by_segment(ref, np.zeros(ref.size, np.int64), cur, np.zeros(cur.size, np.int64), 1)


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """PSI of ``current`` against ``reference`` over 10 bins at the reference deciles.

    Edges ``e_1..e_9 = np.quantile(reference, [0.1, ..., 0.9])`` are frozen from the reference;
    bin k holds ``e_{k-1} < x <= e_k``; see :func:`psi_from_counts` for the sum and ε = 1e-4.
    """
    return float(_one_segment(reference, current).psi[0])


def ks_2samp(reference: np.ndarray, current: np.ndarray) -> tuple[float, float]:
    """``(D, p)`` equal to ``scipy.stats.ks_2samp(reference, current)`` (two-sided, method "auto").

    ``D = sup_x |F_ref(x) − F_cur(x)|`` over the empirical CDFs (Smirnov 1939).
    """
    result = _one_segment(reference, current)
    return float(result.ks_stat[0]), float(result.ks_pvalue[0])


def wasserstein_norm(reference: np.ndarray, current: np.ndarray) -> float:
    """``scipy.stats.wasserstein_distance(reference, current) / np.std(reference)``.

    Wasserstein-1 (earth mover's) distance ``∫ |F_ref − F_cur| dx`` in units of the reference's
    standard deviation, so 0.1 means "mass moved a tenth of a spread" whatever the feature's unit
    (Ramdas, García Trillos & Cuturi 2017, "On Wasserstein two-sample testing").
    """
    return float(_one_segment(reference, current).wasserstein_norm[0])


def js_distance(reference: np.ndarray, current: np.ndarray) -> float:
    """``scipy.spatial.distance.jensenshannon`` of the two samples' counts in the PSI bins."""
    return float(_one_segment(reference, current).js_distance[0])


def chi2_pvalue(reference: np.ndarray, current: np.ndarray) -> float:
    """χ² homogeneity p-value of two categorical samples (:func:`chi2_pvalue_from_counts`)."""
    ref = np.asarray(reference)
    cur = np.asarray(current)
    result = categorical_drift_by_segment(ref, np.zeros(ref.size, np.int64), cur, np.zeros(cur.size, np.int64), 1)
    return float(result.chi2_pvalue[0])


# --- multiple testing and the decision ------------------------------------------------------


def bh_qvalues(pvalues: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values: ``q_(i) = min_{j >= i} min(1, m p_(j) / j)``.

    ``m`` counts the non-NaN p-values; NaN (untested) stays NaN. Rejecting every ``q < α``
    controls the false discovery rate at ``α`` for independent or positively dependent tests
    (Benjamini & Hochberg 1995, JRSS B 57:289). Equals
    ``scipy.stats.false_discovery_control(p, method="bh")`` on the tested values.
    """
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = tested.size
    if m == 0:
        return out
    order = np.argsort(p[tested], kind="stable")
    ranked = p[tested][order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(ranked[::-1])[::-1]
    out[tested[order]] = np.minimum(q, 1.0)
    return out


def drift_decision(
    q_value: np.ndarray,
    psi_values: np.ndarray,
    psi_bias: np.ndarray,
    wasserstein: np.ndarray,
    fdr: float,
) -> np.ndarray:
    """Drift = significant after BH (``q < fdr``) AND a shift large enough to matter.

    A p-value alone is not a drift signal: with 10⁵ rows a 0.02-σ shift is "significant", and
    nobody should retrain for it. The effect-size gate is either
    ``wasserstein_norm >= 0.1`` (mass moved at least a tenth of the reference's spread), or
    ``psi − psi_bias >= 0.1`` where ``psi_bias = (B − 1)(1/n_ref + 1/n_cur)`` is PSI's expected
    value with no drift (:func:`psi_null_bias`): raw PSI thresholds (0.1 "moderate", 0.25
    "major", Siddiqi 2006) fire on every small segment because PSI is biased upward by about
    ``(B − 1)/n``. Categorical features have no Wasserstein distance and use the PSI gate only.
    Since the gate only removes discoveries, BH's false discovery rate bound still holds.
    """
    significant = np.nan_to_num(q_value, nan=1.0) < fdr
    psi_effect = np.nan_to_num(psi_values - psi_bias, nan=-np.inf) >= PSI_EFFECT_THRESHOLD
    w_effect = np.nan_to_num(wasserstein, nan=-np.inf) >= WASSERSTEIN_EFFECT_THRESHOLD
    return significant & (psi_effect | w_effect)
