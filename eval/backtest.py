"""``dispatchml backtest``: score registry versions side by side over history, on Ray Data.

The job reads as source → transforms → sink:

1. **source**: the request window cut into chunks of ``chunk_days`` date partitions;
2. **score** (``ChunkScorer``, one actor per core, models loaded once per actor): for each chunk,
   the point-in-time feature frame from ``retrain.point_in_time.point_in_time_frame`` (Feast's
   historical-retrieval rule as an in-process as-of merge over the warehouse partitions, equal to
   ``retrain.training_set.build_training_set``'s Feast frame, so exactly what training sees),
   labels as known at ``as_of`` (``attach_labels``; a label known later is NaN, i.e. not
   matured), the member's realized
   wait, and every version's ETA, interval, acceptance probability, expected wait and rank.
   Only these compact scored rows leave the actor; the 241-column feature frame is dropped
   there, so the history streams through and is never materialized;
3. **cells**: each scored row is copied once per (window kind × segment column), keyed by
   ``(version, window, window_start, segment, segment_value)``; segment ``all`` is the overall.
   Job ids travel as int64 keys (``job_keys``), which shuffle and sort far cheaper than text;
4. **metrics**: ``groupby(cell).map_groups`` runs the pure ``eval.scorecard.scorecard`` on each
   cell (metric, value, interval, n); calibration curves are additive bin sums per batch;
5. **sink**: ``metrics.parquet``, ``calibration.parquet`` and the HTML report
   (``eval.backtest_report``) under the output directory.

``ray.init()`` joins the cluster in ``RAY_ADDRESS`` when there is one (``ray job submit`` sets
it) and starts a local one otherwise, so the same job runs on a laptop and on a cluster; the
data and registry roots must then be on storage every node reads (``cluster/cluster.yaml``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cluster.config import Settings
from contracts.features import model_features
from eval.calibration import DEFAULT_ECE_BINS, reliability_table
from eval.scorecard import SCORED_COLUMNS, ScoredRows, scorecard
from retrain.point_in_time import point_in_time_features
from retrain.ranking import DispatchBundle
from retrain.registry import ModelRegistry
from retrain.training_set import KEY_COLUMNS, TrainingSetError, attach_labels, read_labels, read_window

#: Segment columns of the default report; any column of the training frame also works.
DEFAULT_SEGMENTS: tuple[str, ...] = ("region_id", "provider_cohort", "line_of_business", "hour_of_day")
WINDOWS: tuple[str, ...] = ("week", "month")
#: Lifecycle events of a job (accept, arrival) land within this long after its request.
_EVENT_HORIZON = timedelta(days=2)
CELL_KEYS: tuple[str, ...] = ("version", "window", "window_start", "segment", "segment_value")

Progress = Callable[[int, int], None]


class BacktestError(RuntimeError):
    """The backtest cannot run as asked; the message says what to change."""


@dataclass(frozen=True)
class BacktestSpec:
    """What to backtest: ``dispatch`` versions (ids or aliases) on requests in ``[start, end)``."""

    versions: tuple[str, ...]
    start: datetime
    end: datetime
    as_of: datetime
    out: Path
    segments: tuple[str, ...] = DEFAULT_SEGMENTS
    windows: tuple[str, ...] = WINDOWS
    #: Date partitions per scoring task: 1 at production rate; more when days are tiny, since
    #: each task reads its feature groups' partitions back one TTL (3 days for batch groups).
    chunk_days: int = 1
    ndcg_k: int = 3
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.versions:
            raise BacktestError("name at least one dispatch version or alias to backtest")
        if not self.start < self.end <= self.as_of:
            raise BacktestError(
                f"need start < end <= as-of, got {self.start:%Y-%m-%d %H:%M} / {self.end:%Y-%m-%d %H:%M} / "
                f"{self.as_of:%Y-%m-%d %H:%M}: requests after the as-of time have no matured labels"
            )
        unknown = [w for w in self.windows if w not in WINDOWS]
        if unknown:
            raise BacktestError(f"unknown window kinds {unknown}; use {list(WINDOWS)}")


@dataclass
class BacktestResult:
    metrics: pd.DataFrame
    calibration: pd.DataFrame
    versions: dict[str, str]
    scored_rows: int
    seconds: float
    paths: dict[str, Path] = field(default_factory=dict)
    #: Wall seconds of the driver's stages (``score``, ``metrics``, ``write``) and, summed over
    #: actors, their seconds in point-in-time features + labels (``actor_features``) and in
    #: model scoring (``actor_predict``): where a backtest's time goes.
    stage_seconds: dict[str, float] = field(default_factory=dict)


def chunks(start: datetime, end: datetime, chunk_days: int) -> list[dict[str, Any]]:
    """``[start, end)`` cut into consecutive spans of ``chunk_days`` days (the last may be shorter).

    ISO strings, because Ray Data's item conversion drops the UTC zone of a datetime; ``chunk``
    numbers the spans (see ``job_keys``).
    """
    step = timedelta(days=chunk_days)
    spans, lo = [], start
    while lo < end:
        spans.append({"chunk": len(spans), "chunk_start": lo.isoformat(), "chunk_end": min(lo + step, end).isoformat()})
        lo += step
    return spans


def job_keys(chunk: int, job_id: pd.Series) -> np.ndarray:
    """An int64 per row naming its job uniquely within the backtest: ``chunk << 32 | code in chunk``.

    All candidates of a job share its request time, so a job never spans two chunks. The metrics
    only ever compare job ids for equality, and integers shuffle and sort far cheaper than strings.
    """
    return (np.int64(chunk) << 32) | pd.factorize(job_id)[0].astype(np.int64)


def realized_wait_minutes(frame: pd.DataFrame, accepts: pd.DataFrame) -> pd.Series:
    """Per row, its job's realized member wait: request → the accept of the provider who arrived → arrival.

    ``accepts`` are ``accept`` events (``job_id``, ``provider_id``, ``event_ts``). The arrival
    label is minutes from acceptance, so the wait adds the time dispatch took to get a yes.
    NaN where the job has no known arrival (cancelled, or not yet matured).
    """
    arrived = frame.loc[frame["arrival_minutes"].notna(), ["job_id", "provider_id", "request_ts", "arrival_minutes"]]
    last_accept = accepts.sort_values("event_ts").drop_duplicates(["job_id", "provider_id"], keep="last")
    joined = arrived.merge(last_accept, on=["job_id", "provider_id"], how="inner")
    to_accept = (joined["event_ts"] - joined["request_ts"]).dt.total_seconds() / 60.0
    per_job = (to_accept + joined["arrival_minutes"]).groupby(joined["job_id"]).last()
    return frame["job_id"].map(per_job).astype("float64")


class ChunkScorer:
    """Ray Data actor: point-in-time features, matured labels and every version's scores for a chunk."""

    def __init__(self, settings: Settings, spec: BacktestSpec, versions: dict[str, str], counter: Any = None) -> None:
        registry = ModelRegistry(settings.paths.registry)
        self.settings, self.spec, self.counter = settings, spec, counter
        self.data_root = Path(settings.paths.data)
        self.bundles: dict[str, DispatchBundle] = {}
        for version in versions.values():
            bundle = registry.load_model("dispatch", version)
            assert isinstance(bundle, DispatchBundle)
            # One actor per core: LightGBM must not spawn a thread per core inside each actor.
            bundle.eta.num_threads = bundle.acceptance.num_threads = 1
            self.bundles[version] = bundle
        self.keep = list(dict.fromkeys(["job_id", "provider_id", "request_ts", *spec.segments]))

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        spans = zip(batch["chunk"], batch["chunk_start"], batch["chunk_end"], strict=True)
        frames = [self.score(int(n), datetime.fromisoformat(lo), datetime.fromisoformat(hi)) for n, lo, hi in spans]
        return pd.concat(frames, ignore_index=True)

    def score(self, chunk: int, start: datetime, end: datetime) -> pd.DataFrame:
        spec = self.spec
        t0 = time.perf_counter()
        try:
            features = point_in_time_features(self.data_root, start, end)
        except TrainingSetError as exc:
            if "no candidates requested" not in str(exc):
                raise
            if self.counter is not None:
                self.counter.add.remote(1, time.perf_counter() - t0, 0.0)
            return empty_scored_frame(self.keep)
        # The keys only: the feature matrix stays a matrix, and the job's coordinates stay behind.
        frame = features.entities[list(KEY_COLUMNS)].copy()
        frame["hour_of_day"] = frame["request_ts"].dt.hour
        names = model_features()
        for segment in spec.segments:
            if segment not in frame.columns and segment in names:
                frame[segment] = features.matrix[:, names.index(segment)]
        missing = [c for c in spec.segments if c not in frame.columns]
        if missing:
            raise BacktestError(f"segment columns {missing} are not in the feature frame; use key, feature or hour_of_day columns")
        frame = attach_labels(frame, read_labels(self.data_root, spec.as_of, known_from=start), spec.as_of)
        events = read_window(
            self.data_root, "dispatch/events", ("job_id", "provider_id", "event_type", "event_ts"),
            start, min(end + _EVENT_HORIZON, spec.as_of), "event_ts",
        )
        frame["realized_wait_minutes"] = realized_wait_minutes(frame, events[events["event_type"] == "accept"])
        frame["job_id"] = job_keys(chunk, frame["job_id"])
        base = frame[[*self.keep, "arrival_minutes", "accepted", "realized_wait_minutes"]]
        t1 = time.perf_counter()
        scored = []
        for version, bundle in self.bundles.items():
            s = bundle.score_array(features.matrix, base["job_id"].to_numpy())
            scored.append(base.assign(
                version=version, rank=s.rank, eta_minutes=s.eta_minutes, eta_low=s.eta_low, eta_high=s.eta_high,
                p_accept=s.p_accept, expected_wait_minutes=s.expected_wait_minutes,
            ))
        if self.counter is not None:
            self.counter.add.remote(1, t1 - t0, time.perf_counter() - t1)
        return pd.concat(scored, ignore_index=True)


def empty_scored_frame(keep: Sequence[str]) -> pd.DataFrame:
    columns = dict.fromkeys([*keep, "version", *SCORED_COLUMNS], pd.Series(dtype="float64"))
    return pd.DataFrame(columns)


def window_start(request_ts: pd.Series, window: str) -> pd.Series:
    """Start (UTC midnight) of the ISO week (Monday) or calendar month a request falls in."""
    day = request_ts.dt.tz_convert(UTC).dt.floor("D")
    if window == "week":
        return day - pd.to_timedelta(day.dt.weekday, unit="D")
    return day - pd.to_timedelta(day.dt.day - 1, unit="D")


def assign_cells(batch: pd.DataFrame, windows: Sequence[str], segments: Sequence[str]) -> pd.DataFrame:
    """One copy of the batch per (window kind, segment column), keyed by ``CELL_KEYS``.

    A copy per segment column rather than one per window with the segments split inside its
    group: the copies cost shuffle bytes, but a month's segments then score on different workers,
    and a full-history month is the longest group of the job.
    """
    copies = []
    for window in windows:
        starts = window_start(batch["request_ts"], window)
        for segment in ("all", *segments):
            value = "all" if segment == "all" else batch[segment].astype(str)
            copies.append(batch[["version", *SCORED_COLUMNS]].assign(
                window=window, window_start=starts, segment=segment, segment_value=value,
            ))
    return pd.concat(copies, ignore_index=True)


def cell_scorecard(cell: pd.DataFrame, ndcg_k: int, seed: int) -> pd.DataFrame:
    """``eval.scorecard.scorecard`` of one cell, as rows keyed by the cell.

    Rows are put in (job, rank) order first, so the bootstrap intervals do not depend on the
    order the shuffle delivered them in.
    """
    cell = cell.sort_values(["job_id", "rank"], kind="stable")
    rows = ScoredRows(*(cell[c].to_numpy(dtype=np.int64 if c == "job_id" else np.float64) for c in SCORED_COLUMNS))
    key = {k: cell[k].iloc[0] for k in CELL_KEYS}
    return pd.DataFrame([{**key, **m._asdict()} for m in scorecard(rows, ndcg_k, seed)])


def calibration_sums(batch: pd.DataFrame, segments: Sequence[str], n_bins: int = DEFAULT_ECE_BINS) -> pd.DataFrame:
    """Additive reliability-diagram sums (count, Σp, Σy per bin) per version × segment value."""
    answered = batch[batch["accepted"].notna()]
    out = []
    for segment in ("all", *segments):
        keys = ["version"] if segment == "all" else ["version", segment]
        for key, group in answered.groupby(keys, sort=False):
            table = reliability_table(group["accepted"].to_numpy(np.float64), group["p_accept"].to_numpy(np.float64), n_bins)
            filled = table.count > 0
            value = "all" if segment == "all" else str(key[1])
            out.append(pd.DataFrame({
                "version": key[0], "segment": segment, "segment_value": value, "bin": np.flatnonzero(filled),
                "count": table.count[filled], "sum_predicted": (table.count * table.mean_predicted)[filled],
                "sum_positive": (table.count * table.fraction_positive)[filled],
            }))
    columns = ["version", "segment", "segment_value", "bin", "count", "sum_predicted", "sum_positive"]
    return pd.concat(out, ignore_index=True) if out else pd.DataFrame(columns=columns)


def calibration_curves(sums: pd.DataFrame) -> pd.DataFrame:
    """Reliability diagram per version × segment value from the summed bins."""
    total = sums.groupby(["version", "segment", "segment_value", "bin"], as_index=False)[["count", "sum_predicted", "sum_positive"]].sum()
    return total.assign(
        mean_predicted=total["sum_predicted"] / total["count"],
        fraction_positive=total["sum_positive"] / total["count"],
    ).drop(columns=["sum_predicted", "sum_positive"])


def resolve_versions(settings: Settings, refs: Sequence[str]) -> dict[str, str]:
    """``{ref: dispatch version}``; each ref is a version id or an alias (``champion``, ``challenger``)."""
    registry = ModelRegistry(settings.paths.registry)
    return {ref: registry.resolve("dispatch", ref) for ref in refs}


class ChunkCounter:
    """Chunks scored so far, for the driver's progress bar (run as a zero-CPU Ray actor)."""

    def __init__(self) -> None:
        self.done = 0
        self.seconds = {"actor_features": 0.0, "actor_predict": 0.0}

    def add(self, n: int, feature_seconds: float, predict_seconds: float) -> None:
        self.done += n
        self.seconds["actor_features"] += feature_seconds
        self.seconds["actor_predict"] += predict_seconds

    def value(self) -> int:
        return self.done

    def stage_seconds(self) -> dict[str, float]:
        return dict(self.seconds)


def _watch(counter: Any, total: int, progress: Progress | None, stop: threading.Event) -> None:
    import ray

    while not stop.wait(0.5):
        if progress:
            progress(ray.get(counter.value.remote()), total)


def run_backtest(settings: Settings, spec: BacktestSpec, progress: Progress | None = None) -> BacktestResult:
    """Run the backtest on the current Ray cluster (or a local one) and write its outputs."""
    import ray

    from eval.backtest_report import write_report

    t0 = time.perf_counter()
    versions = resolve_versions(settings, spec.versions)
    spans = chunks(spec.start, spec.end, spec.chunk_days)
    if not ray.is_initialized():
        ray.init(configure_logging=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    cores = max(1, int(ray.cluster_resources().get("CPU", 1)))
    counter = ray.remote(num_cpus=0)(ChunkCounter).remote()

    scored = (
        ray.data.from_items(spans)
        .map_batches(
            ChunkScorer, fn_constructor_args=(settings, spec, versions, counter), batch_size=1,
            batch_format="pandas", compute=ray.data.ActorPoolStrategy(size=min(cores, len(spans))), num_cpus=1,
        )
    )
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(counter, len(spans), progress, stop), daemon=True)
    watcher.start()
    try:
        scored = scored.materialize()
    finally:
        stop.set()
        watcher.join()
    if progress:
        progress(len(spans), len(spans))
    stages = {"score": time.perf_counter() - t0, **ray.get(counter.stage_seconds.remote())}
    n_scored = scored.count()
    if n_scored == 0:
        raise BacktestError(f"no candidates requested between {spec.start:%Y-%m-%d} and {spec.end:%Y-%m-%d} under {settings.paths.data}")

    metrics = (
        scored.map_batches(assign_cells, fn_kwargs={"windows": spec.windows, "segments": spec.segments}, batch_format="pandas")
        # One partition (an aggregator actor) per core, more only for big histories: Ray's default
        # of 200 costs more than the cells themselves at test scale.
        .groupby(list(CELL_KEYS), num_partitions=max(cores, n_scored // 1_000_000))
        .map_groups(cell_scorecard, fn_kwargs={"ndcg_k": spec.ndcg_k, "seed": spec.seed}, batch_format="pandas")
        .to_pandas()
    )
    # Arrow hands timestamps back as an Arrow-backed dtype; plain datetime64 keeps parquet and joins simple.
    metrics["window_start"] = pd.to_datetime(metrics["window_start"], utc=True).astype("datetime64[ns, UTC]")
    sums = scored.map_batches(calibration_sums, fn_kwargs={"segments": spec.segments}, batch_format="pandas").to_pandas()
    stages["metrics"] = time.perf_counter() - t0 - stages["score"]
    result = BacktestResult(
        metrics=metrics.sort_values(list(CELL_KEYS) + ["metric"], kind="stable").reset_index(drop=True),
        calibration=calibration_curves(sums),
        versions=versions,
        scored_rows=n_scored // len(versions),
        seconds=time.perf_counter() - t0,
        stage_seconds=stages,
    )
    out = Path(spec.out)
    out.mkdir(parents=True, exist_ok=True)
    result.paths = {"metrics": out / "metrics.parquet", "calibration": out / "calibration.parquet", "report": out / "report.html"}
    result.metrics.to_parquet(result.paths["metrics"], index=False)
    result.calibration.to_parquet(result.paths["calibration"], index=False)
    write_report(result, spec, result.paths["report"])
    result.stage_seconds["write"] = time.perf_counter() - t0 - result.seconds
    result.seconds = time.perf_counter() - t0
    return result
