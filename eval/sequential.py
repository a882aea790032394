"""Anytime-valid comparison of a challenger with the champion on matured labels.

The release controller looks at the evidence after every batch of matured labels and stops as
soon as it is convincing. A fixed-sample test (t-test, bootstrap CI) checked that way is wrong
far more often than its nominal level, because every look is another chance to cross the line
("peeking"). A *confidence sequence* instead holds at every sample size simultaneously:
``P(∃ n: δ ∉ CS_n) ≤ α``, so the controller may look after every job and stop whenever it likes
(Johari, Koomen, Pekelis & Walsh, "Always valid inference: continuous monitoring of A/B tests",
Operations Research 70(3), 2022; Howard, Ramdas, McAuliffe & Sekhon, "Time-uniform,
nonparametric, nonasymptotic confidence sequences", Annals of Statistics 49(2), 2021).

The observations are differences of per-job losses, ``dᵢ = loss_challenger − loss_champion``,
one stream per metric (ETA absolute error in minutes, acceptance log loss), so ``δ = E[d] < 0``
means the challenger is better. A job contributes a *paired* difference when both models scored
it (the challenger in shadow), or a *two-sample* one when a challenger-served job is matched in
request order with a champion-served job (as in Johari et al.'s two-sample mSPRT, a two-sample
stream observed in pairs is a one-sample stream of differences).

The boundary is the two-sided normal mixture of Howard et al. (Robbins' method of mixtures): with
``S_n = Σ (dᵢ − δ)`` and variance process ``V_n``, the mixture martingale with mixing density
``N(0, 1/ρ)`` is ``M_n = sqrt(ρ/(V_n+ρ)) exp(S_n² / (2(V_n+ρ)))`` and Ville's inequality gives,
for all n at once with probability ≥ 1 − α::

    |S_n| < sqrt((V_n + ρ) log((V_n + ρ) / (ρ α²)))

Per-job losses are unbounded, so ``V_n = n σ̂_n²`` uses the running sample variance and ρ is
taken in units of it (``ρ = σ̂² ρ₀``): the asymptotic confidence sequence of Waudby-Smith,
Arbour, Sinha, Kennedy & Ramdas ("Time-uniform central limit theory and asymptotic confidence
sequences", 2021, arXiv:2103.06476), which is also what Johari et al.'s
mSPRT does with a plug-in variance. Its guarantee is asymptotic, so no decision is taken before
``min_samples`` differences; the unit tests check the false-promotion rate under optional
stopping at every step by simulation. The half-width of the CS for the mean is therefore::

    h_n = (σ̂_n / n) sqrt((n + ρ₀) log((n + ρ₀) / (ρ₀ α²)))

ρ₀ only decides where the boundary is tightest, never validity; :func:`mixture_rho` puts that
at ``target_n`` samples. The always-valid p-value for ``δ = 0`` is
``min(1, 1 / max_{m ≤ n} M_m)`` (Johari et al.).

Decision, with ``k`` metrics each at level ``α/k`` (Bonferroni, so all k sequences hold jointly
with probability ≥ 1 − α) and a non-inferiority margin ``μ_m ≥ 0`` per metric:

* **reject** when some metric is worse beyond its margin: ``lower_m > μ_m``;
* **promote** when every metric is non-inferior (``upper_m < μ_m``) and at least one is better
  (``upper_m < 0``);
* **continue** otherwise (including any metric with fewer than ``min_samples`` differences).

Under no difference (δ = 0 for every metric) a promotion needs some ``upper_m < 0``, i.e. a
sequence that missed δ, so the false-promotion rate is at most α at any stopping time.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

Decision = Literal["promote", "reject", "continue"]
Verdict = Literal["better", "non_inferior", "worse", "inconclusive", "insufficient"]
#: Codes of :func:`decision_path`, index into :data:`DECISIONS`.
DECISIONS: tuple[Decision, ...] = ("continue", "promote", "reject")
CONTINUE, PROMOTE, REJECT = 0, 1, 2


def mixture_rho(target_n: float, alpha: float) -> float:
    """ρ₀ (in samples) that makes the normal-mixture boundary tightest near ``target_n`` samples.

    Minimising ``(n + ρ) log((n + ρ)/(ρ α²))`` over ρ at ``n = target_n`` gives, to first order,
    ``ρ = n / (log(1/α²) + log(1 + log(1/α²)))``: the approximation Waudby-Smith et al. (2024)
    use for the conjugate-mixture margin (their ``ρ² = 1/ρ₀``), after Howard et al. (2021).
    """
    if target_n <= 0 or not 0.0 < alpha < 1.0:
        raise ValueError(f"need target_n > 0 and 0 < alpha < 1, got {target_n} and {alpha}")
    log_term = 2.0 * np.log(1.0 / alpha)
    return float(target_n / (log_term + np.log1p(log_term)))


def mixture_half_width(n: npt.ArrayLike, sd: npt.ArrayLike, alpha: float, rho: float) -> npt.NDArray[np.float64]:
    """``(σ̂/n) sqrt((n + ρ₀) log((n + ρ₀)/(ρ₀ α²)))``: the CS half-width for a mean (module docstring)."""
    n_arr = np.asarray(n, dtype=np.float64)
    sd_arr = np.asarray(sd, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        radius = np.sqrt((n_arr + rho) * np.log((n_arr + rho) / (rho * alpha**2)))
        return np.where(n_arr > 0, sd_arr * radius / np.where(n_arr > 0, n_arr, 1.0), np.inf)


@dataclass(frozen=True)
class SequencePath:
    """Running mean, CS bounds and always-valid p-value after every job, per metric (jobs × metrics)."""

    count: npt.NDArray[np.int64]
    mean: npt.NDArray[np.float64]
    lower: npt.NDArray[np.float64]
    upper: npt.NDArray[np.float64]
    p_value: npt.NDArray[np.float64]


def confidence_sequences(differences: npt.ArrayLike, alpha: float, target_n: float) -> SequencePath:
    """The confidence sequence of ``E[d]`` after each row, for each column, at level ``alpha`` each.

    ``differences`` is jobs × metrics in arrival order; NaN where a job has no matured label for a
    metric (that metric's stream simply does not advance). Running moments come from cumulative
    sums, so the whole path costs O(jobs × metrics).
    """
    d = np.asarray(differences, dtype=np.float64)
    if d.ndim == 1:
        d = d[:, None]
    present = ~np.isnan(d)
    values = np.where(present, d, 0.0)
    count = np.cumsum(present, axis=0)
    total = np.cumsum(values, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
        # Sum of squared deviations from the running mean: Σd² − (Σd)²/n, clipped at 0 for rounding.
        squares = np.maximum(np.cumsum(values**2, axis=0) - total**2 / np.maximum(count, 1), 0.0)
        # One observation says nothing about the spread: the sequence is the whole line until two.
        sd = np.where(count >= 2, np.sqrt(squares / np.maximum(count - 1, 1)), np.inf)
    rho = mixture_rho(target_n, alpha)
    half = mixture_half_width(count, sd, alpha, rho)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        # log M_n for δ = 0 in the same units: S_n²/(2 σ̂² (n + ρ₀)) + ½ log(ρ₀/(n + ρ₀)).
        log_m = np.where(
            (count > 1) & (sd > 0),
            total**2 / (2.0 * sd**2 * (count + rho)) + 0.5 * np.log(rho / (count + rho)),
            0.0,
        )
    p_value = np.minimum(1.0, np.exp(-np.maximum.accumulate(log_m, axis=0)))
    return SequencePath(count=count, mean=mean, lower=mean - half, upper=mean + half, p_value=p_value)


def _verdicts(path: SequencePath, row: int, margins: npt.NDArray[np.float64], min_samples: int) -> list[Verdict]:
    out: list[Verdict] = []
    for m in range(margins.size):
        if path.count[row, m] < min_samples:
            out.append("insufficient")
        elif path.lower[row, m] > margins[m]:
            out.append("worse")
        elif path.upper[row, m] < 0.0:
            out.append("better")
        elif path.upper[row, m] < margins[m]:
            out.append("non_inferior")
        else:
            out.append("inconclusive")
    return out


def decision_path(
    differences: npt.ArrayLike, margins: npt.ArrayLike, *, alpha: float, min_samples: int, target_n: float
) -> tuple[npt.NDArray[np.int8], SequencePath]:
    """The decision code (:data:`DECISIONS`) after every job, and the sequences behind it.

    This is the whole optional-stopping history: a controller that looks after every job and
    acts on the first non-``continue`` code acts on ``codes[argmax(codes != CONTINUE)]``.
    """
    d = np.asarray(differences, dtype=np.float64)
    d = d[:, None] if d.ndim == 1 else d
    margin = np.asarray(margins, dtype=np.float64).reshape(-1)
    if margin.size != d.shape[1] or np.any(margin < 0):
        raise ValueError(f"need one non-negative margin per metric ({d.shape[1]}), got {margin.tolist()}")
    path = confidence_sequences(d, alpha / d.shape[1], target_n)
    enough = path.count >= min_samples
    worse = enough & (path.lower > margin)
    non_inferior = enough & (path.upper < margin)
    better = enough & (path.upper < 0.0)
    codes = np.full(d.shape[0], CONTINUE, dtype=np.int8)
    codes[non_inferior.all(axis=1) & better.any(axis=1)] = PROMOTE
    codes[worse.any(axis=1)] = REJECT
    return codes, path


@dataclass(frozen=True)
class MetricEvidence:
    metric: str
    n: int
    mean_difference: float
    lower: float
    upper: float
    margin: float
    p_value: float
    verdict: Verdict


@dataclass(frozen=True)
class SequentialResult:
    """The decision now, with the evidence per metric (differences are challenger − champion)."""

    decision: Decision
    reason: str
    alpha: float
    metrics: tuple[MetricEvidence, ...]

    def evidence(self) -> dict[str, float | int | str]:
        """Flat numbers for an event or action record."""
        out: dict[str, float | int | str] = {"test": self.decision, "alpha": self.alpha}
        for m in self.metrics:
            out.update({
                f"{m.metric}_n": m.n, f"{m.metric}_diff": round(m.mean_difference, 6),
                f"{m.metric}_lower": round(m.lower, 6), f"{m.metric}_upper": round(m.upper, 6),
                f"{m.metric}_p": round(m.p_value, 6), f"{m.metric}_verdict": m.verdict,
            })
        return out


def sequential_test(
    differences: Mapping[str, npt.ArrayLike],
    margins: Mapping[str, float],
    *,
    alpha: float,
    min_samples: int,
    target_n: float,
) -> SequentialResult:
    """Promote / reject / continue on per-job loss differences (challenger − champion) so far.

    ``differences`` maps each metric to its stream in arrival order, all the same length, NaN
    where a job has no matured label for that metric. See the module docstring for the rule.
    """
    names = list(differences)
    if not names or set(names) != set(margins):
        raise ValueError(f"need a margin for each metric: metrics {names}, margins {sorted(margins)}")
    columns = [np.asarray(differences[m], dtype=np.float64).reshape(-1) for m in names]
    if len({c.size for c in columns}) != 1:
        raise ValueError(f"metric streams must be aligned per job: lengths {[c.size for c in columns]}")
    margin = np.array([margins[m] for m in names], dtype=np.float64)
    if columns[0].size == 0:
        metrics = tuple(MetricEvidence(m, 0, float("nan"), -float("inf"), float("inf"), margins[m], 1.0, "insufficient") for m in names)
        return SequentialResult("continue", "no matured label pairs yet", alpha, metrics)
    codes, path = decision_path(np.column_stack(columns), margin, alpha=alpha, min_samples=min_samples, target_n=target_n)
    last = codes.size - 1
    verdicts = _verdicts(path, last, margin, min_samples)
    metrics = tuple(
        MetricEvidence(
            metric=m, n=int(path.count[last, i]), mean_difference=float(path.mean[last, i]), lower=float(path.lower[last, i]),
            upper=float(path.upper[last, i]), margin=float(margin[i]), p_value=float(path.p_value[last, i]), verdict=verdicts[i],
        )
        for i, m in enumerate(names)
    )
    decision = DECISIONS[int(codes[last])]
    described = ", ".join(f"{e.metric} {e.verdict} ({e.mean_difference:+.4g} in [{e.lower:+.4g}, {e.upper:+.4g}], n={e.n})" for e in metrics)
    return SequentialResult(decision, f"{decision}: {described}", alpha, metrics)
