"""``dispatchml drift-scan`` end to end on small parquet inputs: the output contract, rollup, skips, categoricals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from cluster.cli import app

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DISPATCHML = [sys.executable, "-m", "cluster.cli"]
CONTRACT = [
    "region_id", "cell_id", "feature", "n_reference", "n_current", "psi", "ks_stat", "ks_pvalue", "wasserstein_norm",
    "js_distance", "chi2_pvalue", "q_value", "drift", "reason",
]
CELLS = 12
SPARSE_CELL = 11  # 10 rows per side: below --min-samples 40
DRIFTED_CELL = 4  # eta_minutes shifted by 1 reference sd; line_of_business mix changed


def _window(rng: np.random.Generator, drift: bool) -> pd.DataFrame:
    cells = np.concatenate([np.repeat(np.arange(CELLS - 1), 300), np.full(10, SPARSE_CELL)])
    n = cells.size
    shifted = drift & (cells == DRIFTED_CELL)
    lob = np.where(shifted & (rng.uniform(size=n) < 0.6), "fleet", rng.choice(["auto", "insurer", "oem"], n))
    return pd.DataFrame({
        "region_id": cells // 4,
        "cell_id": cells,
        "eta_minutes": (rng.normal(40, 8, n) + 8 * shifted).astype(np.float32),
        "queue_depth": rng.poisson(3, n).astype(np.int64),
        "line_of_business": lob,
        "service_code": rng.integers(0, 5, n),
    })


@pytest.fixture(scope="module")
def windows(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("drift")
    rng = np.random.default_rng(21)
    reference = root / "reference"
    reference.mkdir()
    frame = _window(rng, drift=False)
    frame.iloc[: len(frame) // 2].to_parquet(reference / "part-0.parquet", index=False)
    frame.iloc[len(frame) // 2 :].to_parquet(reference / "part-1.parquet", index=False)
    _window(rng, drift=True).to_parquet(root / "current.parquet", index=False)
    return reference, root / "current.parquet"


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([*DISPATCHML, "drift-scan", *args], capture_output=True, text=True, timeout=600, env=env, cwd=root)


@pytest.fixture(scope="module")
def scan(windows: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[pd.DataFrame, str]:
    reference, current = windows
    out = tmp_path_factory.mktemp("drift-out") / "drift.parquet"
    done = _run("--reference", str(reference), "--current", str(current), "--segment-by", "region_id,cell_id",
                "--categorical", "service_code", "--out", str(out), "--fdr", "0.05", "--min-samples", "40")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return pd.read_parquet(out), done.stdout


def test_output_has_the_contract_columns_and_one_row_per_segment_and_feature(scan: tuple[pd.DataFrame, str]) -> None:
    report, _ = scan
    assert list(report.columns) == CONTRACT
    assert report["drift"].dtype == bool
    features = {"eta_minutes", "queue_depth", "line_of_business", "service_code"}
    assert set(report["feature"]) == features
    regions = CELLS // 4
    assert len(report) == (CELLS + regions + 1) * len(features)  # cells, their regions, global
    assert not report.duplicated(["region_id", "cell_id", "feature"]).any()


def test_rollup_rows_have_null_finer_columns_and_count_every_row(scan: tuple[pd.DataFrame, str]) -> None:
    report, _ = scan
    overall = report[report["region_id"].isna() & report["cell_id"].isna()]
    assert len(overall) == 4 and (overall["n_reference"] == (CELLS - 1) * 300 + 10).all()
    regional = report[report["region_id"].notna() & report["cell_id"].isna()]
    sparse_region = regional[(regional["region_id"] == SPARSE_CELL // 4) & (regional["feature"] == "eta_minutes")]
    assert int(sparse_region["n_reference"].iloc[0]) == 3 * 300 + 10  # cells 8-10 and the sparse cell 11


def test_sparse_cell_is_skipped_with_a_reason(scan: tuple[pd.DataFrame, str]) -> None:
    report, _ = scan
    sparse = report[report["cell_id"] == SPARSE_CELL]
    assert sparse["q_value"].isna().all() and not sparse["drift"].any()
    assert sparse["reason"].str.contains("too few samples").all()
    assert report["reason"].str.len().gt(0).all()


def test_injected_drift_is_found_with_numeric_and_categorical_statistics(scan: tuple[pd.DataFrame, str]) -> None:
    report, stdout = scan
    found = report[report["drift"]]
    cells = found[found["cell_id"].notna()]
    assert set(zip(cells["cell_id"], cells["feature"], strict=True)) == {(DRIFTED_CELL, "eta_minutes"), (DRIFTED_CELL, "line_of_business")}
    numeric = report[report["feature"] == "eta_minutes"]
    categorical = report[report["feature"].isin(["line_of_business", "service_code"])]
    tested = report["q_value"].notna()
    assert numeric.loc[tested, "ks_pvalue"].notna().all() and numeric["chi2_pvalue"].isna().all()
    assert categorical.loc[tested, "chi2_pvalue"].notna().all() and categorical["ks_pvalue"].isna().all()
    assert "drifted" in stdout and "eta_minutes" in stdout


def test_missing_column_is_one_clear_line(windows: tuple[Path, Path]) -> None:
    reference, current = windows
    done = CliRunner().invoke(app, ["drift-scan", "--reference", str(reference), "--current", str(current), "--segment-by", "depot_id"])
    assert done.exit_code == 1
    assert "lacks column(s) depot_id" in done.output and "Traceback" not in done.output


def test_drift_report_draws_the_scan_on_the_cell_grid(scan: tuple[pd.DataFrame, str], tmp_path: Path) -> None:
    report, _ = scan
    report.to_parquet(tmp_path / "drift.parquet")
    cells = pd.DataFrame({"cell_id": np.arange(CELLS), "row": np.arange(CELLS) // 4, "col": np.arange(CELLS) % 4})
    cells.to_parquet(tmp_path / "cells.parquet")
    done = CliRunner().invoke(app, ["drift-report", "--scan", str(tmp_path / "drift.parquet"), "--cells",
                                    str(tmp_path / "cells.parquet"), "--out", str(tmp_path / "map.html")])
    assert done.exit_code == 0, done.output
    assert (tmp_path / "map.html").stat().st_size > 0
