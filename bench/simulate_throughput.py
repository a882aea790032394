"""Simulator throughput and memory at production scale, against a plain-pyarrow baseline.

Runs ``simulator.run.simulate`` on the full-size world (25K cells, 40 regions, 80K providers)
for a bounded span (one day at 1.2M events/day by default) in a fresh child process, so the peak
RSS is the simulation's alone (imports included). The baseline, measured in the same run on the
same machine, is the time plain pyarrow takes to write the very same tables again: each file the
simulator produced is read back and rewritten with the same compression, and only the writes
are timed. The ratio says how many times more than bare parquet encoding the simulation costs,
which is stable across machines where events/s is not.

    .venv/bin/python bench/simulate_throughput.py [--days 1] [--events-per-day 1200000]

Prints one line:
``simulate: X events/s, peak RSS Y MB, ratio to pyarrow-rewrite baseline Z``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from simulator.writer import COMPRESSION

FULL_WORLD = {"cells": 25_000, "regions": 40, "providers": 80_000}


@dataclass(frozen=True)
class SimulationRun:
    seconds: float
    events: int
    peak_rss_mb: float


def _simulate_in_child(out: str, days: int, events_per_day: int, seed: int) -> SimulationRun:
    """Runs in a fresh process: its ``ru_maxrss`` is the simulation's peak (kB on Linux)."""
    from simulator.run import SimulationSpec, simulate

    spec = SimulationSpec(out=Path(out), days=days, events_per_day=events_per_day, seed=seed, start=date(2026, 1, 1), **FULL_WORLD)
    t0 = time.perf_counter()
    manifest = simulate(spec)
    seconds = time.perf_counter() - t0
    return SimulationRun(seconds, manifest.events, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0)


def simulate_once(out: Path, days: int, events_per_day: int, seed: int) -> SimulationRun:
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
        return pool.submit(_simulate_in_child, str(out), days, events_per_day, seed).result()


def rewrite_seconds(src: Path, dst: Path) -> float:
    """Seconds plain pyarrow spends writing every parquet file under ``src`` again (reads untimed)."""
    total = 0.0
    for path in sorted(src.rglob("*.parquet")):
        table = pq.read_table(path)
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.perf_counter()
        pq.write_table(table, target, compression=COMPRESSION)
        total += time.perf_counter() - t0
    return total


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=1, help="days to simulate (default 1)")
    parser.add_argument("--events-per-day", type=int, default=1_200_000, help="dispatch events per day (default 1.2M)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    if args.days < 1 or args.events_per_day < 100:
        parser.error("--days must be >= 1 and --events-per-day >= 100")
    with tempfile.TemporaryDirectory(prefix="bench-simulate-") as tmp:
        sim_out, copy_out = Path(tmp) / "sim", Path(tmp) / "rewrite"
        run = simulate_once(sim_out, args.days, args.events_per_day, args.seed)
        baseline = rewrite_seconds(sim_out, copy_out)
    print(
        f"simulate: {run.events / run.seconds:,.0f} events/s, peak RSS {run.peak_rss_mb:,.0f} MB, "
        f"ratio to pyarrow-rewrite baseline {run.seconds / baseline:.1f}x "
        f"({run.events:,} events in {run.seconds:.1f} s; rewriting the same tables took {baseline:.2f} s)"
    )


if __name__ == "__main__":
    main()
