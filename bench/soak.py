"""Soak: the scoring app under steady load for minutes; memory, descriptors and p99 must stay flat.

Runs in the drill world (``cluster.drills.drill_world``: real Redis, real app on loopback) at
``--rate`` requests per second for ``--minutes``, in windows of ``--window`` seconds. After each
window it samples the RSS and open file descriptors of every process of the app's Ray head
(``cluster.serve.head_processes``: workers, replicas, raylet, GCS) and the window's p99.

Verdict, first window after warm-up against the last:
- RSS of every Ray worker within ``--rss-tolerance`` (default 10 %, and at least 32 MB: a
  replica's allocator settles in steps);
- total descriptors of the head grow by at most ``--fd-tolerance`` (default 8);
- p99 of the last window at most ``--p99-ratio`` (default 1.5) times the first one's.

Not in CI (ten minutes). Bounded: ``rate x minutes x 60`` requests to 127.0.0.1 only.

    .venv/bin/python bench/soak.py [--workdir var/drills] [--minutes 10] [--rate 50]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.drills import LIVE_REGIONS, drill_world, drive  # noqa: E402
from cluster.load import percentile_ms  # noqa: E402
from cluster.serve import head_processes  # noqa: E402

MB = 1 << 20


def sample() -> dict[int, tuple[str, int, int]]:
    """``pid -> (name, rss bytes, open fds)`` of every process of the app's Ray head."""
    import psutil

    out = {}
    for proc in head_processes():
        try:
            out[proc.pid] = (proc.name(), proc.memory_info().rss, proc.num_fds())
        except psutil.Error:
            continue
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "var" / "drills")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--window", type=float, default=30.0)
    parser.add_argument("--rss-tolerance", type=float, default=0.10)
    parser.add_argument("--fd-tolerance", type=int, default=8)
    parser.add_argument("--p99-ratio", type=float, default=1.5)
    args = parser.parse_args()

    windows = max(3, int(args.minutes * 60 / args.window))
    p99s: list[float] = []
    samples: list[dict[int, tuple[str, int, int]]] = []
    with drill_world(args.workdir, rate=args.rate, seconds=args.window) as world:
        for i in range(windows):
            world.push_live()  # the feed stays live however long the soak runs

            async def nothing(at):
                return 0.0, await at(args.window)

            run = asyncio.run(drive(world, world.jobs(f"soak{i}", LIVE_REGIONS), nothing))
            p99s.append(percentile_ms(run.answers))
            samples.append(sample())
            failed = sum(not a.ok for a in run.answers)
            rss = sum(r for _, r, _ in samples[-1].values()) / MB
            fds = sum(f for _, _, f in samples[-1].values())
            print(f"window {i + 1}/{windows}: {len(run.answers)} req, failed {failed}, p99 {p99s[-1]:.0f} ms, "
                  f"head RSS {rss:.0f} MB, fds {fds}", flush=True)
            time.sleep(0.5)
    first, last = samples[1], samples[-1]  # window 1 is warm-up
    problems = []
    for pid, (name, rss0, _) in first.items():
        if pid in last:
            growth = last[pid][1] - rss0
            if growth > max(args.rss_tolerance * rss0, 32 * MB):
                problems.append(f"{name} ({pid}) RSS {rss0 / MB:.0f} -> {last[pid][1] / MB:.0f} MB")
    fd_growth = sum(f for pid, (_, _, f) in last.items() if pid in first) - sum(f for pid, (_, _, f) in first.items() if pid in last)
    if fd_growth > args.fd_tolerance:
        problems.append(f"open descriptors grew by {fd_growth}")
    if p99s[-1] > args.p99_ratio * p99s[1]:
        problems.append(f"p99 {p99s[1]:.0f} -> {p99s[-1]:.0f} ms")
    print("soak: " + ("PASS" if not problems else "FAIL: " + "; ".join(problems)))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
