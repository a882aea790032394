"""The training run end to end: warehouse window -> point-in-time features -> labels -> fit -> register.

``dispatchml train`` and the demo call ``train_from_warehouse``. Labels are attached as they
were known at ``as_of`` (default: the end of the data), so a run is reproducible later even
though labels keep arriving and being corrected.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

from cluster.config import Settings
from contracts.warehouse import manifest_path
from retrain.registry import Alias, ModelRegistry
from retrain.train import TrainingResult, register_models, train_models
from retrain.training_set import attach_labels, build_training_set, read_labels

Step = Callable[[str], None]


@dataclass
class TrainingRun:
    result: TrainingResult
    versions: dict[str, str]
    window: tuple[datetime, datetime]
    as_of: datetime
    rows: int
    seconds: dict[str, float]


def data_span(data_root: Path) -> tuple[datetime, datetime]:
    """[start, end) of the simulated or ingested history, from the warehouse manifest."""
    import json

    path = manifest_path(data_root)
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: simulate or ingest data into {data_root} first")
    manifest = json.loads(path.read_text())
    start = datetime.fromisoformat(manifest["start"]).replace(tzinfo=UTC)
    end = datetime.fromisoformat(manifest["end"]).replace(tzinfo=UTC)
    return start, end


def train_from_warehouse(
    settings: Settings,
    data_root: Path | None = None,
    *,
    as_of: datetime | None = None,
    set_alias: Alias | None = None,
    lineage: Mapping[str, Any] | None = None,
    step: Step | None = None,
) -> TrainingRun:
    """Train on the ``window_days + holdout_days`` before ``as_of`` and register the result.

    Requests of the last ``label_maturity_hours`` before ``as_of`` are left out: their slow
    arrivals are not known yet, so keeping them would bias ETA labels (and the holdout) toward
    fast arrivals. The training slice is capped at ``max_training_rows`` (whole jobs, hashed);
    the holdout is never sampled, so every segment's metrics use every matured row.
    """
    import time

    say = step or (lambda _: None)
    data_root = Path(data_root or settings.paths.data)
    span_start, span_end = data_span(data_root)
    as_of = as_of or span_end
    train = settings.train
    requests_end = as_of - timedelta(hours=train.label_maturity_hours)
    holdout_start = requests_end - timedelta(days=train.holdout_days)
    start = max(span_start, holdout_start - timedelta(days=train.window_days))
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    say(f"point-in-time training set {start:%Y-%m-%d}..{requests_end:%Y-%m-%d %H:%M}")
    fit_part = build_training_set(settings, data_root, start, holdout_start, "eta", max_rows=train.max_training_rows)
    holdout_part = build_training_set(settings, data_root, holdout_start, requests_end, "eta")
    frame = pd.concat([fit_part, holdout_part], ignore_index=True)
    frame.attrs.update(fit_part.attrs)
    seconds["training_set"] = time.perf_counter() - t

    t = time.perf_counter()
    say(f"labels known by {as_of:%Y-%m-%d %H:%M}")
    labelled = attach_labels(frame, read_labels(data_root, as_of), as_of)
    labelled.attrs.update(frame.attrs)
    seconds["labels"] = time.perf_counter() - t

    t = time.perf_counter()
    say(f"fitting ETA, acceptance and fallback on {len(labelled):,} candidate rows")
    result = train_models(labelled, settings, num_threads=train.num_threads)
    seconds["fit"] = time.perf_counter() - t

    registry = ModelRegistry(settings.paths.registry)
    versions = register_models(
        result,
        registry,
        lineage={"data_root": str(data_root), "as_of": as_of.isoformat(), **(lineage or {})},
        set_alias=set_alias,
    )
    return TrainingRun(result, versions, (start, requests_end), as_of, len(labelled), seconds)


def metrics_table(result: TrainingResult) -> pd.DataFrame:
    """Holdout metrics overall, one row per (family, metric)."""
    rows = [
        {"family": family, "metric": metric, "value": value}
        for family, values in result.metrics.items()
        for metric, value in values.items()
    ]
    return pd.DataFrame(rows)
