"""The backtest's HTML report: headline table, metrics over time per segment, calibration curves.

Plotly figures (plotly ships with Evidently) in one self-contained HTML file: plotly.js is
embedded once, so the report opens offline. Every point carries its confidence interval as an
error bar, so a dip in a small segment's week reads as the noise it may be. The report holds
only aggregates keyed by version, window and segment value (region, cohort, line of business,
hour): no job, member or provider appears in it.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import plotly.express as px
import plotly.graph_objects as go

from eval.html_report import write_page

if TYPE_CHECKING:
    from eval.backtest import BacktestResult, BacktestSpec

#: The metrics plotted over time; the parquet output has all of them.
HEADLINE_METRICS: tuple[str, ...] = (
    "eta.mae",
    "eta.interval_coverage",
    "acceptance.auc",
    "acceptance.ece",
    "ranking.top1_acceptance",
    "wait.error",
)


def metrics_over_time(metrics: pd.DataFrame, window: str, segment: str) -> go.Figure:
    """Headline metrics per window start, one line per (segment value, version), with CI error bars."""
    rows = metrics[(metrics["window"] == window) & (metrics["segment"] == segment) & metrics["metric"].isin(HEADLINE_METRICS)]
    rows = rows.assign(
        upper=rows["ci_high"] - rows["value"], lower=rows["value"] - rows["ci_low"], window_start=pd.to_datetime(rows["window_start"])
    ).sort_values("window_start")
    figure = px.line(
        rows, x="window_start", y="value", color="segment_value", line_dash="version", facet_row="metric",
        error_y="upper", error_y_minus="lower", markers=True, hover_data=["n", "ci_low", "ci_high"],
        category_orders={"metric": list(HEADLINE_METRICS)}, height=220 * len(HEADLINE_METRICS),
        title=f"metrics per {window}, by {segment}",
    )
    figure.update_yaxes(matches=None)
    figure.for_each_annotation(lambda a: a.update(text=a.text.split("=")[-1]))
    return figure


def calibration_figure(calibration: pd.DataFrame, segment: str) -> go.Figure:
    """Reliability diagram over the whole backtest: observed acceptance rate vs mean predicted, per bin."""
    rows = calibration[calibration["segment"] == segment].sort_values("bin")
    figure = px.line(
        rows, x="mean_predicted", y="fraction_positive", color="segment_value", line_dash="version", markers=True,
        hover_data=["count"], title=f"acceptance calibration by {segment}", height=450,
    )
    figure.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", line={"color": "grey", "dash": "dot"}, name="perfect"))
    figure.update_xaxes(range=[0, 1], title="mean predicted P(accept)")
    figure.update_yaxes(range=[0, 1], title="observed acceptance rate")
    return figure


def headline_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """Overall metric per version over the whole span: the ``all`` segment, rows summed over months."""
    overall = metrics[(metrics["window"] == "month") & (metrics["segment"] == "all")]
    return overall.pivot_table(index="metric", columns="version", values="value", aggfunc="mean")


def write_report(result: BacktestResult, spec: BacktestSpec, path: Path) -> Path:
    """Write the report to ``path``; returns it."""
    summary = (
        f"<p>Requests {spec.start:%Y-%m-%d %H:%M} to {spec.end:%Y-%m-%d %H:%M} UTC, labels known by "
        f"{spec.as_of:%Y-%m-%d %H:%M} UTC; {result.scored_rows:,} candidate rows per version; "
        f"versions {html.escape(', '.join(f'{ref} = {v}' for ref, v in result.versions.items()))}. "
        "Intervals are 95 % (see <code>eval/confidence.py</code>).</p>"
    )
    figures = [metrics_over_time(result.metrics, w, s) for w in spec.windows for s in ("all", *spec.segments)]
    figures += [calibration_figure(result.calibration, s) for s in ("all", *spec.segments)]
    headline = headline_table(result.metrics).to_html(float_format=lambda x: f"{x:.4f}")
    return write_page(path, "Backtest", [summary, "<h2>Mean of monthly values, all segments</h2>", headline, *figures])
