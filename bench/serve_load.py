"""Scoring-service throughput and latency through the real HTTP ingress, against an echo baseline.

What runs, in one process tree on this machine, bounded in time:

1. a world and trained registry (``dispatchml demo`` into ``--workdir``, unless it exists);
2. near-real-time features pushed through Feast for every cell, region and provider, so jobs
   take the full path (features from the replica cache + champion + shadow challenger + log +
   metrics), not the fallback;
3. ``dispatchml serve up`` plus a trivial Starlette echo app on the same ingress;
4. ``wrk`` (Debian's, closed loop: ``--connections`` requests in flight) for ``--seconds`` against
   the echo and then against ``POST /v1/dispatch/score`` with realistic jobs of 8 candidates.

Prints throughput, p50/p99/p99.9, non-2xx and the degraded share for both, and the ratio of the
full path to the echo measured in the same run.

    .venv/bin/python bench/serve_load.py [--workdir var/bench] [--seconds 15] [--connections 32]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cluster.config import load_settings  # noqa: E402
from cluster.load import CANDIDATES, job_bodies, push_features  # noqa: E402
from cluster.serve import connect  # noqa: E402

DISPATCHML = str(Path(sys.executable).with_name("dispatchml"))

WRK_SCRIPT = r"""
-- Per-thread state is global so done() can read it through thread:get().
bodies, n, degraded, responses, bad = {}, 0, 0, 0, 0
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args)
  for line in io.lines(args[1]) do n = n + 1; bodies[n] = line end
end
local i = 0
function request()
  i = i % n + 1
  return wrk.format("POST", nil, {["content-type"] = "application/json"}, bodies[i])
end
function response(status, headers, body)
  responses = responses + 1
  if status < 200 or status > 299 then bad = bad + 1 end
  if body and string.find(body, '"degraded":true', 1, true) then degraded = degraded + 1 end
end
function done(summary, latency, requests)
  local deg, resp, nbad = 0, 0, 0
  for _, t in ipairs(threads) do deg = deg + t:get("degraded"); resp = resp + t:get("responses"); nbad = nbad + t:get("bad") end
  io.write(string.format("DEGRADED %d %d %d\n", deg, resp, nbad))
  local e = summary.errors
  io.write(string.format("RESULT %d %d %.6f %.6f %.6f %d\n", summary.requests, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50) / 1e6, latency:percentile(99) / 1e6, latency:percentile(99.9) / 1e6, summary.duration))
end
"""


def _echo_app():
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    @serve.deployment(ray_actor_options={"num_cpus": 0})
    class Echo:
        async def __call__(self, request: Request) -> Response:
            return Response(await request.body(), media_type="application/json")

    return Echo.bind()


def run_wrk(url: str, bodies_path: Path, script: Path, seconds: int, connections: int) -> dict[str, float]:
    done = subprocess.run(
        ["wrk", "-t", "2", "-c", str(connections), "-d", f"{seconds}s", "--timeout", "5s", "-s", str(script), url, "--", str(bodies_path)],
        capture_output=True, text=True, check=True,
    )
    match = re.search(r"RESULT (\d+) (\d+) ([\d.]+) ([\d.]+) ([\d.]+) (\d+)", done.stdout)
    degraded = re.search(r"DEGRADED (\d+) (\d+) (\d+)", done.stdout)
    if match is None:
        raise RuntimeError(f"wrk printed no result: {done.stdout[-500:]} {done.stderr[-500:]}")
    requests, errors, p50, p99, p999, duration_us = match.groups()
    return {
        "rps": int(requests) / (int(duration_us) / 1e6),
        "requests": int(requests),
        "errors": int(errors) + (int(degraded.group(3)) if degraded else 0),
        "p50_ms": float(p50) * 1000,
        "p99_ms": float(p99) * 1000,
        "p999_ms": float(p999) * 1000,
        "degraded": int(degraded.group(1)) if degraded else -1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=ROOT / "var" / "bench")
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    env = {**os.environ, "DISPATCHML_ADMIN_TOKEN": os.environ.get("DISPATCHML_ADMIN_TOKEN", "bench-token")}
    if not (args.workdir / "dispatchml.yaml").exists():
        subprocess.run([DISPATCHML, "demo", "--workdir", str(args.workdir), "--days", "28", "--no-live"], check=True, env=env, capture_output=True)
    config = args.workdir / "dispatchml.yaml"
    env["DISPATCHML_CONFIG"] = str(config)
    settings = load_settings(config, environ=env)
    push_features(settings)
    subprocess.run([DISPATCHML, "serve", "up"], check=True, env=env, capture_output=True)
    try:
        from ray import serve

        connect()
        serve.run(_echo_app(), name="echo", route_prefix="/echo", blocking=False)
        time.sleep(6)  # the router's cache picks up the pushes within one 5 s refresh
        with tempfile.TemporaryDirectory() as tmp:
            bodies_path, script = Path(tmp) / "bodies.jsonl", Path(tmp) / "jobs.lua"
            bodies_path.write_text("\n".join(job.body for job in job_bodies(settings, 2000)) + "\n")
            script.write_text(WRK_SCRIPT)
            base = f"http://{settings.serving.host}:{settings.serving.port}"
            echo = run_wrk(base + "/echo", bodies_path, script, args.seconds, args.connections)
            full = run_wrk(base + "/v1/dispatch/score", bodies_path, script, args.seconds, args.connections)
    finally:
        subprocess.run([DISPATCHML, "serve", "down"], env=env, capture_output=True)
    for name, r in (("echo", echo), ("full path", full)):
        print(f"{name:>9}: {r['rps']:8.0f} req/s  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  p99.9 {r['p999_ms']:6.1f} ms  "
              f"errors {r['errors']}  degraded {r['degraded']}/{r['requests']}")
    print(f"full path / echo throughput ratio: {full['rps'] / echo['rps']:.3f} "
          f"({args.connections} connections, {args.seconds} s each, {CANDIDATES} candidates per job)")


if __name__ == "__main__":
    main()
