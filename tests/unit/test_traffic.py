"""Traffic policy: sticky, monotone, salted champion/challenger split; canary ramp; validation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from scipy.stats import binomtest

from serve_apps.traffic import TrafficPolicy, TrafficPolicyError, assign_arm

#: The ids are fixed, so these tests are deterministic; alpha only says how close is close enough.
ALPHA = 1e-3
#: Sequential ids in the simulator's format: the worst case for a weak hash.
JOB_IDS = [f"J20260301-{seq:07d}" for seq in range(100_000)]


def policy(**fields: object) -> TrafficPolicy:
    return TrafficPolicy(**({"champion": "d-2026-02-01", "challenger": "d-2026-03-01"} | fields))


def challenger_jobs(traffic: TrafficPolicy, job_ids: list[str] = JOB_IDS) -> set[str]:
    return {job for job in job_ids if assign_arm(job, traffic) == "challenger"}


@pytest.mark.parametrize("weight", [0.01, 0.05, 0.25, 0.5, 0.9])
def test_split_matches_the_weight(weight: float) -> None:
    served = len(challenger_jobs(policy(challenger_weight=weight)))
    assert binomtest(served, len(JOB_IDS), weight).pvalue > ALPHA


def test_weights_zero_and_one_are_exact() -> None:
    assert not challenger_jobs(policy(challenger_weight=0.0))
    assert len(challenger_jobs(policy(challenger_weight=1.0))) == len(JOB_IDS)
    assert not challenger_jobs(policy(challenger=None))


def test_assignment_is_sticky_across_replicas_and_unrelated_changes() -> None:
    original = policy(challenger_weight=0.3, shadow=False)
    replica = TrafficPolicy.model_validate_json(original.model_dump_json())  # what reconfigure() receives
    bumped = policy(challenger_weight=0.3, shadow=True, generation=7)
    arms = [assign_arm(job, original) for job in JOB_IDS[:20_000]]
    assert arms == [assign_arm(job, original) for job in JOB_IDS[:20_000]]
    assert arms == [assign_arm(job, replica) for job in JOB_IDS[:20_000]]
    assert arms == [assign_arm(job, bumped) for job in JOB_IDS[:20_000]]


def test_growing_weight_only_moves_jobs_to_the_challenger() -> None:
    ramp = policy(canary_steps=(0.05, 0.25, 0.5))
    previous: set[str] = set()
    while ramp.canary_step is None or ramp.canary_step < len(ramp.canary_steps) - 1:
        ramp = ramp.advance()
        current = challenger_jobs(ramp)
        assert previous <= current
        assert binomtest(len(current), len(JOB_IDS), ramp.challenger_weight).pvalue > ALPHA
        previous = current


@settings(max_examples=200, deadline=None)
@given(
    weights=st.tuples(st.floats(0.0, 1.0), st.floats(0.0, 1.0)).map(sorted),
    job_ids=st.lists(st.text(max_size=40), min_size=1, max_size=50),
    salt=st.text(min_size=1, max_size=80),
)
def test_monotone_for_any_weights_jobs_and_salt(weights: list[float], job_ids: list[str], salt: str) -> None:
    lower, higher = (policy(challenger_weight=weight, salt=salt) for weight in weights)
    assert challenger_jobs(lower, job_ids) <= challenger_jobs(higher, job_ids)


def test_a_new_salt_reshuffles_independently() -> None:
    first = [assign_arm(job, policy(challenger_weight=0.5, salt="experiment-1")) for job in JOB_IDS]
    second = [assign_arm(job, policy(challenger_weight=0.5, salt="experiment-2")) for job in JOB_IDS]
    agreeing = sum(a == b for a, b in zip(first, second, strict=True))
    assert binomtest(agreeing, len(JOB_IDS), 0.5).pvalue > ALPHA  # independent halves agree half the time


def test_a_new_challenger_version_reshuffles_by_default() -> None:
    old = challenger_jobs(policy(challenger_weight=0.5))
    new = challenger_jobs(policy(challenger="d-2026-03-08", challenger_weight=0.5))
    assert binomtest(len(old & new), len(old), 0.5).pvalue > ALPHA


def test_canary_ramp_advances_step_by_step_and_stops_at_the_last() -> None:
    ramp = policy(canary_steps=(0.05, 0.25, 0.5))
    seen = []
    for _ in range(3):
        ramp = ramp.advance()
        seen.append((ramp.canary_step, ramp.challenger_weight, ramp.generation))
    assert seen == [(0, 0.05, 1), (1, 0.25, 2), (2, 0.5, 3)]
    with pytest.raises(TrafficPolicyError, match="last step.*promote"):
        ramp.advance()


def test_advance_from_a_manual_weight_never_steps_back() -> None:
    ramp = policy(challenger_weight=0.1, canary_steps=(0.05, 0.25, 0.5)).advance()
    assert (ramp.canary_step, ramp.challenger_weight) == (1, 0.25)


def test_rollback_sends_every_job_to_the_champion_and_can_restart() -> None:
    ramp = policy(canary_steps=(0.05, 0.25), shadow=True).advance().advance()
    stopped = ramp.rollback()
    assert (stopped.canary_step, stopped.challenger_weight, stopped.generation) == (None, 0.0, 3)
    assert stopped.shadow and stopped.shadows("champion")
    assert not challenger_jobs(stopped)
    restarted = stopped.advance()
    assert (restarted.canary_step, restarted.challenger_weight, restarted.generation) == (0, 0.05, 4)


def test_versions_and_shadowing_per_arm() -> None:
    traffic = policy(challenger_weight=0.2, shadow=True)
    assert traffic.serving_version("champion") == "d-2026-02-01"
    assert traffic.serving_version("challenger") == "d-2026-03-01"
    assert traffic.shadows("champion") and not traffic.shadows("challenger")
    assert not policy(shadow=False).shadows("champion")
    with pytest.raises(TrafficPolicyError, match="no challenger"):
        policy(challenger=None).serving_version("challenger")


def test_policy_is_immutable() -> None:
    with pytest.raises(ValidationError, match="frozen"):
        policy().challenger_weight = 0.5


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"challenger_weight": -0.1}, "greater than or equal to 0"),
        ({"challenger_weight": 1.5}, "less than or equal to 1"),
        ({"challenger_weight": float("nan")}, "finite number"),
        ({"challenger": None, "challenger_weight": 0.2}, "no challenger"),
        ({"challenger": None, "shadow": True}, "shadow needs a challenger"),
        ({"challenger": "d-2026-02-01"}, "cannot challenge itself"),
        ({"canary_steps": (0.25, 0.05)}, "strictly increase"),
        ({"canary_steps": (0.05, 0.05)}, "strictly increase"),
        ({"canary_steps": (0.0, 0.5)}, r"outside \(0, 1\]"),
        ({"canary_steps": (0.5, 1.2)}, r"outside \(0, 1\]"),
        ({"canary_steps": (0.05, 0.25), "canary_step": 1, "challenger_weight": 0.3}, "differs from canary step"),
        ({"canary_steps": (0.05,), "canary_step": 1, "challenger_weight": 0.05}, "past the last"),
        ({"champion": ""}, "at least 1 character"),
        ({"generation": -1}, "greater than or equal to 0"),
        ({"weight": 0.5}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_policies_are_refused_with_a_clear_reason(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        policy(**fields)


def test_advance_needs_a_challenger_and_a_ramp() -> None:
    with pytest.raises(TrafficPolicyError, match="no canary_steps"):
        policy().advance()
    with pytest.raises(TrafficPolicyError, match="no challenger"):
        policy(challenger=None, canary_steps=(0.1,)).advance()
