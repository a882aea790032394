"""The closed loop's report: what happened in a span, what the system did about it, and whether it helped.

One self-contained HTML page (``eval.html_report.write_page``) for a span ``[start, end)`` of
serving, read from what the loop left behind: the prediction log, the event log (events and the
actions taken on them), the labels known at the end, the cell grid and, when the caller ran the
loop in lockstep (``cluster.closed_loop``), its :class:`~cluster.closed_loop.LoopStep` records.

Sections
    * **Timeline.** Served requests per time bin, the fallback and degraded shares of them (and
      the challenger's traffic weight), and every event (kind, severity, subject, segment) and
      action (quarantine, retrain, release stages, with their reasons) on the same time axis.
    * **Drift over the cell map.** The span's served features after the incident against the
      rows served before it, per cell and per region, with the drift scan's own statistics
      (``eval.drift_scan.scan_tables``: PSI at the reference deciles, KS, BH q-values, the drift
      decision) on a handful of features (:data:`REPORT_FEATURES`), drawn with
      ``eval.drift_report.drift_heatmap``. Cells are sparse in a day of traffic, so the region
      rollup is painted over the cell map too.
    * **Calibration before and after.** Acceptance reliability and ETA interval coverage per
      period and arm, on matured labels only (``eval.labels``: rows past each label kind's
      completeness watermark at ``labels_as_of``).
    * **Before/after metrics.** Per period, per region and per arm: ETA MAE and interval
      coverage, acceptance log loss and ECE, and the fallback and degraded shares.

Periods
    The span splits at the incident (``incident_at``: by default the first firing event observed
    in the span) and, if a new champion was promoted in the span, at the promotion. The drift
    reference is the period before the incident unless ``reference`` names another window.

Time
    Events carry their data time (``observed_at``); the policy's actions carry the time the loop
    decided them. The release controller stamps its actions with wall time, which in a lockstep
    replay of past days is not the data time: with ``steps``, release stages come from the steps
    (data time); without, actions outside the span are listed but not placed on the axis.

Privacy
    Only aggregates keyed by time bin, period, arm, version, region and cell reach the page, and
    event subjects/segments (which ``contracts.events`` bounds to non-identifying columns). No
    job, request, member pseudonym or provider id, and no coordinate finer than a cell, is read
    into a figure or a table.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pyarrow as pa
from plotly.subplots import make_subplots

from cluster.event_log import EventLog
from contracts.events import ActionRecord, Event
from contracts.prediction_log import feature_column
from contracts.warehouse import world_path
from eval.calibration import expected_calibration_error, log_loss, reliability_table
from eval.confidence import wilson_ci
from eval.drift_report import drift_heatmap
from eval.drift_scan import scan_tables
from eval.html_report import write_page
from eval.labels import completeness_watermark, join_labels, matured
from eval.metrics import interval_coverage, mae
from serve_apps.prediction_log import read_prediction_log

if TYPE_CHECKING:
    from cluster.closed_loop import LoopStep
    from cluster.config import Settings

#: Features compared across the incident: the pushed near-real-time groups where feed incidents
#: show, and the two predictions (drift of the output is what a user of the scores feels).
REPORT_FEATURES: tuple[str, ...] = (
    "cell_traffic__speed_kmh",
    "cell_traffic__traffic_index",
    "region_load__supply_demand_ratio",
    "region_load__mean_wait_last_hour_min",
)
PREDICTION_COLUMNS: tuple[str, ...] = ("eta_minutes", "p_accept")
#: What the report reads of the prediction log: no job, request, member or provider column
#: except ``request_id``/``job_id``/``provider_id``, which the label join and de-duplication need
#: and which never leave this module.
LOG_COLUMNS: list[str] = [
    "request_id", "job_id", "provider_id", "role", "arm", "dispatch_version", "requested_at", "region_id", "cell_id",
    "eta_minutes", "eta_low", "eta_high", "p_accept", "degraded",
]
#: Bins of the volume and share plots: about this many over the span, at least a second each.
TIMELINE_BINS = 120
#: Groups (period x arm, period x region) with fewer matured labelled rows leave their metric blank.
MIN_LABELLED_ROWS = 30
#: Reliability curves need this many labelled offers per (period, arm).
MIN_RELIABILITY_ROWS = 100
SHADOW_ARM = "challenger (shadow)"
DATA_ELEMENT_ID = "loop-report-data"


@dataclass(frozen=True)
class Period:
    name: str
    start: datetime
    end: datetime


@dataclass
class LoopReport:
    """Every table behind the page (aggregates only); ``write_loop_report`` renders it."""

    start: datetime
    end: datetime
    periods: list[Period]
    incident_at: datetime | None
    promoted_at: datetime | None
    volume: pd.DataFrame
    timeline: pd.DataFrame
    incidents: pd.DataFrame
    drift: pd.DataFrame
    region_metrics: pd.DataFrame
    arm_metrics: pd.DataFrame
    reliability: pd.DataFrame
    incident_regions: list[int]
    weights: pd.DataFrame = field(default_factory=pd.DataFrame)
    labels_as_of: datetime | None = None
    routing: str = ""
    notes: list[str] = field(default_factory=list)


# -- pure pieces over small frames -------------------------------------------------------------


def request_rows(log: pd.DataFrame) -> pd.DataFrame:
    """One row per served request (its candidates share the arm and the degradation)."""
    served = log[log["role"] == "served"]
    return served.drop_duplicates("request_id")[["requested_at", "region_id", "arm", "degraded"]]


def volume_over_time(log: pd.DataFrame, start: datetime, end: datetime, bins: int = TIMELINE_BINS) -> pd.DataFrame:
    """Per time bin: served requests, shadow scorings, and the fallback and degraded shares of requests.

    The bin width is the span over ``bins``, rounded to whole seconds (at least one).
    """
    width = max(1, round((end - start).total_seconds() / bins))
    requests = request_rows(log)
    shadow = log[log["role"] == "shadow"].drop_duplicates("request_id")

    def bin_of(times: pd.Series) -> pd.Series:
        return pd.to_datetime(times, utc=True).dt.floor(f"{width}s")

    frame = pd.DataFrame({
        "bin": bin_of(requests["requested_at"]),
        "fallback": (requests["arm"] == "fallback").to_numpy(float),
        "degraded": requests["degraded"].to_numpy(float),
    })
    out = frame.groupby("bin").agg(requests=("fallback", "size"), fallback_share=("fallback", "mean"), degraded_share=("degraded", "mean"))
    out["shadow_scored"] = bin_of(shadow["requested_at"]).value_counts().reindex(out.index, fill_value=0)
    out["bin_seconds"] = width
    return out.reset_index()


def periods_of(start: datetime, end: datetime, incident_at: datetime | None, promoted_at: datetime | None) -> list[Period]:
    """``before incident`` / ``after incident`` / ``after promotion``, each non-empty one in order."""
    cuts = [("before incident", start)]
    if incident_at is not None and start < incident_at < end:
        cuts.append(("after incident", incident_at))
    if promoted_at is not None and start < promoted_at < end and (incident_at is None or promoted_at > incident_at):
        cuts.append(("after promotion", promoted_at))
    if len(cuts) == 1:
        return [Period("span", start, end)]
    bounds = [t for _, t in cuts[1:]] + [end]
    return [Period(name, t, until) for (name, t), until in zip(cuts, bounds, strict=True)]


def period_of(times: pd.Series, periods: Sequence[Period]) -> pd.Series:
    """Each time's period name (``None`` outside every period)."""
    stamps = pd.to_datetime(times, utc=True)
    names = np.full(len(times), None, dtype=object)
    for period in periods:
        names[((stamps >= pd.Timestamp(period.start)) & (stamps < pd.Timestamp(period.end))).to_numpy()] = period.name
    return pd.Series(names, index=times.index, dtype=object)


def first_incident_at(events: Sequence[Event], start: datetime, end: datetime) -> datetime | None:
    """Data time of the first firing event (other than the release controller's) in ``[start, end]``."""
    times = [e.observed_at for e in events if e.state == "firing" and e.kind != "release" and start <= e.observed_at <= end]
    return min(times, default=None)


def acted_on_regions(events: Sequence[Event], actions: Sequence[ActionRecord], start: datetime, end: datetime) -> list[int]:
    """Regions of the span's firing events that paged or got more than a ticket (quarantine, retrain...)."""
    acted = {a.event_id for a in actions if a.action not in ("none", "ticket") and a.status == "taken"}
    return sorted({int(e.segment["region_id"]) for e in events if e.state == "firing" and "region_id" in e.segment
                   and start <= e.observed_at <= end and (e.severity == "page" or e.event_id in acted)})


def release_stages(steps: Sequence[LoopStep]) -> pd.DataFrame:
    """Changes of the live routing between consecutive loop steps, each at the step's end (data time).

    ``stage`` is ``shadow`` (a new challenger scoring off the response path), ``canary N%``,
    ``promote``, ``stopped`` (the challenger went without a promotion: a rollback or a stop),
    ``quarantine`` or ``lift quarantine``; ``reason`` is the release controller's for that step
    (empty for a quarantine, whose reason is the policy action's on the timeline).
    """
    rows: list[dict] = []
    champion, challenger, weight, quarantined = None, None, 0.0, ()
    for number, step in enumerate(steps):
        changes: list[tuple[str, str]] = []
        if number and step.champion != champion:
            changes.append(("promote", f"champion {champion} -> {step.champion}"))
        elif challenger is not None and step.challenger is None:
            changes.append(("stopped", f"challenger {challenger} no longer live"))
        if step.challenger is not None and (step.challenger != challenger or step.challenger_weight != weight):
            stage = "shadow" if step.challenger_weight == 0 else f"canary {step.challenger_weight:.0%}"
            changes.append((stage, f"challenger {step.challenger} at weight {step.challenger_weight:g}"))
        added, lifted = set(step.quarantined) - set(quarantined), set(quarantined) - set(step.quarantined)
        if added:
            changes.append(("quarantine", f"feature groups {', '.join(sorted(added))} served by the fallback"))
        if lifted:
            changes.append(("lift quarantine", f"feature groups {', '.join(sorted(lifted))} back in service"))
        rows += [{"time": step.end, "stage": stage, "detail": detail, "reason": "" if "quarantine" in stage else step.release_reason}
                 for stage, detail in changes]
        champion, challenger, weight, quarantined = step.champion, step.challenger, step.challenger_weight, step.quarantined
    return pd.DataFrame(rows, columns=["time", "stage", "detail", "reason"])


def promoted_at_of(steps: Sequence[LoopStep] | None, events: Sequence[Event], start: datetime, end: datetime) -> datetime | None:
    """When a new champion took over in the span: from the steps, else from the release events."""
    if steps:
        stages = release_stages(steps)
        promoted = stages[stages["stage"] == "promote"]
        return None if promoted.empty else promoted["time"].iloc[0]
    times = [e.observed_at for e in events if e.kind == "release" and e.state == "resolved" and e.summary.startswith("promote")
             and start <= e.observed_at <= end]
    return min(times, default=None)


def _segment_text(segment: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in segment.items()) or "global"


def timeline_frame(
    events: Sequence[Event], actions: Sequence[ActionRecord], start: datetime, end: datetime, steps: Sequence[LoopStep] | None = None
) -> pd.DataFrame:
    """Events and actions to place on the time axis: ``time, lane, kind, severity, status, subject, segment, text``.

    Policy actions of kind ``none`` (decided to do nothing) are left out. Release actions come
    from ``steps`` when given (see the module docstring), else from the event log.
    """
    by_id = {e.event_id: e for e in events}
    rows = [
        {"time": e.observed_at, "lane": f"event: {e.kind}", "kind": e.kind, "severity": e.severity, "status": e.state,
         "subject": e.subject, "segment": _segment_text(e.segment), "text": e.summary}
        for e in events if start <= e.observed_at <= end
    ]
    release_kinds = {"shadow", "canary_advance", "promote", "rollback"}
    for a in actions:
        if a.action == "none" or (steps and a.action in release_kinds) or not start <= a.decided_at <= end:
            continue
        event = by_id.get(a.event_id)
        rows.append({"time": a.decided_at, "lane": f"action: {a.action}", "kind": a.action, "severity": event.severity if event else "info",
                     "status": a.status, "subject": event.subject if event else "", "segment": _segment_text(event.segment) if event else "",
                     "text": a.reason})
    if steps:
        for stage in release_stages(steps).itertuples(index=False):
            rows.append({"time": stage.time, "lane": f"release: {stage.stage.split(' ')[0]}", "kind": stage.stage, "severity": "info",
                         "status": "taken", "subject": stage.detail, "segment": "global", "text": stage.reason})
    frame = pd.DataFrame(rows, columns=["time", "lane", "kind", "severity", "status", "subject", "segment", "text"])
    return frame.sort_values("time", kind="stable", ignore_index=True)


def incident_table(log: EventLog, start: datetime, end: datetime) -> pd.DataFrame:
    """One row per incident with an event in the span: first seen, severity, state, the actions taken and why.

    Incidents that were acted on beyond a ticket (a page, a quarantine, a retrain, a release
    step) come first, then the rest, each in order of first sight.
    """
    rows = []
    for incident in log.incidents(include_closed=True):
        if incident.last.observed_at < start or incident.first.observed_at > end:
            continue
        taken = [a for a in incident.actions if a.action != "none"]
        acted = incident.last.severity == "page" or any(a.action != "ticket" and a.status == "taken" for a in taken)
        why = (taken[0].reason if taken else incident.first.summary).split(". ")[0]
        rows.append({
            "first seen": f"{incident.first.observed_at:%Y-%m-%d %H:%M}", "kind": incident.first.kind, "severity": incident.last.severity,
            "subject": incident.first.subject, "segment": _segment_text(incident.first.segment),
            "state": "open" if incident.is_open else f"resolved {incident.last.observed_at:%Y-%m-%d %H:%M}",
            "actions": "; ".join(f"{a.action} ({a.status})" for a in taken) or "none", "why": why, "_acted": not acted,
        })
    frame = pd.DataFrame(rows, columns=["first seen", "kind", "severity", "subject", "segment", "state", "actions", "why", "_acted"])
    return frame.sort_values(["_acted", "first seen"], kind="stable").drop(columns="_acted").reset_index(drop=True)


def release_table(timeline: pd.DataFrame) -> pd.DataFrame:
    """The release and routing changes of the timeline (from the steps, or the release controller's actions)."""
    kinds = ("release:", "action: shadow", "action: canary_advance", "action: promote", "action: rollback", "action: fallback_feature_group",
             "action: restore_feature_group", "action: retrain")
    rows = timeline[timeline["lane"].str.startswith(kinds)]
    return rows.assign(time=rows["time"].map(lambda t: f"{t:%Y-%m-%d %H:%M}"))[["time", "kind", "status", "subject", "segment", "text"]]


def routing_at_end(registry_root: Path) -> str:
    """Champion, challenger and its weight, and the quarantine, as the registry and traffic files say now."""
    from retrain.registry import ModelRegistry
    from serve_apps.traffic_state import read_quarantine, read_state

    registry = ModelRegistry(registry_root)
    champion, challenger = registry.alias("dispatch", "champion"), registry.alias("dispatch", "challenger")
    live = challenger.version if challenger and champion and challenger.version != champion.version else None
    quarantined = "; ".join(f"{e.feature_group} in regions {','.join(map(str, e.region_ids)) or 'all'}" for e in read_quarantine(registry_root).entries)
    return (f"champion {champion.version if champion else 'none'}, challenger "
            f"{f'{live} at weight {read_state(registry_root).challenger_weight:g}' if live else 'none'}; "
            f"quarantined: {quarantined or 'nothing'}")


def group_metrics(rows: pd.DataFrame) -> dict[str, float]:
    """Realized metrics of labelled rows (``eta_ok``/``acc_ok`` mark the matured labelled ones).

    ETA: MAE (minutes) and the share of arrivals inside ``[eta_low, eta_high]``; acceptance: log
    loss and ECE (``eval.calibration``). NaN where fewer than ``MIN_LABELLED_ROWS`` rows qualify.
    """
    eta = rows[rows["eta_ok"]]
    acc = rows[rows["acc_ok"]]
    enough_eta, enough_acc = len(eta) >= MIN_LABELLED_ROWS, len(acc) >= MIN_LABELLED_ROWS
    y = acc["accepted"].to_numpy(np.float64)
    p = acc["p_accept"].to_numpy(np.float64)
    return {
        "eta_labelled": float(len(eta)),
        "eta_mae": mae(eta["arrival_minutes"], eta["eta_minutes"]) if enough_eta else math.nan,
        "eta_coverage": interval_coverage(eta["arrival_minutes"], eta["eta_low"], eta["eta_high"]) if enough_eta else math.nan,
        "accept_labelled": float(len(acc)),
        "accept_log_loss": log_loss(y, p) if enough_acc else math.nan,
        "accept_ece": expected_calibration_error(y, p) if enough_acc else math.nan,
    }


def _with_arm(rows: pd.DataFrame) -> pd.DataFrame:
    """``arm`` as reported: served rows by their arm, shadow rows as :data:`SHADOW_ARM`."""
    return rows.assign(arm=np.where(rows["role"] == "shadow", SHADOW_ARM, rows["arm"]))


def _share_columns(requests: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    return requests.assign(fallback=(requests["arm"] == "fallback").astype(float), degraded=requests["degraded"].astype(float)).groupby(
        keys, observed=True).agg(requests=("fallback", "size"), fallback_share=("fallback", "mean"), degraded_share=("degraded", "mean"))


def region_metrics(joined: pd.DataFrame) -> pd.DataFrame:
    """Per (period, region): request volume, fallback and degraded shares of all served requests, and
    the realized metrics of the rows the champion served."""
    served = joined[joined["role"] == "served"]
    shares = _share_columns(served.drop_duplicates("request_id"), ["period", "region_id"])
    champion = served[served["arm"] == "champion"]
    quality = pd.DataFrame([{"period": period, "region_id": region, **group_metrics(rows)}
                            for (period, region), rows in champion.groupby(["period", "region_id"])])
    if quality.empty:
        return shares.reset_index()
    return shares.join(quality.set_index(["period", "region_id"]), how="left").reset_index()


def arm_metrics(joined: pd.DataFrame, regions: Sequence[int] = ()) -> pd.DataFrame:
    """Per (scope, period, arm, version): realized metrics and, for served arms, the request count.

    ``scope`` is ``all regions`` and then each region in ``regions``; the challenger's shadow
    scores are their own arm, on the same jobs the champion served.
    """
    rows = _with_arm(joined).assign(dispatch_version=lambda f: f["dispatch_version"].fillna("-"))
    scopes = [("all regions", rows), *((f"region {r}", rows[rows["region_id"] == r]) for r in regions)]
    out = []
    for scope, of_scope in scopes:
        for (period, arm, version), group in of_scope.groupby(["period", "arm", "dispatch_version"], sort=True):
            out.append({"scope": scope, "period": period, "arm": arm, "version": version,
                        "requests": group["request_id"].nunique(), **group_metrics(group)})
    return pd.DataFrame(out)


def reliability_rows(joined: pd.DataFrame) -> pd.DataFrame:
    """Reliability-diagram points per (period, arm) with enough matured labelled offers."""
    rows = _with_arm(joined)
    rows = rows[rows["acc_ok"]]
    out = []
    for (period, arm), group in rows.groupby(["period", "arm"], sort=True):
        if len(group) < MIN_RELIABILITY_ROWS:
            continue
        y, p = group["accepted"].to_numpy(np.float64), group["p_accept"].to_numpy(np.float64)
        table = reliability_table(y, p)
        filled = table.count > 0
        out.append(pd.DataFrame({"period": period, "arm": arm, "mean_predicted": table.mean_predicted[filled],
                                 "fraction_positive": table.fraction_positive[filled], "count": table.count[filled],
                                 "ece": expected_calibration_error(y, p)}))
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=["period", "arm", "mean_predicted", "fraction_positive", "count", "ece"])


def drift_by_cell(reference: pd.DataFrame, current: pd.DataFrame, features: Sequence[str]) -> pd.DataFrame:
    """The drift scan of ``features`` between two sets of served rows, per (region, cell), per region and overall."""
    columns = ["region_id", "cell_id", *features]
    return scan_tables(pa.Table.from_pandas(reference[columns], preserve_index=False),
                       pa.Table.from_pandas(current[columns], preserve_index=False), ("region_id", "cell_id")).to_pandas()


def regions_over_cells(drift: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """The region rollup rows of a scan, one copy per cell of the region: a region-level map for ``drift_heatmap``."""
    regions = drift[drift["region_id"].notna() & drift["cell_id"].isna()].drop(columns="cell_id")
    regions = regions.assign(region_id=regions["region_id"].astype(np.int64))
    return cells[["cell_id", "region_id"]].merge(regions, on="region_id", how="inner")


# -- reading what the loop left ------------------------------------------------------------------


def _labelled(log: pd.DataFrame, data_root: Path, start: datetime, as_of: datetime) -> tuple[pd.DataFrame, list[str]]:
    """``log`` with labels known at ``as_of`` and ``eta_ok``/``acc_ok``: labelled and past the watermark."""
    from retrain.training_set import TrainingSetError, read_labels

    try:
        labels = read_labels(data_root, as_of, known_from=start)
    except TrainingSetError as exc:
        return log.assign(arrival_minutes=np.nan, accepted=np.nan, eta_ok=False, acc_ok=False), [f"no labels: {exc}"]
    joined = join_labels(log, labels, as_of)
    served = joined[joined["role"] == "served"]
    notes = []
    for kind, flag in (("arrival_minutes", "eta_ok"), ("accepted", "acc_ok")):
        watermark = completeness_watermark(served, as_of, kind) if len(served) else None
        joined[flag] = joined[kind].notna() & matured(joined, watermark)
        notes.append(f"{kind} labels matured up to {watermark:%Y-%m-%d %H:%M} UTC" if watermark else f"no {kind} labels have matured yet")
    return joined, notes


def build_loop_report(
    settings: Settings,
    start: datetime,
    end: datetime,
    *,
    steps: Sequence[LoopStep] | None = None,
    incident_at: datetime | None = None,
    reference: tuple[datetime, datetime] | None = None,
    labels_as_of: datetime | None = None,
    features: Sequence[str] = REPORT_FEATURES,
) -> LoopReport:
    """Read the span's logs and compute every table of the report (see the module docstring)."""
    if start >= end:
        raise ValueError(f"need start < end, got {start} .. {end}")
    log_root = Path(settings.paths.root) / "prediction_log"
    read_from = min(start, reference[0]) if reference else start
    columns = [*LOG_COLUMNS, *(feature_column(f) for f in features)]
    log = read_prediction_log(log_root, read_from, end, columns=columns).to_pandas()
    if log.empty:
        raise ValueError(f"no prediction-log rows under {log_root} between {read_from} and {end}; serve traffic first")
    log = log.rename(columns={feature_column(f): f for f in features})
    events_log = EventLog(settings.paths.events)
    events, actions = events_log.events(), events_log.actions()
    incident_at = incident_at or first_incident_at(events, start, end)
    promoted_at = promoted_at_of(steps, events, start, end)
    periods = periods_of(start, end, incident_at, promoted_at)
    labels_as_of = labels_as_of or end
    in_span = log[pd.to_datetime(log["requested_at"], utc=True) >= pd.Timestamp(start)]
    joined, notes = _labelled(in_span, Path(settings.paths.data), start, labels_as_of)
    joined["period"] = period_of(joined["requested_at"], periods)
    incident_regions = acted_on_regions(events, actions, start, end)

    split = incident_at if incident_at and start < incident_at < end else start + (end - start) / 2
    ref_window = reference or (start, split)
    served = log[log["role"] == "served"]
    times = pd.to_datetime(served["requested_at"], utc=True)
    ref_rows = served[(times >= pd.Timestamp(ref_window[0])) & (times < pd.Timestamp(ref_window[1]))]
    cur_rows = served[(times >= pd.Timestamp(max(split, ref_window[1]))) & (times < pd.Timestamp(end))]
    drift_features = [*features, *PREDICTION_COLUMNS]
    drift = drift_by_cell(ref_rows, cur_rows, drift_features) if len(ref_rows) and len(cur_rows) else pd.DataFrame()
    notes.append(f"drift: served rows {ref_window[0]:%Y-%m-%d %H:%M} to {ref_window[1]:%Y-%m-%d %H:%M} UTC ({len(ref_rows):,} rows) "
                 f"against {max(split, ref_window[1]):%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} UTC ({len(cur_rows):,} rows)")
    weights = pd.DataFrame([{"time": s.end, "challenger_weight": s.challenger_weight} for s in steps]) if steps else pd.DataFrame()
    return LoopReport(
        start=start, end=end, periods=periods, incident_at=incident_at, promoted_at=promoted_at,
        volume=volume_over_time(in_span, start, end), timeline=timeline_frame(events, actions, start, end, steps),
        incidents=incident_table(events_log, start, end), drift=drift, region_metrics=region_metrics(joined),
        arm_metrics=arm_metrics(joined, incident_regions), reliability=reliability_rows(joined),
        incident_regions=incident_regions, weights=weights, labels_as_of=labels_as_of, routing=routing_at_end(Path(settings.paths.registry)),
        notes=notes,
    )


# -- figures and the page --------------------------------------------------------------------------

_SEVERITY_COLOURS = {"page": "#d62728", "ticket": "#ff7f0e", "info": "#1f77b4"}


def timeline_figure(report: LoopReport) -> go.Figure:
    """Volume, fallback/degraded shares and the events/actions lanes on one shared time axis."""
    lanes = sorted(report.timeline["lane"].unique(), key=lambda lane: (not lane.startswith("event"), lane))
    volume = report.volume
    width = int(volume["bin_seconds"].iloc[0]) if len(volume) else 0
    figure = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.04, row_heights=[0.22, 0.22, 0.56],
                           subplot_titles=(f"served requests per second (bins of {width} s)", "share of requests", "events and actions"))
    figure.add_trace(go.Bar(x=volume["bin"], y=volume["requests"] / max(width, 1), name="served requests/s", marker_color="#7f7f7f"), row=1, col=1)
    figure.add_trace(go.Scatter(x=volume["bin"], y=volume["shadow_scored"] / max(width, 1), name="shadow scorings/s", mode="lines",
                                line_color="#9467bd"), row=1, col=1)
    figure.add_trace(go.Scatter(x=volume["bin"], y=volume["fallback_share"], name="fallback share", mode="lines", line_color="#d62728"), row=2, col=1)
    figure.add_trace(go.Scatter(x=volume["bin"], y=volume["degraded_share"], name="degraded share", mode="lines", line_color="#ff7f0e"), row=2, col=1)
    if not report.weights.empty:
        figure.add_trace(go.Scatter(x=report.weights["time"], y=report.weights["challenger_weight"], name="challenger weight",
                                    mode="lines", line={"shape": "hv", "color": "#2ca02c"}), row=2, col=1)
    for severity, rows in report.timeline.groupby("severity", sort=True):
        for is_action, part in rows.groupby(~rows["lane"].str.startswith("event"), sort=True):
            hover = (part["kind"] + " (" + part["status"] + ")<br>" + part["subject"].map(html.escape) + " | " + part["segment"] + "<br>"
                     + part["text"].map(lambda t: html.escape(t[:160])))
            figure.add_trace(go.Scatter(
                x=part["time"], y=part["lane"], mode="markers", name=f"{'actions' if is_action else 'events'}: {severity}",
                marker={"color": _SEVERITY_COLOURS.get(severity, "#444"), "size": 10, "symbol": "diamond" if is_action else "circle",
                        "line": {"width": 1, "color": "black"}},
                text=hover, hovertemplate="%{x}<br>%{text}<extra></extra>"), row=3, col=1)
    figure.update_yaxes(categoryorder="array", categoryarray=lanes[::-1], row=3, col=1)
    figure.update_yaxes(range=[0, 1.05], row=2, col=1)
    for label, when in (("incident", report.incident_at), ("promotion", report.promoted_at)):
        if when is not None:
            figure.add_vline(x=pd.Timestamp(when).timestamp() * 1000, line_dash="dot", line_color="black")
            figure.add_annotation(x=pd.Timestamp(when).timestamp() * 1000, y=1.02, yref="paper", text=label, showarrow=False)
    figure.update_layout(title="Timeline", height=260 + 34 * max(len(lanes), 4) + 300, hovermode="closest")
    return figure


def drift_figures(report: LoopReport, cells: pd.DataFrame) -> list[go.Figure]:
    """Region rollup painted over the cell map, the cell-level map, and the worst feature's cell map."""
    if report.drift.empty:
        return []
    by_region = drift_heatmap(regions_over_cells(report.drift, cells), cells)
    by_region.update_layout(title="drift by region over the cell map: worst PSI over the report's features (boxes: drifted)")
    by_cell = drift_heatmap(report.drift, cells)
    by_cell.update_layout(title="drift by cell: worst PSI over the report's features (grey: too few rows in the cell)")
    figures = [by_region, by_cell]
    regions = report.drift[report.drift["region_id"].notna() & report.drift["cell_id"].isna()]
    if regions["drift"].any():
        worst = str(regions[regions["drift"]].sort_values("psi", ascending=False)["feature"].iloc[0])
        one = drift_heatmap(regions_over_cells(report.drift, cells), cells, worst)
        one.update_layout(title=f"drift by region over the cell map: {worst}")
        figures.append(one)
    return figures


def calibration_figures(report: LoopReport, target_coverage: float) -> list[go.Figure]:
    """Acceptance reliability per (period, arm) and ETA interval coverage per (period, arm) with Wilson intervals."""
    reliability = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dot", "color": "grey"}, name="perfect"))
    for (period, arm), rows in report.reliability.groupby(["period", "arm"], sort=False):
        reliability.add_trace(go.Scatter(x=rows["mean_predicted"], y=rows["fraction_positive"], mode="lines+markers",
                                         name=f"{period}: {arm} (ECE {rows['ece'].iloc[0]:.3f})", customdata=rows["count"],
                                         hovertemplate="predicted %{x:.2f}, observed %{y:.2f}, offers %{customdata}<extra></extra>"))
    reliability.update_layout(title="acceptance reliability before and after, matured labels", xaxis_title="mean predicted p_accept",
                              yaxis_title="observed acceptance rate", xaxis_range=[0, 1], yaxis_range=[0, 1], height=500)
    overall = report.arm_metrics[(report.arm_metrics["scope"] == "all regions") & (report.arm_metrics["eta_labelled"] >= MIN_LABELLED_ROWS)]
    coverage = go.Figure()
    for arm, rows in overall.groupby("arm", sort=True):
        value, n = rows["eta_coverage"].to_numpy(), rows["eta_labelled"].to_numpy()
        low, high = np.array([wilson_ci(v * k, k) for v, k in zip(value, n, strict=True)]).T
        coverage.add_trace(go.Bar(
            x=rows["period"] + " (" + rows["version"].str[-8:] + ")", y=value, name=arm,
            error_y={"type": "data", "symmetric": False, "array": high - value, "arrayminus": value - low}))
    coverage.add_hline(y=target_coverage, line_dash="dot")
    coverage.update_layout(title=f"ETA interval coverage (target {target_coverage:.0%}), matured arrivals, 95 % Wilson intervals",
                           yaxis_range=[0, 1], barmode="group", height=450)
    return [reliability, coverage]


def _table(frame: pd.DataFrame, table_id: str) -> str:
    return frame.to_html(index=False, table_id=table_id, na_rep="–", float_format=lambda x: f"{x:.4f}", border=0)


_COUNTS = ("requests", "eta_labelled", "accept_labelled")


def _region_pivot(metrics: pd.DataFrame, periods: Sequence[Period]) -> pd.DataFrame:
    """Regions down, (metric, period) across, periods in time order under each metric."""
    values = ["requests", "fallback_share", "degraded_share", "eta_mae", "eta_coverage", "accept_log_loss", "accept_ece"]
    pivot = metrics.pivot_table(index="region_id", columns="period", values=values, aggfunc="first", dropna=False)
    order = [(metric, p.name) for metric in values for p in periods if (metric, p.name) in pivot.columns]
    pivot = pivot[order]
    pivot.columns = [f"{metric} | {period}" for metric, period in order]
    for column in [c for c in pivot.columns if c.startswith("requests")]:
        pivot[column] = pivot[column].astype("Int64")
    return pivot.reset_index()


def _counts_as_int(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.astype({c: "Int64" for c in _COUNTS if c in frame.columns})


def _region_drift_table(drift: pd.DataFrame) -> pd.DataFrame:
    if drift.empty:
        return pd.DataFrame()
    regions = drift[drift["region_id"].notna() & drift["cell_id"].isna()]
    return regions[["region_id", "feature", "n_reference", "n_current", "psi", "wasserstein_norm", "q_value", "drift"]].sort_values(
        ["drift", "psi"], ascending=[False, False]).reset_index(drop=True)


def _json(report: LoopReport) -> str:
    """The figures behind the tables, machine-readable (aggregates only), for tools and tests."""
    def records(frame: pd.DataFrame) -> list[dict]:
        return json.loads(frame.to_json(orient="records", date_format="iso")) if not frame.empty else []

    payload = {
        "start": report.start.isoformat(), "end": report.end.isoformat(),
        "incident_at": report.incident_at.isoformat() if report.incident_at else None,
        "promoted_at": report.promoted_at.isoformat() if report.promoted_at else None,
        "periods": [{"name": p.name, "start": p.start.isoformat(), "end": p.end.isoformat()} for p in report.periods],
        "incident_regions": report.incident_regions,
        "region_metrics": records(report.region_metrics), "arm_metrics": records(report.arm_metrics),
        "region_drift": records(_region_drift_table(report.drift)),
    }
    return json.dumps(_finite(payload), default=str).replace("</", "<\\/")


def _finite(value: object) -> object:
    """NaN and infinities as ``null``: JSON has no NaN."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def render(report: LoopReport, cells: pd.DataFrame, out: Path, title: str, target_coverage: float) -> Path:
    periods = ", ".join(f"<b>{html.escape(p.name)}</b> {p.start:%Y-%m-%d %H:%M} to {p.end:%Y-%m-%d %H:%M}" for p in report.periods)
    summary = (
        f"<p>Span {report.start:%Y-%m-%d %H:%M} to {report.end:%Y-%m-%d %H:%M} UTC; periods: {periods} UTC. "
        f"Regions paged: {', '.join(map(str, report.incident_regions)) or 'none'}. "
        f"Labels as known at {report.labels_as_of:%Y-%m-%d %H:%M} UTC. Now: {html.escape(report.routing)}.</p>"
        f"<ul>{''.join(f'<li>{html.escape(n)}</li>' for n in report.notes)}</ul>"
    )
    sections: list = [
        summary, timeline_figure(report),
        "<h2>Incidents in the span</h2>", _table(report.incidents, "incidents"),
        "<h2>Actions on the models and the routing</h2>", _table(release_table(report.timeline), "releases"),
        "<h2>Drift over the cell map</h2>", *drift_figures(report, cells),
        "<h3>Drift by region (region rollup of the scan)</h3>", _table(_region_drift_table(report.drift).head(60), "region-drift"),
        "<h2>Calibration before and after</h2>", *calibration_figures(report, target_coverage),
        "<h2>Before/after by arm</h2>", _table(_counts_as_int(report.arm_metrics), "arm-metrics"),
        "<h2>Before/after by region (fallback and degraded shares of all served requests; quality of the champion's)</h2>",
        _table(_region_pivot(report.region_metrics, report.periods), "region-metrics"),
        f"<script type='application/json' id='{DATA_ELEMENT_ID}'>{_json(report)}</script>",
    ]
    return write_page(out, title, sections)


def write_loop_report(
    settings: Settings,
    start: datetime,
    end: datetime,
    out: Path,
    *,
    steps: Sequence[LoopStep] | None = None,
    title: str = "The closed loop: incident, action, release",
    incident_at: datetime | None = None,
    reference: tuple[datetime, datetime] | None = None,
    labels_as_of: datetime | None = None,
) -> Path:
    """Write the report of ``[start, end)`` to ``out`` (one self-contained HTML file); returns ``out``.

    ``steps`` are ``run_closed_loop``'s records when the loop ran in lockstep (release stages and
    the challenger's weight then come from them, in data time). ``incident_at`` overrides the
    first firing event as the before/after split; ``reference`` overrides the drift reference
    (the rows served before the split); labels are those known at ``labels_as_of`` (``end``).
    """
    report = build_loop_report(settings, start, end, steps=steps, incident_at=incident_at, reference=reference, labels_as_of=labels_as_of)
    cells = pd.read_parquet(world_path(Path(settings.paths.data), "cells"), columns=["cell_id", "region_id", "row", "col"])
    return render(report, cells, Path(out), title, settings.train.interval_coverage)

