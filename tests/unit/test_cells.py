"""CellIndex: every location maps to the cell whose square contains it, and nothing else does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from contracts.warehouse import CELLS, world_path
from serve_apps.cells import OUTSIDE, CellGridError, CellIndex, OutsideServiceAreaError
from simulator.world import build_world

# Powers of two, so centres and edges are exact in floating point.
ORIGIN_LAT, ORIGIN_LON = 30.0, -100.0
LAT_STEP, LON_STEP = 0.25, 0.5
ROWS, COLS, N_CELLS = 3, 4, 10  # the last row holds only two cells, as the simulator's may


def grid_table(cols: int = COLS, n_cells: int = N_CELLS) -> pa.Table:
    cell = np.arange(n_cells)
    row, col = cell // cols, cell % cols
    return pa.Table.from_pydict(
        {
            "cell_id": cell + 100,  # ids need not be positions
            "region_id": (row >= 1).astype(np.int64) * 2 + (col >= 2),
            "row": row.astype(np.int32),
            "col": col.astype(np.int32),
            "center_lat": ORIGIN_LAT + (row + 0.5) * LAT_STEP,
            "center_lon": ORIGIN_LON + (col + 0.5) * LON_STEP,
            "urban_index": np.zeros(n_cells),
            "demand_weight": np.full(n_cells, 1.0 / n_cells),
        },
        schema=CELLS,
    )


@pytest.fixture
def index(tmp_path: Path) -> CellIndex:
    path = world_path(tmp_path, "cells")
    path.parent.mkdir(parents=True)
    pq.write_table(grid_table(), path)
    return CellIndex.from_parquet(path)


def test_grid_geometry_is_recovered_from_the_table(index: CellIndex) -> None:
    assert (index.origin_lat, index.origin_lon) == (ORIGIN_LAT, ORIGIN_LON)
    assert (index.lat_step, index.lon_step) == (LAT_STEP, LON_STEP)
    assert (index.rows, index.cols) == (ROWS, COLS)


def test_every_centre_maps_to_its_cell_and_region(index: CellIndex) -> None:
    table = grid_table().to_pydict()
    for cell, region, lat, lon in zip(
        table["cell_id"], table["region_id"], table["center_lat"], table["center_lon"], strict=True
    ):
        assert index.locate(lat, lon) == (cell, region)


def test_a_shared_edge_belongs_to_the_cell_north_and_east_of_it(index: CellIndex) -> None:
    edge_lat = ORIGIN_LAT + 1 * LAT_STEP  # between row 0 and row 1
    edge_lon = ORIGIN_LON + 2 * LON_STEP  # between col 1 and col 2
    mid_lon = ORIGIN_LON + 0.5 * LON_STEP
    mid_lat = ORIGIN_LAT + 0.5 * LAT_STEP
    assert index.locate(edge_lat, mid_lon)[0] == 100 + 1 * COLS + 0
    assert index.locate(mid_lat, edge_lon)[0] == 100 + 0 * COLS + 2
    assert index.locate(edge_lat, edge_lon)[0] == 100 + 1 * COLS + 2
    # Just below / west of the edge stays in the lower cell.
    assert index.locate(np.nextafter(edge_lat, 0.0), mid_lon)[0] == 100
    assert index.locate(mid_lat, np.nextafter(edge_lon, -1e9))[0] == 100 + 1


def test_the_grids_outer_edges_are_inside(index: CellIndex) -> None:
    assert index.locate(ORIGIN_LAT, ORIGIN_LON)[0] == 100
    far_lon = ORIGIN_LON + COLS * LON_STEP
    assert index.locate(ORIGIN_LAT + 0.5 * LAT_STEP, far_lon)[0] == 100 + COLS - 1
    # The top edge of row 2, above a cell that exists (col 1).
    assert index.locate(ORIGIN_LAT + ROWS * LAT_STEP, ORIGIN_LON + 1.5 * LON_STEP)[0] == 100 + 2 * COLS + 1


@pytest.mark.parametrize(
    ("lat", "lon"),
    [
        (ORIGIN_LAT - 1e-9, ORIGIN_LON + 0.1),  # south of the grid
        (ORIGIN_LAT + ROWS * LAT_STEP + 1e-9, ORIGIN_LON + 0.1),  # north
        (ORIGIN_LAT + 0.1, ORIGIN_LON - 1e-9),  # west
        (ORIGIN_LAT + 0.1, ORIGIN_LON + COLS * LON_STEP + 1e-9),  # east
        (ORIGIN_LAT + 2.5 * LAT_STEP, ORIGIN_LON + 3.5 * LON_STEP),  # the missing end of the last row
        (-33.9, 151.2),  # another continent
        (float("nan"), ORIGIN_LON + 0.1),
    ],
)
def test_points_in_no_cell_are_a_domain_error_without_coordinates(index: CellIndex, lat: float, lon: float) -> None:
    with pytest.raises(OutsideServiceAreaError, match="location outside the service area") as raised:
        index.locate(lat, lon)
    assert str(lon) not in str(raised.value)


def test_locate_many_agrees_with_locate_and_marks_outside(index: CellIndex) -> None:
    rng = np.random.default_rng(0)
    lat = rng.uniform(ORIGIN_LAT - 0.3, ORIGIN_LAT + ROWS * LAT_STEP + 0.3, 5_000)
    lon = rng.uniform(ORIGIN_LON - 0.6, ORIGIN_LON + COLS * LON_STEP + 0.6, 5_000)
    cells, regions = index.locate_many(lat, lon)
    for i in range(0, 5_000, 7):
        try:
            expected = index.locate(lat[i], lon[i])
        except OutsideServiceAreaError:
            expected = (OUTSIDE, OUTSIDE)
        assert (cells[i], regions[i]) == expected
    row = np.floor((lat - ORIGIN_LAT) / LAT_STEP)
    col = np.floor((lon - ORIGIN_LON) / LON_STEP)
    in_grid = (row >= 0) & (row < ROWS) & (col >= 0) & (col < COLS) & (row * COLS + col < N_CELLS)
    np.testing.assert_array_equal(cells, np.where(in_grid, 100 + row * COLS + col, OUTSIDE))


def test_jobs_jittered_within_their_cell_in_a_simulated_world_map_back_to_it() -> None:
    world = build_world(n_cells=700, n_regions=6, n_providers=10, seed=3)
    frame = world.cells_frame()
    index = CellIndex.from_table(pa.Table.from_pandas(frame, schema=CELLS, preserve_index=False))
    rng = np.random.default_rng(1)
    cell = rng.integers(0, world.n_cells, 20_000)
    # Stay a hair inside the square so float rounding at the edge cannot decide the answer.
    lat = world.cell_lat[cell] + rng.uniform(-0.499, 0.499, cell.size) * index.lat_step
    lon = world.cell_lon[cell] + rng.uniform(-0.499, 0.499, cell.size) * index.lon_step
    cells, regions = index.locate_many(lat, lon)
    np.testing.assert_array_equal(cells, cell)
    np.testing.assert_array_equal(regions, world.cell_region[cell])


def test_an_irregular_table_is_refused() -> None:
    table = grid_table()
    lat = table.column("center_lat").to_numpy().copy()
    lat[5] += 0.1 * LAT_STEP
    with pytest.raises(CellGridError, match="not evenly spaced"):
        CellIndex.from_table(table.set_column(table.schema.get_field_index("center_lat"), "center_lat", pa.array(lat)))


def test_a_single_row_gives_no_cell_height() -> None:
    with pytest.raises(CellGridError, match="two distinct rows"):
        CellIndex.from_table(grid_table(cols=4, n_cells=4))
