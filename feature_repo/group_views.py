"""How a catalogue feature group becomes Feast objects.

Every group is one feature view named after the group, so ``full_feature_names`` retrieval gives
``group__feature`` columns, exactly ``contracts.features.model_features()``. Its offline history
is the warehouse directory ``features/<group>/`` (Hive partitions ``date=YYYY-MM-DD``) under the
data root. Near-real-time groups are fed through a push source whose batch source is that same
directory: the upstream feed writes history to the warehouse and pushes the fresh value online.
Push with ``PushMode.ONLINE`` only: the warehouse partitions are written by the upstream
pipeline, never by Feast.
"""

from __future__ import annotations

import os
from pathlib import Path

from feast import FeatureView, Field, FileSource, PushSource
from feast.data_format import ParquetFormat
from feast.types import Float64, Int64

from contracts.features import FeatureGroup
from contracts.warehouse import CREATED_TIMESTAMP, EVENT_TIMESTAMP, feature_dir
from feature_repo.entities import ENTITIES

#: Environment variable naming the warehouse root the sources read. Set by ``cluster.feature_store``.
DATA_ROOT_ENV = "DISPATCHML_DATA_ROOT"
DEFAULT_DATA_ROOT = "var/data"


def data_root() -> Path:
    """The warehouse root, absolute, from ``$DISPATCHML_DATA_ROOT`` or ``var/data`` under the cwd."""
    return Path(os.environ.get(DATA_ROOT_ENV) or DEFAULT_DATA_ROOT).resolve()


def warehouse_source(group: FeatureGroup) -> FileSource:
    """The group's offline history: every partition of ``features/<group>/`` under the data root."""
    return FileSource(
        name=f"{group.name}_source",
        path=str(feature_dir(data_root(), group.name)),
        file_format=ParquetFormat(),
        timestamp_field=EVENT_TIMESTAMP,
        created_timestamp_column=CREATED_TIMESTAMP,
        description=f"Warehouse history of {group.name} ({group.cadence}).",
    )


def _schema(group: FeatureGroup) -> list[Field]:
    key = Field(name=group.join_key, dtype=Int64)
    return [key] + [Field(name=f, dtype=Float64) for f in group.features]


def _tags(group: FeatureGroup) -> dict[str, str]:
    return {
        "cadence": group.cadence,
        "freshness_limit_s": str(int(group.freshness_limit.total_seconds())),
    }


def batch_view(group: FeatureGroup) -> FeatureView:
    """A daily batch group: a feature view straight over its warehouse directory."""
    return FeatureView(
        name=group.name,
        entities=[ENTITIES[group.entity]],
        ttl=group.ttl,
        schema=_schema(group),
        source=warehouse_source(group),
        online=True,
        description=group.description,
        tags=_tags(group),
    )


def push_view(group: FeatureGroup) -> tuple[PushSource, FeatureView]:
    """A near-real-time group: a push source (history in the warehouse) and its feature view."""
    push = PushSource(
        name=f"{group.name}_push",
        batch_source=warehouse_source(group),
        description=f"Fresh {group.name} values pushed by the upstream feed.",
    )
    view = FeatureView(
        name=group.name,
        entities=[ENTITIES[group.entity]],
        ttl=group.ttl,
        schema=_schema(group),
        source=push,
        online=True,
        description=group.description,
        tags=_tags(group),
    )
    return push, view
