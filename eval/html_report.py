"""One self-contained HTML page from plotly figures and tables: the shape every eval report shares.

Plotly's JavaScript is embedded once, with the first figure, so a report opens offline (an
operator's laptop on the incident bridge may have no CDN) without carrying a copy per figure.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path

import plotly.graph_objects as go

#: A section of a page: a figure, or HTML already rendered (a paragraph, a heading, a table).
Section = go.Figure | str


def write_page(path: Path, title: str, sections: Sequence[Section]) -> Path:
    """Write ``sections`` in order under an ``<h1>`` of ``title``; returns ``path``."""
    parts = [f"<html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head><body>", f"<h1>{html.escape(title)}</h1>"]
    plotly_js_included = False
    for section in sections:
        if isinstance(section, go.Figure):
            parts.append(section.to_html(full_html=False, include_plotlyjs=not plotly_js_included))
            plotly_js_included = True
        else:
            parts.append(section)
    parts.append("</body></html>")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
