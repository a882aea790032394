"""Point-in-time-correct training frames for the ETA and acceptance models, and their labels.

One row per (job, candidate provider) requested in a window. Features come from Feast's
``get_historical_features`` with the model family's feature service, so every stored value is
the latest one with ``event_timestamp <= request_ts`` and no older than its group's TTL, and the
request features come from the same on-demand view serving uses. The job's coordinates are read
from ``raw/requests`` only to compute those request features and are dropped before the frame
is returned, along with every other member PII column.

Labels arrive later and get revised (a GPS arrival corrected by an operator, a late provider
response), so they are attached separately, as they were known at a chosen moment:
``attach_labels(frame, labels, as_of)``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Literal

import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds

from cluster.config import Settings
from contracts.features import model_features
from contracts.warehouse import EVENT_TIMESTAMP, MEMBER_PII_COLUMNS, TS, LabelType, feature_dir, table_dir
from retrain.job_sample import cap_rows

ModelFamily = Literal["eta", "acceptance"]

#: Identifying and segmenting columns kept in front of the features.
KEY_COLUMNS: tuple[str, ...] = (
    "job_id",
    "provider_id",
    "request_ts",
    "cell_id",
    "region_id",
    "line_of_business",
    "service_type",
    "vehicle_class",
    "provider_cohort",
)
#: Row order of every training and backtest frame.
ROW_ORDER: tuple[str, ...] = ("request_ts", "job_id", "provider_id")
#: Columns ``attach_labels`` adds.
LABEL_COLUMNS: tuple[str, ...] = ("arrival_minutes", "accepted", "label_source")

_PARTITIONING = ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive")


class TrainingSetError(RuntimeError):
    """The training frame cannot be built as asked; the message says what to fix."""


def utc_bound(moment: date | datetime) -> datetime:
    if isinstance(moment, datetime):
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return datetime.combine(moment, time.min, tzinfo=UTC)


def partition_days(start: datetime, end: datetime) -> list[str]:
    """``date=`` partition values covering ``[start, end)``."""
    last = (end - timedelta(microseconds=1)).date()
    return [(start.date() + timedelta(days=i)).isoformat() for i in range((last - start.date()).days + 1)]


def read_window_table(
    root: Path, table: str, columns: Iterable[str], start: datetime, end: datetime, ts_column: str
) -> pa.Table:
    """Rows of a date-partitioned table with ``start <= ts_column < end``, reading only their partitions."""
    directory = table_dir(root, table)
    if not directory.exists():
        raise TrainingSetError(f"{directory} does not exist; simulate or load the warehouse under {root} first")
    dataset = ds.dataset(directory, format="parquet", partitioning=_PARTITIONING)
    ts = ds.field(ts_column)
    selection = ds.field("date").isin(partition_days(start, end)) & (ts >= pa.scalar(start, type=TS)) & (ts < pa.scalar(end, type=TS))
    return dataset.to_table(columns=list(columns), filter=selection)


def read_window(
    root: Path, table: str, columns: Iterable[str], start: datetime, end: datetime, ts_column: str
) -> pd.DataFrame:
    """``read_window_table`` as a pandas frame."""
    return read_window_table(root, table, columns, start, end, ts_column).to_pandas()


def entity_frame(data_root: Path, start: date | datetime, end: date | datetime) -> pd.DataFrame:
    """Candidates requested in ``[start, end)`` with the request fields the request view needs.

    ``job_lat``/``job_lon`` (member PII) are joined from ``raw/requests`` here and nowhere else;
    ``build_training_set`` drops them again after the request features are computed.
    """
    lo, hi = utc_bound(start), utc_bound(end)
    candidates = read_window(data_root, "dispatch/candidates", KEY_COLUMNS, lo, hi, "request_ts")
    locations = read_window(data_root, "raw/requests", ("job_id", "job_lat", "job_lon"), lo, hi, "request_ts")
    frame = candidates.merge(locations.drop_duplicates("job_id"), on="job_id", how="left", validate="many_to_one")
    frame[EVENT_TIMESTAMP] = frame["request_ts"]
    return frame


def requested_entities(
    data_root: Path, start: date | datetime, end: date | datetime, max_rows: int | None = None
) -> tuple[pd.DataFrame, int]:
    """``entity_frame`` of the window, whole jobs sampled down to ``max_rows``, and its rows before sampling."""
    entities = entity_frame(data_root, start, end)
    if entities.empty:
        raise TrainingSetError(f"no candidates requested between {start} and {end} under {data_root}")
    candidate_rows = len(entities)
    if max_rows is not None:
        entities = cap_rows(entities, max_rows)
    return entities, candidate_rows


def _check_store_matches(store, family: str, data_root: Path) -> str:
    """The applied feature service for ``family``; raises if it is stale or reads another warehouse."""
    from feature_repo.feature_services import FEATURE_DEFINITION_VERSION, FEATURE_SERVICES

    service = store.get_feature_service(FEATURE_SERVICES[family])
    applied_version = service.tags.get("feature_definition_version", "")
    if applied_version != FEATURE_DEFINITION_VERSION:
        raise TrainingSetError(
            f"feature store holds definitions {applied_version or 'unknown'} but the code defines "
            f"{FEATURE_DEFINITION_VERSION}; run `dispatchml features apply`"
        )
    first_view = store.get_feature_view(service.feature_view_projections[0].name)
    expected = feature_dir(data_root.resolve(), first_view.name)
    if Path(first_view.batch_source.path) != expected:
        raise TrainingSetError(
            f"feature store sources read {Path(first_view.batch_source.path).parent.parent}, not {data_root.resolve()}; "
            "apply the feature store with paths.data set to this data root"
        )
    return service.name


def build_training_set(
    settings: Settings,
    data_root: Path,
    start: date | datetime,
    end: date | datetime,
    family: ModelFamily,
    max_rows: int | None = None,
) -> pd.DataFrame:
    """The point-in-time-correct feature frame for candidates requested in ``[start, end)``.

    Dates mean midnight UTC. Columns: ``KEY_COLUMNS`` then ``contracts.features.model_features()``;
    stored features are ``group__feature``, NaN where the group had no value within its TTL.
    ``max_rows`` caps the frame by sampling whole jobs (``retrain.job_sample.cap_rows``) before the join.
    ``frame.attrs`` records the feature service, ``feature_definition_version`` and
    ``candidate_rows`` (rows in the window before sampling).
    """
    # Feast is imported here, not at module level: workers that only read windows and labels
    # (the backtest's) would otherwise pay seconds of import for nothing.
    from cluster.feature_store import get_store
    from feature_repo.feature_services import FEATURE_DEFINITION_VERSION, FEATURE_SERVICES
    from feature_repo.request_features import request_features

    if family not in FEATURE_SERVICES:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(FEATURE_SERVICES)}")
    data_root = Path(data_root)
    store = get_store(settings)
    service_name = _check_store_matches(store, family, data_root)
    entities, candidate_rows = requested_entities(data_root, start, end, max_rows)

    joined = store.get_historical_features(
        entity_df=entities,
        features=store.get_feature_service(service_name),
        full_feature_names=True,
    ).to_df()
    if len(joined) != len(entities):
        raise TrainingSetError(
            f"the offline store returned {len(joined)} rows for {len(entities)} candidates; "
            "it must keep every entity row (use the duckdb offline store)"
        )

    prefix = f"{request_features.name}__"
    joined = joined.rename(columns={c: c[len(prefix) :] for c in joined.columns if c.startswith(prefix)})
    joined = joined.drop(columns=[c for c in MEMBER_PII_COLUMNS if c in joined.columns])
    columns = list(KEY_COLUMNS) + list(model_features())
    missing = [c for c in columns if c not in joined.columns]
    if missing:
        raise TrainingSetError(f"feature service {service_name!r} did not return {missing[:5]}; re-run apply")

    frame = joined[columns].sort_values(list(ROW_ORDER), kind="stable").reset_index(drop=True)
    frame.attrs["feature_service"] = service_name
    frame.attrs["feature_definition_version"] = FEATURE_DEFINITION_VERSION
    frame.attrs["candidate_rows"] = candidate_rows
    return frame


def read_labels(data_root: Path, as_of: datetime, known_from: date | datetime | None = None) -> pd.DataFrame:
    """Every label row known by ``as_of``. Labels are partitioned by the day they became known.

    ``known_from`` skips the partitions of labels known before it: a backtest chunk of requests
    from ``start`` on can only have labels known from ``start`` on, so it reads its own slice
    of the label history instead of all of it.
    """
    directory = table_dir(Path(data_root), "labels")
    if not directory.exists():
        raise TrainingSetError(f"{directory} does not exist; no labels have been written under {data_root}")
    as_of = utc_bound(as_of)
    dataset = ds.dataset(directory, format="parquet", partitioning=_PARTITIONING)
    known = ds.field("known_at") <= pa.scalar(as_of, type=pa.timestamp("us", tz="UTC"))
    selection = (ds.field("date") <= as_of.date().isoformat()) & known
    if known_from is not None:
        selection &= ds.field("date") >= utc_bound(known_from).date().isoformat()
    return dataset.to_table(filter=selection).to_pandas().drop(columns=["date"], errors="ignore")


def attach_labels(frame: pd.DataFrame, labels: pd.DataFrame, as_of: datetime) -> pd.DataFrame:
    """``frame`` with ``arrival_minutes``, ``accepted`` and ``label_source`` as known at ``as_of``.

    For each (job, provider, label type) the highest revision with ``known_at <= as_of`` wins
    (ties go to the later ``known_at``). Labels not yet known are NaN. ``label_source`` is the
    source of the arrival label where there is one, else of the acceptance label, so a model can
    be evaluated apart on, say, manually overridden arrivals.
    """
    clash = [c for c in LABEL_COLUMNS if c in frame.columns]
    if clash:
        raise ValueError(f"frame already has label columns {clash}; attach labels to a frame without them")
    as_of = utc_bound(as_of)
    keys = ["job_id", "provider_id"]
    known = labels[(pd.to_datetime(labels["known_at"], utc=True) <= as_of) & labels["label_type"].isin([t.value for t in LabelType])]
    latest = known.sort_values(["revision", "known_at"], kind="stable").drop_duplicates(
        keys + ["label_type"], keep="last"
    )

    out = frame.copy()
    for label_type in LabelType:
        of_type = latest[latest["label_type"] == label_type.value][keys + ["value", "source"]]
        renamed = of_type.rename(columns={"value": label_type.value, "source": f"_{label_type.value}_source"})
        out = out.merge(renamed, on=keys, how="left", validate="many_to_one")
    arrival_source = f"_{LabelType.ARRIVAL_MINUTES.value}_source"
    accepted_source = f"_{LabelType.ACCEPTED.value}_source"
    out["label_source"] = out[arrival_source].where(out[arrival_source].notna(), out[accepted_source])
    out[LabelType.ARRIVAL_MINUTES.value] = out[LabelType.ARRIVAL_MINUTES.value].astype("float64")
    out[LabelType.ACCEPTED.value] = out[LabelType.ACCEPTED.value].astype("float64")
    out = out.drop(columns=[arrival_source, accepted_source])
    out.attrs = dict(frame.attrs, labels_as_of=as_of.isoformat())
    return out
