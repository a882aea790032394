"""Circuit breaker: the closed/open/half-open state machine on an injected clock, and keyed sets."""

from __future__ import annotations

import itertools
import random
import threading
from functools import partial

import pytest

from serve_apps.breaker import (
    BreakerConfigError,
    BreakerSet,
    BreakerState,
    CircuitBreaker,
)

FAST = 0.01  # a call well under the slow-call threshold


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_breaker(clock: FakeClock, **overrides: float) -> CircuitBreaker:
    params = {
        "failure_threshold": 3,
        "window_seconds": 10.0,
        "open_seconds": 30.0,
        "half_open_max_calls": 2,
        "slow_call_seconds": 0.5,
    }
    return CircuitBreaker(**(params | overrides), clock=clock)


def trip(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.failure_threshold):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_threshold_failures_within_the_window_open_the_breaker(clock: FakeClock) -> None:
    breaker = make_breaker(clock)
    for _ in range(2):
        breaker.record_failure()
        clock.advance(4.0)
    assert breaker.state is BreakerState.CLOSED
    breaker.record_failure()  # third failure, 8 s after the first
    assert breaker.state is BreakerState.OPEN
    assert not breaker.allow()


def test_failures_spread_wider_than_the_window_keep_it_closed(clock: FakeClock) -> None:
    breaker = make_breaker(clock)
    for _ in range(20):
        breaker.record_failure()
        clock.advance(5.1)  # never 3 failures within 10 s
    assert breaker.state is BreakerState.CLOSED
    assert breaker.stats().failed_calls == 20


def test_interleaved_successes_do_not_hide_a_failing_dependency(clock: FakeClock) -> None:
    breaker = make_breaker(clock)
    for _ in range(3):
        breaker.record_success(FAST)
        breaker.record_failure()
    assert breaker.state is BreakerState.OPEN


def test_slow_calls_count_as_failures(clock: FakeClock) -> None:
    breaker = make_breaker(clock)
    for _ in range(2):
        breaker.record_success(0.49)
    assert breaker.state is BreakerState.CLOSED
    for _ in range(3):
        breaker.record_success(0.5)
    assert breaker.state is BreakerState.OPEN
    stats = breaker.stats()
    assert (stats.slow_calls, stats.successful_calls, stats.failed_calls) == (3, 2, 0)


def test_open_breaker_rejects_without_calling_the_dependency(clock: FakeClock) -> None:
    breaker = make_breaker(clock)
    trip(breaker)
    dependency_calls = 0
    for _ in range(1000):
        clock.advance(0.01)
        if breaker.allow():
            dependency_calls += 1
    assert dependency_calls == 0
    assert breaker.stats().rejected_calls == 1000


def test_half_open_admits_only_the_probe_quota(clock: FakeClock) -> None:
    breaker = make_breaker(clock, half_open_max_calls=2)
    trip(breaker)
    clock.advance(29.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.state is BreakerState.HALF_OPEN
    admitted = [breaker.allow() for _ in range(10)]
    assert admitted == [True, True] + [False] * 8


def test_all_probes_succeeding_close_the_breaker(clock: FakeClock) -> None:
    breaker = make_breaker(clock, half_open_max_calls=2)
    trip(breaker)
    clock.advance(30.0)
    assert breaker.allow() and breaker.allow()
    breaker.record_success(FAST)
    assert breaker.state is BreakerState.HALF_OPEN  # one lucky call is not enough
    breaker.record_success(FAST)
    assert breaker.state is BreakerState.CLOSED
    assert all(breaker.allow() for _ in range(100))


@pytest.mark.parametrize("probe_outcome", ["error", "slow"])
def test_a_failed_probe_reopens_for_another_full_period(clock: FakeClock, probe_outcome: str) -> None:
    breaker = make_breaker(clock, half_open_max_calls=2)
    trip(breaker)
    clock.advance(30.0)
    assert breaker.allow()
    breaker.record_success(FAST)
    assert breaker.allow()
    breaker.record_failure() if probe_outcome == "error" else breaker.record_success(5.0)
    assert breaker.state is BreakerState.OPEN
    clock.advance(29.0)
    assert not breaker.allow()
    clock.advance(1.0)
    assert breaker.allow()


def test_a_probe_that_never_reports_counts_as_a_timeout(clock: FakeClock) -> None:
    breaker = make_breaker(clock, half_open_max_calls=1)
    trip(breaker)
    clock.advance(30.0)
    assert breaker.allow()  # the probe's outcome is lost (e.g. a cancelled task)
    clock.advance(29.0)
    assert not breaker.allow()
    clock.advance(1.0)
    assert not breaker.allow()
    assert breaker.state is BreakerState.OPEN
    clock.advance(30.0)
    assert breaker.allow()


def test_late_outcomes_of_calls_admitted_before_opening_change_nothing(clock: FakeClock) -> None:
    breaker = make_breaker(clock)
    in_flight = [breaker.allow() for _ in range(5)]
    assert all(in_flight)
    trip(breaker)
    for _ in range(5):
        breaker.record_success(FAST)
    assert breaker.state is BreakerState.OPEN
    clock.advance(30.0)
    breaker.record_success(FAST)  # no probe admitted yet: not evidence of recovery
    assert breaker.state is BreakerState.HALF_OPEN


def test_stats_count_transitions_and_rejections(clock: FakeClock) -> None:
    breaker = make_breaker(clock, half_open_max_calls=1)
    trip(breaker)
    assert not breaker.allow()
    clock.advance(30.0)
    assert breaker.allow()
    breaker.record_failure()
    clock.advance(30.0)
    assert breaker.allow()
    breaker.record_success(FAST)
    stats = breaker.stats()
    assert stats.state is BreakerState.CLOSED
    assert (stats.times_opened, stats.times_half_opened, stats.times_closed) == (2, 2, 1)
    assert stats.rejected_calls == 1


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"failure_threshold": 0}, "failure_threshold"),
        ({"window_seconds": 0.0}, "window_seconds"),
        ({"open_seconds": -1.0}, "open_seconds"),
        ({"half_open_max_calls": 0}, "half_open_max_calls"),
        ({"slow_call_seconds": 0.0}, "slow_call_seconds"),
    ],
)
def test_bad_parameters_are_refused_by_name(clock: FakeClock, overrides: dict[str, float], message: str) -> None:
    with pytest.raises(BreakerConfigError, match=message):
        make_breaker(clock, **overrides)


def test_concurrent_use_keeps_counts_consistent() -> None:
    ticks = itertools.count()  # next() on itertools.count is atomic in CPython
    breaker = CircuitBreaker(
        failure_threshold=5,
        window_seconds=0.05,
        open_seconds=0.02,
        half_open_max_calls=3,
        slow_call_seconds=0.5,
        clock=lambda: next(ticks) * 1e-4,
    )
    threads, calls_per_thread = 8, 5000
    allowed = [0] * threads
    start = threading.Barrier(threads)

    def worker(index: int) -> None:
        rng = random.Random(index)
        start.wait()
        for _ in range(calls_per_thread):
            if not breaker.allow():
                continue
            allowed[index] += 1
            outcome = rng.random()
            if outcome < 0.3:
                breaker.record_failure()
            elif outcome < 0.4:
                breaker.record_success(1.0)
            else:
                breaker.record_success(FAST)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()

    stats = breaker.stats()
    assert sum(allowed) + stats.rejected_calls == threads * calls_per_thread
    assert stats.failed_calls + stats.slow_calls + stats.successful_calls == sum(allowed)
    assert stats.times_opened > 1 and stats.times_closed > 0 and stats.rejected_calls > 0
    # Every open began in closed or half-open; every half-open ended open, closed, or is current.
    in_open, in_half_open = stats.state is BreakerState.OPEN, stats.state is BreakerState.HALF_OPEN
    assert stats.times_opened == stats.times_half_opened + in_open
    reopened = stats.times_opened - stats.times_closed - (stats.state is not BreakerState.CLOSED)
    assert stats.times_half_opened == reopened + stats.times_closed + in_half_open


def breaker_set(clock: FakeClock, max_keys: int) -> BreakerSet:
    return BreakerSet(partial(make_breaker, clock), max_keys=max_keys)


def test_a_regional_outage_opens_only_that_regions_breaker(clock: FakeClock) -> None:
    breakers = breaker_set(clock, max_keys=16)
    trip(breakers.get(("cell_traffic", 3)))
    assert breakers.get(("cell_traffic", 3)) is breakers.get(("cell_traffic", 3))
    assert not breakers.get(("cell_traffic", 3)).allow()
    assert breakers.get(("cell_traffic", 4)).allow()
    assert breakers.get(("provider_status", 3)).allow()
    states = {key: stats.state for key, stats in breakers.stats().items()}
    assert states == {
        ("cell_traffic", 3): BreakerState.OPEN,
        ("cell_traffic", 4): BreakerState.CLOSED,
        ("provider_status", 3): BreakerState.CLOSED,
    }


def test_breaker_set_is_bounded_and_keeps_open_breakers(clock: FakeClock) -> None:
    breakers = breaker_set(clock, max_keys=3)
    trip(breakers.get("region-0"))  # least recently used, but open
    for region in range(1, 50):
        breakers.get(f"region-{region}")
    assert len(breakers) == 3
    assert breakers.evictions == 47
    assert "region-0" in breakers
    assert breakers.get("region-0").state is BreakerState.OPEN


def test_breaker_set_evicts_the_oldest_when_every_breaker_is_open(clock: FakeClock) -> None:
    breakers = breaker_set(clock, max_keys=2)
    for region in ("a", "b"):
        trip(breakers.get(region))
    breakers.get("c")
    assert "a" not in breakers and "b" in breakers and len(breakers) == 2
