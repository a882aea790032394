"""The three entities features are keyed by. Join keys come from ``contracts.features.ENTITY_KEYS``."""

from __future__ import annotations

from feast import Entity, ValueType

from contracts.features import ENTITY_KEYS

provider = Entity(
    name="provider",
    join_keys=[ENTITY_KEYS["provider"]],
    value_type=ValueType.INT64,
    description="A roadside service provider (a truck and its operator) that can be offered a job.",
)
cell = Entity(
    name="cell",
    join_keys=[ENTITY_KEYS["cell"]],
    value_type=ValueType.INT64,
    description="A geographic grid cell; every job and traffic reading falls in one.",
)
region = Entity(
    name="region",
    join_keys=[ENTITY_KEYS["region"]],
    value_type=ValueType.INT64,
    description="A dispatch region: a group of cells with its own supply and demand.",
)

ENTITIES: dict[str, Entity] = {"provider": provider, "cell": cell, "region": region}
