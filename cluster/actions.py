"""Carries out the event policy's decisions and records each one, with its reason, in the event log.

One pass (:func:`apply_policy`) takes the events no decision has been recorded for yet, asks
``retrain.policy.decide`` what to do given the incidents open now, does it, and appends an
``ActionRecord`` per decision (``taken``, ``failed`` with the error, or ``skipped`` with why).
Passes are idempotent: action ids derive from (event, action), so a pass that crashed half-way
is simply run again.

What each action does here:

* ``page`` / ``ticket``: the record *is* the notification: ``dispatchml incidents`` lists it,
  and the monitor's Prometheus series feed Alertmanager for the on-call route.
* ``fallback_feature_group``: quarantines the event's feature group in the event's regions
  (``serve_apps.traffic_state.quarantine_group``); every router replica picks it up within a
  second. ``restore_feature_group`` lifts it when the incident resolves.
* ``retrain``: calls the retrain function given to the executor (the closed loop passes Ray Tune
  retraining, which registers a candidate for release); without one it stays ``suggested``.
  Given the settings, it is ``skipped`` while a release is under way
  (``retrain.release.release_underway``): a drift incident that re-fires while its fix is in
  shadow or canary must not replace that challenger and restart its experiment.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cluster.config import Settings
from cluster.event_log import EventLog
from contracts.events import ActionRecord, Event, EvidenceValue
from contracts.features import REQUEST_FEATURES, group
from retrain.policy import Decision, Policy, decide
from retrain.release import release_underway
from serve_apps.traffic_state import lift_quarantine, quarantine_group

#: ``retrain(event) -> detail`` (e.g. the registered candidate's version); raises on failure.
RetrainFn = Callable[[Event], dict[str, EvidenceValue]]
_REQUEST_FEATURES = frozenset(REQUEST_FEATURES)


class ActionError(RuntimeError):
    """An action that cannot be carried out as decided (e.g. no feature group to quarantine)."""


@dataclass
class Executor:
    """Carries out decisions against one registry (the serving state) with an optional retrainer.

    ``settings`` (of the same deployment) lets a retrain wait for a release under way.
    """

    registry_root: Path
    retrain: RetrainFn | None = None
    settings: Settings | None = None
    notified: list[Event] = field(default_factory=list)

    def carry_out(self, decision: Decision) -> tuple[str, dict[str, EvidenceValue]]:
        """(status, detail) of carrying out ``decision``; raises :class:`ActionError` on failure."""
        event = decision.event
        if decision.status == "skipped" or decision.action == "none":
            return "skipped", {}
        if decision.action in ("page", "ticket"):
            self.notified.append(event)
            return "taken", {"channel": decision.action}
        if decision.action == "fallback_feature_group":
            if event.subject in _REQUEST_FEATURES:
                # Computed at serving time from the request and stored groups (a unit bug in
                # cell_traffic shows up in naive_travel_min too): the source group's own incident
                # carries the quarantine, and there is no group of this name to quarantine.
                return "skipped", {"note": f"{event.subject} is a request feature; its source group's incident quarantines it"}
            feature_group = feature_group_of(event.subject)
            regions = tuple(int(r) for r in _as_list(event.segment.get("region_id")))
            quarantine_group(self.registry_root, feature_group, regions, incident_key=event.incident_key(), reason=event.summary)
            return "taken", {"feature_group": feature_group, "regions": ",".join(map(str, regions)) or "all"}
        if decision.action == "restore_feature_group":
            lift_quarantine(self.registry_root, incident_key=event.incident_key())
            if event.subject in _REQUEST_FEATURES:
                return "skipped", {"note": f"{event.subject} is a request feature; nothing was quarantined under its name"}
            return "taken", {"feature_group": feature_group_of(event.subject)}
        if decision.action == "retrain":
            if self.retrain is None:
                return "suggested", {"note": "no retrainer attached; run dispatchml retrain --trigger <event id>"}
            underway = release_underway(self.settings, event.observed_at) if self.settings is not None else None
            if underway:
                return "skipped", {"note": underway[:200]}
            return "taken", self.retrain(event)
        return "suggested", {"note": f"{decision.action} is carried out by the release controller"}


def feature_group_of(subject: str) -> str:
    """The feature group a data-quality subject names: the group itself or ``<group>__<feature>``."""
    try:
        return group(subject.split("__", 1)[0]).name
    except KeyError:
        raise ActionError(f"'{subject}' names no feature group of contracts/features.py; cannot quarantine it") from None


def _as_list(value: object) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def action_id(event_id: str, action: str) -> str:
    return hashlib.blake2b(f"{event_id}|{action}".encode(), digest_size=12).hexdigest()


def apply_policy(log: EventLog, policy: Policy, executor: Executor, now: datetime | None = None) -> list[ActionRecord]:
    """Decide and act on every event that has no recorded decision yet; returns the new records."""
    now = now or datetime.now(UTC)
    prior = log.actions()
    decided = {a.event_id for a in prior}
    new_events = [e for e in log.events() if e.event_id not in decided]
    if not new_events:
        return []
    open_latest = [incident.last for incident in log.incidents()]
    records = []
    for decision in decide(policy, new_events, open_latest, prior):
        try:
            status, detail = executor.carry_out(decision)
            reason = decision.reason
        except Exception as exc:  # noqa: BLE001 - a failed action is recorded, never swallowed
            status, detail, reason = "failed", {"error": type(exc).__name__}, f"{decision.reason} | failed: {str(exc)[:300]}"
        record = ActionRecord(
            action_id=action_id(decision.event.event_id, decision.action), event_id=decision.event.event_id,
            incident_key=decision.event.incident_key(), action=decision.action, status=status, reason=reason[:500],
            decided_at=now, detail=detail,
        )
        log.record([record])
        records.append(record)
    return records
