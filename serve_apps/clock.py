"""The service's notion of now: the wall clock, or a replay's accelerated simulated clock.

A simulated day replayed through the real service (``dispatchml demo``) must look like a day to
everything that reads the time: requests are validated against now, a feature's age is now minus
its event time, the monitor and the release controller look at windows that end now. Compressing
a day into minutes therefore needs one clock they all share::

    simulated now = replay_start + (wall now - wall_origin) * replay_speed

``replay_start`` and ``replay_speed`` are settings (``serving.replay_*``), fixed when the app is
deployed. ``wall_origin`` is written to ``<registry>/replay_clock.json`` by the replay driver the
moment its traffic starts, because nobody can predict how long the app takes to come up (Ray,
replicas, the first feature load); until then the simulated clock stands still at
``replay_start``; a service kept running after its replay has its clock stopped where the replay
ended (:func:`stop_replay_clock`). Every router replica reads that file, and so does the replay
driver, which runs the monitor, the policy and the release controller as of its reading: they
agree on the time without talking to each other.

Only the time the data carries is simulated. Periods the code waits for (cache refresh, breaker
windows, log flushes) stay in wall seconds and so last ``replay_speed`` times longer in
simulated time: a 5 s refresh is 20 simulated minutes at 240x, which is why the replay also
shortens the near-real-time refresh periods (``serving.nrt_*``).

With ``replay_speed`` 1 (the default, production) now is the wall clock and the file is never read.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cluster.config import Settings

CLOCK_FILE = "replay_clock.json"
#: How often a running clock looks for a new origin (wall seconds).
POLL_S = 0.5


def replay_clock_path(registry_root: Path | str) -> Path:
    return Path(registry_root) / CLOCK_FILE


def start_replay_clock(registry_root: Path | str, wall_origin: float | None = None) -> float:
    """Start (or restart) every replay clock reading ``registry_root``; returns the wall origin used."""
    origin = time.time() if wall_origin is None else float(wall_origin)
    path = replay_clock_path(registry_root)
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps({"wall_origin": origin}))
    os.replace(temp, path)
    return origin


def stop_replay_clock(registry_root: Path | str, simulated: float) -> None:
    """Stop every replay clock reading ``registry_root`` at ``simulated`` (a service kept running after its replay)."""
    path = replay_clock_path(registry_root)
    temp = path.with_suffix(".tmp")
    temp.write_text(json.dumps({"wall_origin": time.time(), "stopped_at": float(simulated)}))
    os.replace(temp, path)


@dataclass
class ServiceClock:
    """``now()`` in epoch seconds: wall time, or simulated time when ``speed`` > 1."""

    speed: float = 1.0
    replay_start: float | None = None
    registry_root: Path | None = None
    _origin: float | None = field(default=None, init=False)
    _stopped_at: float | None = field(default=None, init=False)
    _checked: float = field(default=float("-inf"), init=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> ServiceClock:
        serving = settings.serving
        if serving.replay_speed == 1.0:
            return cls()
        if serving.replay_start is None:
            raise ValueError("serving.replay_speed > 1 needs serving.replay_start (the simulated instant the replay starts at)")
        start = serving.replay_start if serving.replay_start.tzinfo else serving.replay_start.replace(tzinfo=UTC)
        return cls(serving.replay_speed, start.timestamp(), Path(settings.paths.registry))

    @property
    def simulated(self) -> bool:
        return self.speed != 1.0

    def now(self) -> float:
        if not self.simulated:
            return time.time()
        return self.at_wall(time.time())

    def at_wall(self, wall: float) -> float:
        """The clock's reading at wall time ``wall`` (epoch seconds)."""
        if not self.simulated:
            return wall
        origin = self._wall_origin()
        assert self.replay_start is not None
        if self._stopped_at is not None:
            return self._stopped_at
        return self.replay_start if origin is None else self.replay_start + max(0.0, wall - origin) * self.speed

    def wall_at(self, simulated: float) -> float | None:
        """When (wall epoch seconds) the clock reads ``simulated``; None before the replay started."""
        if not self.simulated:
            return simulated
        origin = self._wall_origin()
        assert self.replay_start is not None
        return None if origin is None else origin + (simulated - self.replay_start) / self.speed

    def datetime(self) -> datetime:
        return datetime.fromtimestamp(self.now(), UTC)

    def _wall_origin(self) -> float | None:
        checked = time.monotonic()
        if checked - self._checked >= POLL_S:
            self._checked = checked
            assert self.registry_root is not None
            try:
                state = json.loads(replay_clock_path(self.registry_root).read_text())
                self._origin, self._stopped_at = float(state["wall_origin"]), state.get("stopped_at")
            except FileNotFoundError:
                self._origin, self._stopped_at = None, None
        return self._origin
