"""Member PII lives only in ``raw/requests``: no other table carries its columns or its values.

Monitoring and training read the PII-free tables (candidates, events, labels, features), so a
name, phone number or exact job location leaking into any of them would put raw PII into every
downstream log. The scan covers every parquet file and the manifest, by column name and by value.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from simulated_warehouse import Warehouse, scenario_of

from contracts.warehouse import MEMBER_PII_COLUMNS, manifest_path, table_dir

STRING_PII = ("member_id", "member_name", "member_phone")
FLOAT_PII = ("job_lat", "job_lon")


@pytest.fixture(scope="module", params=["baseline", "new_line_of_business"])
def warehouse(request: pytest.FixtureRequest, simulate_small: Callable[..., Warehouse]) -> Warehouse:
    """The baseline, and a scenario that rewrites request columns (its own code path)."""
    if request.param == "baseline":
        return simulate_small()
    return simulate_small(
        scenario_of(kind="new_line_of_business", start_day=1, duration=timedelta(days=1), value="rideshare", size=0.3)
    )


def test_pii_columns_exist_only_in_raw_requests(warehouse: Warehouse) -> None:
    raw = table_dir(warehouse.root, "raw/requests")
    files = sorted(warehouse.root.rglob("*.parquet"))
    assert any(raw in p.parents for p in files)
    for path in files:
        names = set(pq.read_schema(path).names)
        if raw in path.parents:
            assert set(MEMBER_PII_COLUMNS) <= names
        else:
            assert not names & set(MEMBER_PII_COLUMNS), f"{path.relative_to(warehouse.root)} has PII columns"


def test_pii_values_appear_nowhere_else(warehouse: Warehouse) -> None:
    requests = warehouse.arrow("raw/requests")
    strings = pa.chunked_array(
        [chunk for col in STRING_PII for chunk in requests.column(col).chunks], type=pa.string()
    ).unique()
    floats = pa.chunked_array([chunk for col in FLOAT_PII for chunk in requests.column(col).chunks]).unique()
    assert len(strings) > 10_000 and len(floats) > 10_000
    raw = table_dir(warehouse.root, "raw/requests")
    for path in sorted(warehouse.root.rglob("*.parquet")):
        if raw in path.parents:
            continue
        table = pq.read_table(path)
        for name in table.column_names:
            column = table.column(name)
            if pa.types.is_string(column.type):
                hits = pc.sum(pc.is_in(column, value_set=strings)).as_py()
            elif pa.types.is_floating(column.type):
                hits = pc.sum(pc.is_in(column, value_set=floats)).as_py()
            else:
                continue
            assert not hits, f"{path.relative_to(warehouse.root)}:{name} holds {hits} member PII values"
    manifest = manifest_path(warehouse.root).read_text()
    sample = requests.slice(0, 200)
    for col in (*STRING_PII, *FLOAT_PII):
        assert not any(str(v) in manifest for v in sample.column(col).to_pylist()), f"manifest mentions {col}"
