"""The release controller's decision function: a table of situations and the decision each gets,
and its observation kernels (request attribution, guardrails, burn rate) on hand-made rows."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from cluster.config import ReleaseSettings, Settings
from eval.sequential import MetricEvidence, SequentialResult
from retrain.release import (
    Guardrail,
    ReleaseSituation,
    assigned,
    burn_level,
    decide,
    guardrail_checks,
    loss_differences,
    request_table,
)

SETTINGS = ReleaseSettings(min_requests_per_step=100, max_samples=5000)
AS_OF = datetime(2026, 3, 1, 12, tzinfo=UTC)


def sequential_result(decision: str = "continue", n: int = 300) -> SequentialResult:
    verdict = {"promote": "better", "reject": "worse", "continue": "inconclusive"}[decision]
    metric = MetricEvidence("eta_abs_error", n, -0.5 if decision == "promote" else 0.5, -1.0, 1.0, 0.25, 0.01, verdict)
    return SequentialResult(decision, f"{decision}: eta_abs_error {verdict}", 0.05, (metric,))


def situation(**change: object) -> ReleaseSituation:
    base = ReleaseSituation(
        stage="canary", champion="v1", candidate="v2", baseline="v1", canary_steps=(0.05, 0.25, 0.5), canary_step=0,
        challenger_weight=0.05, shadow=True, requests_at_step=500, test=sequential_result(), guardrails=(
            Guardrail("latency_p99_ms", "challenger", 40.0, 120.0, 500), Guardrail("error_share", "challenger", 0.0, 0.005, 500),
        ), burn="none", as_of=AS_OF, champion_generation=1, traffic_generation=3,
    )
    return dataclasses.replace(base, **change)


SLOW = (Guardrail("latency_p99_ms", "challenger", 180.0, 120.0, 500),)
LAST = {"canary_step": 2, "challenger_weight": 0.5}

TABLE = [
    # (case, situation, action, code)
    ("no challenger", situation(stage="idle", candidate=None), "hold", "no_challenger"),
    ("rolled back before", situation(stage="stopped", test=sequential_result("reject")), "hold", "stopped"),
    ("weight set by hand", situation(stage="manual", canary_step=None, challenger_weight=0.3), "hold", "manual"),
    ("new challenger, shadow off", situation(stage="shadow", canary_step=None, challenger_weight=0.0, shadow=False), "shadow", "start_shadow"),
    ("shadow, too few requests", situation(stage="shadow", canary_step=None, challenger_weight=0.0, requests_at_step=10), "hold", "waiting_for_requests"),
    ("shadow done", situation(stage="shadow", canary_step=None, challenger_weight=0.0), "advance", "step_passed"),
    ("shadow, test already promotes: still ramps", situation(stage="shadow", canary_step=None, challenger_weight=0.0, test=sequential_result("promote")), "advance", "step_passed"),
    ("shadow, test rejects", situation(stage="shadow", canary_step=None, challenger_weight=0.0, test=sequential_result("reject")), "rollback", "test_rejected"),
    ("canary 5 %, step done", situation(), "advance", "step_passed"),
    ("canary 5 %, too few requests", situation(requests_at_step=99), "hold", "waiting_for_requests"),
    ("canary 5 %, test promotes but not at the last step", situation(test=sequential_result("promote")), "advance", "step_passed"),
    ("canary, test rejects", situation(test=sequential_result("reject")), "rollback", "test_rejected"),
    ("canary, test rejects even with few requests", situation(test=sequential_result("reject"), requests_at_step=3), "rollback", "test_rejected"),
    ("canary burns at page rate", situation(burn="page"), "rollback", "burn_rate"),
    ("canary burns at ticket rate only", situation(burn="ticket"), "advance", "step_passed"),
    ("canary latency guardrail", situation(guardrails=SLOW), "rollback", "guardrail"),
    ("guardrail without enough requests cannot trip", situation(guardrails=(Guardrail("error_share", "challenger", float("nan"), 0.005, 5),)), "advance", "step_passed"),
    ("last step, test promotes", situation(**LAST, test=sequential_result("promote")), "promote", "test_promoted"),
    ("last step, test promotes, too few requests", situation(**LAST, test=sequential_result("promote"), requests_at_step=50), "hold", "waiting_for_requests"),
    ("last step, undecided", situation(**LAST), "hold", "waiting_for_evidence"),
    ("last step, undecided after max samples", situation(**LAST, test=sequential_result("continue", n=5000)), "rollback", "inconclusive"),
    ("last step, promotes but a guardrail trips", situation(**LAST, test=sequential_result("promote"), guardrails=SLOW), "rollback", "guardrail"),
    ("new champion on probation, healthy", situation(stage="probation", champion="v2", canary_step=None, challenger_weight=0.0, guardrails=()), "hold", "probation"),
    ("new champion burns at page rate", situation(stage="probation", champion="v2", canary_step=None, challenger_weight=0.0, guardrails=(), burn="page"), "rollback", "burn_rate"),
]


@pytest.mark.parametrize(("case", "given", "action", "code"), TABLE, ids=[row[0] for row in TABLE])
def test_decision_table(case: str, given: ReleaseSituation, action: str, code: str) -> None:
    decision = decide(given, SETTINGS)
    assert (decision.action, decision.code) == (action, code), decision.reason
    assert decision.reason and decision.evidence["stage"] == given.stage


def test_rollback_reason_names_the_evidence() -> None:
    rejected = decide(situation(test=sequential_result("reject")), SETTINGS)
    assert "eta_abs_error worse" in rejected.reason and rejected.evidence["test"] == "reject"
    slow = decide(situation(guardrails=SLOW), SETTINGS)
    assert "latency_p99_ms 180 > 120" in slow.reason
    assert slow.evidence["latency_p99_ms"] == 180.0 and slow.evidence["latency_p99_ms_limit"] == 120.0


def test_advance_names_the_next_weight() -> None:
    assert "to weight 0.25" in decide(situation(), SETTINGS).reason
    assert "to weight 0.05" in decide(situation(stage="shadow", canary_step=None, challenger_weight=0.0), SETTINGS).reason


# -- observation kernels ----------------------------------------------------------------------------

T0 = pd.Timestamp("2026-03-01 10:00", tz="UTC")


def log_rows(rows: list[tuple]) -> pd.DataFrame:
    """Prediction-log-like rows: (request, role, arm, version, minute, latency, reasons, candidates...)."""
    out = []
    for request_id, role, arm, version, minute, latency, reasons, eta, arrival, p, accepted in rows:
        out.append({"request_id": request_id, "job_id": f"job-{request_id}", "provider_id": 1, "role": role, "arm": arm,
                    "dispatch_version": version, "requested_at": T0 + pd.Timedelta(minutes=minute), "latency_ms": latency,
                    "degradation_reasons": reasons, "eta_minutes": eta, "arrival_minutes": arrival, "p_accept": p, "accepted": accepted})
    return pd.DataFrame(out)


def test_request_table_attributes_fallbacks_to_the_arm_whose_model_failed() -> None:
    log = log_rows([
        ("a", "served", "champion", "v1", 0, 10.0, "", 1, 1, 0.5, 1),
        ("b", "served", "challenger", "v2", 0, 12.0, "", 1, 1, 0.5, 1),
        ("c", "served", "fallback", None, 0, 70.0, "challenger_model:model_timeout", 1, 1, 0.5, 1),
        ("d", "served", "fallback", None, 0, 5.0, "cell_traffic:missing", 1, 1, 0.5, 1),
        ("e", "served", "fallback", None, 0, 5.0, "champion_model:breaker_open", 1, 1, 0.5, 1),
        ("f", "served", "champion", "v0", 0, 5.0, "", 1, 1, 0.5, 1),  # another experiment's version
        ("a", "shadow", "challenger", "v2", 0, 8.0, "", 1, 1, 0.5, 1),
    ])
    requests = request_table(log, "v1", "v2")
    assert sorted(requests["request_id"] + requests["role"]) == ["aserved", "ashadow", "bserved", "cserved", "eserved"]
    assert sorted(requests.loc[assigned(requests, "challenger"), "request_id"]) == ["b", "c"]
    assert sorted(requests.loc[assigned(requests, "champion"), "request_id"]) == ["a", "e"]
    assert requests.set_index("request_id").loc["c", "failure"] == "model_timeout"


def test_guardrails_compare_the_challenger_with_the_champion() -> None:
    settings = Settings.model_validate({"release": {"min_guardrail_requests": 10}})
    rows = [(f"c{i}", "served", "champion", "v1", i, 20.0, "", 1, 1, 0.5, 1) for i in range(100)]
    rows += [(f"h{i}", "served", "challenger", "v2", i, 200.0 if i < 5 else 30.0, "", 1, 1, 0.5, 1) for i in range(40)]
    rows += [(f"x{i}", "served", "fallback", None, i, 60.0, "challenger_model:model_error", 1, 1, 0.5, 1) for i in range(4)]
    checks = {g.name: g for g in guardrail_checks(request_table(log_rows(rows), "v1", "v2"), settings)}
    assert checks["latency_p99_ms"].tripped and checks["latency_p99_ms"].limit == 120.0
    assert checks["error_share"].value == pytest.approx(4 / 44) and checks["error_share"].tripped
    assert checks["fallback_share"].requests == 44
    healthy = [r for r in rows if not r[0].startswith("x") and not (r[0].startswith("h") and r[5] == 200.0)]
    assert not any(g.tripped for g in guardrail_checks(request_table(log_rows(healthy), "v1", "v2"), settings))


def test_burn_level_pages_on_a_failing_arm_and_not_on_a_healthy_one() -> None:
    settings = Settings()
    minutes = np.arange(0, 60, 0.1)
    healthy = log_rows([(f"r{i}", "served", "challenger", "v2", m, 20.0, "", 1, 1, 0.5, 1) for i, m in enumerate(minutes)])
    requests = request_table(healthy, "v1", "v2")
    assert burn_level(requests, settings, AS_OF) == "none"
    # 3 % of requests failing is 30x the 0.1 % availability budget: above the 14.4x page factor.
    failing = [(f"r{i}", "served", "fallback", None, m, 20.0, "challenger_model:model_error" if i % 33 == 0 else "", 1, 1, 0.5, 1)
               for i, m in enumerate(minutes)]
    failing = [r if r[6] else (r[0], "served", "challenger", "v2", *r[4:]) for r in failing]
    assert burn_level(request_table(log_rows(failing), "v1", "v2"), settings, AS_OF) == "page"


def test_loss_differences_pair_shadow_rows_and_match_canary_jobs_in_request_order() -> None:
    rows = [
        # job p1: champion served, challenger shadowed: paired difference |9-10| - |10-10| = +1 for ETA.
        ("p1", "served", "champion", "v1", 0, 10.0, "", 10.0, 10.0, 0.5, 1),
        ("p1", "shadow", "challenger", "v2", 0, 10.0, "", 9.0, 10.0, 0.5, 1),
        # canary: challenger job k1 (error 2) matched with the unshadowed champion job u1 (error 5): -3.
        ("k1", "served", "challenger", "v2", 1, 10.0, "", 12.0, 10.0, 0.5, 1),
        ("u1", "served", "champion", "v1", 2, 10.0, "", 15.0, 10.0, 0.5, 1),
        ("u2", "served", "champion", "v1", 3, 10.0, "", 15.0, 10.0, 0.5, 1),  # no challenger job to match
    ]
    joined = log_rows(rows)
    joined["eta_abs_error"] = (joined["eta_minutes"] - joined["arrival_minutes"]).abs()
    joined["accept_log_loss"] = np.nan
    joined.loc[joined["request_id"] == "p1", "accept_log_loss"] = [0.7, 0.6]
    streams = loss_differences(joined, "v1", "v2")
    assert streams["eta_abs_error"].tolist() == [1.0, -3.0]
    assert streams["accept_log_loss"][0] == pytest.approx(-0.1) and np.isnan(streams["accept_log_loss"][1])

