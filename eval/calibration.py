"""Scoring and calibrating probabilities: ECE, Brier, log loss, AUC, isotonic and Platt maps.

The acceptance model's output is used as a probability (the ranking policy multiplies the
re-offer delay by ``1 − p_accept``), so calibration matters as much as discrimination: a model
with a good AUC but probabilities that run 10 points high ranks candidates correctly within a
job and still mis-prices declines against ETA. These kernels measure both.

The two calibration *fits* (isotonic by pool-adjacent-violators, Platt's sigmoid) live here as
pure functions returning their parameters; ``retrain.acceptance_model`` holds the fitted state
and applies it. They are fitted on a held-out calibration split, never on the booster's own
training rows, whose scores are over-confident (Niculescu-Mizil & Caruana 2005, "Predicting
good probabilities with supervised learning", ICML).

Labels are 0/1 arrays; probabilities are in [0, 1]. Empty input gives ``nan`` (see
``eval.metrics`` for why).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata

#: ECE uses this many equal-width bins over [0, 1] unless told otherwise (Guo et al. 2017).
DEFAULT_ECE_BINS = 10


def labels_and_probs(y_true: np.ndarray, p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y_true, dtype=np.float64).ravel()
    q = np.asarray(p, dtype=np.float64).ravel()
    if y.shape != q.shape:
        raise ValueError(f"y_true has {y.size} values but p has {q.size}; pass aligned arrays")
    if y.size and not np.all((y == 0.0) | (y == 1.0)):
        raise ValueError("y_true must hold only 0 and 1; drop rows whose label is unknown first")
    return y, q


@dataclass(frozen=True)
class ReliabilityTable:
    """Per-bin counts, mean predicted probability and observed positive rate (a reliability diagram)."""

    bin_edges: np.ndarray
    count: np.ndarray
    mean_predicted: np.ndarray
    fraction_positive: np.ndarray


def reliability_table(y_true: np.ndarray, p: np.ndarray, n_bins: int = DEFAULT_ECE_BINS) -> ReliabilityTable:
    """Equal-width binning of ``p`` into ``n_bins`` bins ``[k/B, (k+1)/B)``, the last bin closed at 1.

    Empty bins have ``count = 0`` and ``nan`` means. Non-empty bins agree with
    ``sklearn.calibration.calibration_curve(strategy="uniform")``.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be ≥ 1, got {n_bins}")
    y, q = labels_and_probs(y_true, p)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip((q * n_bins).astype(np.int64), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    sum_p = np.bincount(idx, weights=q, minlength=n_bins)
    sum_y = np.bincount(idx, weights=y, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return ReliabilityTable(edges, count, sum_p / count, sum_y / count)


def expected_calibration_error(y_true: np.ndarray, p: np.ndarray, n_bins: int = DEFAULT_ECE_BINS) -> float:
    """ECE with ``n_bins`` equal-width bins (10 by default): ``Σ_b (n_b / n) |ȳ_b − p̄_b|``.

    ``ȳ_b`` is the observed acceptance rate and ``p̄_b`` the mean predicted probability in bin
    ``b``. Naeini, Cooper & Hauskrecht 2015 ("Obtaining well calibrated probabilities using
    Bayesian binning", AAAI); Guo et al. 2017 ("On calibration of modern neural networks",
    ICML) popularised the 10-bin equal-width form used here. Equal-width bins are coarse where
    predictions are sparse, which is why the reliability table is reported next to it.
    """
    table = reliability_table(y_true, p, n_bins)
    n = table.count.sum()
    if n == 0:
        return float("nan")
    filled = table.count > 0
    gaps = np.abs(table.fraction_positive[filled] - table.mean_predicted[filled])
    return float(np.sum(table.count[filled] / n * gaps))


def brier_score(y_true: np.ndarray, p: np.ndarray) -> float:
    """Brier score ``(1/n) Σ (pᵢ − yᵢ)²`` (Brier 1950, Monthly Weather Review).

    Matches ``sklearn.metrics.brier_score_loss``. A proper scoring rule: it rewards calibration
    and sharpness together.
    """
    y, q = labels_and_probs(y_true, p)
    return float(np.mean((q - y) ** 2)) if y.size else float("nan")


def log_loss(y_true: np.ndarray, p: np.ndarray) -> float:
    """Mean negative log-likelihood ``−(1/n) Σ [yᵢ log pᵢ + (1 − yᵢ) log(1 − pᵢ)]``.

    ``p`` is clipped to ``[ε, 1 − ε]`` with ``ε`` the float64 machine epsilon, as
    ``sklearn.metrics.log_loss`` does, so a confident wrong answer costs ≈ 36 nats rather than
    infinity.
    """
    losses = log_losses(y_true, p)
    return float(np.mean(losses)) if losses.size else float("nan")


def log_losses(y_true: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Per-prediction negative log-likelihood, the terms :func:`log_loss` averages (same clipping)."""
    y, q = labels_and_probs(y_true, p)
    eps = np.finfo(np.float64).eps
    q = np.clip(q, eps, 1.0 - eps)
    return -(y * np.log(q) + (1.0 - y) * np.log1p(-q))


def roc_auc(y_true: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve via the Mann–Whitney U statistic, ties counted one half.

    ``AUC = (R₊ − n₊(n₊ + 1)/2) / (n₊ n₋)`` with ``R₊`` the sum of the positives' mid-ranks
    (Hanley & McNeil 1982, Radiology 143:29). Equals ``sklearn.metrics.roc_auc_score``. Returns
    ``nan`` when only one class is present, where AUC is undefined (sklearn raises instead; a
    segment where every offer was accepted is not an error here).
    """
    y, s = labels_and_probs(y_true, score)
    n_pos = float(y.sum())
    n_neg = float(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(s, method="average")
    return float((ranks[y == 1.0].sum() - n_pos * (n_pos + 1.0) / 2.0) / (n_pos * n_neg))


def acceptance_report(y_true: np.ndarray, p_accept: np.ndarray) -> dict[str, float]:
    """The acceptance model's offline scorecard: calibration, proper scores and discrimination."""
    y, q = labels_and_probs(y_true, p_accept)
    return {
        "ece": expected_calibration_error(y, q),
        "brier": brier_score(y, q),
        "log_loss": log_loss(y, q),
        "auc": roc_auc(y, q),
        "mean_predicted": float(np.mean(q)) if q.size else float("nan"),
        "acceptance_rate": float(np.mean(y)) if y.size else float("nan"),
    }


def isotonic_fit(score: np.ndarray, y_true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares non-decreasing fit of ``y`` on ``score`` by pool-adjacent-violators.

    Returns ``(thresholds, values)``: the distinct scores in increasing order and the fitted
    probability at each. Apply with ``np.interp(s, thresholds, values)``, which interpolates
    linearly between thresholds and clips outside them, exactly what
    ``sklearn.isotonic.IsotonicRegression(out_of_bounds="clip")`` predicts. Tied scores are
    pooled first (their mean label, weighted by count). Ayer et al. 1955; Zadrozny & Elkan 2002
    ("Transforming classifier scores into accurate multiclass probability estimates", KDD).
    """
    s = np.asarray(score, dtype=np.float64).ravel()
    y, _ = labels_and_probs(y_true, s)
    if s.size == 0:
        raise ValueError("isotonic_fit needs at least one calibration row")
    thresholds, inverse = np.unique(s, return_inverse=True)
    weight = np.bincount(inverse).astype(np.float64)
    mean_y = np.bincount(inverse, weights=y) / weight
    return thresholds, _pool_adjacent_violators(mean_y, weight)


def _pool_adjacent_violators(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Weighted PAV: merge neighbouring blocks while a block's mean exceeds its successor's."""
    means: list[float] = []
    weights: list[float] = []
    sizes: list[int] = []
    for yi, wi in zip(y.tolist(), w.tolist(), strict=True):
        mean, weight, size = yi, wi, 1
        while means and means[-1] > mean:
            prev_mean, prev_weight, prev_size = means.pop(), weights.pop(), sizes.pop()
            mean = (prev_mean * prev_weight + mean * weight) / (prev_weight + weight)
            weight += prev_weight
            size += prev_size
        means.append(mean)
        weights.append(weight)
        sizes.append(size)
    return np.repeat(np.asarray(means), np.asarray(sizes))


def platt_fit(score: np.ndarray, y_true: np.ndarray, max_iter: int = 100, tol: float = 1e-10) -> tuple[float, float]:
    """Platt scaling: ``(a, b)`` maximising the likelihood of ``p = 1 / (1 + exp(−(a·s + b)))``.

    Uses Platt's smoothed targets ``(n₊ + 1)/(n₊ + 2)`` and ``1/(n₋ + 2)`` so a separable
    calibration set does not send ``a`` to infinity (Platt 1999, "Probabilistic outputs for
    support vector machines"), and Newton's method with step halving as in Lin, Lin & Weng 2007
    ("A note on Platt's probabilistic outputs for support vector machines", Machine Learning
    68:267). ``score`` should be the booster's raw margin (log-odds), where a sigmoid is the
    right shape.
    """
    s = np.asarray(score, dtype=np.float64).ravel()
    y, _ = labels_and_probs(y_true, s)
    if s.size == 0:
        raise ValueError("platt_fit needs at least one calibration row")
    n_pos = y.sum()
    n_neg = y.size - n_pos
    t = np.where(y == 1.0, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))

    def nll(a: float, b: float) -> float:
        z = a * s + b
        return float(np.sum(np.logaddexp(0.0, z) - t * z))

    a, b = 1.0, float(np.log((n_pos + 1.0) / (n_neg + 1.0)))
    current = nll(a, b)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(a * s + b)))
        g_a, g_b = float(np.sum((p - t) * s)), float(np.sum(p - t))
        v = p * (1.0 - p) + 1e-12
        h_aa, h_ab, h_bb = float(np.sum(v * s * s)), float(np.sum(v * s)), float(np.sum(v))
        det = h_aa * h_bb - h_ab * h_ab
        if abs(g_a) < tol and abs(g_b) < tol or det <= 0:
            break
        step_a = (h_bb * g_a - h_ab * g_b) / det
        step_b = (h_aa * g_b - h_ab * g_a) / det
        scale = 1.0
        while scale > 1e-8:
            cand_a, cand_b = a - scale * step_a, b - scale * step_b
            candidate = nll(cand_a, cand_b)
            if candidate <= current + 1e-4 * scale * (g_a * -step_a + g_b * -step_b):
                break
            scale /= 2.0
        if scale <= 1e-8:
            break
        a, b, previous, current = cand_a, cand_b, current, candidate
        if abs(previous - current) < tol * max(1.0, abs(previous)):
            break
    return a, b


def platt_apply(score: np.ndarray, a: float, b: float) -> np.ndarray:
    """Probabilities from a Platt fit: ``1 / (1 + exp(−(a·s + b)))``."""
    z = a * np.asarray(score, dtype=np.float64) + b
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def pit_from_quantiles(y: np.ndarray, knots: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """Probability integral transform ``F̂ᵢ(yᵢ)`` from a few predicted quantiles per row.

    ``knots`` is ``(n, k)``: row ``i``'s predicted quantiles at ``levels`` (``k`` increasing
    probabilities, e.g. the ETA model's ``(eta_low, eta_minutes, eta_high)`` at ``(0.1, 0.5,
    0.9)``). ``F̂ᵢ`` interpolates linearly between the knots and continues the outer segments'
    slopes into the tails, clipped to [0, 1]. Knots are sorted per row first (a point estimate
    outside its own interval would otherwise fold the CDF). For a calibrated forecast the PIT is
    uniform on [0, 1] (Dawid 1984; Gneiting, Balabdaoui & Raftery 2007, "Probabilistic
    forecasts, calibration and sharpness", JRSS B): a U-shaped histogram means intervals too
    narrow, a hump too wide, a slope bias. With three knots the tails are a linear guess, so
    read the outer bins together with ``eval.metrics.interval_coverage``.
    """
    values = np.asarray(y, dtype=np.float64).ravel()
    q = np.sort(np.asarray(knots, dtype=np.float64), axis=1)
    tau = np.asarray(levels, dtype=np.float64).ravel()
    if q.ndim != 2 or q.shape != (values.size, tau.size) or tau.size < 2:
        raise ValueError(f"knots must be (n, k) with k = len(levels) ≥ 2 and n = len(y); got {q.shape} for {values.size} rows, {tau.size} levels")
    if np.any(np.diff(tau) <= 0) or tau[0] <= 0.0 or tau[-1] >= 1.0:
        raise ValueError("levels must be strictly increasing inside (0, 1)")
    # Segment j spans knots j..j+1; values left of the first knot use segment 0, right of the last the last one.
    segment = np.clip((values[:, None] > q).sum(axis=1) - 1, 0, tau.size - 2)
    rows = np.arange(values.size)
    lo, hi = q[rows, segment], q[rows, segment + 1]
    width = hi - lo
    with np.errstate(invalid="ignore", divide="ignore"):
        fraction = np.where(width > 0, (values - lo) / width, np.where(values >= hi, 1.0, 0.0))
    pit = tau[segment] + fraction * (tau[segment + 1] - tau[segment])
    return np.clip(pit, 0.0, 1.0)


def pit_histogram(pit: np.ndarray, n_bins: int = DEFAULT_ECE_BINS) -> tuple[np.ndarray, np.ndarray]:
    """``(edges, density)``: PIT values in ``n_bins`` equal bins over [0, 1], density 1 when uniform."""
    values = np.asarray(pit, dtype=np.float64).ravel()
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    count = np.bincount(np.clip((values * n_bins).astype(np.int64), 0, n_bins - 1), minlength=n_bins).astype(np.float64)
    return edges, count * n_bins / max(values.size, 1) if values.size else np.full(n_bins, np.nan)
