"""The release controller: shadow → canary steps → champion, and automatic rollback.

A retrained version registered as ``dispatch@challenger`` is released in stages. The split
(``serve_apps.traffic``) first *shadows* it: the challenger scores every champion-served job off
the response path. Then a *canary* serves it to a growing share of jobs
(``Settings.release.canary_steps``, e.g. 5 % → 25 % → 50 %), and finally it is *promoted*:
``dispatch@champion`` moves to it, the old champion stays on the alias's rollback stack (and
becomes ``dispatch@fallback``, the last-known-good), and the new champion is on *probation* for
``probation_hours``.

Each :func:`release_step` observes, decides, acts, records:

1. :func:`observe` reads the prediction log since the experiment began (the later of the two
   alias moves) and the labels known by ``as_of``, keeps labels past the completeness watermark
   (``eval.labels``), and summarises a :class:`ReleaseSituation`:
   * the sequential test (``eval.sequential``) on per-job loss differences, challenger minus
     champion: ETA absolute error and acceptance log loss. Shadow rows give paired differences
     (both models on the same job); challenger-served jobs are matched in request order with
     champion-served jobs that have no shadow row (two-sample differences);
   * guardrails per arm: p99 latency, error/timeout share and fallback share of the
     challenger's own requests against the champion's over the same period;
   * the burn rate (``eval.burn_rate.alert_levels``, the service SLOs of ``Settings.slo``) on the
     rows of the arm under test alone: the canary's, or a newly promoted champion's.
2. :func:`decide` is a pure function of the situation and the settings: ``shadow`` (start it),
   ``advance``, ``promote``, ``hold`` or ``rollback``, with a reason.
3. :func:`apply_decision` makes the change through the same code paths as the admin API
   (``serve_apps.traffic_state.change_traffic`` and the registry's ``set_alias``/``rollback``), so
   every router replica picks it up on its next one-second poll without a restart or a dropped
   request, and records an :class:`~contracts.events.ActionRecord` with the reason in the event log
   (plus a ``release`` :class:`~contracts.events.Event` for a promotion or a rollback).

Rollback is automatic when the canary or the new champion burns error budget at page rate on
its own requests, a guardrail trips, the test rejects the challenger (worse beyond a margin), or
the test is still undecided after ``max_samples`` jobs at the last step. A rolled-back
experiment stays stopped (the event log remembers it) until a new challenger is registered.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from cluster.config import ReleaseSettings, Settings
from cluster.event_log import EventLog
from contracts.events import ActionRecord, Event, EvidenceValue, event_id, incident_key
from contracts.warehouse import LABELS
from eval.burn_rate import LEVELS, alert_levels
from eval.calibration import log_losses
from eval.labels import completeness_watermark, join_labels, matured
from eval.sequential import SequentialResult, sequential_test
from retrain.registry import AliasRecord, ModelRegistry
from retrain.training_set import TrainingSetError, read_labels
from serve_apps.prediction_log import read_prediction_log
from serve_apps.traffic_state import TrafficState, change_traffic, read_state

Stage = Literal["idle", "shadow", "canary", "manual", "stopped", "probation"]
ReleaseAction = Literal["shadow", "advance", "promote", "hold", "rollback"]
#: The event log's action kind for each decision.
ACTION_KINDS: dict[str, str] = {"shadow": "shadow", "advance": "canary_advance", "promote": "promote", "hold": "none", "rollback": "rollback"}
#: ``moved_by`` / ``changed_by`` of every change the controller makes.
RELEASE_ACTOR = "release"
SOURCE = "release_controller"
ETA_METRIC, ACCEPTANCE_METRIC = "eta_abs_error", "accept_log_loss"
#: Degradation reasons (``contracts.scoring.DegradationReason``) that mean the arm's model failed.
ERROR_REASONS = ("model_error", "model_timeout")
#: What the controller reads of the prediction log (not the feature vectors).
LOG_COLUMNS = ["request_id", "job_id", "provider_id", "role", "arm", "dispatch_version", "requested_at", "latency_ms",
               "degradation_reasons", "rank", "eta_minutes", "p_accept"]
FALLBACK_REASONS = (*ERROR_REASONS, "breaker_open")


class ReleaseError(RuntimeError):
    """The controller cannot act (e.g. no champion); the message says what to do."""


@dataclass(frozen=True)
class Guardrail:
    """One guardrail on the arm under test; ``value`` is NaN when the arm has too few requests."""

    name: str
    arm: str
    value: float
    limit: float
    requests: int

    @property
    def tripped(self) -> bool:
        return math.isfinite(self.value) and self.value > self.limit


@dataclass(frozen=True)
class ReleaseSituation:
    """What the controller sees: the stage, the evidence and the guardrails, at ``as_of``."""

    stage: Stage
    champion: str
    #: The version under test: the challenger, or in probation the newly promoted champion.
    candidate: str | None
    #: What it is compared with: the champion, or in probation the champion it replaced.
    baseline: str | None
    canary_steps: tuple[float, ...]
    canary_step: int | None
    challenger_weight: float
    shadow: bool
    requests_at_step: int
    test: SequentialResult
    guardrails: tuple[Guardrail, ...]
    #: ``none``, ``ticket`` or ``page``: the worst burn-rate tier on the candidate's own requests.
    burn: str
    as_of: datetime
    champion_generation: int
    traffic_generation: int

    @property
    def subject(self) -> str:
        return f"dispatch:{self.baseline}->{self.candidate}"[:128]

    @property
    def experiment_key(self) -> str:
        """The incident key every record of this experiment (baseline → candidate) shares."""
        return experiment_key(self.baseline, self.candidate)

    def evidence(self) -> dict[str, EvidenceValue]:
        out: dict[str, EvidenceValue] = {
            "stage": self.stage, "champion": self.champion, "candidate": self.candidate, "baseline": self.baseline,
            "challenger_weight": self.challenger_weight, "canary_step": self.canary_step, "shadow": self.shadow,
            "requests_at_step": self.requests_at_step, "burn": self.burn,
        }
        out.update(self.test.evidence())
        for g in self.guardrails:
            out[f"{g.name}"] = None if math.isnan(g.value) else round(g.value, 6)
            out[f"{g.name}_limit"] = round(g.limit, 6)
        return out


@dataclass(frozen=True)
class ReleaseDecision:
    action: ReleaseAction
    #: Short label of the rule that decided (``test_rejected``, ``waiting_for_requests``...).
    code: str
    reason: str
    evidence: dict[str, EvidenceValue] = field(default_factory=dict)


def experiment_key(baseline: str | None, candidate: str | None) -> str:
    return incident_key("release", SOURCE, f"dispatch:{baseline}->{candidate}"[:128], {})


# -- the decision --------------------------------------------------------------------------------


def decide(situation: ReleaseSituation, settings: ReleaseSettings) -> ReleaseDecision:
    """The next release action for ``situation``: a pure function, in order of precedence.

    Harm first (burn rate at page rate, a tripped guardrail, the test rejecting: rollback), then
    starting the shadow, then waiting for enough requests at the step, then promotion at the last
    step when the test says so, giving up at the last step after ``max_samples``, else advancing.
    """
    s = situation
    evidence = s.evidence()

    def decision(action: ReleaseAction, code: str, reason: str) -> ReleaseDecision:
        return ReleaseDecision(action, code, reason, evidence)

    if s.stage == "idle":
        return decision("hold", "no_challenger", f"no challenger to release; {s.champion} is champion")
    if s.stage == "stopped":
        return decision("hold", "stopped", f"{s.candidate} was rolled back against {s.baseline}; register a new challenger to start again")
    if s.stage == "manual":
        return decision("hold", "manual", f"challenger weight {s.challenger_weight} was set by hand off the canary steps; "
                        "set it to 0 or use the canary ramp for the controller to act")
    who = "new champion" if s.stage == "probation" else "challenger"
    if s.burn == "page":
        return decision("rollback", "burn_rate", f"{who} {s.candidate} burns error budget at page rate on its own requests")
    tripped = [g for g in s.guardrails if g.tripped]
    if tripped:
        described = "; ".join(f"{g.name} {g.value:.4g} > {g.limit:.4g} ({g.requests} requests)" for g in tripped)
        return decision("rollback", "guardrail", f"guardrail tripped for {who} {s.candidate}: {described}")
    if s.stage == "probation":
        return decision("hold", "probation", f"{s.candidate} on probation after promotion: no page-rate burn, guardrails hold")
    if s.test.decision == "reject":
        return decision("rollback", "test_rejected", f"sequential test rejects {s.candidate}: {s.test.reason}")
    if s.stage == "shadow" and not s.shadow:
        return decision("shadow", "start_shadow", f"new challenger {s.candidate}: shadow-score it on champion-served jobs")
    if s.requests_at_step < settings.min_requests_per_step:
        return decision("hold", "waiting_for_requests",
                        f"{s.requests_at_step} of {settings.min_requests_per_step} challenger requests at this step ({s.test.reason})")
    last_step = len(s.canary_steps) - 1
    if s.stage == "canary" and s.canary_step == last_step:
        if s.test.decision == "promote":
            return decision("promote", "test_promoted", f"sequential test promotes {s.candidate} at weight {s.challenger_weight}: {s.test.reason}")
        seen = max((m.n for m in s.test.metrics), default=0)
        if seen >= settings.max_samples:
            return decision("rollback", "inconclusive", f"no decision after {seen} matured jobs (max {settings.max_samples}): {s.test.reason}")
        return decision("hold", "waiting_for_evidence", f"at the last canary step; {s.test.reason}")
    following = [w for w in s.canary_steps if w > s.challenger_weight]
    if not following:
        return decision("hold", "no_canary_steps", "no canary step above the live weight; configure release.canary_steps")
    return decision("advance", "step_passed",
                    f"{s.requests_at_step} challenger requests at weight {s.challenger_weight}, guardrails hold, test not rejecting; "
                    f"to weight {following[0]} ({s.test.reason})")


# -- observing ----------------------------------------------------------------------------------


def observe(settings: Settings, as_of: datetime | None = None) -> ReleaseSituation:
    """Read aliases, the traffic split, the prediction log and matured labels into a situation."""
    as_of = as_of or datetime.now(UTC)
    release = settings.release
    registry = ModelRegistry(settings.paths.registry)
    champion = registry.alias("dispatch", "champion")
    if champion is None:
        raise ReleaseError("dispatch@champion is not set; register and promote a version first (dispatchml train)")
    challenger = registry.alias("dispatch", "challenger")
    state = read_state(registry.root)
    stage, baseline, candidate, since = _stage(registry, EventLog(settings.paths.events), champion, challenger, state, as_of, release)
    steps = tuple(state.canary_steps) if state.canary_step is not None else tuple(release.canary_steps)
    base = dict(
        champion=champion.version, candidate=candidate, baseline=baseline, canary_steps=steps, canary_step=state.canary_step,
        challenger_weight=state.challenger_weight if stage in ("canary", "manual") else 0.0, shadow=state.shadow,
        as_of=as_of, champion_generation=champion.generation, traffic_generation=state.generation,
    )
    margins = {ETA_METRIC: release.eta_margin_minutes, ACCEPTANCE_METRIC: release.acceptance_margin}
    if stage in ("idle", "stopped") or since is None:
        empty = sequential_test({m: [] for m in margins}, margins, alpha=release.alpha, min_samples=release.min_samples, target_n=release.target_samples)
        return ReleaseSituation(stage=stage, requests_at_step=0, test=empty, guardrails=(), burn="none", **base)
    log = read_prediction_log(Path(settings.paths.root) / "prediction_log", since, as_of, columns=LOG_COLUMNS).to_pandas()
    if stage == "probation":
        # The promoted version now serves as champion; nothing to compare it with on the same jobs.
        requests, arm = request_table(log, candidate, None), "champion"
        streams: dict[str, np.ndarray] = {m: np.array([]) for m in margins}
    else:
        requests, arm = request_table(log, baseline, candidate), "challenger"
        streams = loss_differences(_matured_losses(log, settings, since, as_of), baseline, candidate)
    test = sequential_test(streams, margins, alpha=release.alpha, min_samples=release.min_samples, target_n=release.target_samples)
    step_start = max(since, _parse_time(state.changed_at) or since)
    at_step = requests[requests["requested_at"] >= pd.Timestamp(step_start)]
    if stage == "shadow":
        counted = int((at_step["role"] == "shadow").sum())
    else:
        counted = int(assigned(at_step, arm).sum())
    guardrails = () if stage == "probation" else guardrail_checks(requests, settings)
    mine = requests[assigned(requests, arm)]
    # A handful of requests cannot tell a page-rate burn from one slow request.
    burn = burn_level(mine, settings, as_of) if len(mine) >= release.min_guardrail_requests else "none"
    return ReleaseSituation(stage=stage, requests_at_step=counted, test=test, guardrails=guardrails, burn=burn, **base)


def _stage(
    registry: ModelRegistry, events: EventLog, champion: AliasRecord, challenger: AliasRecord | None,
    state: TrafficState, as_of: datetime, release: ReleaseSettings,
) -> tuple[Stage, str | None, str | None, datetime | None]:
    """``(stage, baseline, candidate, experiment start)``."""
    if challenger is not None and challenger.version != champion.version:
        key = experiment_key(champion.version, challenger.version)
        since = max(champion.moved_at, challenger.moved_at)
        if any(a.incident_key == key and a.action == "rollback" and a.status == "taken" for a in events.actions()):
            return "stopped", champion.version, challenger.version, since
        if state.canary_step is not None:
            return "canary", champion.version, challenger.version, since
        return ("manual" if state.challenger_weight > 0 else "shadow"), champion.version, challenger.version, since
    moves = registry.history("dispatch", "champion")
    promoted = bool(moves) and moves[-1].action == "set" and moves[-1].moved_by == RELEASE_ACTOR
    if promoted and champion.previous_version and as_of - champion.moved_at < timedelta(hours=release.probation_hours):
        return "probation", champion.previous_version, champion.version, champion.moved_at
    return "idle", champion.version, None, None


def release_underway(settings: Settings, as_of: datetime | None = None) -> str | None:
    """Why a new candidate should wait for the release in progress, or None when there is none.

    A challenger in shadow or canary is already the answer to the drift that asks for a retrain
    (its evidence is still accruing), and registering another challenger would end that
    experiment and start over; a champion on probation was promoted so recently that its own
    matured labels are not in yet, so detections still describe the model it replaced.
    """
    as_of = as_of or datetime.now(UTC)
    registry = ModelRegistry(settings.paths.registry)
    champion = registry.alias("dispatch", "champion")
    if champion is None:
        return None
    challenger = registry.alias("dispatch", "challenger")
    state = read_state(registry.root)
    stage, _, candidate, _ = _stage(registry, EventLog(settings.paths.events), champion, challenger, state, as_of, settings.release)
    if stage in ("shadow", "canary", "manual"):
        return f"challenger {candidate} is in release ({stage}); its outcome decides before another retrain"
    if stage == "probation":
        return f"{candidate} was promoted at {champion.moved_at.isoformat()} and is on probation; its matured labels are not in yet"
    return None


def _parse_time(text: str) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _matured_losses(log: pd.DataFrame, settings: Settings, since: datetime, as_of: datetime) -> pd.DataFrame:
    """Log rows with per-row ETA absolute error and acceptance log loss where the label has matured (else NaN)."""
    release = settings.release
    try:
        labels = read_labels(Path(settings.paths.data), as_of, known_from=since)
    except TrainingSetError:
        labels = LABELS.empty_table().to_pandas()
    joined = join_labels(log, labels, as_of)
    horizon_s = release.label_horizon_hours * 3600.0
    eta_ok = matured(joined, completeness_watermark(joined, as_of, "arrival_minutes", release.label_completeness, horizon_s))
    accept_ok = matured(joined, completeness_watermark(joined, as_of, "accepted", release.label_completeness, horizon_s))
    eta_ok &= joined["arrival_minutes"].notna() & joined["eta_minutes"].notna()
    accept_ok &= joined["accepted"].notna() & joined["p_accept"].notna()
    joined[ETA_METRIC] = np.where(eta_ok, (joined["eta_minutes"] - joined["arrival_minutes"]).abs(), np.nan)
    losses = np.full(len(joined), np.nan)
    if accept_ok.any():
        losses[accept_ok.to_numpy()] = log_losses(joined.loc[accept_ok, "accepted"].to_numpy(), joined.loc[accept_ok, "p_accept"].to_numpy())
    joined[ACCEPTANCE_METRIC] = losses
    return joined


def loss_differences(joined: pd.DataFrame, baseline: str | None, candidate: str | None) -> dict[str, np.ndarray]:
    """Per-job loss differences (candidate − baseline) per metric, in request order, NaN-padded to one length.

    Paired: a champion-served job and the challenger's shadow scores of it. Two-sample: the
    challenger-served jobs and the champion-served jobs without a shadow row, matched in request
    order (``eval.sequential``). ``joined`` has the per-row losses of :func:`_matured_losses`.
    """
    metrics = (ETA_METRIC, ACCEPTANCE_METRIC)
    if joined.empty or candidate is None:
        return {m: np.array([]) for m in metrics}
    per_job = joined.groupby(["request_id", "role", "arm", "dispatch_version"], dropna=False, sort=False).agg(
        requested_at=("requested_at", "first"), **{m: (m, "mean") for m in metrics}
    ).reset_index()
    served = per_job[per_job["role"] == "served"]
    champion = served[(served["arm"] == "champion") & (served["dispatch_version"] == baseline)].set_index("request_id")
    challenger = served[(served["arm"] == "challenger") & (served["dispatch_version"] == candidate)].sort_values("requested_at")
    shadow = per_job[(per_job["role"] == "shadow") & (per_job["dispatch_version"] == candidate)].set_index("request_id")
    pairs = shadow[list(metrics)].join(champion[[*metrics, "requested_at"]], how="inner", lsuffix="_challenger")
    unshadowed = champion[~champion.index.isin(shadow.index)].sort_values("requested_at")
    streams: dict[str, np.ndarray] = {}
    for m in metrics:
        paired = pd.DataFrame({"t": pairs["requested_at"], "d": pairs[f"{m}_challenger"] - pairs[m]})
        chal = challenger[["requested_at", m]].dropna()
        champ = unshadowed[["requested_at", m]].dropna()
        k = min(len(chal), len(champ))
        two_sample = pd.DataFrame({"t": chal["requested_at"].to_numpy()[:k], "d": chal[m].to_numpy()[:k] - champ[m].to_numpy()[:k]})
        parts = [part for part in (paired.dropna(), two_sample) if len(part)]
        stream = pd.concat(parts, ignore_index=True).sort_values("t", kind="stable") if parts else two_sample
        streams[m] = stream["d"].to_numpy(dtype=np.float64)
    length = max(len(v) for v in streams.values())
    return {m: np.concatenate([v, np.full(length - len(v), np.nan)]) for m, v in streams.items()}


def request_table(log: pd.DataFrame, champion: str | None, challenger: str | None) -> pd.DataFrame:
    """One row per (request, role) of the experiment: arm, latency and which arm's model failed, if any.

    A fallback-served request names the failed model in its degradations (``challenger_model:model_error``),
    so it counts against the arm that was assigned, not the fallback.
    """
    columns = ["request_id", "role", "arm", "dispatch_version", "requested_at", "latency_ms", "degradation_reasons"]
    if log.empty:
        return pd.DataFrame(columns=[*columns, "failed_arm", "failure"])
    first = log[columns].drop_duplicates(["request_id", "role"])
    versions = {"champion": champion, "challenger": challenger}
    ours = first["arm"].map(versions).eq(first["dispatch_version"]) | (first["arm"] == "fallback")
    out = first[ours].copy()
    failed_arm = pd.Series(None, index=out.index, dtype=object)
    failure = pd.Series(None, index=out.index, dtype=object)
    for arm in ("champion", "challenger"):
        for reason in FALLBACK_REASONS:
            hit = out["degradation_reasons"].str.contains(f"{arm}_model:{reason}", regex=False) & failed_arm.isna()
            failed_arm[hit], failure[hit] = arm, reason
    out["failed_arm"], out["failure"] = failed_arm, failure
    # Fallback rows not caused by a model (a feature group missing) belong to neither arm.
    out = out[(out["arm"] != "fallback") | out["failed_arm"].notna()]
    out["requested_at"] = pd.to_datetime(out["requested_at"], utc=True)
    return out.reset_index(drop=True)


def assigned(requests: pd.DataFrame, arm: str) -> pd.Series:
    """Served requests the split sent to ``arm``: answered by it, or by the fallback after it failed."""
    served = requests["role"] == "served"
    return served & ((requests["arm"] == arm) | (requests["failed_arm"] == arm))


def _share(requests: pd.DataFrame, arm: str, reasons: tuple[str, ...], minimum: int) -> tuple[float, int]:
    mine = requests[assigned(requests, arm)]
    if len(mine) < minimum:
        return float("nan"), len(mine)
    return float(mine["failure"].isin(reasons).mean()), len(mine)


def _p99(latency_ms: pd.Series, minimum: int) -> float:
    return float(np.quantile(latency_ms.to_numpy(dtype=np.float64), 0.99)) if len(latency_ms) >= minimum else float("nan")


def guardrail_checks(requests: pd.DataFrame, settings: Settings) -> tuple[Guardrail, ...]:
    """Latency p99, error/timeout share and fallback share of the challenger against the champion.

    Latency is the logged ``latency_ms``: the served requests' when the challenger serves enough
    of them, else its shadow calls'. A guardrail with fewer than ``min_guardrail_requests`` on the
    challenger has NaN value and cannot trip.
    """
    release = settings.release
    minimum = release.min_guardrail_requests
    served = requests["role"] == "served"
    challenger_served = requests[served & (requests["arm"] == "challenger")]["latency_ms"]
    shadow = requests[requests["role"] == "shadow"]["latency_ms"]
    challenger_latency = challenger_served if len(challenger_served) >= minimum else shadow
    champion_p99 = _p99(requests[served & (requests["arm"] == "champion")]["latency_ms"], minimum)
    slo_ms = _latency_threshold_ms(settings)
    latency_limit = max(slo_ms, champion_p99 * (1.0 + release.latency_tolerance)) if math.isfinite(champion_p99) else slo_ms
    checks = [Guardrail("latency_p99_ms", "challenger", _p99(challenger_latency, minimum), latency_limit, len(challenger_latency))]
    for name, reasons, tolerance in (
        ("error_share", ERROR_REASONS, release.error_share_tolerance),
        ("fallback_share", FALLBACK_REASONS, release.fallback_share_tolerance),
    ):
        value, n = _share(requests, "challenger", reasons, minimum)
        champion_value, _ = _share(requests, "champion", reasons, minimum)
        limit = (champion_value if math.isfinite(champion_value) else 0.0) + tolerance
        checks.append(Guardrail(name, "challenger", value, limit, n))
    return tuple(checks)


def _latency_threshold_ms(settings: Settings) -> float:
    thresholds = [s.threshold_seconds for s in settings.slo.service.values() if s.kind == "latency" and s.threshold_seconds]
    return 1000.0 * min(thresholds) if thresholds else float("inf")


def burn_level(requests: pd.DataFrame, settings: Settings, as_of: datetime) -> str:
    """The worst burn-rate tier that fired for these requests over any bin, per service SLO.

    Bad for availability: the arm's model failed (error, timeout or open breaker, so the
    fallback answered); for latency: slower than the SLO threshold. Bins of ``burn_bin_seconds``
    by request time (``eval.burn_rate.alert_levels`` with the SRE-workbook windows).
    """
    if requests.empty:
        return "none"
    bin_s = settings.release.burn_bin_seconds
    seconds = (requests["requested_at"] - requests["requested_at"].min()).dt.total_seconds().to_numpy()
    bins = (seconds // bin_s).astype(np.int64)
    size = int(bins.max()) + 1
    total = np.bincount(bins, minlength=size)
    level = 0
    for slo in settings.slo.service.values():
        if slo.kind == "availability":
            bad_rows = requests["failure"].notna().to_numpy()
        else:
            bad_rows = requests["latency_ms"].to_numpy(dtype=np.float64) > 1000.0 * (slo.threshold_seconds or math.inf)
        bad = np.bincount(bins, weights=bad_rows.astype(np.float64), minlength=size)
        level = max(level, int(alert_levels(bad, total, slo.objective, bin_s).max()))
    return {code: name for name, code in LEVELS.items()}[level]


# -- acting ---------------------------------------------------------------------------------------


def apply_decision(settings: Settings, situation: ReleaseSituation, decision: ReleaseDecision, *, actor: str = RELEASE_ACTOR) -> ActionRecord:
    """Carry out ``decision`` and record it (status ``taken``, or ``failed`` and re-raised)."""
    root = settings.paths.registry
    registry = ModelRegistry(root)
    note = f"{decision.code}: {decision.reason}"[:480]
    # Changes are stamped with the situation's time, the clock of the log the next step reads
    # (simulated time in cluster.closed_loop), but never later than now: a controller looking
    # ahead for matured labels must not hide the requests served until then from its next step.
    at = min(situation.as_of, datetime.now(UTC))
    try:
        if decision.action == "shadow":
            change_traffic(root, shadow=True, challenger_weight=0.0, changed_by=actor, reason=note, at=at)
        elif decision.action == "advance":
            steps = tuple(settings.release.canary_steps) if situation.canary_step is None else None
            change_traffic(root, canary="advance", canary_steps=steps, changed_by=actor, reason=note, at=at)
        elif decision.action == "promote":
            # Champion first: with challenger == champion the split has no challenger, so every job
            # goes to the promoted version at once; then reset the split for the next experiment.
            registry.set_alias("dispatch", "champion", situation.candidate, moved_by=actor, reason=note,
                               expected_generation=situation.champion_generation, at=at)
            registry.set_alias("dispatch", "fallback", situation.baseline, moved_by=actor,
                               reason=f"last-known-good before {situation.candidate}", at=at)
            change_traffic(root, challenger_weight=0.0, changed_by=actor, reason=note, at=at)
        elif decision.action == "rollback":
            if situation.stage == "probation":
                registry.rollback("dispatch", "champion", moved_by=actor, reason=note, at=at)
            change_traffic(root, challenger_weight=0.0, shadow=False, changed_by=actor, reason=note, at=at)
    except Exception as exc:
        record_decision(settings, situation, decision, status="failed", error=f"{type(exc).__name__}: {exc}")
        raise
    return record_decision(settings, situation, decision, status="taken")


def record_decision(
    settings: Settings, situation: ReleaseSituation, decision: ReleaseDecision, *, status: str, error: str | None = None
) -> ActionRecord:
    """Append the decision to the event log: an ActionRecord, plus a ``release`` Event for promote/rollback.

    Ids are deterministic in (experiment, alias and split generations, decision), so re-running a
    step that changed nothing (another ``hold`` for the same reason) adds no line.
    """
    log = EventLog(settings.paths.events)
    key = situation.experiment_key
    now = datetime.now(UTC)
    detail: dict[str, EvidenceValue] = {k: (v[:200] if isinstance(v, str) else v) for k, v in decision.evidence.items()}
    detail["decision"] = decision.action
    if error:
        detail["error"] = error[:200]
    linked = f"release-{key}"
    if decision.action in ("promote", "rollback") and status == "taken":
        promoted = decision.action == "promote"
        event = Event(
            event_id=event_id(key, situation.as_of, "resolved" if promoted else "firing"),
            kind="release", severity="info" if promoted else "ticket", state="resolved" if promoted else "firing",
            source=SOURCE, subject=situation.subject, observed_at=situation.as_of, detected_at=now,
            summary=f"{decision.action} {situation.candidate} (baseline {situation.baseline}): {decision.reason}"[:300],
            evidence={k: v for k, v in detail.items() if k != "decision"},
        )
        log.append([event])
        linked = event.event_id
    identity = f"{key}|{situation.champion_generation}|{situation.traffic_generation}|{decision.action}|{decision.code}|{status}"
    record = ActionRecord(
        action_id=hashlib.blake2b(identity.encode(), digest_size=12).hexdigest(), event_id=linked, incident_key=key,
        action=ACTION_KINDS[decision.action], status=status, reason=f"{decision.code}: {decision.reason}"[:500],
        decided_at=now, detail=detail,
    )
    log.record([record])
    return record


def release_step(
    settings: Settings, *, dry_run: bool = False, as_of: datetime | None = None, actor: str = RELEASE_ACTOR
) -> tuple[ReleaseSituation, ReleaseDecision]:
    """Observe, decide and (unless ``dry_run``) act and record: one tick of the release controller."""
    situation = observe(settings, as_of)
    decision = decide(situation, settings.release)
    if not dry_run:
        apply_decision(settings, situation, decision, actor=actor)
    return situation, decision
