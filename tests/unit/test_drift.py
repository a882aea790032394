"""Drift kernels equal scipy's on the same inputs; the scan's decisions control the FDR and find real shifts."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from scipy import stats
from scipy.spatial.distance import jensenshannon

from eval import drift
from eval.drift_scan import DriftScanSpec, RollupLevel, finish_scan, scan_features

TOL = 1e-9


def _pairs(seed: int, count: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Continuous, heavily tied and mixed-dtype sample pairs of sizes 2..600 (exact and tied KS paths)."""
    rng = np.random.default_rng(seed)
    pairs = []
    for i in range(count):
        n1, n2 = (int(x) for x in rng.integers(2, 600, 2))
        dtype = np.float32 if i % 2 else np.float64
        if i % 3 == 0:
            ref, cur = rng.integers(0, 5, n1), rng.integers(0, 6, n2)
        elif i % 3 == 1:
            ref, cur = rng.standard_normal(n1), rng.standard_normal(n2) * 1.3 + 0.2
        else:
            ref, cur = np.round(rng.exponential(2.0, n1), 1), np.round(rng.exponential(2.3, n2), 1)
        pairs.append((ref.astype(dtype), cur.astype(dtype)))
    return pairs


@pytest.mark.parametrize("ref,cur", _pairs(seed=11, count=60))
def test_ks_and_wasserstein_equal_scipy(ref: np.ndarray, cur: np.ndarray) -> None:
    d, p = drift.ks_2samp(ref, cur)
    expected = stats.ks_2samp(ref, cur)
    assert d == pytest.approx(expected.statistic, abs=TOL)
    assert p == pytest.approx(expected.pvalue, abs=TOL)
    w = stats.wasserstein_distance(ref, cur) / np.std(ref.astype(np.float64))
    assert drift.wasserstein_norm(ref, cur) == pytest.approx(w, abs=TOL, rel=TOL)


def test_ks_pvalue_uses_scipys_asymptotic_branch_above_10000_values() -> None:
    rng = np.random.default_rng(3)
    ref, cur = rng.standard_normal(12_000).astype(np.float32), (rng.standard_normal(9_000) + 0.03).astype(np.float32)
    expected = stats.ks_2samp(ref, cur)
    assert drift.ks_2samp(ref, cur) == pytest.approx((expected.statistic, expected.pvalue), abs=TOL)


def _psi_by_hand(ref: np.ndarray, cur: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    edges = np.quantile(ref.astype(np.float64), np.arange(1, 10) / 10)
    bins_ref = np.bincount(np.searchsorted(edges, ref, side="left"), minlength=10)
    bins_cur = np.bincount(np.searchsorted(edges, cur, side="left"), minlength=10)
    r = np.where(bins_ref == 0, drift.PSI_EPSILON, bins_ref / ref.size)
    c = np.where(bins_cur == 0, drift.PSI_EPSILON, bins_cur / cur.size)
    return float(np.sum((c - r) * np.log(c / r))), bins_ref, bins_cur


@pytest.mark.parametrize("ref,cur", _pairs(seed=12, count=30))
def test_psi_and_js_over_reference_deciles(ref: np.ndarray, cur: np.ndarray) -> None:
    expected_psi, bins_ref, bins_cur = _psi_by_hand(ref, cur)
    assert drift.psi(ref, cur) == pytest.approx(expected_psi, abs=TOL, rel=TOL)
    assert drift.js_distance(ref, cur) == pytest.approx(jensenshannon(bins_ref, bins_cur), abs=TOL)


def test_segmented_kernel_equals_scipy_per_segment() -> None:
    rng = np.random.default_rng(5)
    n_segments = 40
    ref_seg = rng.integers(0, n_segments, 6000)
    cur_seg = rng.integers(0, n_segments, 5000)
    ref = np.round(rng.standard_normal(ref_seg.size), 2).astype(np.float32)
    cur = np.round(rng.standard_normal(cur_seg.size) + 0.05 * cur_seg, 2).astype(np.float32)
    ref[::97] = np.nan  # missing values are dropped, not compared
    result = drift.numeric_drift_by_segment(ref, ref_seg, cur, cur_seg, n_segments)
    for s in range(n_segments):
        a, b = ref[(ref_seg == s) & np.isfinite(ref)], cur[cur_seg == s]
        ks = stats.ks_2samp(a, b)
        assert (result.n_reference[s], result.n_current[s]) == (a.size, b.size)
        assert result.ks_stat[s] == pytest.approx(ks.statistic, abs=TOL)
        assert result.ks_pvalue[s] == pytest.approx(ks.pvalue, abs=TOL)
        assert result.wasserstein_norm[s] == pytest.approx(stats.wasserstein_distance(a, b) / np.std(a.astype(float)), abs=TOL)
        assert result.psi[s] == pytest.approx(_psi_by_hand(a, b)[0], abs=TOL, rel=TOL)


def test_empty_segment_has_nan_statistics() -> None:
    result = drift.numeric_drift_by_segment(np.ones(5, np.float32), np.zeros(5, int), np.ones(3, np.float32), np.zeros(3, int), 2)
    assert np.isnan(result.ks_pvalue[1]) and np.isnan(result.psi[1]) and result.n_reference[1] == 0


def test_chi2_equals_scipy_contingency() -> None:
    rng = np.random.default_rng(8)
    for _ in range(20):
        ref = rng.choice(["auto", "insurer", "oem", "fleet"], int(rng.integers(20, 300)), p=[0.5, 0.3, 0.15, 0.05])
        cur = rng.choice(["auto", "insurer", "oem", "fleet"], int(rng.integers(20, 300)), p=[0.4, 0.35, 0.2, 0.05])
        cats = np.union1d(ref, cur)
        table = np.array([[np.sum(ref == c) for c in cats], [np.sum(cur == c) for c in cats]])
        expected = stats.chi2_contingency(table, correction=False).pvalue
        assert drift.chi2_pvalue(ref, cur) == pytest.approx(expected, abs=TOL)
    assert drift.chi2_pvalue(np.array(["a"] * 5), np.array(["a"] * 7)) == 1.0


def test_bh_equals_scipy_and_skips_untested() -> None:
    rng = np.random.default_rng(9)
    p = rng.uniform(size=500) ** 3
    np.testing.assert_allclose(drift.bh_qvalues(p), stats.false_discovery_control(p, method="bh"), atol=TOL)
    with_gaps = p.copy()
    with_gaps[::5] = np.nan
    q = drift.bh_qvalues(with_gaps)
    assert np.isnan(q[::5]).all()
    tested = ~np.isnan(with_gaps)
    np.testing.assert_allclose(q[tested], stats.false_discovery_control(with_gaps[tested]), atol=TOL)


def test_effect_gate_ignores_significant_but_negligible_shift() -> None:
    """A 0.03-sd shift over 200K rows is 'significant' but not drift; a 0.3-sd shift is."""
    rng = np.random.default_rng(10)
    ref = rng.standard_normal(200_000).astype(np.float32)
    for shift, expected in ((0.03, False), (0.3, True)):
        cur = (rng.standard_normal(200_000) + shift).astype(np.float32)
        result = drift.numeric_drift_by_segment(ref, np.zeros(ref.size, int), cur, np.zeros(cur.size, int), 1)
        assert result.ks_pvalue[0] < 1e-6
        decision = drift.drift_decision(result.ks_pvalue, result.psi, result.psi_bias, result.wasserstein_norm, 0.05)
        assert bool(decision[0]) is expected


def test_psi_null_bias_matches_simulated_small_segments() -> None:
    """With no drift, mean PSI at 100 + 100 rows is near (B - 1)(1/n + 1/n) = 0.18, far above 0."""
    rng = np.random.default_rng(12)
    segments = 2000
    ref = rng.standard_normal(segments * 100).astype(np.float32)
    cur = rng.standard_normal(segments * 100).astype(np.float32)
    seg = np.repeat(np.arange(segments), 100)
    result = drift.numeric_drift_by_segment(ref, seg, cur, seg, segments)
    assert result.psi.mean() == pytest.approx(result.psi_bias[0], rel=0.2)


SHIFT_SD = 0.5  # injected mean shift, in reference standard deviations
ROWS_PER_SEGMENT = 200


def _scan(seed: int, segments: int, drifted: int) -> pd.DataFrame:
    """One three-feature scan over ``segments`` cells; feature ``eta_p50`` shifts by SHIFT_SD in the first ``drifted``."""
    rng = np.random.default_rng(seed)
    n = segments * ROWS_PER_SEGMENT
    cells = np.repeat(np.arange(segments), ROWS_PER_SEGMENT)
    shift = np.where(cells < drifted, SHIFT_SD, 0.0)
    reference = pa.table({
        "eta_p50": rng.standard_normal(n).astype(np.float32),
        "speed": rng.gamma(2.0, 10.0, n).astype(np.float32),
        "lob": rng.choice(["auto", "insurer", "oem"], n),
    })
    current = pa.table({
        "eta_p50": (rng.standard_normal(n) + shift).astype(np.float32),
        "speed": rng.gamma(2.0, 10.0, n).astype(np.float32),
        "lob": rng.choice(["auto", "insurer", "oem"], n),
    })
    level = RollupLevel(("cell_id",), pd.DataFrame({"cell_id": np.arange(segments)}), cells, cells)
    spec = DriftScanSpec(reference=None, current=None, segment_by=("cell_id",), fdr=0.05)  # type: ignore[arg-type]
    raw = scan_features(reference, current, {"lob"}, [level])
    return finish_scan(raw, [level], spec).to_pandas()


def test_scan_false_discovery_rate_stays_under_fdr() -> None:
    """40 scans of 100 cells x 3 features, 25 cells shifted: the mean false discovery proportion is under 0.05.

    BH bounds the FDR by (m0 / m) * 0.05 = 0.046 here; 40 replicates put the Monte Carlo standard
    error near 0.005.
    """
    proportions = []
    for seed in range(40):
        report = _scan(seed, segments=100, drifted=25)
        found = report[report["drift"]]
        false = found[~((found["feature"] == "eta_p50") & (found["cell_id"] < 25))]
        proportions.append(len(false) / max(len(found), 1))
    assert np.mean(proportions) <= 0.05


def test_scan_with_no_drift_flags_nothing_and_finds_injected_shifts() -> None:
    null = _scan(100, segments=300, drifted=0)
    assert not null["drift"].any()
    assert null["q_value"].between(0, 1).all()
    shifted = _scan(101, segments=100, drifted=20)
    hits = shifted[(shifted["feature"] == "eta_p50") & (shifted["cell_id"] < 20)]
    assert hits["drift"].mean() >= 0.9, f"a {SHIFT_SD}-sd shift at {ROWS_PER_SEGMENT} rows per side is found"


def test_asymptotic_method_equals_scipy_asymp() -> None:
    rng = np.random.default_rng(4)
    ref, cur = rng.standard_normal(300), rng.standard_normal(250) + 0.1
    result = drift.numeric_drift_by_segment(ref, np.zeros(300, int), cur, np.zeros(250, int), 1, ks_method="asymp")
    assert result.ks_pvalue[0] == pytest.approx(stats.ks_2samp(ref, cur, method="asymp").pvalue, abs=TOL)


def test_heatmap_grid_places_cells_on_the_cell_grid(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from eval.drift_report import cell_drift_grid, write_heatmap

    cells = pd.DataFrame({"cell_id": np.arange(6), "row": np.arange(6) // 3, "col": np.arange(6) % 3})
    scan = pd.DataFrame({
        "cell_id": pd.array([0, 0, 4, 5, None], dtype="Int64"),
        "feature": ["a", "b", "a", "a", "a"],
        "psi": [0.05, 0.6, 0.2, np.nan, 0.01],
        "q_value": [0.5, 0.001, 0.2, np.nan, 0.3],
        "drift": [False, True, False, False, False],
    })
    grid = cell_drift_grid(scan, cells)
    assert grid["psi"][0, 0] == 0.6 and grid["drifted"][0, 0] == 1  # cell 0 at row 0, col 0
    assert grid["psi"][1, 1] == 0.2  # cell 4 at row 1, col 1; the rollup row (null cell) is ignored
    assert np.isnan(grid["tested"][1, 2]) and grid["drifted"][1, 2] == 0  # cell 5 skipped
    assert np.isnan(grid["psi"][0, 1])  # cell 1: no data
    scan.to_parquet(tmp_path / "scan.parquet")
    cells.to_parquet(tmp_path / "cells.parquet")
    out = write_heatmap(tmp_path / "scan.parquet", tmp_path / "cells.parquet", tmp_path / "heatmap.html")
    assert "drift by cell" in out.read_text()


def test_rollup_levels_equal_each_level_computed_alone() -> None:
    """One value sort shared by every level gives what each level's own computation gives (and scipy's)."""
    rng = np.random.default_rng(13)
    cells, regions = 30, 4
    region_of_cell = rng.integers(0, regions, cells)
    ref_cell, cur_cell = rng.integers(0, cells, 4000), rng.integers(0, cells, 3000)
    for dtype in (np.float32, np.float64):
        ref = np.round(rng.standard_normal(ref_cell.size), 2).astype(dtype)
        cur = np.round(rng.standard_normal(cur_cell.size) + 0.1 * (cur_cell % 3), 2).astype(dtype)
        ref[::53] = np.nan
        rollups = [(region_of_cell, regions), (np.zeros(cells, np.int64), 1)]
        by_cell, by_region, overall = drift.numeric_drift_by_rollup(ref, ref_cell, cur, cur_cell, cells, rollups)
        alone = [
            drift.numeric_drift_by_segment(ref, ref_cell, cur, cur_cell, cells),
            drift.numeric_drift_by_segment(ref, region_of_cell[ref_cell], cur, region_of_cell[cur_cell], regions),
            drift.numeric_drift_by_segment(ref, np.zeros(ref.size, int), cur, np.zeros(cur.size, int), 1),
        ]
        for rolled, single in zip((by_cell, by_region, overall), alone, strict=True):
            for name in ("n_reference", "n_current", "psi", "ks_stat", "ks_pvalue", "wasserstein_norm", "js_distance"):
                np.testing.assert_array_equal(getattr(rolled, name), getattr(single, name))
        a, b = ref[np.isfinite(ref) & (region_of_cell[ref_cell] == 2)], cur[region_of_cell[cur_cell] == 2]
        assert by_region.ks_pvalue[2] == pytest.approx(stats.ks_2samp(a, b).pvalue, abs=TOL)
        assert by_region.psi[2] == pytest.approx(_psi_by_hand(a, b)[0], abs=TOL, rel=TOL)
