"""Distribution-drift statistics between a reference and a current sample, for many segments at once.

Every kernel is a pure function on numpy arrays. The *segmented* kernels take one feature's
values for every segment of a scan (a cell, a region, ...) with an integer segment code per
value and return one statistic per segment: each sample is grouped by segment and sorted within
its segments (:func:`sort_by_segment`), then one compiled pass per segment (numba) merges the
two sorted slices for the empirical CDFs, the KS supremum and the Wasserstein integral, reads
the reference deciles by index and counts the PSI bins by binary search. A 25K-cell scan is then
a few passes over the data per feature rather than 25K Python calls.

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

from collections.abc import Sequence
from dataclasses import dataclass

import numba
import numpy as np
from scipy import special, stats

from eval.ks_exact import exact_pvalues

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


# --- numeric features -----------------------------------------------------------------------


def _finite(values: np.ndarray, segments: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    values = np.asarray(values)
    if values.dtype.kind not in "fc":
        values = values.astype(np.float64)
    keep = np.isfinite(values)
    if keep.all():
        return values, np.asarray(segments)
    return values[keep], np.asarray(segments)[keep]


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

    ``*_segment`` are integer codes in ``[0, n_segments)``. float32 input is compared as float32
    (the fast path: half the bytes to move and sort); other dtypes as float64. ``ks_method`` is
    scipy's ``ks_2samp`` method (see :func:`ks_pvalues`). The KS p-value, the one costly
    statistic, is left ``nan`` for segments with fewer than ``min_samples`` values on either
    side: the scan skips them anyway.
    """
    return numeric_drift_by_rollup(reference, reference_segment, current, current_segment, n_segments, (), ks_method,
                                   min_samples)[0]


def numeric_drift_by_rollup(
    reference: np.ndarray,
    reference_segment: np.ndarray,
    current: np.ndarray,
    current_segment: np.ndarray,
    n_segments: int,
    rollups: Sequence[tuple[np.ndarray, int]] = (),
    ks_method: str = "auto",
    min_samples: int = 1,
) -> list[SegmentDrift]:
    """:func:`numeric_drift_by_segment` for the segments and for each coarser level that groups them.

    ``rollups`` holds ``(parent, n_parent)`` per coarser level, ``parent[s]`` being the code of
    segment ``s`` at that level (a cell's region, or 0 for the global row). Returns the finest
    level first, then one result per rollup. float32 samples are sorted by value once (radix
    passes shared by every level), then grouped by each level's code with one stable counting
    pass, which keeps the value order within a group.
    """
    ref, ref_seg = _finite(reference, reference_segment)
    cur, cur_seg = _finite(current, current_segment)
    levels = [(np.zeros(0, dtype=np.int64), n_segments), *((np.asarray(p, dtype=np.int64), int(k)) for p, k in rollups)]
    n_ref = np.bincount(ref_seg, minlength=n_segments).astype(np.int64)
    n_cur = np.bincount(cur_seg, minlength=n_segments).astype(np.int64)
    counts = [(n_ref, n_cur) if p.size == 0 else (np.bincount(p, n_ref, k).astype(np.int64), np.bincount(p, n_cur, k).astype(np.int64))
              for p, k in levels]
    results = []
    if ref.dtype == np.float32 and cur.dtype == np.float32:
        ref_keys, ref_codes = _radix_sort(np.ascontiguousarray(ref), _segment_codes(ref_seg))
        cur_keys, cur_codes = _radix_sort(np.ascontiguousarray(cur), _segment_codes(cur_seg))
        for (parent, _), (level_ref, level_cur) in zip(levels, counts, strict=True):
            ref_sorted, ref_start = _group_sorted(ref_keys, ref_codes, parent, level_ref)
            cur_sorted, cur_start = _group_sorted(cur_keys, cur_codes, parent, level_cur)
            results.append(_drift_from_sorted(ref_sorted, ref_start, cur_sorted, cur_start, ks_method, min_samples))
        return results
    ref = ref.astype(np.float64, copy=False)
    cur = cur.astype(np.float64, copy=False)
    for (parent, _), (level_ref, level_cur) in zip(levels, counts, strict=True):
        ref_sorted, ref_start = sort_by_segment(ref, ref_seg if parent.size == 0 else parent[ref_seg], level_ref)
        cur_sorted, cur_start = sort_by_segment(cur, cur_seg if parent.size == 0 else parent[cur_seg], level_cur)
        results.append(_drift_from_sorted(ref_sorted, ref_start, cur_sorted, cur_start, ks_method, min_samples))
    return results


def _drift_from_sorted(
    ref_sorted: np.ndarray, ref_start: np.ndarray, cur_sorted: np.ndarray, cur_start: np.ndarray, ks_method: str, min_samples: int
) -> SegmentDrift:
    n_ref = np.diff(ref_start)
    n_cur = np.diff(cur_start)
    ks, wasserstein, std, ref_counts, cur_counts = _segment_statistics(ref_sorted, ref_start, cur_sorted, cur_start, _DECILES)
    psi_values, js_values = _psi_and_js(ref_counts, cur_counts)
    with np.errstate(divide="ignore", invalid="ignore"):
        w_norm = np.where(std > 0, wasserstein / np.where(std > 0, std, 1.0), np.where(wasserstein > 0, np.inf, np.nan))
    tested = (n_ref > 0) & (n_cur > 0)
    return SegmentDrift(
        n_reference=n_ref,
        n_current=n_cur,
        psi=np.where(tested, psi_values, np.nan),
        psi_bias=psi_null_bias(PSI_BINS, n_ref, n_cur),
        js_distance=np.where(tested, js_values, np.nan),
        ks_stat=np.where(tested, ks, np.nan),
        ks_pvalue=ks_pvalues(np.where(np.minimum(n_ref, n_cur) >= min_samples, ks, np.nan), n_ref, n_cur, ks_method),
        wasserstein_norm=np.where(tested, w_norm, np.nan),
        chi2_pvalue=np.full(n_ref.size, np.nan),
    )


def _segment_codes(segment: np.ndarray) -> np.ndarray:
    """Segment codes as int32 (the scan's own dtype), so each compiled kernel has one signature to compile."""
    return np.asarray(segment).astype(np.int32, copy=False)


def sort_by_segment(values: np.ndarray, segment: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(sorted_values, starts)``: values grouped by segment code, ascending within each segment.

    Segment ``s`` holds ``sorted_values[starts[s]:starts[s + 1]]``. float32 values are sorted by
    a least-significant-digit radix sort (Knuth, TAOCP vol. 3, 5.2.5) of their order-preserving
    uint32 bit patterns, three 11-bit digits, then a stable counting sort by segment: five
    linear passes whatever the segment sizes. Other dtypes are grouped by segment (counting sort)
    and each segment's slice is sorted (quicksort).
    """
    segment = _segment_codes(segment)
    counts = np.asarray(counts, dtype=np.int64)
    if values.dtype == np.float32:
        keys, codes = _radix_sort(np.ascontiguousarray(values), segment)
        return _group_sorted(keys, codes, np.zeros(0, dtype=np.int64), counts)
    return _sort_by_segment(values, segment, counts)


@numba.njit(cache=True, nogil=True)
def _segment_starts(counts: np.ndarray) -> np.ndarray:
    starts = np.zeros(counts.size + 1, dtype=np.int64)
    for s in range(counts.size):
        starts[s + 1] = starts[s] + counts[s]
    return starts


@numba.njit(cache=True, nogil=True)
def _sort_by_segment(values: np.ndarray, segment: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    starts = _segment_starts(counts)
    position = starts[:-1].copy()
    grouped = np.empty_like(values)
    for i in range(values.size):
        s = segment[i]
        grouped[position[s]] = values[i]
        position[s] += 1
    for s in range(counts.size):
        grouped[starts[s] : starts[s + 1]].sort()
    return grouped, starts


_SIGN = np.uint32(0x80000000)
_DIGIT_BITS = 11
_DIGIT_MASK = np.uint32((1 << _DIGIT_BITS) - 1)


@numba.njit(cache=True, nogil=True)
def _radix_sort(values: np.ndarray, segment: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order-preserving uint32 keys of float32 ``values``, sorted, with ``segment`` carried along (stable)."""
    n = values.size
    bits = values.view(np.uint32)
    # Order-preserving key: flip the sign bit of positives, invert negatives (IEEE-754 total order;
    # -0.0 sorts just before +0.0, and they still compare equal as floats).
    keys = np.empty(n, dtype=np.uint32)
    histogram = np.zeros((3, 1 << _DIGIT_BITS), dtype=np.int64)
    for i in range(n):
        b = bits[i]
        k = ~b if b & _SIGN else b | _SIGN
        keys[i] = k
        histogram[0, k & _DIGIT_MASK] += 1
        histogram[1, (k >> _DIGIT_BITS) & _DIGIT_MASK] += 1
        histogram[2, k >> (2 * _DIGIT_BITS)] += 1
    seg = segment.astype(np.int32)
    keys_out = np.empty_like(keys)
    seg_out = np.empty_like(seg)
    for digit in range(3):
        shift = digit * _DIGIT_BITS
        if histogram[digit].max() == n:  # every key has the same digit: the pass would not move anything
            continue
        offset = np.zeros(1 << _DIGIT_BITS, dtype=np.int64)
        for d in range(1, 1 << _DIGIT_BITS):
            offset[d] = offset[d - 1] + histogram[digit, d - 1]
        for i in range(n):
            d = (keys[i] >> shift) & _DIGIT_MASK
            o = offset[d]
            keys_out[o] = keys[i]
            seg_out[o] = seg[i]
            offset[d] = o + 1
        keys, keys_out = keys_out, keys
        seg, seg_out = seg_out, seg
    return keys, seg


@numba.njit(cache=True, nogil=True)
def _group_sorted(keys: np.ndarray, segment: np.ndarray, parent: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stable counting sort of value-sorted ``keys`` by ``parent[segment]`` (``segment`` if ``parent`` is empty), decoded to float32."""
    n = keys.size
    starts = _segment_starts(counts)
    ordered = np.empty(n, dtype=np.uint32)
    if counts.size == 1:
        ordered[:] = keys
    else:
        position = starts[:-1].copy()
        mapped = parent.size > 0
        for i in range(n):
            s = parent[segment[i]] if mapped else segment[i]
            ordered[position[s]] = keys[i]
            position[s] += 1
    for i in range(n):
        k = ordered[i]
        ordered[i] = k ^ _SIGN if k & _SIGN else ~k
    return ordered.view(np.float32), starts


@numba.njit(cache=True, nogil=True)
def _count_at_most(sorted_values: np.ndarray, lo: int, hi: int, edge: float) -> int:
    """Number of ``sorted_values[lo:hi]`` that are ``<= edge`` (binary search, float64 comparison)."""
    first = lo
    last = hi
    while first < last:
        middle = (first + last) // 2
        if np.float64(sorted_values[middle]) <= edge:
            first = middle + 1
        else:
            last = middle
    return first - lo


@numba.njit(cache=True, nogil=True)
def _segment_statistics(
    ref: np.ndarray, ref_start: np.ndarray, cur: np.ndarray, cur_start: np.ndarray, deciles: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per segment of two segment-sorted samples: KS ``D``, Wasserstein-1, ``std(ref)`` and the PSI bin counts.

    * KS ``D = sup |F_ref − F_cur|`` and Wasserstein-1 ``∫ |F_ref − F_cur| dx`` from one merge of
      the two sorted slices; both CDFs are taken after the last of each run of equal values
      (``side="right"``, so ties are handled as scipy does), and ``F_ref − F_cur`` is computed as
      ``i/n1 − j/n2`` in float64, as ``scipy.stats.ks_2samp`` does.
    * ``np.std(ref)`` (ddof 0), two-pass in float64.
    * Bin counts over the 10 bins ``(e_{k-1}, e_k]`` at the reference deciles, which are
      ``np.quantile(ref, [0.1, ..., 0.9])`` with numpy's own linear interpolation
      (``_lerp``: ``b − (b − a)(1 − t)`` for ``t >= 0.5``, else ``a + (b − a)t``), so the edges
      are bit-identical to ``np.quantile``'s; ties at an edge fall in the lower bin.
    """
    n_segments = ref_start.size - 1
    bins = deciles.size + 1
    ks = np.full(n_segments, np.nan)
    wasserstein = np.full(n_segments, np.nan)
    std = np.full(n_segments, np.nan)
    ref_counts = np.zeros((n_segments, bins))
    cur_counts = np.zeros((n_segments, bins))
    for s in range(n_segments):
        a0, a1, b0, b1 = ref_start[s], ref_start[s + 1], cur_start[s], cur_start[s + 1]
        n1, n2 = a1 - a0, b1 - b0
        if n1 == 0:
            continue
        total = 0.0
        for i in range(a0, a1):
            total += np.float64(ref[i])
        mean = total / n1
        square = 0.0
        for i in range(a0, a1):
            square += (np.float64(ref[i]) - mean) ** 2
        std[s] = np.sqrt(square / n1)
        below_ref = 0
        below_cur = 0
        for k in range(deciles.size):
            virtual = deciles[k] * (n1 - 1)
            lower = np.floor(virtual)
            t = virtual - lower
            a = np.float64(ref[a0 + int(lower)])
            b = np.float64(ref[a0 + min(int(lower) + 1, n1 - 1)])
            edge = b - (b - a) * (1.0 - t) if t >= 0.5 else a + (b - a) * t
            at_most_ref = _count_at_most(ref, a0, a1, edge)
            at_most_cur = _count_at_most(cur, b0, b1, edge)
            ref_counts[s, k] = at_most_ref - below_ref
            cur_counts[s, k] = at_most_cur - below_cur
            below_ref, below_cur = at_most_ref, at_most_cur
        ref_counts[s, bins - 1] = n1 - below_ref
        cur_counts[s, bins - 1] = n2 - below_cur
        if n2 == 0:
            continue
        i, j = a0, b0
        sup = 0.0
        area = 0.0
        while i < a1 or j < b1:
            value = ref[i] if j == b1 or (i < a1 and ref[i] <= cur[j]) else cur[j]
            while i < a1 and ref[i] == value:
                i += 1
            while j < b1 and cur[j] == value:
                j += 1
            gap = abs((i - a0) / n1 - (j - b0) / n2)
            sup = max(sup, gap)
            if i < a1 or j < b1:
                following = ref[i] if j == b1 or (i < a1 and ref[i] <= cur[j]) else cur[j]
                area += gap * (np.float64(following) - np.float64(value))
        ks[s] = sup
        wasserstein[s] = area
    return ks, wasserstein, std, ref_counts, cur_counts


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


def ks_pvalues(statistic: np.ndarray, n_reference: np.ndarray, n_current: np.ndarray, method: str = "auto") -> np.ndarray:
    """Two-sided KS p-values exactly as ``scipy.stats.ks_2samp(..., method=method)`` computes them.

    ``auto`` means the exact lattice-path probability (Hodges 1958) when both samples have at
    most 10,000 values (:func:`eval.ks_exact.exact_pvalues`, scipy's recursions compiled and
    batched), else Smirnov's limiting distribution ``kstwo.sf(D, round(mn/(m+n)))``. If the
    exact computation fails it falls back to the asymptotic one, as scipy does.

    The exact branch costs O(m × band) per test, band ≈ 2·D·n (a lattice-path recursion); it is
    most of a scan's time in busy cells. ``method="asymp"`` (scipy's ``method="asymp"``) is the
    comparison ``bench/drift_scan.py`` can run.
    """
    if method not in ("auto", "asymp"):
        raise ValueError(f"method must be 'auto' or 'asymp', got {method!r}")
    d = np.asarray(statistic, dtype=np.float64)
    n1 = np.asarray(n_reference, dtype=np.int64)
    n2 = np.asarray(n_current, dtype=np.int64)
    out = np.full(d.shape, np.nan)
    valid = (n1 > 0) & (n2 > 0) & np.isfinite(d)
    exact = valid & (np.maximum(n1, n2) <= KS_EXACT_MAX_N) & (method == "auto")
    out[exact] = exact_pvalues(n1[exact], n2[exact], d[exact])
    asymp = (valid & ~exact) | (exact & np.isnan(out))
    if asymp.any():
        m = np.maximum(n1[asymp], n2[asymp]).astype(float)
        n = np.minimum(n1[asymp], n2[asymp]).astype(float)
        out[asymp] = stats.kstwo.sf(d[asymp], np.round(m * n / (m + n)))
    return np.clip(out, 0.0, 1.0)


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
