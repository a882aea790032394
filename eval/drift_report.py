"""Pictures of a drift scan: a heatmap over the cell map, and an Evidently report on one segment's sample.

The heatmap places each cell at its ``(row, col)`` on the warehouse's cell grid
(``world/cells.parquet``, ``contracts.warehouse.CELLS``), never at member coordinates: the scan
output has no location finer than a cell, and the map must not add one. Colour is the cell's
worst PSI over the chosen features (or one feature); cells the scan marked as drifted are
outlined, cells it skipped (too few samples) are grey, cells with no data are blank.

Evidently's ``DataDriftPreset`` is far too slow for 25K cells (see ``bench/drift_scan.py``), so
it is used where it fits: on a bounded sample of one segment a reader drills into from the map.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

#: Rows per side in the Evidently sample: its per-column tests and plots grow with the sample.
EVIDENTLY_SAMPLE_ROWS = 1_000


def cell_drift_grid(scan: pd.DataFrame, cells: pd.DataFrame, feature: str | None = None) -> dict[str, np.ndarray]:
    """Dense ``rows x cols`` arrays: worst PSI, drifted-feature count, tested flag, and the cell id.

    ``scan`` is drift-scan output with a ``cell_id`` column; rollup rows (null ``cell_id``) are
    ignored. ``cells`` needs ``cell_id``, ``row`` and ``col``.
    """
    rows = scan[scan["cell_id"].notna()]
    if feature is not None:
        rows = rows[rows["feature"] == feature]
    tested = rows[rows["q_value"].notna()]
    per_cell = pd.DataFrame({
        "psi": tested.groupby("cell_id")["psi"].max(),
        "drifted": rows.groupby("cell_id")["drift"].sum(),
        "tested": tested.groupby("cell_id").size(),
    }).reset_index()
    per_cell["cell_id"] = per_cell["cell_id"].astype(np.int64)
    grid = cells[["cell_id", "row", "col"]].merge(per_cell, on="cell_id", how="left")
    shape = (int(cells["row"].max()) + 1, int(cells["col"].max()) + 1)
    out = {name: np.full(shape, np.nan) for name in ("psi", "drifted", "tested", "cell_id")}
    r, c = grid["row"].to_numpy(int), grid["col"].to_numpy(int)
    for name in out:
        out[name][r, c] = grid[name].to_numpy(float)
    return out


def drift_heatmap(scan: pd.DataFrame, cells: pd.DataFrame, feature: str | None = None):  # -> plotly Figure
    """A plotly heatmap of :func:`cell_drift_grid` with drifted cells marked."""
    import plotly.graph_objects as go

    grid = cell_drift_grid(scan, cells, feature)
    skipped = np.where(np.isnan(grid["tested"]) & ~np.isnan(grid["drifted"]), 1.0, np.nan)
    hover = np.vectorize(lambda cell, n: "" if np.isnan(cell) else f"cell {int(cell)}, drifted features {int(n) if n == n else 0}")(
        grid["cell_id"], grid["drifted"]
    )
    fig = go.Figure()
    fig.add_trace(go.Heatmap(z=skipped, colorscale=[[0, "#cccccc"], [1, "#cccccc"]], showscale=False, hoverinfo="skip",
                             name="skipped"))
    fig.add_trace(go.Heatmap(z=grid["psi"], text=hover, hovertemplate="%{text}<br>max PSI %{z:.3f}<extra></extra>",
                             colorscale="YlOrRd", zmin=0.0, zmax=0.5, colorbar={"title": "max PSI"}))
    marked_r, marked_c = np.nonzero(np.nan_to_num(grid["drifted"]) > 0)
    fig.add_trace(go.Scatter(x=marked_c, y=marked_r, mode="markers", name="drift",
                             marker={"symbol": "square-open", "size": 9, "color": "black"}, hoverinfo="skip"))
    title = f"drift by cell: {feature}" if feature else "drift by cell: worst PSI over features"
    fig.update_layout(title=title, xaxis_title="grid column", yaxis_title="grid row", yaxis={"scaleanchor": "x"},
                      plot_bgcolor="white", width=900, height=800)
    return fig


def write_heatmap(scan_path: Path, cells_path: Path, out: Path, feature: str | None = None) -> Path:
    """Read a scan's parquet output and the cells table; write the heatmap as self-contained HTML."""
    scan = pd.read_parquet(scan_path)
    if "cell_id" not in scan.columns:
        raise ValueError("the scan has no cell_id column; run drift-scan with --segment-by ...,cell_id")
    cells = pd.read_parquet(cells_path, columns=["cell_id", "row", "col"])
    out.parent.mkdir(parents=True, exist_ok=True)
    drift_heatmap(scan, cells, feature).write_html(out, include_plotlyjs=True)
    return out


def write_segment_report(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    out: Path,
    sample_rows: int = EVIDENTLY_SAMPLE_ROWS,
    seed: int = 0,
) -> Path:
    """Evidently ``DataDriftPreset`` HTML on at most ``sample_rows`` rows per side of one segment."""
    from evidently import Report
    from evidently.presets import DataDriftPreset

    ref = reference.sample(min(sample_rows, len(reference)), random_state=seed)
    cur = current.sample(min(sample_rows, len(current)), random_state=seed)
    snapshot = Report([DataDriftPreset()]).run(current_data=cur, reference_data=ref)
    out.parent.mkdir(parents=True, exist_ok=True)
    snapshot.save_html(str(out))
    return out
