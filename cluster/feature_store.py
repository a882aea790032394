"""Operating the Feast feature store: its config, ``apply`` and ``materialize``.

The store lives in ``Settings.paths.feature_store``: ``feature_store.yaml`` (written here from the
settings), the file registry and, for the embedded setup, the SQLite online store. The
definitions themselves are the ``feature_repo`` package; their sources are the parquet warehouse
at ``Settings.paths.data``.

The offline store is Feast's DuckDB store over those parquet files, not the Dask-backed
``file`` store. Measured on this machine (2 cores), 50K candidate rows, 80K providers and 25K
cells with 3 days of history: DuckDB builds the full 241-column training frame in one
``get_historical_features`` call in about 5 s. The ``file`` store did not finish that call in
10 minutes even at a tenth of the entities, and it silently drops entity rows whose entity has
values but none inside the TTL (an off-shift provider, a traffic feed gap), which biases
training towards healthy feeds.

Materialization cost is dominated by the online write (Feast's SQLite store upserts one row per
entity *and feature*), so ``materialize`` works one feature view at a time and reads only the
window that can still be served: values older than a view's TTL at ``end`` would be expired
online anyway, and values before the view's last materialized end are already there.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml
from feast import FeatureStore
from feast.repo_contents import RepoContents
from feast.repo_operations import extract_objects_for_apply_delete

from cluster.config import Settings
from contracts.features import FEATURE_GROUPS, FeatureGroup

# Feast's modules call ``warnings.simplefilter("once", ...)`` at import, which puts their filters
# ahead of any the CLI installed earlier; these two notices (the on-demand view "experimental"
# banner and ibis' fetch_arrow_table deprecation inside the DuckDB store) are known and harmless.
warnings.filterwarnings("ignore", message="On demand feature view is an experimental feature")
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"ibis\.")

#: Definition modules in import order (each may import the ones before it). ``apply`` reloads
#: them so the sources pick up the data root of the settings being applied.
DEFINITION_MODULES: tuple[str, ...] = (
    "feature_repo.group_views",
    "feature_repo.entities",
    "feature_repo.provider_features",
    "feature_repo.cell_features",
    "feature_repo.region_features",
    "feature_repo.request_features",
    "feature_repo.feature_services",
)

REPO_CONFIG_FILE = "feature_store.yaml"
#: Feast offline store type; needs ``feast[duckdb]``.
OFFLINE_STORE = "duckdb"


class FeatureStoreNotApplied(RuntimeError):
    """The store has no registered definitions yet; ``dispatchml features apply`` creates them."""


@dataclass(frozen=True)
class ApplyResult:
    """What ``apply`` registered: object names and the definition version they carry."""

    repo_path: Path
    data_root: Path
    feature_definition_version: str
    feature_views: tuple[str, ...]
    on_demand_feature_views: tuple[str, ...]
    feature_services: tuple[str, ...]
    seconds: float


@dataclass(frozen=True)
class MaterializationStep:
    """One feature view's materialization: the interval actually read, or why it was skipped."""

    group: str
    index: int
    total: int
    start: datetime | None
    end: datetime
    seconds: float
    skipped: str | None = None


ProgressCallback = Callable[[MaterializationStep], None]


def repo_path(settings: Settings) -> Path:
    """Absolute directory of the feature store (``feature_store.yaml``, registry, SQLite)."""
    return Path(settings.paths.feature_store).resolve()


def data_root(settings: Settings) -> Path:
    return Path(settings.paths.data).resolve()


def repo_config(settings: Settings) -> dict[str, Any]:
    """The content of ``feature_store.yaml`` for these settings.

    SQLite online store next to the registry by default; Redis at
    ``features.redis_connection`` when ``features.online_store`` is ``redis``. The offline
    store is Feast's DuckDB store (see the module docstring for why not ``file``).
    """
    root = repo_path(settings)
    if settings.features.online_store == "redis":
        online: dict[str, Any] = {"type": "redis", "connection_string": settings.features.redis_connection}
    else:
        online = {"type": "sqlite", "path": str(root / "online_store.db")}
    return {
        "project": settings.features.project,
        "registry": {"registry_type": "file", "path": str(root / "registry.db")},
        "provider": "local",
        "online_store": online,
        "offline_store": {"type": OFFLINE_STORE},
        "entity_key_serialization_version": 3,
        "auth": {"type": "no_auth"},
    }


def write_repo_config(settings: Settings) -> Path:
    """Write ``feature_store.yaml`` into the feature-store directory (only if it changed)."""
    root = repo_path(settings)
    root.mkdir(parents=True, exist_ok=True)
    path = root / REPO_CONFIG_FILE
    text = yaml.safe_dump(repo_config(settings), sort_keys=False)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
    return path


def get_store(settings: Settings) -> FeatureStore:
    """A ``FeatureStore`` over the configured directory; writes ``feature_store.yaml`` first."""
    write_repo_config(settings)
    return FeatureStore(repo_path=str(repo_path(settings)))


def load_definitions(data_root_dir: Path) -> list[ModuleType]:
    """(Re)import the ``feature_repo`` modules with their sources under ``data_root_dir``."""
    from feature_repo.group_views import DATA_ROOT_ENV

    os.environ[DATA_ROOT_ENV] = str(Path(data_root_dir).resolve())
    modules = []
    for name in DEFINITION_MODULES:
        module = importlib.import_module(name)
        modules.append(importlib.reload(module))
    return modules


def _repo_contents(modules: Iterable[ModuleType]) -> RepoContents:
    """Collect the Feast objects defined at module level, the way ``feast apply`` scans a repo."""
    from feast import Entity, FeatureService, FeatureView, OnDemandFeatureView
    from feast.data_source import DataSource, PushSource

    contents = RepoContents(
        projects=[],
        data_sources=[],
        entities=[],
        feature_views=[],
        feature_services=[],
        on_demand_feature_views=[],
        stream_feature_views=[],
        label_views=[],
        permissions=[],
    )

    def add(bucket: list[Any], obj: Any) -> None:
        if not any(obj is seen for seen in bucket):
            bucket.append(obj)

    for module in modules:
        for value in vars(module).values():
            if isinstance(value, OnDemandFeatureView):
                add(contents.on_demand_feature_views, value)
            elif isinstance(value, FeatureView):
                add(contents.feature_views, value)
                add(contents.data_sources, value.batch_source)
                if value.stream_source is not None:
                    add(contents.data_sources, value.stream_source)
            elif isinstance(value, FeatureService):
                add(contents.feature_services, value)
            elif isinstance(value, Entity):
                add(contents.entities, value)
            elif isinstance(value, DataSource):
                add(contents.data_sources, value)
                if isinstance(value, PushSource) and value.batch_source is not None:
                    add(contents.data_sources, value.batch_source)
    return contents


def apply(settings: Settings) -> ApplyResult:
    """Register the ``feature_repo`` definitions and create their online tables.

    Like ``feast apply``: objects no longer defined are deleted from the registry. Sources point
    at ``Settings.paths.data``; re-apply after changing it.
    """
    started = time.perf_counter()
    store = get_store(settings)
    modules = load_definitions(data_root(settings))
    contents = _repo_contents(modules)
    to_apply, to_delete, _, _ = extract_objects_for_apply_delete(store.project, store.registry, contents)
    store.apply(to_apply, objects_to_delete=to_delete, partial=False)
    services = importlib.import_module("feature_repo.feature_services")
    return ApplyResult(
        repo_path=repo_path(settings),
        data_root=data_root(settings),
        feature_definition_version=services.FEATURE_DEFINITION_VERSION,
        feature_views=tuple(v.name for v in contents.feature_views),
        on_demand_feature_views=tuple(v.name for v in contents.on_demand_feature_views),
        feature_services=tuple(s.name for s in contents.feature_services),
        seconds=time.perf_counter() - started,
    )


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _selected_groups(groups: Sequence[str] | None) -> list[FeatureGroup]:
    if groups is None:
        return list(FEATURE_GROUPS)
    known = {g.name: g for g in FEATURE_GROUPS}
    unknown = [name for name in groups if name not in known]
    if unknown:
        raise ValueError(f"unknown feature groups {unknown}; known: {sorted(known)}")
    return [known[name] for name in groups]


def materialize(
    settings: Settings,
    start: datetime,
    end: datetime,
    groups: Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
    incremental: bool = True,
) -> list[MaterializationStep]:
    """Load the latest value per entity in ``[start, end]`` into the online store, group by group.

    Each view reads from ``max(start, end - ttl)`` (older values are expired online anyway) and,
    when ``incremental``, from no earlier than its previous materialization end. A view already
    materialized up to ``end`` is skipped. ``progress`` is called after every group.
    """
    store = get_store(settings)
    registered = {v.name: v for v in store.list_feature_views()}
    if not registered:
        raise FeatureStoreNotApplied(
            f"no feature views registered in {repo_path(settings)}; run `dispatchml features apply` first"
        )
    start, end = _utc(start), _utc(end)
    if start >= end:
        raise ValueError(f"materialization window is empty: start {start} is not before end {end}")
    selected = _selected_groups(groups)
    steps: list[MaterializationStep] = []
    for index, group in enumerate(selected, start=1):
        view = registered.get(group.name)
        if view is None:
            raise FeatureStoreNotApplied(f"feature view {group.name!r} is not registered; re-run apply")
        window_start = max(start, end - group.ttl)
        if incremental and view.most_recent_end_time is not None:
            window_start = max(window_start, _utc(view.most_recent_end_time))
        started = time.perf_counter()
        if window_start >= end:
            step = MaterializationStep(group.name, index, len(selected), None, end, 0.0, skipped="up to date")
        else:
            # Feast prints its own banner and tqdm bars; our caller reports progress per group.
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                store.materialize(window_start, end, feature_views=[group.name])
            step = MaterializationStep(group.name, index, len(selected), window_start, end, time.perf_counter() - started)
        steps.append(step)
        if progress is not None:
            progress(step)
    return steps
