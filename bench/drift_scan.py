"""Per-cell drift scan time at the real rate, against Evidently 0.7's ``DataDriftPreset`` per segment.

Target (issue 4): a per-cell scan of a 7-day window (8.4M rows x 250 features, 25K cells) in
<= 60 s on this 2-core machine. The baseline, measured in the same run: Evidently's
``DataDriftPreset`` on one 1,000-row x 250-column segment; the ratio is Evidently's seconds
per segment over the scan's seconds per segment (scan seconds / cells).

The data is synthetic but shaped like the world: cells get rows in proportion to the
simulator's metro-skewed demand (``simulator.world.build_world``; the busiest cell has ~10K rows
a week, the median ~100), both windows have ``--rows`` rows, features are float32 (half
continuous, half rounded to 1 decimal so KS sees ties), and 1% of the cells get a 0.5-sd shift in
a tenth of the features. The scan runs through ``eval.drift_scan.run_drift_scan`` exactly as
``dispatchml drift-scan --segment-by cell_id`` does (cell rows plus the global rollup row).

Cost is linear in the number of features, so ``--features`` below 250 extrapolates exactly:
the printed ``full-scale estimate`` multiplies by ``250 / features`` and ``8.4M / rows``; a
second estimate scales only the part after the setup (segment codes, Ray start), which does not
grow with the number of features. Keep
``--cells 25000`` with fewer rows and segment sizes shrink (the exact KS p-value's O(n1·n2) cost
falls), so reduce features first.

    .venv/bin/python bench/drift_scan.py [--rows 8400000] [--cells 25000] [--features 250]
        [--evidently-features 250] [--ks-method auto|asymp|both] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from eval.drift_scan import (
    DriftScanSpec,
    RollupLevel,
    read_columns,
    resolve_columns,
    rollup_levels,
    run_drift_scan,
    scan_features,
)
from simulator.world import build_world

FULL_ROWS = 8_400_000
FULL_FEATURES = 250
ROWS_PER_FILE = 1_000_000


def write_window(out: Path, rows: int, features: int, demand: np.ndarray, seed: int, drifted_cells: np.ndarray | None) -> None:
    """``rows`` rows of (cell_id, f000..) in parquet files of ROWS_PER_FILE rows, cells drawn by ``demand``."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(demand)
    shifted_features = set(range(0, features, 10))
    for part, start in enumerate(range(0, rows, ROWS_PER_FILE)):
        n = min(ROWS_PER_FILE, rows - start)
        cells = np.minimum(np.searchsorted(cdf / cdf[-1], rng.random(n)), demand.size - 1).astype(np.int32)
        columns: dict[str, np.ndarray] = {"cell_id": cells}
        hit = np.isin(cells, drifted_cells) if drifted_cells is not None else np.zeros(n, bool)
        for f in range(features):
            values = rng.standard_normal(n, dtype=np.float32)
            if f in shifted_features:
                values[hit] += np.float32(0.5)
            columns[f"f{f:03d}"] = np.round(values, 1) if f % 2 else values
        pq.write_table(pa.table(columns), out / f"part-{part:03d}.parquet", compression="snappy")


def time_evidently(features: int, seed: int) -> float:
    """Seconds for Evidently's DataDriftPreset on one 1,000-row segment of ``features`` columns."""
    from evidently import Report
    from evidently.presets import DataDriftPreset

    rng = np.random.default_rng(seed)
    names = [f"f{f:03d}" for f in range(features)]
    reference = pd.DataFrame(rng.standard_normal((1000, features)).astype(np.float32), columns=names)
    current = pd.DataFrame(rng.standard_normal((1000, features)).astype(np.float32), columns=names)
    started = time.perf_counter()
    Report([DataDriftPreset()]).run(current_data=current, reference_data=reference)
    return time.perf_counter() - started


def cpu_seconds_per_feature(workdir: Path, features: int) -> float:
    """CPU seconds per feature of the scan's own work (read, kernels at every level), measured in this process.

    Process CPU time depends far less than wall time on what else the shared machine runs
    (contention for caches and memory still inflates it: compare runs at similar load); Ray's
    scheduling and the driver's BH/write are left out.
    """
    spec = DriftScanSpec(workdir / "reference", workdir / "current", ("cell_id",), min_samples=50)
    levels = rollup_levels(spec)
    names, categorical = resolve_columns(spec)
    scan_features(read_columns(spec.reference, names[:1]).slice(0, 1000), read_columns(spec.current, names[:1]).slice(0, 1000),
                  categorical, [RollupLevel((), levels[-1].keys, np.zeros(1000, np.int32), np.zeros(1000, np.int32))])  # compile
    started = time.process_time()
    for name in names[:features]:
        scan_features(read_columns(spec.reference, [name]), read_columns(spec.current, [name]), categorical, levels,
                      "auto", spec.min_samples)
    return (time.process_time() - started) / features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=FULL_ROWS, help="rows per window (reference and current each)")
    parser.add_argument("--cells", type=int, default=25_000)
    parser.add_argument("--features", type=int, default=FULL_FEATURES)
    parser.add_argument("--evidently-features", type=int, default=FULL_FEATURES)
    parser.add_argument("--ks-method", choices=["auto", "asymp", "both"], default="both",
                        help="auto = scipy's default (exact p below 10K rows, the contract); asymp = Smirnov's limit")
    parser.add_argument("--features-per-task", type=int, default=8)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    import ray

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="drift-bench-"))
    world = build_world(args.cells, max(1, args.cells // 625), 1000, args.seed)
    rng = np.random.default_rng(args.seed)
    drifted = rng.choice(args.cells, max(1, args.cells // 100), replace=False)
    t0 = time.perf_counter()
    write_window(workdir / "reference", args.rows, args.features, world.demand, args.seed, None)
    write_window(workdir / "current", args.rows, args.features, world.demand, args.seed + 1, drifted)
    sizes = np.bincount(pd.read_parquet(workdir / "current", columns=["cell_id"])["cell_id"], minlength=args.cells)
    print(f"data: {args.rows:,} rows x {args.features} features per window, {args.cells:,} cells "
          f"(rows per cell: max {sizes.max():,}, median {int(np.median(sizes))}), written in {time.perf_counter() - t0:.0f} s")

    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    evidently_s = time_evidently(args.evidently_features, args.seed)
    per_segment_evidently = evidently_s * FULL_FEATURES / args.evidently_features
    print(f"evidently DataDriftPreset: {evidently_s:.1f} s for one 1,000-row x {args.evidently_features}-column segment "
          f"({per_segment_evidently:.1f} s at 250 columns; {per_segment_evidently * 25_000 / 86_400:.1f} days for 25K cells on one core)")

    methods = ["auto", "asymp"] if args.ks_method == "both" else [args.ks_method]
    scale = (FULL_ROWS / args.rows) * (FULL_FEATURES / args.features)
    for method in methods:
        spec = DriftScanSpec(workdir / "reference", workdir / "current", ("cell_id",), ks_method=method,
                             features_per_task=args.features_per_task)
        load_before = os.getloadavg()[0]
        result = run_drift_scan(spec)
        print(f"load average (1 min) on this shared {os.cpu_count()}-core machine: {load_before:.1f} before, "
              f"{os.getloadavg()[0]:.1f} after the scan")
        per_segment = result.seconds / args.cells * (FULL_FEATURES / args.features)
        per_feature_part = (result.seconds - result.setup_seconds) * scale
        print(f"drift-scan ks={method}: {result.seconds:.1f} s for {result.table.num_rows:,} (cell, feature) rows, "
              f"{result.drifted:,} drifted, {result.skipped:,} skipped; full-scale estimate {result.seconds * scale:.0f} s "
              f"(target 60 s); per 250-feature segment {per_segment * 1e3:.1f} ms, "
              f"ratio to Evidently per segment {per_segment_evidently / per_segment:,.0f}x")
        print(f"  of which setup (segment codes, Ray start; independent of the feature count) "
              f"{result.setup_seconds:.1f} s: full-scale estimate scaling only the rest "
              f"{result.setup_seconds * FULL_ROWS / args.rows + per_feature_part:.0f} s")
    ray.shutdown()
    cpu = cpu_seconds_per_feature(workdir, min(args.features, 4))
    print(f"kernel CPU time, in-process on one core (load {os.getloadavg()[0]:.1f}): {cpu:.2f} s per feature ({args.rows:,} + {args.rows:,} rows, "
          f"cell and global levels, parquet read included); 250 features on {os.cpu_count()} idle cores: "
          f"{cpu * scale * args.features / os.cpu_count():.0f} s plus setup")
    if args.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
