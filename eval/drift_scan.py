"""``dispatchml drift-scan``: per-segment drift of every feature between a reference and a current window.

A Ray Data job: source → transforms → sink.

* **Source.** A dataset of *feature chunks* (``features_per_task`` columns each). The unit of a
  scan is a feature, so the natural partition is by column: each task reads only its columns
  (plus nothing else: the segment codes are computed once by the driver and shared through the
  object store), which bounds memory at ``rows × features_per_task`` whatever the width of the
  table (8.4M rows × 250 float32 features is 8.4 GB per window; a 16-feature chunk is 540 MB per window).
* **Transform.** ``map_batches(_scan_chunk)`` applies the segmented kernels of
  :mod:`eval.drift` to each feature at every rollup level. No statistics live here.
* **Sink.** The driver gathers the per-(segment, feature) rows, applies the ``--min-samples``
  skip, Benjamini–Hochberg across every test of the scan, the drift decision and the reason,
  and writes one parquet file.

**Rollup.** ``--segment-by`` is read as a hierarchy, coarse to fine, as in SQL ``GROUP BY
ROLLUP``: ``--segment-by region_id,cell_id`` emits rows per (region, cell), per region (with
``cell_id`` null) and one global row per feature (both null). A sparse cell below
``--min-samples`` is skipped with its reason, but its rows still count in its region and the
global rows, so a shift spread thinly over many small cells is still found one level up, and a
report can start from the few region rows instead of 25K cell rows. Every level's tests enter
the same BH correction.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from eval.drift import (
    DEFAULT_MIN_SAMPLES,
    SegmentDrift,
    bh_qvalues,
    categorical_drift_by_segment,
    drift_decision,
    numeric_drift_by_rollup,
)

#: Features per Ray task: bounds a task's memory at rows × this many float32 columns.
DEFAULT_FEATURES_PER_TASK = 16
STAT_COLUMNS = (
    "feature", "n_reference", "n_current", "psi", "ks_stat", "ks_pvalue", "wasserstein_norm",
    "js_distance", "chi2_pvalue", "q_value", "drift", "reason",
)


class DriftScanError(ValueError):
    """The scan's inputs do not fit its contract (missing columns, empty input)."""


@dataclass(frozen=True)
class DriftScanSpec:
    reference: Path
    current: Path
    segment_by: tuple[str, ...] = ()
    features: tuple[str, ...] | None = None
    categorical: tuple[str, ...] = ()
    fdr: float = 0.05
    min_samples: int = DEFAULT_MIN_SAMPLES
    out: Path | None = None
    features_per_task: int = DEFAULT_FEATURES_PER_TASK
    #: scipy ``ks_2samp`` method for the p-value: "auto" (the contract) or "asymp" (benchmark comparison).
    ks_method: str = "auto"


@dataclass(frozen=True)
class RollupLevel:
    """One level of the rollup: the segment columns it groups by and each row's segment code."""

    columns: tuple[str, ...]
    keys: pd.DataFrame  # one row per segment code, the segment columns' values
    reference_codes: np.ndarray
    current_codes: np.ndarray


@dataclass(frozen=True)
class DriftScanResult:
    table: pa.Table
    seconds: float
    tests: int
    drifted: int
    skipped: int
    out: Path | None = None
    levels: tuple[tuple[str, ...], ...] = field(default_factory=tuple)
    #: Of ``seconds``, the part that does not grow with the number of features (schema, segment codes, Ray start).
    setup_seconds: float = 0.0


def _dataset(path: Path) -> pads.Dataset:
    if not Path(path).exists():
        raise DriftScanError(f"{path} does not exist; pass a parquet file or a directory of parquet files")
    return pads.dataset(str(path), format="parquet")


def read_columns(path: Path, columns: Sequence[str]) -> pa.Table:
    """The named columns of a parquet file or directory, in a fixed file order (all readers agree)."""
    return _dataset(path).to_table(columns=list(columns))


def resolve_columns(spec: DriftScanSpec) -> tuple[list[str], set[str]]:
    """``(features, categorical)``: features default to every non-segment column; non-numeric ones are categorical."""
    ref_schema = _dataset(spec.reference).schema
    cur_schema = _dataset(spec.current).schema
    for name, schema in (("reference", ref_schema), ("current", cur_schema)):
        missing = [c for c in (*spec.segment_by, *(spec.features or ()), *spec.categorical) if c not in schema.names]
        if missing:
            raise DriftScanError(f"the {name} data lacks column(s) {', '.join(missing)}")
    features = list(spec.features) if spec.features else [c for c in ref_schema.names if c not in spec.segment_by]
    features = [c for c in features if c not in spec.segment_by]
    if not features:
        raise DriftScanError("no feature columns to scan; pass --features or fewer --segment-by columns")
    not_numeric = {c for c in features if not _is_numeric(ref_schema.field(c).type)}
    return features, set(spec.categorical) | not_numeric


def _is_numeric(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_decimal(kind)


def rollup_levels(spec: DriftScanSpec) -> list[RollupLevel]:
    """Segment codes for each rollup level, finest first: ``segment_by[:k]`` for k = len … 0."""
    ref = read_columns(spec.reference, spec.segment_by).to_pandas() if spec.segment_by else None
    cur = read_columns(spec.current, spec.segment_by).to_pandas() if spec.segment_by else None
    n_ref = _dataset(spec.reference).count_rows() if ref is None else len(ref)
    n_cur = _dataset(spec.current).count_rows() if cur is None else len(cur)
    return rollup_levels_of(ref, cur, spec.segment_by, n_ref, n_cur)


def rollup_levels_of(
    ref: pd.DataFrame | None, cur: pd.DataFrame | None, segment_by: Sequence[str], n_ref: int, n_cur: int
) -> list[RollupLevel]:
    """:func:`rollup_levels` of segment columns already in memory (``None`` when ``segment_by`` is empty)."""
    levels = []
    for depth in range(len(segment_by), -1, -1):
        columns = tuple(segment_by[:depth])
        if depth == 0:
            levels.append(RollupLevel((), pd.DataFrame(index=[0]), np.zeros(n_ref, np.int32), np.zeros(n_cur, np.int32)))
            continue
        both = pd.concat([ref[list(columns)], cur[list(columns)]], ignore_index=True)
        grouped = both.groupby(list(columns), sort=True, dropna=False)
        codes = grouped.ngroup().to_numpy(np.int32)
        keys = grouped.size().index.to_frame(index=False)
        levels.append(RollupLevel(columns, keys, codes[:n_ref], codes[n_ref:]))
    return levels


def scan_features(
    reference: pa.Table,
    current: pa.Table,
    categorical: set[str],
    levels: Sequence[RollupLevel],
    ks_method: str = "auto",
    min_samples: int = 1,
) -> pa.Table:
    """Raw statistics for every feature column of two aligned tables at every rollup level.

    One row per (level, segment, feature); the driver adds q-values and decisions.
    """
    finest = levels[0]
    rollups = [(_parent_codes(finest, level), len(level.keys)) for level in levels[1:]]
    parts = []
    for feature in reference.column_names:
        ref_values = _column_values(reference, feature, feature in categorical)
        cur_values = _column_values(current, feature, feature in categorical)
        if feature in categorical:
            results = [
                categorical_drift_by_segment(ref_values, level.reference_codes, cur_values, level.current_codes, len(level.keys))
                for level in levels
            ]
        else:
            results = numeric_drift_by_rollup(ref_values, finest.reference_codes, cur_values, finest.current_codes,
                                              len(finest.keys), rollups, ks_method, min_samples)
        parts.extend(_stat_rows(result, feature, level_index) for level_index, result in enumerate(results))
    return pa.concat_tables(parts)


def scan_tables(
    reference: pa.Table, current: pa.Table, segment_by: Sequence[str], fdr: float = 0.05, min_samples: int = DEFAULT_MIN_SAMPLES
) -> pa.Table:
    """The whole scan in this process, without Ray: for a few features already in memory (a report's).

    Every non-segment column is a feature (non-numeric ones categorical); the output is what
    :func:`run_drift_scan` writes for the same inputs.
    """
    segment_by = tuple(segment_by)
    spec = DriftScanSpec(reference=None, current=None, segment_by=segment_by, fdr=fdr, min_samples=min_samples)  # type: ignore[arg-type]
    features = [c for c in reference.column_names if c not in segment_by]
    categorical = {c for c in features if not _is_numeric(reference.schema.field(c).type)}
    keys = (reference.select(list(segment_by)).to_pandas(), current.select(list(segment_by)).to_pandas()) if segment_by else (None, None)
    levels = rollup_levels_of(*keys, segment_by, reference.num_rows, current.num_rows)
    raw = scan_features(reference.select(features), current.select(features), categorical, levels, min_samples=min_samples)
    return finish_scan(raw, levels, spec)


def _parent_codes(finest: RollupLevel, level: RollupLevel) -> np.ndarray:
    """``parent[s]``: the code at ``level`` of the finest level's segment ``s`` (levels nest, so it is unique)."""
    parent = np.zeros(len(finest.keys), dtype=np.int64)
    parent[finest.reference_codes] = level.reference_codes
    parent[finest.current_codes] = level.current_codes
    return parent


def _column_values(table: pa.Table, feature: str, categorical: bool) -> np.ndarray:
    column = table.column(feature)
    if categorical:
        return column.to_numpy(zero_copy_only=False)
    # float32 is the kernels' fast path and halves memory: float32 columns stay as they are, and
    # other numeric columns become float32 only where that is exact (e.g. small integers).
    if pa.types.is_float32(column.type):
        return column.to_numpy(zero_copy_only=False)
    values = column.cast(pa.float64()).to_numpy(zero_copy_only=False)
    as32 = values.astype(np.float32)
    return as32 if np.array_equal(as32, values, equal_nan=True) else values


def _stat_rows(result: SegmentDrift, feature: str, level: int) -> pa.Table:
    n = result.n_reference.size
    return pa.table(
        {
            "level": np.full(n, level, np.int8),
            "segment": np.arange(n, dtype=np.int32),
            "feature": pa.array([feature] * n, pa.string()),
            "n_reference": result.n_reference.astype(np.int64),
            "n_current": result.n_current.astype(np.int64),
            "psi": result.psi,
            "psi_bias": result.psi_bias,
            "ks_stat": result.ks_stat,
            "ks_pvalue": result.ks_pvalue,
            "wasserstein_norm": result.wasserstein_norm,
            "js_distance": result.js_distance,
            "chi2_pvalue": result.chi2_pvalue,
        }
    )


def _scan_chunk(batch: dict[str, np.ndarray], spec: DriftScanSpec, categorical: set[str], levels_ref: object) -> pa.Table:
    """Ray Data transform: one feature chunk → raw statistic rows (kernels in :mod:`eval.drift`)."""
    import ray

    levels = ray.get(levels_ref) if isinstance(levels_ref, ray.ObjectRef) else levels_ref
    features = [str(f) for f in batch["features"][0]]
    reference = read_columns(spec.reference, features)
    current = read_columns(spec.current, features)
    return scan_features(reference, current, categorical, levels, spec.ks_method, spec.min_samples)


def run_drift_scan(spec: DriftScanSpec, progress: Callable[[int, int], None] | None = None) -> DriftScanResult:
    """Run the scan on the local (or ``RAY_ADDRESS``) Ray cluster; write ``spec.out`` if given."""
    import ray

    started = time.perf_counter()
    if not 0.0 < spec.fdr < 1.0:
        raise DriftScanError(f"--fdr must be in (0, 1), got {spec.fdr}")
    features, categorical = resolve_columns(spec)
    levels = rollup_levels(spec)
    if not ray.is_initialized():
        # A fresh local Ray unless RAY_ADDRESS names a cluster: never join someone else's session by accident.
        ray.init(address=os.environ.get("RAY_ADDRESS") or "local", include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    step = max(1, spec.features_per_task)
    chunks = [features[i : i + step] for i in range(0, len(features), step)]
    levels_ref = ray.put(levels)
    setup_seconds = time.perf_counter() - started
    source = ray.data.from_items([{"features": chunk} for chunk in chunks], override_num_blocks=len(chunks))
    raw = source.map_batches(
        _scan_chunk,
        batch_size=1,
        batch_format="numpy",
        fn_kwargs={"spec": spec, "categorical": categorical, "levels_ref": levels_ref},
    )
    parts = []
    for done, batch in enumerate(raw.iter_batches(batch_size=None, batch_format="pyarrow"), start=1):
        parts.append(batch)
        if progress:
            progress(min(done, len(chunks)), len(chunks))
    table = finish_scan(pa.concat_tables(parts), levels, spec)
    if spec.out is not None:
        spec.out.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, spec.out)
    drifted = int(np.sum(table.column("drift").to_numpy(zero_copy_only=False)))
    skipped = int(np.isnan(table.column("q_value").to_numpy(zero_copy_only=False)).sum())
    return DriftScanResult(table, time.perf_counter() - started, table.num_rows - skipped, drifted, skipped, spec.out,
                           tuple(level.columns for level in levels), setup_seconds)


def finish_scan(raw: pa.Table, levels: Sequence[RollupLevel], spec: DriftScanSpec) -> pa.Table:
    """Sink side: skip small segments, BH over every test of the scan, decide, explain, attach segment keys."""
    frame = raw.to_pandas()
    frame = frame.sort_values(["level", "segment", "feature"], kind="stable", ignore_index=True)
    small = (frame["n_reference"] < spec.min_samples) | (frame["n_current"] < spec.min_samples)
    pvalue = frame["ks_pvalue"].where(frame["ks_pvalue"].notna(), frame["chi2_pvalue"]).to_numpy(float)
    pvalue = np.where(small.to_numpy(), np.nan, pvalue)
    frame["q_value"] = bh_qvalues(pvalue)
    frame["drift"] = drift_decision(
        frame["q_value"].to_numpy(), frame["psi"].to_numpy(), frame["psi_bias"].to_numpy(),
        frame["wasserstein_norm"].to_numpy(), spec.fdr,
    )
    frame["reason"] = _reasons(frame, small.to_numpy(), pvalue, spec)
    keyed = []
    for level_index, level in enumerate(levels):
        part = frame[frame["level"] == level_index]
        keys = level.keys.iloc[part["segment"].to_numpy()].reset_index(drop=True)
        for column in spec.segment_by:
            if column not in keys:
                keys[column] = pd.Series([None] * len(part), dtype=_key_dtype(levels, column))
        keyed.append(pd.concat([keys[list(spec.segment_by)], part.reset_index(drop=True)], axis=1))
    out = pd.concat(keyed, ignore_index=True)
    return pa.Table.from_pandas(out[[*spec.segment_by, *STAT_COLUMNS]], preserve_index=False)


def _key_dtype(levels: Sequence[RollupLevel], column: str) -> str:
    """Nullable dtype of a segment column at a level that rolled it up (ints stay ints)."""
    finest = levels[0].keys[column]
    return "Int64" if pd.api.types.is_integer_dtype(finest) else finest.dtype


def _reasons(frame: pd.DataFrame, small: np.ndarray, pvalue: np.ndarray, spec: DriftScanSpec) -> np.ndarray:
    """One reason per row, from a few fixed strings (a 25K-cell x 250-feature scan has 6M rows;
    the numbers behind each reason are in the row's own columns)."""
    q = frame["q_value"].to_numpy()
    drift = frame["drift"].to_numpy()
    categorical = frame["chi2_pvalue"].notna().to_numpy()
    conditions = [small, np.isnan(pvalue), drift & categorical, drift, q < spec.fdr]
    choices = [
        f"skipped: too few samples (fewer than --min-samples {spec.min_samples} on a side)",
        "skipped: no finite values to compare",
        f"drift: chi2 q < {spec.fdr:g} and effect above threshold",
        f"drift: ks q < {spec.fdr:g} and effect above threshold",
        "significant but effect below threshold (psi - bias < 0.1 and wasserstein_norm < 0.1)",
    ]
    return np.select(conditions, choices, default=f"no drift: q >= {spec.fdr:g}").astype(object)
