"""Which cell and region a job location falls in: O(1) arithmetic on the warehouse's cell grid.

``world/cells.parquet`` (``contracts.warehouse.CELLS``) lists a rectangular grid of equal cells
by ``row``, ``col`` and centre coordinates. The grid is regular in degrees, so a centre is
``origin + (index + 0.5) * step`` per axis; the origin and the step are recovered here from the
table (and checked to fit every centre), never taken from the simulator, so the same code
serves a real warehouse with a different grid.

Locating a point is then ``floor((lat - origin_lat) / lat_step)`` and the same for longitude,
followed by one read of a dense ``rows x cols`` array of cell ids (-1 where the grid has no
cell, as in a partial last row). Cells are half-open, ``[low edge, high edge)``: a point on a
shared edge belongs to the cell above/east of it; the grid's own far edges are inside.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

#: Cell id returned by :meth:`CellIndex.locate_many` for points outside the grid.
OUTSIDE = -1
_COLUMNS = ("cell_id", "region_id", "row", "col", "center_lat", "center_lon")
#: Centres may deviate from the fitted grid by this fraction of a cell (float32 round trips).
_FIT_TOLERANCE = 1e-4
#: A dense index larger than this many slots means the table's row/col numbers are wrong.
_MAX_SLOTS = 50_000_000


class OutsideServiceAreaError(ValueError):
    """The location is not in any cell we serve; the API answers 4xx "location outside the service area"."""

    def __init__(self) -> None:
        # No coordinates in the message: a member's location is PII.
        super().__init__("location outside the service area")


class CellGridError(ValueError):
    """The cells table does not describe a regular grid this index can invert."""


@dataclass(frozen=True)
class CellIndex:
    """A regular lat/lon grid of cells. Build with :meth:`from_parquet` or :meth:`from_table`."""

    origin_lat: float
    origin_lon: float
    lat_step: float
    lon_step: float
    #: ``cell_ids[row, col]``, OUTSIDE where the grid has no cell.
    cell_ids: np.ndarray
    #: ``region_ids[row, col]``, OUTSIDE where the grid has no cell.
    region_ids: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.cell_ids.shape[0])

    @property
    def cols(self) -> int:
        return int(self.cell_ids.shape[1])

    @classmethod
    def from_parquet(cls, path: Path | str) -> CellIndex:
        """Load ``world/cells.parquet`` (see ``contracts.warehouse.world_path(root, "cells")``)."""
        return cls.from_table(pq.read_table(path, columns=list(_COLUMNS)))

    @classmethod
    def from_table(cls, table: pa.Table) -> CellIndex:
        missing = [c for c in _COLUMNS if c not in table.column_names]
        if missing:
            raise CellGridError(f"the cells table lacks column(s) {', '.join(missing)}")
        col = {name: table.column(name).to_numpy() for name in _COLUMNS}
        row_idx, col_idx = col["row"].astype(np.int64), col["col"].astype(np.int64)
        if len(row_idx) == 0:
            raise CellGridError("the cells table is empty")
        if row_idx.min() < 0 or col_idx.min() < 0:
            raise CellGridError("cell row and col must be >= 0")
        rows, cols = int(row_idx.max()) + 1, int(col_idx.max()) + 1
        if rows * cols > _MAX_SLOTS:
            raise CellGridError(f"a {rows} x {cols} grid is too large for a dense index")
        origin_lat, lat_step = _fit_axis(row_idx, col["center_lat"].astype(np.float64), "row", "center_lat")
        origin_lon, lon_step = _fit_axis(col_idx, col["center_lon"].astype(np.float64), "col", "center_lon")

        cell_ids = np.full((rows, cols), OUTSIDE, dtype=np.int64)
        region_ids = np.full((rows, cols), OUTSIDE, dtype=np.int64)
        flat = row_idx * cols + col_idx
        if len(np.unique(flat)) != len(flat):
            raise CellGridError("two cells share a (row, col) position")
        cell_ids.ravel()[flat] = col["cell_id"]
        region_ids.ravel()[flat] = col["region_id"]
        return cls(origin_lat, origin_lon, lat_step, lon_step, cell_ids, region_ids)

    def locate_many(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(cell_ids, region_ids)`` for arrays of points; OUTSIDE (-1) where a point is in no cell."""
        r = _grid_index(np.asarray(lat, dtype=np.float64), self.origin_lat, self.lat_step, self.rows)
        c = _grid_index(np.asarray(lon, dtype=np.float64), self.origin_lon, self.lon_step, self.cols)
        inside = (r >= 0) & (c >= 0)
        r_safe, c_safe = np.where(inside, r, 0), np.where(inside, c, 0)
        cells = np.where(inside, self.cell_ids[r_safe, c_safe], OUTSIDE)
        regions = np.where(inside, self.region_ids[r_safe, c_safe], OUTSIDE)
        return cells, regions

    def locate(self, lat: float, lon: float) -> tuple[int, int]:
        """``(cell_id, region_id)`` of one point; OutsideServiceAreaError if it is in no cell."""
        cells, regions = self.locate_many(np.array([lat]), np.array([lon]))
        if cells[0] == OUTSIDE:
            raise OutsideServiceAreaError()
        return int(cells[0]), int(regions[0])


def _fit_axis(index: np.ndarray, center: np.ndarray, index_name: str, center_name: str) -> tuple[float, float]:
    """``(origin, step)`` with ``center = origin + (index + 0.5) * step``, checked against every centre.

    The step comes from the first and last index rather than a least-squares fit: on an exact
    grid (steps that are powers of two) it is then exact too, so edges fall where they should.
    """
    lo, hi = int(index.min()), int(index.max())
    if lo == hi:
        raise CellGridError(f"need cells in at least two distinct {index_name}s to infer the cell size")
    if not np.all(np.isfinite(center)):
        raise CellGridError(f"{center_name} has non-finite values")
    step = (center[index == hi].mean() - center[index == lo].mean()) / (hi - lo)
    if step == 0.0:
        raise CellGridError(f"{center_name} does not change with {index_name}")
    origin = center[index == lo].mean() - (lo + 0.5) * step
    worst = np.max(np.abs(origin + (index + 0.5) * step - center)) / abs(step)
    if worst > _FIT_TOLERANCE:
        raise CellGridError(
            f"{center_name} is not evenly spaced by {index_name} (a centre is {worst:.3g} cells off the grid)"
        )
    return float(origin), float(step)


def _grid_index(value: np.ndarray, origin: float, step: float, n: int) -> np.ndarray:
    """Cell index along one axis, -1 outside. The far edge ``origin + n * step`` maps to n - 1."""
    position = (value - origin) / step
    inside = (position >= 0.0) & (position <= n)  # False for NaN
    index = np.minimum(np.floor(np.where(inside, position, 0.0)), n - 1).astype(np.int64)
    return np.where(inside, index, -1)
