"""Label-free performance estimates for the hours and days before labels arrive.

Realized metrics wait for the label-completeness watermark (``eval.labels``). Until then the
models' own uncertainty says what error to expect, *if the model is still right about its own
uncertainty*:

- **Acceptance: confidence-based performance estimation** (CBPE; NannyML, "Estimating model
  performance without ground truth", 2022). If ``p`` is calibrated, ``y ~ Bernoulli(p)`` given
  ``p``, so the expected Brier score is ``mean p(1−p)``, expected log loss the mean binary
  entropy ``−[p log p + (1−p) log(1−p)]``, expected accuracy at threshold ``t`` the mean of
  ``p`` where ``p ≥ t`` and ``1−p`` elsewhere, and the expected acceptance rate ``mean p``.
- **ETA: loss estimation from the interval** (a small, pure-numpy form of NannyML's direct loss
  estimation). ``IntervalLossEstimator`` learns on a matured reference window how absolute and
  squared error grow with the width of the model's own (conformalized) interval, binned at the
  reference's width deciles, and predicts a cohort's MAE and RMSE from its widths alone.

What they can and cannot see
    Both read only the model's inputs and outputs. They follow a change in *which* jobs come in
    (covariate shift: more long rural trips widen intervals and raise the estimate). They cannot
    see a change in the outcome given the same inputs (concept drift: a detour network the
    traffic feed does not see, a cohort that starts declining): the model is as confident as
    before and so is the estimate, while the realized error moves. The gap between the two once
    labels land is itself the concept-drift signal. A corrupted input (a unit bug) moves the
    predictions; the estimate moves only as far as the interval widths do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from eval.calibration import brier_score, labels_and_probs, log_loss


def _probabilities(p: np.ndarray) -> np.ndarray:
    q = np.asarray(p, dtype=np.float64).ravel()
    if q.size and (np.nanmin(q) < 0.0 or np.nanmax(q) > 1.0):
        raise ValueError("probabilities must lie in [0, 1]")
    return q


def expected_brier(p: np.ndarray) -> float:
    """``(1/n) Σ pᵢ(1 − pᵢ)``: the Brier score expected when ``y ~ Bernoulli(p)``."""
    q = _probabilities(p)
    return float(np.mean(q * (1.0 - q))) if q.size else float("nan")


def expected_log_loss(p: np.ndarray) -> float:
    """Mean binary entropy ``−(1/n) Σ [pᵢ log pᵢ + (1 − pᵢ) log(1 − pᵢ)]`` (nats), the expected log loss.

    ``p`` is clipped to ``[ε, 1 − ε]`` as ``eval.calibration.log_loss`` does.
    """
    q = _probabilities(p)
    if not q.size:
        return float("nan")
    eps = np.finfo(np.float64).eps
    q = np.clip(q, eps, 1.0 - eps)
    return float(-np.mean(q * np.log(q) + (1.0 - q) * np.log1p(-q)))


def expected_accuracy(p: np.ndarray, threshold: float = 0.5) -> float:
    """``(1/n) Σ [pᵢ if pᵢ ≥ t else 1 − pᵢ]``: expected share of correct accept/decline calls at ``t``."""
    q = _probabilities(p)
    return float(np.mean(np.where(q >= threshold, q, 1.0 - q))) if q.size else float("nan")


def acceptance_estimate(p_accept: np.ndarray) -> dict[str, float]:
    """CBPE scorecard from probabilities alone; keys match ``realized_acceptance``."""
    q = _probabilities(p_accept)
    return {
        "brier": expected_brier(q),
        "log_loss": expected_log_loss(q),
        "accuracy": expected_accuracy(q),
        "acceptance_rate": float(np.mean(q)) if q.size else float("nan"),
    }


def realized_acceptance(accepted: np.ndarray, p_accept: np.ndarray) -> dict[str, float]:
    """The same scorecard from labels, for comparing with ``acceptance_estimate``."""
    y, q = labels_and_probs(accepted, p_accept)
    return {
        "brier": brier_score(y, q),
        "log_loss": log_loss(y, q),
        "accuracy": float(np.mean((q >= 0.5) == (y == 1.0))) if y.size else float("nan"),
        "acceptance_rate": float(np.mean(y)) if y.size else float("nan"),
    }


@dataclass
class IntervalLossEstimator:
    """Expected ETA absolute and squared error as a step function of the interval width.

    ``fit`` bins the reference rows at the deciles of their interval width (``n_bins`` bins,
    edges frozen from the reference, outer bins open-ended) and keeps each bin's mean absolute
    error and mean squared error. ``estimate`` maps each current row to its bin: a cohort's
    estimated MAE is the mean of its rows' expected absolute errors, its RMSE the root of the
    mean expected squared error. The reference must be labelled, matured and representative of
    a period when the model was right (e.g. the first days after release).
    """

    n_bins: int = 10

    def fit(self, eta_low: np.ndarray, eta_high: np.ndarray, arrival_minutes: np.ndarray, eta_minutes: np.ndarray) -> IntervalLossEstimator:
        width = np.asarray(eta_high, np.float64) - np.asarray(eta_low, np.float64)
        error = np.asarray(eta_minutes, np.float64) - np.asarray(arrival_minutes, np.float64)
        keep = np.isfinite(width) & np.isfinite(error)
        if keep.sum() < self.n_bins:
            raise ValueError(f"IntervalLossEstimator needs at least {self.n_bins} labelled reference rows, got {int(keep.sum())}")
        width, error = width[keep], error[keep]
        self.edges_ = np.unique(np.quantile(width, np.linspace(0.0, 1.0, self.n_bins + 1)[1:-1]))
        idx = np.searchsorted(self.edges_, width, side="right")
        count = np.bincount(idx, minlength=len(self.edges_) + 1).astype(np.float64)
        self.abs_error_ = np.bincount(idx, weights=np.abs(error), minlength=len(count)) / np.maximum(count, 1.0)
        self.squared_error_ = np.bincount(idx, weights=error**2, minlength=len(count)) / np.maximum(count, 1.0)
        return self

    def expected_errors(self, eta_low: np.ndarray, eta_high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row: (expected absolute error, expected squared error)."""
        width = np.asarray(eta_high, np.float64) - np.asarray(eta_low, np.float64)
        idx = np.searchsorted(self.edges_, width, side="right")
        return self.abs_error_[idx], self.squared_error_[idx]

    def estimate(self, eta_low: np.ndarray, eta_high: np.ndarray) -> dict[str, float]:
        """Estimated ``mae`` and ``rmse`` of a cohort, from its intervals alone."""
        if not np.asarray(eta_low).size:
            return {"mae": float("nan"), "rmse": float("nan")}
        abs_error, squared_error = self.expected_errors(eta_low, eta_high)
        return {"mae": float(np.mean(abs_error)), "rmse": float(np.sqrt(np.mean(squared_error)))}
