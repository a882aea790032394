"""The offline gate: a retrained candidate against the champion, on the same holdout, per segment.

A retrain is triggered by drift in one place (a region, a cohort); a candidate that fixes that
region by getting worse somewhere else must not go on to shadow and canary. So the candidate and
the champion score the *same* matured holdout rows and, for each metric, every segment with at
least ``gate_min_rows`` rows is judged on the relative change of its mean loss::

    Δ = (m_candidate − m_champion) / m_champion        (m = ETA MAE, or acceptance log loss)

The segment fails if Δ exceeds its tolerance *and* the excess is not noise: both models score
the same rows, so with per-row losses ``kᵢ`` (champion) and ``cᵢ`` (candidate) the one-sided
paired test of ``H₀: Δ ≤ tolerance`` uses ``eᵢ = cᵢ − (1 + tolerance)·kᵢ``::

    z = ē / (s_e / √n)          fail  if  Δ > tolerance  and  z > Φ⁻¹(gate_confidence)

(a paired z-test on the CLT; pairing removes the row-to-row spread both models share, which is
most of it). On a 200-row segment a log loss moves ±3 % between two equally good models; a
point-estimate gate at 2 % would block most retrains on noise, while a real regression beyond
the tolerance on a segment that size is still caught. Segments smaller than ``gate_min_rows``
are listed with verdict ``ignored``.

Segments are each value of ``region_id``, ``provider_cohort``, ``line_of_business`` and
``hour_of_day`` (``retrain.train.SEGMENT_COLUMNS``), one column at a time; crossing them would
leave most cells too small to judge. The overall metric is judged the same way with
``overall_tolerance`` (default 0: not worse overall beyond noise). An empty holdout fails the
gate: nothing judged is not the same as nothing regressed.

Tolerances, as defaults in ``cluster/default.yaml`` (``retrain:``): ETA MAE +3 % relative,
acceptance log loss +2 % relative, confidence 0.95. Log loss gets the tighter bound because it
moves less between models than MAE and the ranking prices declines with the probability
directly.

:func:`gate` is a pure function of frames of predictions (no Ray, no registry), so it is tested
on hand-made frames; :func:`holdout_predictions` builds those frames from fitted models.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import numpy as np
import pandas as pd
from scipy.stats import norm

from cluster.config import RetrainSettings
from eval.calibration import log_losses
from eval.metrics import per_segment
from retrain.acceptance_model import AcceptanceModel
from retrain.eta_model import EtaModel
from retrain.train import SEGMENT_COLUMNS, holdout_segments

GateMetric = Literal["eta_mae", "acceptance_log_loss"]
Verdict = Literal["pass", "fail", "ignored"]

#: Columns of a gate input frame besides the segment columns.
PREDICTION_COLUMNS: tuple[str, str, str] = ("y", "champion", "candidate")
#: The segment name of the whole-holdout check.
OVERALL = "overall"


@dataclass(frozen=True)
class GateCheck:
    """One metric on one segment: both models' values, the relative change and the verdict."""

    metric: GateMetric
    segment: str
    value: str
    rows: int
    champion: float
    candidate: float
    relative_change: float
    tolerance: float
    #: Paired z statistic of ``H₀: relative change ≤ tolerance``; large means a real regression.
    z: float
    verdict: Verdict


@dataclass(frozen=True)
class GateResult:
    passed: bool
    checks: tuple[GateCheck, ...]
    #: One line: why it passed or which segments failed.
    reason: str

    @property
    def failures(self) -> tuple[GateCheck, ...]:
        return tuple(c for c in self.checks if c.verdict == "fail")

    def table(self) -> pd.DataFrame:
        """One row per check, in the order judged (overall first within each metric)."""
        return pd.DataFrame([asdict(c) for c in self.checks], columns=list(GateCheck.__dataclass_fields__))


def absolute_errors(y: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Per-row ``|ŷᵢ − yᵢ|``, whose mean is ``eval.metrics.mae``."""
    return np.abs(np.asarray(prediction, dtype=np.float64) - np.asarray(y, dtype=np.float64))


def paired_regression(champion_loss: np.ndarray, candidate_loss: np.ndarray, tolerance: float) -> dict[str, float]:
    """Mean losses, ``Δ = (c̄ − k̄) / k̄`` and the paired z of ``H₀: Δ ≤ tolerance`` (module docstring).

    ``z`` is ``+inf``/``−inf`` when the differences have no spread, ``nan`` on fewer than two rows.
    A perfect champion (``k̄ = 0``) gives ``Δ = inf`` for any worse candidate.
    """
    k = np.asarray(champion_loss, dtype=np.float64)
    c = np.asarray(candidate_loss, dtype=np.float64)
    n = k.size
    if n == 0:
        return {"champion": math.nan, "candidate": math.nan, "relative_change": math.nan, "z": math.nan}
    k_mean, c_mean = float(k.mean()), float(c.mean())
    if k_mean > 0:
        change = (c_mean - k_mean) / k_mean
    else:
        change = 0.0 if c_mean <= k_mean else math.inf
    z = math.nan
    if n >= 2:
        excess = c - (1.0 + tolerance) * k
        spread = float(excess.std(ddof=1))
        mean_excess = float(excess.mean())
        z = mean_excess / (spread / math.sqrt(n)) if spread > 0 else math.copysign(math.inf, mean_excess) if mean_excess else 0.0
    return {"champion": k_mean, "candidate": c_mean, "relative_change": change, "z": z}


def gate(
    eta: pd.DataFrame,
    acceptance: pd.DataFrame,
    settings: RetrainSettings,
    segments: Sequence[str] = SEGMENT_COLUMNS,
) -> GateResult:
    """Judge the candidate against the champion, overall and on each segment of each metric.

    ``eta`` has columns ``y`` (arrival minutes), ``champion`` and ``candidate`` (point ETAs);
    ``acceptance`` has ``y`` (0/1), ``champion`` and ``candidate`` (P(accept)); both carry the
    segment columns they can be cut by (missing ones are skipped). Rows must have known labels.
    """
    metrics: tuple[tuple[GateMetric, pd.DataFrame, Callable[[np.ndarray, np.ndarray], np.ndarray], float], ...] = (
        ("eta_mae", eta, absolute_errors, settings.eta_mae_tolerance),
        ("acceptance_log_loss", acceptance, log_losses, settings.log_loss_tolerance),
    )
    z_critical = float(norm.ppf(settings.gate_confidence))
    checks: list[GateCheck] = []
    for metric, frame, loss, tolerance in metrics:
        missing = [c for c in PREDICTION_COLUMNS if c not in frame.columns]
        if missing:
            raise KeyError(f"the {metric} gate frame lacks {missing}; build it with holdout_predictions()")

        columns = [frame[c].to_numpy(dtype=np.float64) for c in PREDICTION_COLUMNS]
        overall = {**_paired_report(*columns, loss=loss, tolerance=settings.overall_tolerance), "n": float(len(frame))}
        checks.append(_check(metric, OVERALL, "all", overall, settings.overall_tolerance, 1, z_critical, empty_fails=True))
        report = functools.partial(_paired_report, loss=loss, tolerance=tolerance)
        for column in (c for c in segments if c in frame.columns):
            by_value = per_segment(frame, column, report, PREDICTION_COLUMNS)
            checks += [_check(metric, column, v, m, tolerance, settings.gate_min_rows, z_critical) for v, m in by_value.items()]
    failures = [c for c in checks if c.verdict == "fail"]
    judged = sum(c.verdict != "ignored" for c in checks)
    if failures:
        worst = sorted(failures, key=lambda c: -c.relative_change)[:3]
        reason = f"failed {len(failures)} of {judged} judged checks: " + "; ".join(
            f"{c.metric} {c.segment}={c.value} {c.relative_change:+.1%} > {c.tolerance:.0%} (z={c.z:.1f})" for c in worst
        )
    else:
        reason = f"passed all {judged} judged checks ({len(checks) - judged} segments too small to judge)"
    return GateResult(passed=not failures, checks=tuple(checks), reason=reason)


def _paired_report(
    y: np.ndarray,
    champion: np.ndarray,
    candidate: np.ndarray,
    *,
    loss: Callable[[np.ndarray, np.ndarray], np.ndarray],
    tolerance: float,
) -> dict[str, float]:
    """An ``eval.metrics.per_segment`` report: :func:`paired_regression` of the two models' per-row losses."""
    return paired_regression(loss(y, champion), loss(y, candidate), tolerance)


def _check(
    metric: GateMetric,
    segment: str,
    value: str,
    m: dict[str, float],
    tolerance: float,
    min_rows: int,
    z_critical: float,
    empty_fails: bool = False,
) -> GateCheck:
    rows = int(m["n"])
    verdict: Verdict
    if rows == 0:
        verdict = "fail" if empty_fails else "ignored"
    elif rows < min_rows:
        verdict = "ignored"
    else:
        regressed = m["relative_change"] > tolerance and not m["z"] <= z_critical  # nan z (one row) counts as real
        verdict = "fail" if regressed else "pass"
    return GateCheck(metric, segment, value, rows, m["champion"], m["candidate"], m["relative_change"], tolerance, m["z"], verdict)


def holdout_predictions(
    holdout: pd.DataFrame,
    champion: tuple[EtaModel, AcceptanceModel],
    candidate: tuple[EtaModel, AcceptanceModel],
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The two :func:`gate` input frames: both models' predictions on the holdout rows with known labels.

    ETA rows are those with a known arrival, acceptance rows those with a known offer outcome,
    the same rows ``retrain.train.evaluate_holdout`` scores.
    """
    holdout = holdout.reset_index(drop=True)
    segments = holdout_segments(holdout)
    eta_rows = holdout["arrival_minutes"].notna().to_numpy()
    acc_rows = holdout["accepted"].notna().to_numpy()
    eta_x, acc_x = holdout.loc[eta_rows], holdout.loc[acc_rows]
    eta = segments.loc[eta_rows].assign(
        y=eta_x["arrival_minutes"].to_numpy(dtype=np.float64),
        champion=champion[0].predict(eta_x)["eta_minutes"].to_numpy(),
        candidate=candidate[0].predict(eta_x)["eta_minutes"].to_numpy(),
    )
    acceptance = segments.loc[acc_rows].assign(
        y=acc_x["accepted"].to_numpy(dtype=np.float64),
        champion=champion[1].predict_proba(acc_x),
        candidate=candidate[1].predict_proba(acc_x),
    )
    return eta.reset_index(drop=True), acceptance.reset_index(drop=True)
