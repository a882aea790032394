"""Backtest throughput per core against raw LightGBM ``predict`` on the same rows, and an extrapolation.

Builds (or reuses) a demo world with a registered champion (``cluster.demo.run_demo``), then:

1. runs ``eval.backtest.run_backtest`` over the last ``--backtest-days`` days on a local Ray
   using every core, and reports candidate rows scored per second per core (rows × versions /
   wall seconds / cores), end to end (point-in-time features, labels, scoring, metrics, report);
2. measures, in the same run on the same rows, the baseline: raw ``lightgbm.Booster.predict``
   of every booster a dispatch version runs (ETA point, P10, P90 and acceptance), one thread,
   on the already-built feature matrix: rows per second on one core;
3. prints the ratio (target ≥ 0.8), the split of actor time between point-in-time features
   and model scoring (which says where the gap is), the scoring-only ratio and the per-chunk
   ratio of the score stage (features + labels + scoring, without the job's fixed costs);
4. extrapolates to the full 24-month history (~876M events) on N cores, from the measured
   events → candidate rows ratio of the simulated world.

    .venv/bin/python bench/backtest_throughput.py [--workdir var/bench-backtest] [--reuse]
        [--days 21] [--events-per-day 20000] [--backtest-days 7]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cluster.config import Settings, load_settings
from cluster.demo import DemoOptions, demo_settings, run_demo
from contracts.features import model_features
from contracts.warehouse import manifest_path
from eval.backtest import BacktestSpec, run_backtest
from retrain.boosting import booster_predict
from retrain.pipeline import data_span
from retrain.ranking import DispatchBundle
from retrain.registry import ModelRegistry
from retrain.training_set import build_training_set

FULL_HISTORY_EVENTS = 876_000_000
CORE_COUNTS = (2, 16, 64, 256)


def world(args: argparse.Namespace) -> Settings:
    options = DemoOptions(
        workdir=Path(args.workdir), days=args.days, events_per_day=args.events_per_day,
        cells=args.cells, regions=args.regions, providers=args.providers, start=date(2026, 1, 1), live=False,
    )
    if args.reuse and manifest_path(Path(args.workdir) / "data").exists():
        return demo_settings(load_settings(), options)
    return run_demo(load_settings(), options).settings


def raw_predict_rows_per_second(bundle: DispatchBundle, features: np.ndarray, repeats: int = 3) -> float:
    """Best of ``repeats``: rows/s of the four boosters' ``predict``, one thread."""
    boosters = [bundle.eta.point_booster_, bundle.eta.low_booster_, bundle.eta.high_booster_, bundle.acceptance.booster_]
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for booster in boosters:
            booster_predict(booster, features, 1)
        best = min(best, time.perf_counter() - t0)
    return features.shape[0] / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="var/bench-backtest")
    parser.add_argument("--reuse", action="store_true", help="Reuse the world in --workdir if it exists.")
    parser.add_argument("--days", type=int, default=21)
    parser.add_argument("--events-per-day", type=int, default=20_000)
    parser.add_argument("--cells", type=int, default=1_200)
    parser.add_argument("--regions", type=int, default=6)
    parser.add_argument("--providers", type=int, default=4_000)
    parser.add_argument("--backtest-days", type=int, default=7)
    args = parser.parse_args()

    import ray

    settings = world(args)
    data_root = Path(settings.paths.data)
    span_start, span_end = data_span(data_root)
    start = span_end - timedelta(days=args.backtest_days)
    # address="local": a cluster of our own, never one another process on the machine runs.
    ray.init(address="local", configure_logging=False, log_to_driver=False, include_dashboard=False)
    cores = int(ray.cluster_resources()["CPU"])
    spec = BacktestSpec(versions=("champion",), start=start, end=span_end, as_of=span_end, out=Path(args.workdir) / "backtest")
    result = run_backtest(settings, spec)
    ray.shutdown()
    backtest_rate = result.scored_rows * len(result.versions) / result.seconds / cores

    frame = build_training_set(settings, data_root, start, span_end, "eta")
    features = np.ascontiguousarray(frame[list(model_features())].to_numpy(dtype=np.float64))
    bundle = ModelRegistry(settings.paths.registry).load_model("dispatch", "champion")
    assert isinstance(bundle, DispatchBundle)
    raw_rate = raw_predict_rows_per_second(bundle, features)

    stages = result.stage_seconds
    actor_total = stages["actor_features"] + stages["actor_predict"]
    scoring_rate = result.scored_rows * len(result.versions) / stages["actor_predict"]
    manifest = json.loads(manifest_path(data_root).read_text())
    rows_per_event = manifest["rows"]["dispatch/candidates"] / manifest["events"]
    full_rows = FULL_HISTORY_EVENTS * rows_per_event

    print(f"rows: {result.scored_rows:,} candidate rows over {args.backtest_days} days, {cores} cores")
    print(f"backtest: {backtest_rate:,.0f} rows/s/core end to end ({result.seconds:.1f} s: "
          + ", ".join(f"{k} {v:.1f} s" for k, v in stages.items()) + ")")
    print(f"raw LightGBM predict (4 boosters, 1 thread): {raw_rate:,.0f} rows/s/core")
    print(f"ratio end to end: {backtest_rate / raw_rate:.3f} (target >= 0.8)")
    print(f"actor time: point-in-time features + labels {stages['actor_features'] / actor_total:.0%}, "
          f"scoring {stages['actor_predict'] / actor_total:.0%}; scoring-only {scoring_rate:,.0f} rows/s/core, "
          f"ratio {scoring_rate / raw_rate:.3f}")
    # Per chunk, without the job's fixed costs (worker start-up, shuffle set-up, report): the rate
    # a long backtest approaches in its score stage.
    actor_rate = result.scored_rows * len(result.versions) / actor_total
    print(f"score stage per chunk (features + labels + scoring): {actor_rate:,.0f} rows/s/core, ratio {actor_rate / raw_rate:.3f}")
    print(f"extrapolation: 24 months = {FULL_HISTORY_EVENTS:,} events = {full_rows:,.0f} candidate rows "
          f"({rows_per_event:.2f} rows/event) per version")
    for n in CORE_COUNTS:
        hours = full_rows / (backtest_rate * n) / 3600
        print(f"  {n:>4} cores: {hours:,.1f} h at the measured rate per core (linear scaling assumed)")


if __name__ == "__main__":
    main()
