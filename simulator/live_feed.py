"""The outside world of a live replay: dispatch's requests and the feeds' pushes of a simulated window.

``simulator.served_log`` scores a window in-process; a live replay (``cluster/live_day.py``)
sends the same window to the running service instead. This module prepares what the outside
world would send and delivers the feature side of it:

- :func:`live_window` reads the window's jobs as score-request bodies (the member id and
  coordinates a real request carries included; the service pseudonymises them) and every
  feature group's rows in event-time order, as the feeds produced them, with the window's
  ``unit_change`` feed incidents applied only to what is pushed (the warehouse stays right, as
  in ``simulator.served_log``);
- :class:`FeedPusher` writes those rows into the Feast online store as the (simulated) clock
  passes their event time: near-real-time groups through their push sources, as the live feed
  would, daily groups straight into the online store, as the daily job's materialisation would.

The pusher delivers each row ``lead_s`` wall seconds before its event time comes: the service
reads the store through a cache refreshed every ``serving.nrt_full_refresh_s``, so a value
pushed at its event time would reach the cache after the job it was pushed for, when at 240x a
second is four simulated minutes. A push the store refuses (an outage) stays queued and is
retried, so the feed loses nothing; rows are never re-ordered.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from cluster.config import Settings
from contracts.features import FEATURE_GROUPS, FeatureGroup
from contracts.warehouse import world_path
from retrain.training_set import entity_frame
from simulator.scenarios import ActiveIncidents, Scenario
from simulator.served_log import FeedPushes, read_feed, score_requests

log = logging.getLogger(__name__)
US = 1_000_000


@dataclass(frozen=True)
class LiveJob:
    """One score request of the window: when dispatch sends it (simulated UTC us) and its body."""

    requested_us: int
    job_id: str
    region_id: int
    n_candidates: int
    body: str


@dataclass(frozen=True)
class LiveWindow:
    start: datetime
    end: datetime
    jobs: tuple[LiveJob, ...]
    #: Every feature group's rows with event time in ``[start - ttl, end)``, in event order.
    pushes: dict[str, FeedPushes]


def live_window(data_root: Path, start: datetime, end: datetime, *, feed_scenario: Scenario | None = None, sim_start: datetime | None = None) -> LiveWindow:
    """The requests and pushes of jobs requested in ``[start, end)`` of the simulated warehouse."""
    data_root = Path(data_root)
    candidates = entity_frame(data_root, start, end)
    region_of = candidates.drop_duplicates("job_id").set_index("job_id")["region_id"]
    jobs = tuple(
        LiveJob(int(r.requested_at.timestamp() * US), r.job_id, int(region_of[r.job_id]), len(r.candidates), r.model_dump_json())
        for r in score_requests(data_root, start, end, candidates)
    )
    cell_region = pd.read_parquet(world_path(data_root, "cells"), columns=["cell_id", "region_id"]).set_index("cell_id")["region_id"]
    provider_region = pd.read_parquet(world_path(data_root, "providers"), columns=["provider_id", "region_id"]).set_index("provider_id")["region_id"]
    feed = ActiveIncidents(feed_scenario, sim_start or start) if feed_scenario is not None else None
    pushes = {g.name: read_feed(data_root, g, start, end, feed, cell_region, provider_region) for g in FEATURE_GROUPS}
    return LiveWindow(start, end, jobs, pushes)


def push_frame(g: FeatureGroup, rows: FeedPushes, part: slice) -> pd.DataFrame:
    """Rows ``part`` of a group's pushes as the frame Feast's push source expects."""
    stamp = pd.to_datetime(rows.event_us[part], unit="us", utc=True)
    frame = pd.DataFrame(rows.values[part], columns=list(g.features))
    frame.insert(0, g.join_key, rows.keys[part])
    frame.insert(1, "event_timestamp", stamp)
    frame.insert(2, "created_timestamp", stamp)
    return frame


@dataclass
class FeedPusher:
    """Writes a window's pushes into the online store as ``clock`` (simulated epoch s) passes them.

    ``lead_s`` is in simulated seconds. :meth:`run` pushes as the clock goes (in a
    :class:`PusherProcess`); :attr:`pushed`, :attr:`failures` and :attr:`last_error` say how the
    store took it.
    """

    settings: Settings
    window: LiveWindow
    clock: Callable[[], float]
    lead_s: float
    period_s: float = 0.2
    pushed: dict[str, int] = field(default_factory=dict)
    failures: int = 0
    last_error: str | None = None

    def __post_init__(self) -> None:
        self.pushed = dict.fromkeys(self.window.pushes, 0)
        self._store = None

    def __getstate__(self) -> dict[str, object]:
        # The Feast store holds connections and locks: a pusher sent to another process opens its own.
        return {**self.__dict__, "_store": None}

    def push_until(self, simulated_s: float) -> int:
        """Push every queued row with event time <= ``simulated_s``; returns rows pushed now."""
        from feast.data_source import PushMode

        if self._store is None:
            from cluster.feature_store import get_store

            self._store = get_store(self.settings)
        upto_us = int(simulated_s * US)
        done = 0
        for g in FEATURE_GROUPS:
            rows = self.window.pushes[g.name]
            first, last = self.pushed[g.name], int(np.searchsorted(rows.event_us, upto_us, side="right"))
            if last <= first:
                continue
            frame = push_frame(g, rows, slice(first, last))
            try:
                if g.cadence == "batch":
                    self._store.write_to_online_store(g.name, frame)
                else:
                    self._store.push(f"{g.name}_push", frame, to=PushMode.ONLINE)
            except Exception as exc:  # noqa: BLE001 - the store is down: keep the rows, retry next tick
                self.failures += 1
                self.last_error = f"{g.name}: {type(exc).__name__}: {exc}"[:300]
                log.warning("push of %s refused, retrying: %s", g.name, self.last_error)
                return done
            self.pushed[g.name] = last
            done += last - first
        return done

    def remaining(self) -> int:
        return sum(len(rows.keys) - self.pushed[name] for name, rows in self.window.pushes.items())

    def run(self, stop) -> None:
        """Push as the clock goes until everything is pushed or ``stop`` (an Event) is set."""
        while not stop.is_set():
            self.push_until(self.clock() + self.lead_s)
            if self.remaining() == 0:
                return
            stop.wait(self.period_s)


class PusherProcess:
    """A :class:`FeedPusher` in a process of its own.

    The replay driver also runs the monitor, the policy and the release controller, which hold
    its interpreter for seconds at a time; a pusher sharing that interpreter would deliver late
    and the service would see the feed as stale.
    """

    def __init__(self, pusher: FeedPusher) -> None:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._result = context.Queue()
        self._process = context.Process(target=_run_pusher, args=(pusher, self._stop, self._result), name="feed-pusher", daemon=True)

    def start(self) -> PusherProcess:
        self._process.start()
        return self

    def stop(self, timeout_s: float = 60.0) -> dict[str, object]:
        """Stop pushing; returns ``{"pushed": rows, "failures": refused pushes, "last_error": ...}``."""
        import queue

        self._stop.set()
        try:
            result = self._result.get(timeout=timeout_s)
        except queue.Empty:
            result = {"pushed": -1, "failures": -1, "last_error": "the pusher process did not answer"}
        self._process.join(10)
        if self._process.is_alive():
            self._process.terminate()
        return result


def _run_pusher(pusher: FeedPusher, stop, result) -> None:
    try:
        pusher.run(stop)
    finally:
        result.put({"pushed": sum(pusher.pushed.values()), "failures": pusher.failures, "last_error": pusher.last_error})


def wall_schedule(jobs: tuple[LiveJob, ...], start_us: int, speed: float) -> list[float]:
    """Each job's send time in wall seconds after the replay starts, at ``speed`` x."""
    return [(job.requested_us - start_us) / US / speed for job in jobs]


def monotonic_at(wall: float) -> float:
    """The ``time.monotonic()`` reading at wall time ``wall`` (epoch seconds), for schedules."""
    return time.monotonic() + (wall - time.time())
