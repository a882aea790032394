"""Live routing state every router replica polls: the traffic split and the feature-group quarantine.

The traffic split is kept in ``<registry>/dispatch/traffic.json``, beside the aliases.

The registry aliases say *which* versions are champion and challenger; this file says *how much*
traffic the challenger gets, whether it shadows, and where the canary ramp stands. Both are
files every router replica polls (a stat per second), so a change made through the admin API,
the CLI or the release policy reaches all replicas without a restart, survives restarts, and is
written atomically (temp file + ``os.replace``) with a generation number for audit.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from contracts.features import group
from retrain.registry import ModelRegistry
from serve_apps.traffic import TrafficPolicy

TRAFFIC_FILE = "traffic.json"
DEFAULT_CANARY_STEPS = (0.05, 0.25, 0.5)


@dataclass
class TrafficState:
    challenger_weight: float = 0.0
    shadow: bool = True
    canary_steps: tuple[float, ...] = DEFAULT_CANARY_STEPS
    canary_step: int | None = None
    generation: int = 0
    changed_at: str = ""
    changed_by: str = ""
    reason: str = ""
    history: list[dict] = field(default_factory=list)


def traffic_path(registry_root: Path | str) -> Path:
    return Path(registry_root) / "dispatch" / TRAFFIC_FILE


def read_state(registry_root: Path | str) -> TrafficState:
    path = traffic_path(registry_root)
    if not path.exists():
        return TrafficState()
    raw = json.loads(path.read_text())
    raw["canary_steps"] = tuple(raw.get("canary_steps", DEFAULT_CANARY_STEPS))
    return TrafficState(**raw)


def write_state(registry_root: Path | str, state: TrafficState) -> None:
    _write_json_atomically(traffic_path(registry_root), asdict(state))


def _write_json_atomically(path: Path, payload: object) -> None:
    """Temp file + fsync + ``os.replace``: a polling replica reads the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        json.dump(payload, handle, indent=2)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def live_policy(registry: ModelRegistry, state: TrafficState) -> TrafficPolicy | None:
    """The policy the router applies now: alias targets plus the stored split; None with no champion."""
    champion = registry.alias("dispatch", "champion")
    if champion is None:
        return None
    challenger = registry.alias("dispatch", "challenger")
    challenger_version = challenger.version if challenger and challenger.version != champion.version else None
    if challenger_version is None:
        return TrafficPolicy(champion=champion.version, generation=state.generation)
    return TrafficPolicy(
        champion=champion.version,
        challenger=challenger_version,
        challenger_weight=state.challenger_weight,
        shadow=state.shadow,
        canary_steps=state.canary_steps,
        canary_step=state.canary_step,
        generation=state.generation,
    )


def change_traffic(
    registry_root: Path | str,
    *,
    challenger_weight: float | None = None,
    shadow: bool | None = None,
    canary: str | None = None,
    canary_steps: tuple[float, ...] | None = None,
    changed_by: str,
    reason: str,
    at: datetime | None = None,
) -> TrafficState:
    """Apply a change, validated against the live aliases, and persist it; raises ValueError.

    ``canary_steps`` replaces the ramp before ``canary`` moves along it (only off the ramp).
    ``at`` is the change's time (default now), on the clock of the prediction log the release
    controller reads (simulated time in ``cluster.closed_loop``).
    """
    registry = ModelRegistry(registry_root)
    state = read_state(registry_root)
    policy = live_policy(registry, state)
    if policy is None:
        raise ValueError("dispatch@champion is not set; register and promote a version first")
    if canary_steps is not None:
        if policy.canary_step is not None:
            raise ValueError(f"the canary is at step {policy.canary_step}; roll it back before changing the steps")
        policy = TrafficPolicy.model_validate({**policy.model_dump(), "canary_steps": tuple(canary_steps)})
        state.canary_steps = policy.canary_steps
    if canary == "advance":
        policy = policy.advance()
    elif canary == "rollback":
        policy = policy.rollback()
    elif canary is not None:
        raise ValueError(f"canary must be 'advance' or 'rollback', got {canary!r}")
    update: dict = {}
    if challenger_weight is not None:
        update.update(challenger_weight=challenger_weight, canary_step=None)
    if shadow is not None:
        update["shadow"] = shadow
    if update:
        policy = TrafficPolicy.model_validate({**policy.model_dump(), **update})
    previous = asdict(state)
    previous.pop("history", None)
    state.history = [*state.history[-49:], previous]
    state.challenger_weight = policy.challenger_weight
    state.shadow = policy.shadow
    state.canary_step = policy.canary_step
    state.generation += 1
    state.changed_at = (at or datetime.now(UTC)).astimezone(UTC).isoformat()
    state.changed_by, state.reason = changed_by, reason
    write_state(registry_root, state)
    return state


# -- feature-group quarantine --------------------------------------------------------------------
#
# When an upstream data-quality incident hits a feature group (a feed switching units in one
# region, say), the policy (``retrain/policy.py``) answers with ``fallback_feature_group``: jobs
# in the affected regions are served by the fallback model, which reads no stored features, until
# the incident resolves. The quarantine is a file beside the traffic split, polled the same way,
# so it reaches every replica within a second, survives restarts and is auditable.

QUARANTINE_FILE = "quarantine.json"


@dataclass(frozen=True)
class QuarantineEntry:
    """``feature_group`` is unusable in ``region_ids`` (all regions when empty) until lifted."""

    feature_group: str
    region_ids: tuple[int, ...]
    incident_key: str
    reason: str
    since: str


@dataclass(frozen=True)
class Quarantine:
    entries: tuple[QuarantineEntry, ...] = ()

    def groups_for(self, region_id: int) -> frozenset[str]:
        """The feature groups that must not be used for a job in ``region_id``."""
        return frozenset(e.feature_group for e in self.entries if not e.region_ids or region_id in e.region_ids)


def quarantine_path(registry_root: Path | str) -> Path:
    return Path(registry_root) / "dispatch" / QUARANTINE_FILE


def read_quarantine(registry_root: Path | str) -> Quarantine:
    path = quarantine_path(registry_root)
    if not path.exists():
        return Quarantine()
    raw = json.loads(path.read_text())
    return Quarantine(tuple(QuarantineEntry(**{**e, "region_ids": tuple(e["region_ids"])}) for e in raw["entries"]))


def quarantine_group(
    registry_root: Path | str, feature_group: str, region_ids: tuple[int, ...], *, incident_key: str, reason: str
) -> Quarantine:
    """Add (or replace, for the same incident and group) a quarantine entry; returns the new state."""
    group(feature_group)  # the catalogue refuses an unknown name
    current = read_quarantine(registry_root)
    kept = tuple(e for e in current.entries if (e.incident_key, e.feature_group) != (incident_key, feature_group))
    entry = QuarantineEntry(feature_group, tuple(sorted(region_ids)), incident_key, reason, datetime.now(UTC).isoformat())
    return _write_quarantine(registry_root, Quarantine((*kept, entry)))


def lift_quarantine(registry_root: Path | str, *, incident_key: str) -> Quarantine:
    """Remove every entry the incident put in place; returns the new state."""
    current = read_quarantine(registry_root)
    return _write_quarantine(registry_root, Quarantine(tuple(e for e in current.entries if e.incident_key != incident_key)))


def _write_quarantine(registry_root: Path | str, quarantine: Quarantine) -> Quarantine:
    _write_json_atomically(quarantine_path(registry_root), {"entries": [asdict(e) for e in quarantine.entries]})
    return quarantine
