"""The training run end to end: warehouse window -> point-in-time features -> labels -> fit -> register.

``dispatchml train`` and the demo call ``train_from_warehouse``; ``dispatchml retrain`` and the
closed loop call ``retrain_from_warehouse`` (mixed window -> Ray Tune -> fit -> gate -> register).
Labels are attached as they were known at ``as_of`` (default: the end of the data), so a run is
reproducible later even though labels keep arriving and being corrected.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from cluster.config import Settings
from contracts.events import Event, EvidenceValue
from contracts.warehouse import manifest_path
from retrain.gate import GateResult, gate, holdout_predictions
from retrain.registry import Alias, ModelRegistry
from retrain.train import TrainingResult, register_models, train_models
from retrain.training_set import attach_labels, build_training_set, read_labels
from retrain.tune import RetrainWindow, SearchResult, fit_candidate, mix_history, retrain_window, tune_models

Step = Callable[[str], None]


@dataclass
class TrainingRun:
    result: TrainingResult
    versions: dict[str, str]
    window: tuple[datetime, datetime]
    as_of: datetime
    rows: int
    seconds: dict[str, float]


def data_span(data_root: Path) -> tuple[datetime, datetime]:
    """[start, end) of the simulated or ingested history, from the warehouse manifest."""
    import json

    path = manifest_path(data_root)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: simulate or ingest data into {data_root} first")
    manifest = json.loads(path.read_text())
    start = datetime.fromisoformat(manifest["start"]).replace(tzinfo=UTC)
    end = datetime.fromisoformat(manifest["end"]).replace(tzinfo=UTC)
    return start, end


def request_bounds(
    settings: Settings, data_root: Path, as_of: datetime | None
) -> tuple[datetime, datetime, datetime, datetime]:
    """``(data start, as_of, holdout start, requests end)`` for a run at ``as_of`` (default: end of the data).

    Requests of the last ``label_maturity_hours`` before ``as_of`` are left out: their slow
    arrivals are not known yet, so keeping them would bias ETA labels (and the holdout) toward
    fast arrivals.
    """
    span_start, span_end = data_span(data_root)
    as_of = as_of or span_end
    requests_end = as_of - timedelta(hours=settings.train.label_maturity_hours)
    return span_start, as_of, requests_end - timedelta(days=settings.train.holdout_days), requests_end


def with_labels(frame: pd.DataFrame, data_root: Path, as_of: datetime) -> pd.DataFrame:
    """``frame`` with the labels known at ``as_of`` attached, keeping its ``attrs`` (feature definitions)."""
    labelled = attach_labels(frame, read_labels(data_root, as_of), as_of)
    labelled.attrs.update(frame.attrs)
    return labelled


def train_from_warehouse(
    settings: Settings,
    data_root: Path | None = None,
    *,
    as_of: datetime | None = None,
    set_alias: Alias | None = None,
    lineage: Mapping[str, Any] | None = None,
    step: Step | None = None,
) -> TrainingRun:
    """Train on the ``window_days + holdout_days`` before ``as_of`` and register the result.

    Recent requests whose labels are not final are left out (:func:`request_bounds`). The
    training slice is capped at ``max_training_rows`` (whole jobs, hashed); the holdout is never
    sampled, so every segment's metrics use every matured row.
    """
    import time

    say = step or (lambda _: None)
    data_root = Path(data_root or settings.paths.data)
    moved_at = as_of
    span_start, as_of, holdout_start, requests_end = request_bounds(settings, data_root, as_of)
    train = settings.train
    start = max(span_start, holdout_start - timedelta(days=train.window_days))
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    say(f"point-in-time training set {start:%Y-%m-%d}..{requests_end:%Y-%m-%d %H:%M}")
    fit_part = build_training_set(settings, data_root, start, holdout_start, "eta", max_rows=train.max_training_rows)
    holdout_part = build_training_set(settings, data_root, holdout_start, requests_end, "eta")
    frame = pd.concat([fit_part, holdout_part], ignore_index=True)
    frame.attrs.update(fit_part.attrs)
    seconds["training_set"] = time.perf_counter() - t

    t = time.perf_counter()
    say(f"labels known by {as_of:%Y-%m-%d %H:%M}")
    labelled = with_labels(frame, data_root, as_of)
    seconds["labels"] = time.perf_counter() - t

    t = time.perf_counter()
    say(f"fitting ETA, acceptance and fallback on {len(labelled):,} candidate rows")
    result = train_models(labelled, settings, num_threads=train.num_threads)
    seconds["fit"] = time.perf_counter() - t

    registry = ModelRegistry(settings.paths.registry)
    versions = register_models(
        result,
        registry,
        lineage={"data_root": str(data_root), "as_of": as_of.isoformat(), **(lineage or {})},
        set_alias=set_alias,
        at=moved_at,
    )
    return TrainingRun(result, versions, (start, requests_end), as_of, len(labelled), seconds)


def metrics_table(result: TrainingResult) -> pd.DataFrame:
    """Holdout metrics overall, one row per (family, metric)."""
    rows = [
        {"family": family, "metric": metric, "value": value}
        for family, values in result.metrics.items()
        for metric, value in values.items()
    ]
    return pd.DataFrame(rows)


@dataclass
class RetrainRun:
    """A retrain from trigger to registered candidate: what was searched, judged and registered."""

    #: The triggering event id, or ``manual``.
    trigger: str
    window: RetrainWindow
    searches: dict[str, SearchResult]
    result: TrainingResult
    gate: GateResult | None
    #: The dispatch champion the gate compared against (None: there was none).
    champion: str | None
    versions: dict[str, str]
    #: Alias pointed at the candidate: ``challenger`` if the gate passed, else None.
    alias: str | None
    #: Wall-clock seconds per stage; ``total`` is trigger to registered candidate.
    seconds: dict[str, float]

    @property
    def gate_verdict(self) -> str:
        return "no_champion" if self.gate is None else ("passed" if self.gate.passed else "failed")

    def detail(self) -> dict[str, EvidenceValue]:
        """The action record's detail (``contracts.events.ActionRecord.detail``): short labels and numbers."""
        return {
            "dispatch_version": self.versions["dispatch"],
            "gate": self.gate_verdict,
            "champion": self.champion,
            "alias": self.alias,
            # A family kept from the champion was not searched: "kept" instead of a trial.
            "eta_trial": self.searches["eta"].best.trial_id if "eta" in self.searches else "kept",
            "acceptance_trial": self.searches["acceptance"].best.trial_id if "acceptance" in self.searches else "kept",
            "seconds": round(self.seconds["total"], 1),
        }


class RetrainTriggerError(LookupError):
    """The trigger event id is not in the event log."""


def trigger_lineage(settings: Settings, trigger: str | Event | None) -> dict[str, Any]:
    """Lineage entries for the triggering event (an id is looked up in the event log); ``manual`` without one."""
    if trigger is None:
        return {"trigger": "manual"}
    if isinstance(trigger, Event):
        event: Event | None = trigger
    else:
        from cluster.event_log import EventLog

        event = next((e for e in EventLog(settings.paths.events).events() if e.event_id == trigger), None)
    if event is None:
        raise RetrainTriggerError(f"event {trigger} is not in the event log under {settings.paths.events}; pass an id from `dispatchml incidents`")
    return {
        "trigger": event.event_id,
        "trigger_event": {"kind": event.kind, "source": event.source, "subject": event.subject, "segment": event.segment},
    }


#: Which model family an event is about (its subject), for a retrain that refits only that one.
EVENT_FAMILIES: dict[str, str] = {"eta": "eta", "eta_interval_slo": "eta", "acceptance": "acceptance", "top_rank_accepted_slo": "acceptance"}


def retrain_families(lineage: Mapping[str, Any]) -> tuple[str, ...]:
    """The families a retrain refits: the one its trigger's quality event is about, else both.

    A concept-drift or quality-SLO event names one model (the ETA residuals, the top-ranked
    acceptance); refitting only that one keeps the champion's other model as it is, so the
    release experiment tests one change, and a small retrain cannot make the untouched task
    worse. Drift of inputs, a manual run or an unknown subject refit both.
    """
    event = lineage.get("trigger_event") or {}
    family = EVENT_FAMILIES.get(str(event.get("subject"))) if event.get("kind") in ("concept_drift", "slo_burn") else None
    return (family,) if family else ("eta", "acceptance")


def retrain_from_warehouse(
    settings: Settings,
    data_root: Path | None = None,
    *,
    trigger: str | Event | None = None,
    as_of: datetime | None = None,
    recent_days: int | None = None,
    history_days: int | None = None,
    trials: int | None = None,
    challenger_on_pass: bool = True,
    step: Step | None = None,
) -> RetrainRun:
    """Tune, fit, gate and register a candidate dispatch version (see ``retrain.tune``, ``retrain.gate``).

    ``trigger`` is the event that asked for the retrain, or its id in the event log.

    The candidate is always registered, so every retrain leaves an audit trail; its lineage
    records the trigger event, the recent and history windows, each family's winning Tune
    trial and the gate verdict. It is never made champion here (release does that): if the
    gate passed (or there is no champion to compare with) ``challenger`` points at it, if it
    failed no alias moves and ``lineage.gate == "failed"`` says why.
    """
    import time

    started = time.perf_counter()
    say = step or (lambda _: None)
    lineage = trigger_lineage(settings, trigger)
    retrain = settings.retrain.model_copy(
        update={k: v for k, v in {"recent_days": recent_days, "history_days": history_days}.items() if v is not None}
    )
    data_root = Path(data_root or settings.paths.data)
    moved_at = as_of
    data_start, as_of, holdout_start, requests_end = request_bounds(settings, data_root, as_of)
    window = retrain_window(
        data_start, holdout_start, requests_end, retrain.recent_days, retrain.history_days, retrain.history_fraction
    )
    run_settings = settings.model_copy(
        update={"retrain": retrain, "train": settings.train.model_copy(update={"window_days": window.training_days})}
    )
    max_rows = settings.train.max_training_rows
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    say(f"training set: recent {window.recent_start:%Y-%m-%d}.., history {window.history_start:%Y-%m-%d}.. x{window.history_fraction}")
    recent = build_training_set(settings, data_root, window.recent_start, holdout_start, "eta", max_rows=max_rows)
    holdout = build_training_set(settings, data_root, holdout_start, requests_end, "eta")
    parts = [recent, holdout]
    if window.history_start < window.recent_start and window.history_fraction > 0:
        history = build_training_set(settings, data_root, window.history_start, window.recent_start, "eta", max_rows=max_rows)
        parts[0] = mix_history(recent, history, window.history_fraction, history.attrs["candidate_rows"])
    frame = pd.concat(parts, ignore_index=True)
    frame.attrs.update(recent.attrs)
    seconds["training_set"] = time.perf_counter() - t

    t = time.perf_counter()
    labelled = with_labels(frame, data_root, as_of)
    seconds["labels"] = time.perf_counter() - t

    registry = ModelRegistry(settings.paths.registry)
    champion = registry.alias("dispatch", "champion")
    bundle = registry.load_model("dispatch", "champion") if champion is not None else None
    families = retrain_families(lineage) if bundle is not None else ("eta", "acceptance")
    kept = {f: getattr(bundle, f) for f in ("eta", "acceptance") if f not in families}

    t = time.perf_counter()
    say(f"Ray Tune: {trials or retrain.trials} trials per model ({', '.join(families)}) on {len(labelled):,} candidate rows")
    searches = tune_models(labelled, run_settings, trials=trials, families=families)
    seconds["tune"] = time.perf_counter() - t

    t = time.perf_counter()
    say("fitting the candidate with the best trials")
    result = fit_candidate(labelled, run_settings, searches, fitted=kept)
    seconds["fit"] = time.perf_counter() - t

    t = time.perf_counter()
    say("gating against the champion")
    verdict: GateResult | None = None
    if bundle is not None:
        in_holdout = labelled.loc[labelled["request_ts"] >= result.split.holdout_start]
        eta_frame, acceptance_frame = holdout_predictions(
            in_holdout, (bundle.eta, bundle.acceptance), (result.eta, result.acceptance)
        )
        verdict = gate(eta_frame, acceptance_frame, retrain)
    seconds["gate"] = time.perf_counter() - t

    t = time.perf_counter()
    alias: Alias | None = "challenger" if challenger_on_pass and (verdict is None or verdict.passed) else None
    lineage.update(
        data_root=str(data_root),
        as_of=as_of.isoformat(),
        windows=window.lineage(),
        refit=list(families),
        kept_from_champion={f: registry.metadata("dispatch", champion.version).components[f] for f in kept} if champion else {},
        tune={family: s.lineage() for family, s in searches.items()},
        gate="no_champion" if verdict is None else ("passed" if verdict.passed else "failed"),
        gate_reason="no champion to compare with" if verdict is None else verdict.reason,
        gate_champion=champion.version if champion else None,
        gate_checks=[] if verdict is None else [asdict(c) for c in verdict.checks if c.verdict != "ignored"],
    )
    # A run at an explicit data time (the closed loop on simulated time) moves the alias at that
    # time: the clock of the prediction log the release controller compares alias moves with.
    versions = register_models(result, registry, lineage=lineage, set_alias=alias, at=moved_at)
    seconds["register"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - started
    return RetrainRun(
        trigger=lineage["trigger"],
        window=window,
        searches=searches,
        result=result,
        gate=verdict,
        champion=champion.version if champion else None,
        versions=versions,
        alias=alias,
        seconds=seconds,
    )


def retrainer(settings: Settings, **options: Any) -> Callable[[Event], dict[str, EvidenceValue]]:
    """A ``cluster.actions`` retrain function: ``retrain_from_warehouse`` on the event, returning the action detail.

    ``options`` are passed through (``recent_days``, ``history_days``, ``trials``, ``as_of``, ...).
    """

    def retrain_on(event: Event) -> dict[str, EvidenceValue]:
        return retrain_from_warehouse(settings, trigger=event, **options).detail()

    return retrain_on
