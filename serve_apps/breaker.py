"""Circuit breakers for the scoring router's dependencies (feature store reads, model deployments).

The pattern is Michael T. Nygard's *Circuit Breaker* ("Release It!", 2nd ed., Pragmatic
Bookshelf 2018, ch. 5 "Stability Patterns"; also M. Fowler, "CircuitBreaker", 2014):

* **closed**: calls go through; failures are counted. ``failure_threshold`` failures within
  ``window_seconds`` trip the breaker.
* **open**: :meth:`CircuitBreaker.allow` returns ``False`` at once, without touching the
  dependency, so a dead feature store or model costs the request no latency and the router
  serves its fallback. After ``open_seconds`` the breaker half-opens.
* **half-open**: at most ``half_open_max_calls`` probe calls are let through. When all of them
  succeed the breaker closes; any failure re-opens it for another ``open_seconds``. With
  ``half_open_max_calls=1`` this is Nygard's single trial call; more probes (Resilience4j's
  ``permittedNumberOfCallsInHalfOpenState``) keep one lucky call from closing a flapping breaker.

How it differs from a retry: a retry re-sends *this* request, hoping a transient fault has
cleared, and so adds latency to the request and load to a dependency that may be failing
because it is overloaded. A breaker keeps state *across* requests: once the dependency has
shown it is failing, later requests stop calling it at all until a probe shows it has
recovered. Retries suit rare, independent faults; a breaker suits outages. They compose: a
retry inside one allowed call, the breaker around it.

What counts as a failure: an exception, a timeout, and a *slow call* (a success that took at
least ``slow_call_seconds``; the slow-call rule is Resilience4j's
``slowCallDurationThreshold``). A dependency that answers after the request's latency budget
is as useless to dispatch as one that does not answer, and counting it trips the breaker
before the slowness exhausts the router's concurrency.

The closed state counts failures in a time window rather than consecutive failures, because a
dependency failing every other call never produces a long streak but is still unhealthy. The
window holds at most ``failure_threshold`` timestamps (a fixed-size ring), so recording an
outcome is O(1) and allocates nothing that grows with traffic.

Every method takes one ``threading.Lock`` for a few comparisons and never calls out while
holding it, so breakers are safe to share between threads and between coroutines of an async
replica (the lock is never held across an ``await``).

Usage on the request path::

    if not breaker.allow():
        ...                                   # fallback, counted by the caller
    started = clock()
    try:
        value = await read_features(...)
    except Exception:                         # incl. asyncio.TimeoutError
        breaker.record_failure()
        ...                                   # fallback
    else:
        breaker.record_success(clock() - started)
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class BreakerConfigError(ValueError):
    """A breaker parameter is out of range; fix the router's breaker settings."""


@dataclass(frozen=True, slots=True)
class BreakerStats:
    """A consistent snapshot of one breaker, for metrics (Prometheus counters and a state gauge)."""

    state: BreakerState
    #: Transitions into each state since the breaker was created.
    times_opened: int
    times_half_opened: int
    times_closed: int
    #: Calls refused by :meth:`CircuitBreaker.allow` (open, or half-open with no probe slot).
    rejected_calls: int
    #: Outcomes counted as failures: errors and timeouts, and separately slow successes.
    failed_calls: int
    slow_calls: int
    successful_calls: int


class CircuitBreaker:
    """One closed/open/half-open breaker guarding one dependency (see the module docstring).

    ``clock`` returns monotonic seconds; tests inject a fake clock instead of sleeping.
    """

    def __init__(
        self,
        failure_threshold: int,
        window_seconds: float,
        open_seconds: float,
        half_open_max_calls: int,
        slow_call_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        _require(failure_threshold >= 1, f"failure_threshold must be >= 1, got {failure_threshold}")
        _require(window_seconds > 0, f"window_seconds must be > 0, got {window_seconds}")
        _require(open_seconds > 0, f"open_seconds must be > 0, got {open_seconds}")
        _require(half_open_max_calls >= 1, f"half_open_max_calls must be >= 1, got {half_open_max_calls}")
        _require(slow_call_seconds > 0, f"slow_call_seconds must be > 0, got {slow_call_seconds}")
        self.failure_threshold = failure_threshold
        self.window_seconds = window_seconds
        self.open_seconds = open_seconds
        self.half_open_max_calls = half_open_max_calls
        self.slow_call_seconds = slow_call_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._state = BreakerState.CLOSED
        self._failure_times: deque[float] = deque(maxlen=failure_threshold)
        self._changed_at = 0.0  # when the current open or half-open state began
        self._probes_admitted = 0
        self._probes_in_flight = 0
        self._probes_succeeded = 0
        self._times_opened = 0
        self._times_half_opened = 0
        self._times_closed = 0
        self._rejected = 0
        self._failed = 0
        self._slow = 0
        self._succeeded = 0

    @property
    def state(self) -> BreakerState:
        """The current state; an open breaker whose ``open_seconds`` have passed reads half-open."""
        with self._lock:
            self._expire_open(self.clock())
            return self._state

    def allow(self) -> bool:
        """Whether the caller may call the dependency now. ``False`` costs no I/O and no wait.

        Every ``True`` must be followed by exactly one :meth:`record_success` or
        :meth:`record_failure`, or a half-open probe slot stays taken. A probe whose outcome
        never arrives within ``open_seconds`` is treated as a timeout: the breaker re-opens.
        """
        with self._lock:
            now = self.clock()
            self._expire_open(now)
            if self._state is BreakerState.CLOSED:
                return True
            if self._state is BreakerState.HALF_OPEN:
                if self._probes_admitted < self.half_open_max_calls:
                    self._probes_admitted += 1
                    self._probes_in_flight += 1
                    return True
                if now - self._changed_at >= self.open_seconds:
                    self._open(now)
            self._rejected += 1
            return False

    def record_success(self, elapsed_seconds: float) -> None:
        """A call returned after ``elapsed_seconds``; at least ``slow_call_seconds`` is a failure."""
        with self._lock:
            now = self.clock()
            if elapsed_seconds >= self.slow_call_seconds:
                self._slow += 1
                self._on_failure(now)
                return
            self._succeeded += 1
            self._expire_open(now)
            if self._state is BreakerState.HALF_OPEN and self._probes_in_flight > 0:
                self._probes_in_flight -= 1
                self._probes_succeeded += 1
                if self._probes_succeeded >= self.half_open_max_calls:
                    self._close()

    def record_failure(self) -> None:
        """A call raised or timed out."""
        with self._lock:
            self._failed += 1
            self._on_failure(self.clock())

    def stats(self) -> BreakerStats:
        with self._lock:
            self._expire_open(self.clock())
            return BreakerStats(
                state=self._state,
                times_opened=self._times_opened,
                times_half_opened=self._times_half_opened,
                times_closed=self._times_closed,
                rejected_calls=self._rejected,
                failed_calls=self._failed,
                slow_calls=self._slow,
                successful_calls=self._succeeded,
            )

    # -- transitions; the caller holds the lock -----------------------------------------------

    def _on_failure(self, now: float) -> None:
        self._expire_open(now)
        if self._state is BreakerState.HALF_OPEN:
            self._open(now)
        elif self._state is BreakerState.CLOSED:
            self._failure_times.append(now)
            window_full = len(self._failure_times) == self.failure_threshold
            if window_full and now - self._failure_times[0] <= self.window_seconds:
                self._open(now)
        # Open: a late outcome of a call admitted before the breaker opened changes nothing.

    def _expire_open(self, now: float) -> None:
        if self._state is BreakerState.OPEN and now - self._changed_at >= self.open_seconds:
            self._state = BreakerState.HALF_OPEN
            self._changed_at = now
            self._probes_admitted = self._probes_in_flight = self._probes_succeeded = 0
            self._times_half_opened += 1

    def _open(self, now: float) -> None:
        self._state = BreakerState.OPEN
        self._changed_at = now
        self._failure_times.clear()
        self._times_opened += 1

    def _close(self) -> None:
        self._state = BreakerState.CLOSED
        self._failure_times.clear()
        self._times_closed += 1


class BreakerSet:
    """One breaker per key, e.g. ``(feature_group, region_id)``, created on first use.

    Keying by region means a regional feature-store outage trips only that region's breakers,
    and the other regions keep their online features. The set holds at most ``max_keys``
    breakers, so a bug or a flood of unexpected keys cannot grow memory without bound. When a
    new key arrives at capacity, the least recently used *closed* breaker is dropped: dropping
    an open one would forget an outage and send traffic straight back to a dead dependency. Only
    when every breaker is open or half-open is the least recently used one dropped anyway.
    """

    def __init__(self, new_breaker: Callable[[], CircuitBreaker], max_keys: int = 1024) -> None:
        _require(max_keys >= 1, f"max_keys must be >= 1, got {max_keys}")
        self.new_breaker = new_breaker
        self.max_keys = max_keys
        self._lock = threading.Lock()
        self._breakers: OrderedDict[Hashable, CircuitBreaker] = OrderedDict()
        self._evictions = 0

    def get(self, key: Hashable) -> CircuitBreaker:
        with self._lock:
            breaker = self._breakers.get(key)
            if breaker is not None:
                self._breakers.move_to_end(key)
                return breaker
            if len(self._breakers) >= self.max_keys:
                self._evict_one()
            breaker = self._breakers[key] = self.new_breaker()
            return breaker

    def __len__(self) -> int:
        return len(self._breakers)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._breakers

    @property
    def evictions(self) -> int:
        """Breakers dropped to stay within ``max_keys``; non-zero means the bound is too small."""
        return self._evictions

    def stats(self) -> dict[Hashable, BreakerStats]:
        with self._lock:
            breakers = list(self._breakers.items())
        return {key: breaker.stats() for key, breaker in breakers}

    def _evict_one(self) -> None:
        # Scans only when a new key arrives at capacity, which a well-sized set never does.
        victim = next(
            (key for key, breaker in self._breakers.items() if breaker.state is BreakerState.CLOSED),
            next(iter(self._breakers)),
        )
        del self._breakers[victim]
        self._evictions += 1


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise BreakerConfigError(message)
