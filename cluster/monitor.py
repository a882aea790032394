"""The model-quality monitor: incremental passes over the prediction log and the labels.

One pass (:func:`run_pass`) at data time ``as_of``:

1. **Reads only what is new.** A cursor per prediction-log file (and per label file) remembers up
   to which ``requested_at`` (``known_at``) it was read; a file whose every row is at or before
   the cursor is never opened again. In live use ``as_of`` is now, so each file is read once; a
   replay in simulated time (``--until``) reads each file in slices. Rows are de-duplicated on
   the log's key (delivery is at least once).
2. **Folds rows into sums.** Per ``bin_seconds`` (5 min) bin and per value of each segment column
   (region, provider cohort, line of business, hour of day): rows, fallback and degraded rows,
   per feature group null / out-of-range / value counts and freshness sums
   (``eval.data_quality``). Per ``drift_bin_seconds`` bin and region: counts of every model
   feature and of the predictions in the reference's frozen decile bins. Windows from 5 min to 30
   days are then sums over bins, never a rescan.
3. **Joins labels as they arrive** to the served rows awaiting them; once the label completeness
   watermark (``eval.labels.completeness_age_s``) passes a prediction's request time, its
   outcome is folded (by *prediction* time) into matured sums: ETA interval hits, residuals, top
   rank accepted, reliability bins of ``p_accept``, member wait; and its ETA residual is fed, in
   request order, to Page-Hinkley and ADWIN per region (``eval.page_hinkley``, ``eval.adwin``).
4. **Checks** (thresholds in ``Settings.monitor``): data quality (nulls, ranges, freshness with
   near-real-time and batch groups apart, volume vs a week earlier, schema) pages, and so does
   training-serving skew per region (``eval.skew``, every ``skew_every_hours`` of data: the served
   features vs Feast's recomputation from the warehouse, which is where a unit bug in a push
   feed shows, as its factor); feature and
   prediction drift per region vs the reference (``eval.drift``: PSI over frozen bins, χ²,
   Benjamini-Hochberg; the job's cell and region features counted once per job; a finding must
   hold for ``drift_persistence_hours``) tickets; concept drift (Page-Hinkley per region on the matured share of arrivals after the
   promised interval) and
   the model-quality SLOs (ETA interval hit ratio, top-ranked provider accepted) evaluated with
   ``eval.burn_rate.alert_levels`` on the matured 5-minute counts page or ticket by tier;
   calibration (ECE per region) tickets. Label-free estimates (``eval.estimation``) and business
   KPIs are exported as gauges.
5. **Writes events** through ``cluster.event_log.EventLog``: a ``firing`` event when a check
   starts firing (not again while its incident is open), a ``resolved`` one when it is evaluated
   with enough data and no longer fires. Event ids are deterministic in (check, subject,
   segment, ``as_of``, state), so re-running a pass over the same data writes nothing new.
6. **Exports gauges** (``contracts.monitor_metrics``) to a ``prometheus_client`` registry.

State (cursors, sums, reference bins, detectors, rows awaiting labels) is one pickle under
``<paths.events>/monitor/state.pkl``, replaced atomically after each pass.

The reference for drift is the first ``reference_hours`` of the log the monitor ever saw (the
champion's first day in service), sampled to ``reference_rows`` rows; its deciles are the frozen
bins. Reassignments are not in the prediction log or the labels and are not monitored here.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from cluster.config import MonitorSettings, Settings
from cluster.event_log import EventLog
from contracts.events import Event, event_id, incident_key
from contracts.features import FEATURE_GROUPS, REQUEST_FEATURES, feature_range
from contracts.monitor_metrics import MONITOR_METRICS
from contracts.prediction_log import (
    FEATURE_COLUMNS,
    MODEL_FEATURES,
    PREDICTION_LOG,
    age_column,
    deduplicate,
    feature_column,
    status_column,
)
from contracts.warehouse import table_dir
from eval.adwin import ADWIN
from eval.burn_rate import LEVELS, alert_levels
from eval.calibration import ece_from_counts
from eval.data_quality import freshness_counts, quality_counts, ratio, schema_violations, volume_ratio
from eval.drift import PSI_BINS, bh_qvalues, chi2_pvalue_from_counts, psi_from_counts, psi_null_bias
from eval.estimation import IntervalLossEstimator
from eval.labels import completeness_age_s
from eval.page_hinkley import PageHinkley
from eval.skew import DEFAULT_MIN_ROWS as DEFAULT_SKEW_MIN_ROWS
from eval.skew import skew_scan

SEGMENTS: tuple[str, ...] = ("region_id", "provider_cohort", "line_of_business", "hour_of_day")
#: Drift columns: every model feature, then the two predictions (their model in ``PREDICTIONS``).
PREDICTIONS: dict[str, str] = {"eta_minutes": "eta", "p_accept": "acceptance"}
DRIFT_COLUMNS: tuple[str, ...] = (*FEATURE_COLUMNS, *PREDICTIONS)
LABEL_KINDS: tuple[str, ...] = ("arrival_minutes", "accepted")
ECE_BINS = 10
STATE_FILE = "state.pkl"
WEEK_S = 7 * 86_400


def _group_columns() -> dict[str, list[int]]:
    """Indices into ``FEATURE_COLUMNS`` of each stored group's features."""
    return {g.name: [MODEL_FEATURES.index(f"{g.name}__{f}") for f in g.features] for g in FEATURE_GROUPS}


GROUP_COLUMNS = _group_columns()
#: Drift columns of job-level groups (the job's cell and region): every candidate row of a job
#: repeats the same value, so their histograms count each job once (see ``_once_per_job``).
JOB_LEVEL_DRIFT = np.array([c.removeprefix("feature__").split("__", 1)[0] in {g.name for g in FEATURE_GROUPS if g.entity in ("cell", "region")}
                            for c in DRIFT_COLUMNS])
_LOW = np.array([feature_range(f)[0] if f not in REQUEST_FEATURES else -np.inf for f in MODEL_FEATURES])
_HIGH = np.array([feature_range(f)[1] if f not in REQUEST_FEATURES else np.inf for f in MODEL_FEATURES])


@dataclass
class MonitorState:
    """Everything a pass needs from the previous ones (see the module docstring)."""

    log_cursor: dict[str, float] = field(default_factory=dict)
    label_cursor: dict[str, float] = field(default_factory=dict)
    as_of: float | None = None
    log_start: float | None = None
    seen_requests: dict[int, set[str]] = field(default_factory=dict)
    schema_violations: dict[str, int] = field(default_factory=dict)
    #: segment column -> frame indexed by (bin, value) of summed counts.
    counts: dict[str, pd.DataFrame] = field(default_factory=dict)
    outcomes: dict[str, pd.DataFrame] = field(default_factory=dict)
    #: (drift bin, region) -> counts (len(DRIFT_COLUMNS), PSI_BINS) in the frozen reference bins.
    drift: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)
    reference_sample: pd.DataFrame | None = None
    edges: np.ndarray | None = None
    reference_hist: dict[int, np.ndarray] = field(default_factory=dict)
    estimator: IntervalLossEstimator | None = None
    estimator_rows: pd.DataFrame | None = None
    predictions: pd.DataFrame | None = None
    folded_until: dict[str, float] = field(default_factory=dict)
    page_hinkley: dict[int, PageHinkley] = field(default_factory=dict)
    adwin: dict[int, ADWIN] = field(default_factory=dict)
    last_concept_detection: dict[int, float] = field(default_factory=dict)
    detections: dict[tuple[int, str], int] = field(default_factory=dict)
    skew_checked_until: float | None = None
    #: Drift finding key -> data time since which it has fired at every pass (``drift_persistence_hours``).
    drift_since: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Finding:
    """A check that fires now, before it becomes an :class:`Event`."""

    kind: str
    severity: str
    source: str
    subject: str
    segment: dict[str, int | str]
    summary: str
    evidence: dict[str, float | int | str | bool | None]

    def key(self) -> str:
        return incident_key(self.kind, self.source, self.subject, self.segment)


@dataclass
class PassResult:
    as_of: datetime
    rows_read: int
    labels_read: int
    events: list[Event]
    written: int
    report: Path


# -- state -------------------------------------------------------------------------------------


def state_path(settings: Settings) -> Path:
    return Path(settings.paths.events) / "monitor" / STATE_FILE


def load_state(path: Path) -> MonitorState:
    if not path.exists():
        return MonitorState()
    with path.open("rb") as handle:
        return pickle.load(handle)


def save_state(state: MonitorState, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as handle:
        pickle.dump(state, handle, protocol=pickle.HIGHEST_PROTOCOL)
        handle.flush()
        os.fsync(handle.fileno())
    tmp.replace(path)


# -- reading what is new -----------------------------------------------------------------------


def _epoch(ts: datetime) -> float:
    return ts.timestamp()


def _new_slices(root: Path, cursor: dict[str, float], time_column: str, until: float) -> Iterator[tuple[str, pa.Table]]:
    """Rows of each parquet file under ``root`` with ``cursor < time_column <= until``; advances the cursor."""
    if not root.exists():
        return
    for path in sorted(root.rglob("*.parquet")):
        name = str(path.relative_to(root))
        consumed = cursor.get(name, float("-inf"))
        if consumed == float("inf"):
            continue
        times = pq.read_table(path, columns=[time_column]).column(time_column)
        seconds = pc.cast(times, pa.int64()).to_numpy(zero_copy_only=False) / 1e6
        wanted = (seconds > consumed) & (seconds <= until)
        cursor[name] = float("inf") if seconds.size == 0 or seconds.max() <= until else until
        if wanted.any():
            yield name, pq.read_table(path).filter(pa.array(wanted))


def _seconds(times: pd.Series) -> np.ndarray:
    """UTC timestamps as float epoch seconds, whatever the frame's datetime unit."""
    return pd.to_datetime(times, utc=True).dt.tz_convert(None).to_numpy().astype("datetime64[us]").astype(np.int64) / 1e6


def _bins(seconds: np.ndarray, width: int) -> np.ndarray:
    return (np.floor(seconds / width) * width).astype(np.int64)


def _fold(frames: dict[str, pd.DataFrame], rows: pd.DataFrame, value_columns: list[str], bin_column: str = "bin") -> None:
    """Add ``rows``' per-(bin, segment value) sums of ``value_columns`` into ``frames``."""
    for column in SEGMENTS:
        summed = rows.groupby([bin_column, column], observed=True, sort=False)[value_columns].sum()
        summed.index = summed.index.set_names(["bin", "value"])
        old = frames.get(column)
        frames[column] = summed if old is None else old.add(summed, fill_value=0.0)


def _log_counts(log: pd.DataFrame, features: np.ndarray, bin_seconds: int) -> pd.DataFrame:
    """Per log row: the additive counts the data-quality and KPI checks need."""
    n = len(log)
    out = pd.DataFrame({"bin": _bins(log["requested_s"].to_numpy(), bin_seconds)})
    for column in SEGMENTS:
        out[column] = log[column].astype(str).to_numpy() if column == "provider_cohort" else log[column].to_numpy()
    out["rows"] = 1.0
    out["fallback"] = (log["arm"] == "fallback").to_numpy(float)
    out["degraded"] = log["degraded"].to_numpy(float)
    out["eta_sum"] = log["eta_minutes"].to_numpy(float)
    out["p_accept_sum"] = log["p_accept"].to_numpy(float)
    rows = np.arange(n)
    for group in FEATURE_GROUPS:
        idx = GROUP_COLUMNS[group.name]
        q = quality_counts(features[:, idx], _LOW[idx], _HIGH[idx], rows, n)
        out[f"values__{group.name}"] = q.values
        out[f"nulls__{group.name}"] = q.nulls
        out[f"out_of_range__{group.name}"] = q.out_of_range
        f = freshness_counts(log[age_column(group.name)].to_numpy(np.float64), group.freshness_limit.total_seconds(), rows, n)
        out[f"fresh_rows__{group.name}"] = f.rows
        out[f"stale__{group.name}"] = f.stale
        out[f"age_sum__{group.name}"] = f.age_sum_s
        out[f"missing__{group.name}"] = (log[status_column(group.name)].astype(str) == "missing").to_numpy(float)
    return out


def _drift_matrix(log: pd.DataFrame) -> np.ndarray:
    return np.column_stack([log[c].to_numpy(np.float64) for c in DRIFT_COLUMNS])


def _freeze_reference(state: MonitorState) -> None:
    """Deciles of the reference sample are the frozen drift bins; per-region reference counts."""
    sample = state.reference_sample
    values = sample[list(DRIFT_COLUMNS)].to_numpy(np.float64)
    with np.errstate(all="ignore"):
        state.edges = np.nanquantile(values, np.arange(1, PSI_BINS) / PSI_BINS, axis=0).T  # (cols, 9)
    for region, rows in sample.groupby("region_id"):
        state.reference_hist[int(region)] = _histogram(state.edges, rows[list(DRIFT_COLUMNS)].to_numpy(np.float64))
    state.reference_sample = None


def _histogram(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Counts (cols, PSI_BINS) of ``values`` (rows, cols) in bins ``(e_{k-1}, e_k]``; NaN dropped."""
    out = np.zeros((values.shape[1], PSI_BINS), dtype=np.int64)
    for j in range(values.shape[1]):
        v = values[:, j]
        v = v[np.isfinite(v)]
        if v.size and np.all(np.isfinite(edges[j])):
            out[j] = np.bincount(np.searchsorted(edges[j], v, side="left"), minlength=PSI_BINS)
    return out


def _ingest_log(state: MonitorState, settings: MonitorSettings, log_root: Path, until: float) -> int:
    read = 0
    rng = np.random.default_rng(settings.seed)
    for _, table in _new_slices(log_root, state.log_cursor, "requested_at", until):
        for group in FEATURE_GROUPS:
            columns = (status_column(group.name), age_column(group.name), *(feature_column(f"{group.name}__{f}") for f in group.features))
            violations = schema_violations(table.schema, PREDICTION_LOG, columns)
            if violations:
                state.schema_violations[group.name] = state.schema_violations.get(group.name, 0) + len(violations)
        table = deduplicate(table)
        log = table.to_pandas()
        log = log[log["role"] == "served"]
        day = pd.Series(_bins(_seconds(log["requested_at"]), 86_400), index=log.index)
        keep = np.ones(len(log), dtype=bool)
        for d in np.unique(day):
            seen = state.seen_requests.setdefault(int(d), set())
            mask = (day == d).to_numpy()
            ids = log["request_id"].to_numpy()[mask]
            fresh = ~np.isin(ids, list(seen)) if seen else np.ones(ids.size, bool)
            # A request's candidates arrive in one flush: keep all rows of a request first seen now.
            keep[np.flatnonzero(mask)] = fresh
            seen.update(ids[fresh].tolist())
        log = log[keep].reset_index(drop=True)
        if log.empty:
            continue
        log["requested_s"] = _seconds(log["requested_at"])
        read += len(log)
        state.log_start = min(state.log_start or np.inf, float(log["requested_s"].min()))
        features = np.column_stack([log[c].to_numpy(np.float64) for c in FEATURE_COLUMNS])
        counts = _log_counts(log, features, settings.bin_seconds)
        _fold(state.counts, counts, [c for c in counts.columns if c not in ("bin", *SEGMENTS)])
        _ingest_drift(state, settings, log, rng)
        narrow = log[["job_id", "provider_id", "requested_s", "rank", "eta_minutes", "eta_low", "eta_high", "p_accept", *SEGMENTS]].copy()
        narrow["provider_cohort"] = narrow["provider_cohort"].astype(str)
        for kind in LABEL_KINDS:
            narrow[kind] = np.nan
            narrow[f"{kind}_known_s"] = np.nan
        state.predictions = narrow if state.predictions is None else pd.concat([state.predictions, narrow], ignore_index=True)
    return read


def _once_per_job(log: pd.DataFrame) -> pd.DataFrame:
    """The drift columns with job-level features blanked (NaN, not counted) on all but a job's first row.

    A job's candidates share its cell's traffic and its region's load: counting each candidate
    row would count one observation ``candidates_per_job`` times, making the χ² p-values and
    PSI's no-drift bias (both assume independent rows) several times too confident.
    """
    out = log[["region_id", "requested_s", *DRIFT_COLUMNS]].copy()
    repeat = log["request_id"].duplicated().to_numpy()
    for column in np.asarray(DRIFT_COLUMNS)[JOB_LEVEL_DRIFT]:
        out.loc[repeat, column] = np.nan
    return out


def _ingest_drift(state: MonitorState, settings: MonitorSettings, log: pd.DataFrame, rng: np.random.Generator) -> None:
    log = _once_per_job(log)
    ref_end = (state.log_start or 0.0) + settings.reference_hours * 3600
    in_reference = log["requested_s"].to_numpy() < ref_end
    if state.edges is None and in_reference.any():
        sample = log.loc[in_reference, ["region_id", *DRIFT_COLUMNS]]
        state.reference_sample = sample if state.reference_sample is None else pd.concat([state.reference_sample, sample], ignore_index=True)
        if len(state.reference_sample) > settings.reference_rows:
            keep = np.sort(rng.choice(len(state.reference_sample), settings.reference_rows, replace=False))
            state.reference_sample = state.reference_sample.iloc[keep].reset_index(drop=True)
    current = log[~in_reference]
    if current.empty:
        return
    if state.edges is None:
        if state.reference_sample is None:
            return
        _freeze_reference(state)
    drift_bin = _bins(current["requested_s"].to_numpy(), settings.drift_bin_seconds)
    values = _drift_matrix(current)
    regions = current["region_id"].to_numpy()
    for key in set(zip(drift_bin.tolist(), regions.tolist(), strict=True)):
        mask = (drift_bin == key[0]) & (regions == key[1])
        hist = _histogram(state.edges, values[mask])
        state.drift[key] = state.drift[key] + hist if key in state.drift else hist


def _ingest_labels(state: MonitorState, data_root: Path, until: float) -> int:
    if state.predictions is None or state.predictions.empty:
        return 0
    read = 0
    index = pd.MultiIndex.from_arrays([state.predictions["job_id"], state.predictions["provider_id"]])
    for _, table in _new_slices(table_dir(data_root, "labels"), state.label_cursor, "known_at", until):
        labels = table.to_pandas()
        read += len(labels)
        labels["known_s"] = _seconds(labels["known_at"])
        for kind in LABEL_KINDS:
            # The first revision is when the prediction stopped being unlabelled; corrections to a
            # matured outcome are not re-folded (they move few labels, and late).
            rows = labels[(labels["label_type"] == kind) & (labels["revision"] == 0)]
            if rows.empty:
                continue
            at = index.get_indexer(pd.MultiIndex.from_arrays([rows["job_id"], rows["provider_id"]]))
            hit = at >= 0
            known = state.predictions[f"{kind}_known_s"].to_numpy()
            target = at[hit]
            fresh = np.isnan(known[target])
            state.predictions.loc[target[fresh], kind] = rows["value"].to_numpy()[hit][fresh]
            state.predictions.loc[target[fresh], f"{kind}_known_s"] = rows["known_s"].to_numpy()[hit][fresh]
    return read


def _watermark(predictions: pd.DataFrame, kind: str, as_of: float, settings: MonitorSettings) -> float | None:
    age = as_of - predictions["requested_s"].to_numpy()
    delay = predictions[f"{kind}_known_s"].to_numpy() - predictions["requested_s"].to_numpy()
    waited = completeness_age_s(delay, age, settings.label_completeness, settings.label_horizon_hours * 3600.0)
    return None if not np.isfinite(waited) else as_of - waited


def _mature(state: MonitorState, settings: MonitorSettings, as_of: float) -> tuple[dict[str, float | None], dict[str, pd.DataFrame]]:
    """Fold the outcomes of predictions that passed each label kind's watermark; feed the detectors.

    Returns each kind's watermark and the rows matured in this pass (for the business counters).
    """
    watermarks: dict[str, float | None] = {}
    matured: dict[str, pd.DataFrame] = {}
    predictions = state.predictions
    if predictions is None or predictions.empty:
        return dict.fromkeys(LABEL_KINDS), matured
    for kind in LABEL_KINDS:
        watermark = _watermark(predictions, kind, as_of, settings)
        watermarks[kind] = watermark
        if watermark is None:
            continue
        since = state.folded_until.get(kind, float("-inf"))
        ready = predictions[(predictions["requested_s"] > since) & (predictions["requested_s"] <= watermark)]
        state.folded_until[kind] = watermark
        if ready.empty:
            continue
        ready = ready.sort_values(["requested_s", "job_id", "provider_id"], kind="stable")
        matured[kind] = ready
        out = ready[["requested_s", *SEGMENTS]].copy()
        out["bin"] = _bins(ready["requested_s"].to_numpy(), settings.bin_seconds)
        if kind == "arrival_minutes":
            arrival = ready[kind].to_numpy()
            labelled = np.isfinite(arrival)
            out["eta_n"] = labelled.astype(float)
            out["eta_hit"] = (labelled & (arrival >= ready["eta_low"].to_numpy()) & (arrival <= ready["eta_high"].to_numpy())).astype(float)
            residual = np.where(labelled, arrival - ready["eta_minutes"].to_numpy(), 0.0)
            out["residual_sum"] = residual
            out["abs_error_sum"] = np.abs(residual)
            late = (arrival > ready["eta_high"].to_numpy()).astype(float)
            _feed_detectors(state, settings, ready[labelled], late[labelled], residual[labelled])
            _fit_estimator(state, settings, ready[labelled], watermark)
        else:
            accepted = ready[kind].to_numpy()
            offered = np.isfinite(accepted)
            top = offered & (ready["rank"].to_numpy() == 1)
            out["top_n"] = top.astype(float)
            out["top_accepted"] = (top & (accepted == 1)).astype(float)
            out["offers"] = offered.astype(float)
            out["offers_accepted"] = (offered & (accepted == 1)).astype(float)
            p = ready["p_accept"].to_numpy()
            b = np.clip((np.nan_to_num(p) * ECE_BINS).astype(int), 0, ECE_BINS - 1)
            for k in range(ECE_BINS):
                in_bin = offered & (b == k)
                out[f"ece_n_{k}"] = in_bin.astype(float)
                out[f"ece_p_{k}"] = np.where(in_bin, p, 0.0)
                out[f"ece_y_{k}"] = np.where(in_bin, accepted, 0.0)
        _fold(state.outcomes, out, [c for c in out.columns if c not in ("bin", "requested_s", *SEGMENTS)])
    # Rows stay a day past the label horizon: the watermark is estimated from the delays of rows
    # whose whole horizon was observed, and a thin band of them would make it jump between passes.
    horizon = settings.label_horizon_hours * 3600.0 + 86_400
    done = min(state.folded_until.get(k, float("-inf")) for k in LABEL_KINDS)
    keep = (predictions["requested_s"] > as_of - horizon) | (predictions["requested_s"] > done)
    state.predictions = predictions[keep].reset_index(drop=True)
    return watermarks, matured


def _business(matured: dict[str, pd.DataFrame], metrics: dict) -> None:
    """KPI counters from newly matured rows: member wait and completed jobs, offers by outcome."""
    arrived = matured.get("arrival_minutes")
    if arrived is not None:
        arrived = arrived[arrived["arrival_minutes"].notna()]
        for (region, lob), rows in arrived.groupby(["region_id", "line_of_business"]):
            for wait_min in rows["arrival_minutes"].to_numpy():
                metrics["member_wait_seconds"].labels(str(region), lob).observe(60.0 * wait_min)
            metrics["jobs_completed"].labels(str(region), lob).inc(len(rows))
    offered = matured.get("accepted")
    if offered is not None:
        offered = offered[offered["accepted"].notna()]
        for (region, accepted), rows in offered.groupby(["region_id", "accepted"]):
            metrics["offers"].labels(str(region), "accepted" if accepted == 1 else "declined").inc(len(rows))


def _feed_detectors(state: MonitorState, settings: MonitorSettings, rows: pd.DataFrame, late: np.ndarray, residual: np.ndarray) -> None:
    """Page-Hinkley (mode up) on the late indicator and ADWIN on residuals, per region, in request order."""
    regions = rows["region_id"].to_numpy()
    times = rows["requested_s"].to_numpy()
    for region in np.unique(regions):
        mask = regions == region
        region = int(region)
        ph = state.page_hinkley.setdefault(
            region,
            PageHinkley(
                min_instances=settings.page_hinkley_min_instances,
                delta=settings.page_hinkley_delta,
                threshold=settings.page_hinkley_threshold,
                mode="up",
            ),
        )
        adwin = state.adwin.setdefault(region, ADWIN(delta=settings.adwin_delta))
        found = ph.update_many(late[mask])
        if found.size:
            state.last_concept_detection[region] = float(times[mask][found[-1]])
            state.detections[(region, "page_hinkley")] = state.detections.get((region, "page_hinkley"), 0) + int(found.size)
        cuts = adwin.update_many(residual[mask])
        if cuts.size:
            state.detections[(region, "adwin")] = state.detections.get((region, "adwin"), 0) + int(cuts.size)


def _fit_estimator(state: MonitorState, settings: MonitorSettings, rows: pd.DataFrame, folded_until: float) -> None:
    """Fit the label-free ETA loss estimator once the reference period's labels have matured."""
    if state.estimator is not None or state.log_start is None:
        return
    ref_end = state.log_start + settings.reference_hours * 3600
    reference = rows.loc[rows["requested_s"] < ref_end, ["eta_low", "eta_high", "arrival_minutes", "eta_minutes"]]
    state.estimator_rows = reference if state.estimator_rows is None else pd.concat([state.estimator_rows, reference], ignore_index=True)
    if folded_until >= ref_end and len(state.estimator_rows) >= IntervalLossEstimator().n_bins:
        r = state.estimator_rows
        state.estimator = IntervalLossEstimator().fit(r["eta_low"], r["eta_high"], r["arrival_minutes"], r["eta_minutes"])
        state.estimator_rows = None


# -- windows over the sums ---------------------------------------------------------------------


def _window(frame: pd.DataFrame | None, end: float, seconds: int) -> pd.DataFrame:
    """Sums per segment value over the bins starting in ``[end - seconds, end)``."""
    if frame is None or frame.empty:
        return pd.DataFrame()
    bins = frame.index.get_level_values("bin").to_numpy()
    inside = (bins >= end - seconds) & (bins < end)
    return frame[inside].groupby(level="value").sum()


def _series(frame: pd.DataFrame | None, value: object, end: float, bins: int, width: int, columns: list[str]) -> pd.DataFrame:
    """Per-bin sums of one segment value for the ``bins`` bins ending at ``end`` (missing bins 0)."""
    last = int(np.floor(end / width) * width)
    index = np.arange(last - (bins - 1) * width, last + width, width)
    if frame is None or frame.empty:
        return pd.DataFrame(0.0, index=index, columns=columns)
    rows = frame.xs(value, level="value") if value in frame.index.get_level_values("value") else frame.iloc[:0].droplevel("value")
    return rows.reindex(index, fill_value=0.0)[columns].fillna(0.0)


def _region(value: object) -> dict[str, int | str]:
    return {"region_id": int(value)}


def _quality_findings(state: MonitorState, settings: MonitorSettings, as_of: float, evaluated: set[str], schema_now: dict[str, int]) -> list[Finding]:
    out: dict[str, Finding] = {}

    def consider(finding: Finding, fires: bool) -> None:
        evaluated.add(finding.key())
        if fires and finding.key() not in out:
            out[finding.key()] = finding

    by_region = state.counts.get("region_id")
    for name in settings.quality_windows:
        seconds = settings.windows[name]
        window = _window(by_region, as_of, seconds)
        if window.empty:
            continue
        for group in FEATURE_GROUPS:
            g = group.name
            values = window[f"values__{g}"]
            nulls = ratio(window[f"nulls__{g}"], values)
            outside = ratio(window[f"out_of_range__{g}"], values - window[f"nulls__{g}"])
            stale = ratio(window[f"stale__{g}"], window[f"fresh_rows__{g}"])
            limit = settings.max_stale_share_batch if group.cadence == "batch" else settings.max_stale_share_near_real_time
            for i, region in enumerate(window.index):
                if values.iloc[i] < settings.min_quality_values:
                    continue
                segment = _region(region)
                evidence = {"window": name, "values": float(values.iloc[i]), "feature_group": g, "cadence": group.cadence}
                consider(Finding("data_quality", "page", "null_ratio", g, segment, f"{g} null ratio {nulls[i]:.3f} in region {region} over {name}",
                                 {**evidence, "null_ratio": float(nulls[i]), "threshold": settings.max_null_ratio}), nulls[i] > settings.max_null_ratio)
                consider(Finding("data_quality", "page", "out_of_range", g, segment, f"{g} out-of-range ratio {outside[i]:.3f} in region {region} over {name}",
                                 {**evidence, "out_of_range_ratio": float(outside[i]), "threshold": settings.max_out_of_range_ratio}),
                         bool(outside[i] > settings.max_out_of_range_ratio))
                if np.isfinite(stale[i]):
                    consider(Finding("data_quality", "page", f"freshness_{group.cadence}", g, segment,
                                     f"{g} ({group.cadence}) stale share {stale[i]:.3f} in region {region} over {name}",
                                     {**evidence, "stale_share": float(stale[i]), "threshold": limit}), stale[i] > limit)
        week_ago = _window(by_region, as_of - WEEK_S, seconds)
        if not week_ago.empty:
            current, previous = float(window["rows"].sum()), float(week_ago["rows"].sum())
            vr = float(volume_ratio(current, previous))
            consider(Finding("data_quality", "page", "volume", "prediction_log", {"global": "all"}, f"prediction volume {vr:.2f}x the same {name} a week earlier",
                             {"window": name, "volume_ratio": vr, "rows": current, "rows_week_ago": previous}),
                     not settings.min_volume_ratio <= vr <= settings.max_volume_ratio)
    for g, count in schema_now.items():
        consider(Finding("data_quality", "page", "schema", g, {"global": "all"}, f"{count} schema violations in {g} columns of new log files",
                         {"violations": count}), count > 0)
    return list(out.values())


def _drift_findings(state: MonitorState, settings: MonitorSettings, as_of: float, evaluated: set[str], gauges: dict) -> list[Finding]:
    if state.edges is None:
        return []
    tests = []  # (window, region, psi, bias, pvalue, n_cur)
    for name in settings.drift_windows:
        seconds = settings.windows[name]
        current: dict[int, np.ndarray] = {}
        for (b, region), hist in state.drift.items():
            if as_of - seconds <= b < as_of:
                current[region] = current[region] + hist if region in current else hist.copy()
        for region, cur in current.items():
            ref = state.reference_hist.get(region)
            if ref is None:
                continue
            n_ref, n_cur = ref.sum(axis=1), cur.sum(axis=1)
            tested = (n_ref >= settings.min_drift_rows) & (n_cur >= settings.min_drift_rows)
            psi = np.where(tested, psi_from_counts(ref.astype(float), cur.astype(float)), np.nan)
            bias = psi_null_bias(PSI_BINS, n_ref, n_cur)
            pvalue = np.where(tested, chi2_pvalue_from_counts(ref.astype(float), cur.astype(float)), np.nan)
            tests.append((name, region, psi, bias, pvalue, n_cur))
    if not tests:
        return []
    watched = np.array([c in PREDICTIONS or c.removeprefix("feature__").split("__", 1)[0] in settings.drift_groups for c in DRIFT_COLUMNS])
    tests = [(name, region, np.where(watched, psi, np.nan), bias, np.where(watched, pvalue, np.nan), n_cur) for name, region, psi, bias, pvalue, n_cur in tests]
    qvalues = bh_qvalues(np.concatenate([t[4] for t in tests]))
    out: dict[str, Finding] = {}
    offset = 0
    for name, region, psi, bias, _, n_cur in tests:
        q = qvalues[offset : offset + psi.size]
        offset += psi.size
        for j, column in enumerate(DRIFT_COLUMNS):
            if not np.isfinite(psi[j]):
                continue
            fires = bool(q[j] < settings.drift_fdr and psi[j] > settings.psi_threshold and psi[j] > settings.psi_bias_multiple * bias[j])
            if column in PREDICTIONS:
                kind, subject = "prediction_drift", PREDICTIONS[column]
                gauges["prediction_drift_psi"].labels(subject, str(region), name).set(psi[j])
            else:
                kind, subject = "drift", column.removeprefix("feature__")
                group_name = subject.split("__", 1)[0] if "__" in subject else "request"
                gauges["feature_drift_psi"].labels(group_name, subject, str(region), name).set(psi[j])
                gauges["feature_drift_detected"].labels(group_name, subject, str(region), name).set(float(fires))
            finding = Finding(kind, "ticket", "psi_chi2", subject, _region(region), f"{subject} drifted in region {region} over {name}: PSI {psi[j]:.2f}",
                              {"window": name, "psi": float(psi[j]), "psi_bias": float(bias[j]), "q_value": float(q[j]), "rows": int(n_cur[j])})
            evaluated.add(finding.key())
            if fires and finding.key() not in out:
                out[finding.key()] = finding
    # Persistence: a shift must hold at every pass for ``drift_persistence_hours`` of data time
    # before it is a ticket; a passing change (one region's weather for a day) clears first.
    state.drift_since = {key: state.drift_since.get(key, as_of) for key in out}
    return [f for key, f in out.items() if as_of - state.drift_since[key] >= settings.drift_persistence_hours * 3600]


def _outcome_findings(state: MonitorState, settings: MonitorSettings, watermarks: dict[str, float | None], evaluated: set[str], gauges: dict) -> list[Finding]:
    out: list[Finding] = []
    by_region = state.outcomes.get("region_id")
    if by_region is None or by_region.empty:
        return out
    width = settings.bin_seconds
    slos = (
        ("eta_interval_slo", "arrival_minutes", "eta_n", "eta_hit", settings.eta_interval_objective, "eta_interval_hit_ratio"),
        ("top_rank_accepted_slo", "accepted", "top_n", "top_accepted", settings.top_rank_accepted_objective, "top_rank_accepted_ratio"),
    )
    regions = sorted({int(v) for v in by_region.index.get_level_values("value")})
    for slo, kind, total_col, good_col, objective, gauge in slos:
        watermark = watermarks.get(kind)
        if watermark is None or total_col not in by_region.columns:
            continue
        bins = 3 * 86_400 // width + 1
        total_all = sum(_series(by_region, r, watermark, bins, width, [total_col, good_col]) for r in regions)
        for region in [None, *regions]:
            series = total_all if region is None else _series(by_region, region, watermark, bins, width, [total_col, good_col])
            total = series[total_col].to_numpy()
            bad = total - series[good_col].to_numpy()
            short = total[-(6 * 3600 // width):].sum()
            segment = {"global": "all"} if region is None else _region(region)
            label = "all" if region is None else str(region)
            hits = total[-(86_400 // width):].sum()
            if hits:
                gauges[gauge].labels(label, "1d").set(1.0 - bad[-(86_400 // width):].sum() / hits)
            if region is None:
                rates = {n: float(bad[-(s // width):].sum() / max(total[-(s // width):].sum(), 1) / (1 - objective)) for n, s in (("1h", 3600), ("6h", 21600), ("3d", 259200))}
                for n, r in rates.items():
                    gauges["quality_burn_rate"].labels(slo, n).set(r)
            if short < settings.min_slo_events:
                continue
            level = int(alert_levels(bad, total, objective, width)[-1])
            severity = {LEVELS["page"]: "page", LEVELS["ticket"]: "ticket"}.get(level)
            miss = float(bad[-(6 * 3600 // width):].sum() / short)
            finding = Finding("slo_burn", severity or "ticket", slo, slo, segment,
                              f"{slo} burning error budget in {label} (miss ratio {miss:.2f} over 6h, objective {objective})",
                              {"objective": objective, "miss_ratio_6h": miss, "events_6h": float(short), "level": level})
            evaluated.add(finding.key())
            if severity:
                out.append(finding)
    # Concept drift: a Page-Hinkley detection on the region's matured residuals in the last day.
    watermark = watermarks.get("arrival_minutes")
    if watermark is not None:
        for region in regions:
            if region not in state.page_hinkley:
                continue
            last = state.last_concept_detection.get(region)
            window = _window(by_region, watermark, 86_400)
            residual = float(window.loc[region, "residual_sum"] / window.loc[region, "eta_n"]) if region in window.index and window.loc[region, "eta_n"] else float("nan")
            finding = Finding("concept_drift", "ticket", "page_hinkley", "eta", _region(region),
                              f"arrivals after the ETA interval rose in region {region} (Page-Hinkley on matured labels)",
                              {"residual_mean_1d_min": residual, "detections": state.detections.get((region, "page_hinkley"), 0),
                               "detected_at_prediction_time": None if last is None else datetime.fromtimestamp(last, UTC).isoformat()})
            evaluated.add(finding.key())
            if last is not None and last >= watermark - 86_400:
                out.append(finding)
    # Calibration of p_accept per region.
    watermark = watermarks.get("accepted")
    if watermark is not None and "ece_n_0" in by_region.columns:
        name = settings.calibration_window
        window = _window(by_region, watermark, settings.windows[name])
        for region in window.index:
            row = window.loc[region]
            n = np.array([row[f"ece_n_{k}"] for k in range(ECE_BINS)])
            if n.sum() < settings.min_calibration_rows:
                continue
            ece = ece_from_counts(n, np.array([row[f"ece_p_{k}"] for k in range(ECE_BINS)]), np.array([row[f"ece_y_{k}"] for k in range(ECE_BINS)]))
            gauges["calibration_ece_ratio"].labels(str(region), name).set(ece)
            finding = Finding("calibration", "ticket", "ece", "acceptance", _region(region), f"p_accept ECE {ece:.3f} in region {region} over {name}",
                              {"window": name, "ece": ece, "offers": float(n.sum()), "threshold": settings.max_ece})
            evaluated.add(finding.key())
            if ece > settings.max_ece:
                out.append(finding)
    return out


def _skew_findings(state: MonitorState, settings: Settings, log_root: Path, as_of: float, evaluated: set[str]) -> list[Finding]:
    """Training-serving skew per region over each complete ``skew_window_hours`` window ending at a
    multiple of ``skew_every_hours`` since the last check; findings of the latest window."""
    every = settings.monitor.skew_every_hours * 3600
    if not every or state.log_start is None:
        return []
    window = settings.monitor.skew_window_hours * 3600
    last_end = int(as_of // every * every)
    first_end = int(state.skew_checked_until + every) if state.skew_checked_until is not None else last_end
    out: list[Finding] = []
    for end in range(max(first_end, int(state.log_start // every * every) + every), last_end + 1, every):
        start, stop = datetime.fromtimestamp(end - window, UTC), datetime.fromtimestamp(end, UTC)
        state.skew_checked_until = end
        try:
            report = skew_scan(settings, log_root, start, stop)
        except ValueError:  # no served rows in the window: nothing to compare, nothing cleared
            continue
        out = []
        for row in report[report["n"] >= DEFAULT_SKEW_MIN_ROWS].itertuples(index=False):
            finding = Finding("data_quality", "page", "skew", row.feature, _region(row.region_id),
                              f"served {row.feature} differs from the warehouse in region {row.region_id} (mismatch rate {row.mismatch_rate:.2f})",
                              {"mismatch_rate": float(row.mismatch_rate), "mismatch_ratio": float(row.mismatch_ratio), "served_to_offline": float(row.served_to_offline),
                               "rows": int(row.n), "window_end": stop.isoformat()})
            evaluated.add(finding.key())
            if row.skewed:
                out.append(finding)
    return out


# -- metrics -----------------------------------------------------------------------------------


def monitor_registry() -> tuple[CollectorRegistry, dict]:
    """A registry with every metric of ``contracts.monitor_metrics``, by short name."""
    registry = CollectorRegistry(auto_describe=True)
    metrics: dict = {}
    for metric in MONITOR_METRICS:
        short = metric.name.removeprefix("dispatchml_monitor_")
        cls = {"gauge": Gauge, "counter": Counter, "histogram": Histogram}[metric.kind]
        kwargs = {"buckets": (300, 600, 900, 1200, 1800, 2700, 3600, 5400, 7200, float("inf"))} if metric.kind == "histogram" else {}
        metrics[short] = cls(metric.name, metric.doc, metric.labels, registry=registry, **kwargs)
    return registry, metrics


def _export(state: MonitorState, settings: MonitorSettings, as_of: float, watermarks: dict[str, float | None], metrics: dict) -> None:
    by_region = state.counts.get("region_id")
    for name, seconds in settings.windows.items():
        window = _window(by_region, as_of, seconds)
        for region in window.index:
            for group in FEATURE_GROUPS:
                g = group.name
                values = window.loc[region, f"values__{g}"]
                metrics["feature_null_ratio"].labels(g, str(region), name).set(float(ratio(window.loc[region, f"nulls__{g}"], values)))
                metrics["out_of_range_ratio"].labels(g, str(region), name).set(float(ratio(window.loc[region, f"out_of_range__{g}"], values)))
        week_ago = _window(by_region, as_of - WEEK_S, seconds)
        if not window.empty and not week_ago.empty:
            for group in FEATURE_GROUPS:
                vr = volume_ratio(window["rows"].sum(), week_ago["rows"].sum())
                metrics["volume_ratio"].labels(group.name, name).set(float(vr))
    recent = _window(by_region, as_of, settings.bin_seconds * 2)
    for group in FEATURE_GROUPS:
        if not recent.empty and recent[f"fresh_rows__{group.name}"].sum():
            mean_age = recent[f"age_sum__{group.name}"].sum() / recent[f"fresh_rows__{group.name}"].sum()
            metrics["freshness_seconds"].labels(group.name, group.cadence).set(float(mean_age))
    for g, count in state.schema_violations.items():
        counter = metrics["schema_violations"].labels(g)
        counter.inc(max(count - counter._value.get(), 0))
    for (region, detector), count in state.detections.items():
        counter = metrics["concept_drift_detections"].labels("eta", str(region), detector)
        counter.inc(max(count - counter._value.get(), 0))
    for kind, stream in (("arrival_minutes", "arrival"), ("accepted", "acceptance")):
        if watermarks.get(kind) is not None:
            metrics["label_watermark_lag_seconds"].labels(stream).set(as_of - watermarks[kind])
    outcomes = state.outcomes.get("region_id")
    watermark = watermarks.get("arrival_minutes")
    if watermark is not None and outcomes is not None:
        for name in ("1h", "1d"):
            window = _window(outcomes, watermark, settings.windows[name])
            for region in window.index:
                if window.loc[region, "eta_n"]:
                    metrics["matured_eta_mae_seconds"].labels(str(region), name).set(60.0 * window.loc[region, "abs_error_sum"] / window.loc[region, "eta_n"])
    if state.estimator is not None and state.predictions is not None and watermark is not None:
        pending = state.predictions[state.predictions["requested_s"] > watermark]
        for region, rows in pending.groupby("region_id"):
            metrics["estimated_eta_mae_seconds"].labels(str(region), "unmatured").set(60.0 * state.estimator.estimate(rows["eta_low"], rows["eta_high"])["mae"])


# -- one pass ----------------------------------------------------------------------------------


def _events(findings: list[Finding], evaluated: set[str], log: EventLog, as_of: datetime, report: Path) -> list[Event]:
    """Firing events for checks not already open; resolved events for open ones that cleared."""
    now = datetime.now(UTC)
    open_incidents = {i.key: i for i in log.incidents() if i.first.source in _SOURCES or i.first.source.startswith("freshness_")}
    firing = {f.key(): f for f in findings}
    out = []
    for key, f in sorted(firing.items()):
        if key in open_incidents and open_incidents[key].last.severity == f.severity:
            continue
        out.append(Event(event_id=event_id(key, as_of, "firing"), kind=f.kind, severity=f.severity, state="firing", source=f.source, subject=f.subject,
                         segment=f.segment, observed_at=as_of, detected_at=now, summary=f.summary[:300], evidence=f.evidence, report=str(report)))
    for key, incident in sorted(open_incidents.items()):
        if key in evaluated and key not in firing:
            first = incident.first
            out.append(Event(event_id=event_id(key, as_of, "resolved"), kind=first.kind, severity=first.severity, state="resolved", source=first.source,
                             subject=first.subject, segment=first.segment, observed_at=as_of, detected_at=now,
                             summary=f"cleared: {first.summary}"[:300], evidence={}, report=str(report)))
    return out


_SOURCES = frozenset({"skew", "null_ratio", "out_of_range", "volume", "schema", "psi_chi2", "eta_interval_slo", "top_rank_accepted_slo", "page_hinkley", "ece"})


@dataclass
class Monitor:
    """One monitor over one deployment's paths; ``run_pass`` is a whole incremental pass."""

    settings: Settings
    registry: CollectorRegistry = field(init=False)
    metrics: dict = field(init=False)

    def __post_init__(self) -> None:
        self.registry, self.metrics = monitor_registry()

    @property
    def log_root(self) -> Path:
        return Path(self.settings.paths.root) / "prediction_log"

    def run_pass(self, as_of: datetime | None = None) -> PassResult:
        """Read what is new up to ``as_of`` (default now), update the sums, check, write events."""
        as_of = (as_of or datetime.now(UTC)).astimezone(UTC)
        settings = self.settings.monitor
        path = state_path(self.settings)
        state = load_state(path)
        until = _epoch(as_of)
        if state.as_of is not None and until < state.as_of:
            raise ValueError(f"the monitor already ran up to {datetime.fromtimestamp(state.as_of, UTC).isoformat()}; as_of {as_of.isoformat()} is earlier")
        violations_before = dict(state.schema_violations)
        rows = _ingest_log(state, settings, self.log_root, until)
        labels = _ingest_labels(state, Path(self.settings.paths.data), until)
        watermarks, matured = _mature(state, settings, until)
        _business(matured, self.metrics)
        schema_now = {g: state.schema_violations.get(g, 0) - violations_before.get(g, 0) for g in GROUP_COLUMNS}
        evaluated: set[str] = set()
        findings = _quality_findings(state, settings, until, evaluated, schema_now)
        findings += _drift_findings(state, settings, until, evaluated, self.metrics)
        findings += _outcome_findings(state, settings, watermarks, evaluated, self.metrics)
        findings += _skew_findings(state, self.settings, self.log_root, until, evaluated)
        _export(state, settings, until, watermarks, self.metrics)
        _prune(state, settings, until)
        state.as_of = until
        report = Path(self.settings.paths.reports) / "monitor" / f"pass-{as_of:%Y%m%dT%H%M%S}.json"
        log = EventLog(self.settings.paths.events)
        events = _events(findings, evaluated, log, as_of, report)
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps({
            "as_of": as_of.isoformat(), "rows_read": rows, "labels_read": labels,
            "watermarks": {k: None if v is None else datetime.fromtimestamp(v, UTC).isoformat() for k, v in watermarks.items()},
            "firing": [{"kind": f.kind, "severity": f.severity, "source": f.source, "subject": f.subject, "segment": f.segment, "evidence": f.evidence} for f in findings],
        }, indent=1, default=str))
        written = log.append(events)
        save_state(state, path)
        return PassResult(as_of, rows, labels, events, written, report)


def _prune(state: MonitorState, settings: MonitorSettings, as_of: float) -> None:
    """Drop sums older than the retention and de-duplication keys older than two days."""
    oldest = as_of - settings.retention_days * 86_400
    for frames in (state.counts, state.outcomes):
        for column, frame in frames.items():
            frames[column] = frame[frame.index.get_level_values("bin") >= oldest]
    state.drift = {k: v for k, v in state.drift.items() if k[0] >= oldest}
    state.seen_requests = {d: ids for d, ids in state.seen_requests.items() if d >= as_of - 2 * 86_400}


def run_until(settings: Settings, until: datetime | None, interval_s: float, once: bool, sleep=None) -> list[PassResult]:
    """The service loop: a pass every ``interval_s`` of wall time; ``once`` does one pass.

    With ``until``, each pass reads data up to ``min(now, until)`` and the loop stops after the
    pass that reached ``until`` (a bounded run, or a replay of a finished log).
    """
    import time

    sleep = sleep or time.sleep
    monitor = Monitor(settings)
    results = []
    while True:
        now = datetime.now(UTC)
        as_of = now if until is None else min(now, until)
        results.append(monitor.run_pass(as_of))
        if once or (until is not None and as_of >= until):
            return results
        sleep(interval_s)


def serve_metrics(monitor: Monitor):
    """Expose the monitor's registry on ``monitor.metrics_host:metrics_port`` (loopback by default).

    Returns the HTTP server (``server_port`` is the bound port; ``metrics_port: 0`` picks a free one).
    """
    from prometheus_client import start_http_server

    server, _ = start_http_server(monitor.settings.monitor.metrics_port, addr=monitor.settings.monitor.metrics_host, registry=monitor.registry)
    return server


def monitor_actor(settings: Settings, **actor_options):
    """The long-running service as a Ray actor (:class:`MonitorService` under ``ray.remote``).

    ``actor_options`` go to ``.options()`` (e.g. ``name="monitor", lifetime="detached"``).
    Drive it with ``actor.run_pass.remote()`` from a scheduler, or ``actor.run_forever.remote(60)``.
    """
    import ray

    return ray.remote(num_cpus=0.5)(MonitorService).options(**actor_options).remote(settings)


class MonitorService:
    """The long-running service: one :class:`Monitor`, its metrics on loopback, passes on demand or in a loop."""

    def __init__(self, settings: Settings) -> None:
        self.monitor = Monitor(settings)
        self.metrics_server = serve_metrics(self.monitor)

    @property
    def metrics_port(self) -> int:
        return int(self.metrics_server.server_port)

    def run_pass(self, as_of: datetime | None = None) -> dict:
        result = self.monitor.run_pass(as_of)
        return {"as_of": result.as_of.isoformat(), "rows_read": result.rows_read, "labels_read": result.labels_read, "events_written": result.written}

    def run_forever(self, interval_s: float) -> None:
        import time

        while True:
            self.run_pass()
            time.sleep(interval_s)

    def close(self) -> None:
        self.metrics_server.shutdown()
        self.metrics_server.server_close()
