"""The event policy: which actions answer a model-quality event, declared in YAML.

``cluster/policy.yaml`` lists rules; the first rule whose ``match`` fits an event decides. Two
conditions look beyond the event, at the incidents open at the time (``cluster/event_log.py``):

* ``unless_open``: the rule's automatic actions are *suppressed* while an incident of one of
  these kinds is open in an overlapping segment. This is what keeps an upstream data bug from
  triggering a retrain: the unit change that makes a range check fire also shifts the feature's
  distribution and, once labels land, the error; retraining then would teach the model the bug.
* ``requires_open``: the rule only fits if such an incident *is* open, e.g. covariate drift is
  acted on only when matured labels confirm it (an open concept-drift or quality-SLO incident).

Two segments overlap when they agree on every column both name (``{}``, the global segment,
overlaps every segment). Each action runs at most once per incident: a page is not repeated on
every monitor pass, and a retrain is not started twice for the same drift.

:func:`decide` is pure: events, open incidents and prior actions in, :class:`Decision` s out.
``cluster/actions.py`` carries them out and records them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from contracts.events import ActionKind, ActionRecord, Event, EventKind, EventState, Severity

DEFAULT_POLICY = Path(__file__).resolve().parents[1] / "cluster" / "policy.yaml"
#: Actions that change the system; the rest (page, ticket, none) only notify.
AUTOMATIC_ACTIONS: frozenset[str] = frozenset({"fallback_feature_group", "restore_feature_group", "retrain", "shadow", "canary_advance", "promote", "rollback"})


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Match(_Spec):
    """An event fits when each listed field is one of the given values (an empty list: any)."""

    kinds: tuple[EventKind, ...] = ()
    severities: tuple[Severity, ...] = ()
    states: tuple[EventState, ...] = ("firing",)
    sources: tuple[str, ...] = ()

    def fits(self, event: Event) -> bool:
        return all(
            not allowed or value in allowed
            for allowed, value in ((self.kinds, event.kind), (self.severities, event.severity), (self.states, event.state), (self.sources, event.source))
        )


class Rule(_Spec):
    name: str = Field(min_length=1)
    match: Match
    actions: tuple[ActionKind, ...] = Field(min_length=1)
    why: str = Field(min_length=1)
    unless_open: tuple[EventKind, ...] = ()
    requires_open: tuple[EventKind, ...] = ()


class Policy(_Spec):
    rules: tuple[Rule, ...] = Field(min_length=1)

    @classmethod
    def load(cls, path: Path | str = DEFAULT_POLICY) -> Policy:
        raw: Any = yaml.safe_load(Path(path).read_text())
        return cls.model_validate(raw)


@dataclass(frozen=True)
class Decision:
    """One action for one event; ``status`` is ``suggested`` until the executor carries it out."""

    event: Event
    action: ActionKind
    status: str
    rule: str
    reason: str


def segments_overlap(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(a[column] == b[column] for column in a.keys() & b.keys())


def decide(
    policy: Policy,
    events: Sequence[Event],
    open_incidents: Iterable[Event],
    prior_actions: Iterable[ActionRecord] = (),
) -> list[Decision]:
    """The decisions for ``events`` (new events, in order), given the incidents open now.

    ``open_incidents`` are the latest firing event of each open incident (the new events
    included); ``prior_actions`` are the actions already recorded, so an action is not repeated
    for the same incident.
    """
    open_now = list(open_incidents)
    done = {(a.incident_key, a.action) for a in prior_actions if a.status in ("taken", "suggested")}
    out: list[Decision] = []
    for event in events:
        key = event.incident_key()
        rule = next((r for r in policy.rules if r.match.fits(event) and _required_open(r, event, open_now)), None)
        if rule is None:
            out.append(Decision(event, "none", "skipped", "(no rule)", f"no rule of the policy matches {event.kind}/{event.severity}/{event.state}"))
            continue
        blocker = _blocking(rule, event, open_now)
        for action in rule.actions:
            if (key, action) in done:
                continue
            done.add((key, action))
            if blocker is not None and action in AUTOMATIC_ACTIONS:
                reason = (f"{rule.name}: {action} suppressed while {blocker.kind} incident '{blocker.summary}' is open in "
                          f"segment {blocker.segment or 'global'}")
                out.append(Decision(event, action, "skipped", rule.name, reason))
            else:
                out.append(Decision(event, action, "suggested", rule.name, f"{rule.name}: {' '.join(rule.why.split())}"))
    return out


def _overlapping(kinds: Sequence[str], event: Event, open_now: Sequence[Event]) -> Event | None:
    return next(
        (o for o in open_now if o.kind in kinds and o.incident_key() != event.incident_key() and segments_overlap(o.segment, event.segment)),
        None,
    )


def _required_open(rule: Rule, event: Event, open_now: Sequence[Event]) -> bool:
    return not rule.requires_open or _overlapping(rule.requires_open, event, open_now) is not None


def _blocking(rule: Rule, event: Event, open_now: Sequence[Event]) -> Event | None:
    return _overlapping(rule.unless_open, event, open_now) if rule.unless_open else None
