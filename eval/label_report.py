"""Per-segment calibration, realized-versus-estimated scorecards and their HTML report.

Inputs are ``eval.labels.join_labels`` frames (prediction-log rows with labels as known at
``as_of``). Realized figures use only rows past each label kind's completeness watermark. The
acceptance estimates (``eval.estimation``) are given twice: for the same matured rows, so a
reader sees how well the estimator did, and for the predictions newer than the watermark, the
only figure there is for them yet. Plots are plotly (installed with Evidently), one
self-contained HTML file:

- label-maturity curves, one per label kind;
- reliability diagrams per segment (acceptance) with ECE;
- PIT histograms per segment (ETA) with interval coverage.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from eval.calibration import expected_calibration_error, pit_from_quantiles, pit_histogram, reliability_table
from eval.estimation import acceptance_estimate, realized_acceptance
from eval.html_report import write_page
from eval.labels import completeness_watermark, matured, maturity_table
from eval.metrics import interval_coverage, mae

#: The ETA model's interval is its P10-P90 (``train.interval_coverage`` 0.8); the point is the
#: L2 mean, read as the median for the PIT (a right-skewed arrival time makes this approximate).
ETA_LEVELS = (0.1, 0.5, 0.9)
#: Segments with fewer matured labelled rows than this are left out of the per-segment plots.
MIN_SEGMENT_ROWS = 50
#: Maturity curves are drawn on this age grid (seconds): every 5 minutes up to 12 hours.
MATURITY_AGES_S = np.arange(0.0, 12 * 3600.0 + 1.0, 300.0)


def eta_pit(rows: pd.DataFrame) -> np.ndarray:
    """PIT of each labelled row's arrival under the model's (low, point, high) quantiles."""
    knots = rows[["eta_low", "eta_minutes", "eta_high"]].to_numpy(np.float64)
    return pit_from_quantiles(rows["arrival_minutes"].to_numpy(np.float64), knots, np.asarray(ETA_LEVELS))


def segment_scorecard(joined: pd.DataFrame, as_of: datetime, segment: str) -> pd.DataFrame:
    """Per segment: realized metrics on matured labelled rows next to label-free estimates.

    ETA: realized MAE, interval coverage and mean PIT. Acceptance: realized Brier, acceptance
    rate and ECE, with the CBPE estimates for the same rows (what the estimator said before their
    labels came) and for the ``pending`` offered-or-not predictions newer than the watermark.
    """
    arrival_mark = completeness_watermark(joined, as_of, "arrival_minutes")
    accept_mark = completeness_watermark(joined, as_of, "accepted")
    eta_ok = joined["arrival_minutes"].notna() & matured(joined, arrival_mark)
    acc_ok = joined["accepted"].notna() & matured(joined, accept_mark)
    pending_all = ~matured(joined, accept_mark)
    rows = []
    for value, rows_of in joined.groupby(segment, sort=True):
        eta = rows_of[eta_ok.loc[rows_of.index]]
        acc = rows_of[acc_ok.loc[rows_of.index]]
        pending = rows_of[pending_all.loc[rows_of.index]]
        estimate = acceptance_estimate(acc["p_accept"].to_numpy())
        realized = realized_acceptance(acc["accepted"].to_numpy(), acc["p_accept"].to_numpy())
        rows.append(
            {
                segment: value,
                "predictions": len(rows_of),
                "eta_labelled": len(eta),
                "eta_mae": mae(eta["arrival_minutes"], eta["eta_minutes"]),
                "eta_coverage": interval_coverage(eta["arrival_minutes"], eta["eta_low"], eta["eta_high"]),
                "eta_pit_mean": float(np.mean(eta_pit(eta))) if len(eta) else float("nan"),
                "accept_labelled": len(acc),
                "accept_rate": realized["acceptance_rate"],
                "accept_rate_estimated": estimate["acceptance_rate"],
                "brier": realized["brier"],
                "brier_estimated": estimate["brier"],
                "ece": expected_calibration_error(acc["accepted"].to_numpy(), acc["p_accept"].to_numpy()),
                "pending": len(pending),
                "brier_estimated_pending": acceptance_estimate(pending["p_accept"].to_numpy())["brier"],
            }
        )
    return pd.DataFrame(rows)


def _maturity_figure(joined: pd.DataFrame, as_of: datetime) -> go.Figure:
    table = maturity_table(joined, as_of, MATURITY_AGES_S)
    figure = go.Figure()
    for kind, curve in table.groupby("label_kind"):
        figure.add_trace(go.Scatter(x=curve["age_s"] / 60.0, y=curve["share"], mode="lines", name=str(kind)))
        watermark = completeness_watermark(joined, as_of, str(kind))
        if watermark is not None:
            figure.add_vline(x=(as_of - watermark).total_seconds() / 60.0, line_dash="dot", annotation_text=f"{kind} watermark")
    figure.update_layout(title="Label maturity: share of predictions with a label, by age", xaxis_title="minutes since request", yaxis_title="share labelled")
    return figure


def _segments(frame: pd.DataFrame, segment: str) -> list[tuple[object, pd.DataFrame]]:
    return [(value, rows) for value, rows in frame.groupby(segment, sort=True) if len(rows) >= MIN_SEGMENT_ROWS]


def _reliability_figure(joined: pd.DataFrame, as_of: datetime, segment: str) -> go.Figure:
    offered = joined[joined["accepted"].notna() & matured(joined, completeness_watermark(joined, as_of, "accepted"))]
    figure = go.Figure(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line_dash="dash", name="perfect"))
    for value, rows in _segments(offered, segment):
        table = reliability_table(rows["accepted"].to_numpy(), rows["p_accept"].to_numpy())
        ece = expected_calibration_error(rows["accepted"].to_numpy(), rows["p_accept"].to_numpy())
        filled = table.count > 0
        figure.add_trace(go.Scatter(x=table.mean_predicted[filled], y=table.fraction_positive[filled], mode="lines+markers", name=f"{segment}={value} (ECE {ece:.3f})"))
    figure.update_layout(title=f"Acceptance reliability by {segment}", xaxis_title="mean predicted p_accept", yaxis_title="observed acceptance rate")
    return figure


def _pit_figure(joined: pd.DataFrame, as_of: datetime, segment: str) -> go.Figure:
    arrived = joined[joined["arrival_minutes"].notna() & matured(joined, completeness_watermark(joined, as_of, "arrival_minutes"))]
    figure = go.Figure()
    for value, rows in _segments(arrived, segment):
        edges, density = pit_histogram(eta_pit(rows))
        coverage = interval_coverage(rows["arrival_minutes"], rows["eta_low"], rows["eta_high"])
        figure.add_trace(go.Bar(x=(edges[:-1] + edges[1:]) / 2, y=density, name=f"{segment}={value} (coverage {coverage:.2f})"))
    figure.add_hline(y=1.0, line_dash="dash", annotation_text="calibrated")
    figure.update_layout(title=f"ETA PIT histogram by {segment}", xaxis_title="PIT", yaxis_title="density", barmode="group")
    return figure


def write_label_report(joined: pd.DataFrame, as_of: datetime, out: Path, segment: str = "region_id") -> Path:
    """One HTML file: maturity curves, reliability diagrams, PIT histograms and the scorecard."""
    figures = [_maturity_figure(joined, as_of), _reliability_figure(joined, as_of, segment), _pit_figure(joined, as_of, segment)]
    scorecard = segment_scorecard(joined, as_of, segment).round(4).to_html(index=False)
    title = f"Labels and calibration as of {as_of:%Y-%m-%d %H:%M} UTC"
    return write_page(out, title, [*figures, f"<h2>Scorecard by {segment}</h2>", scorecard])
