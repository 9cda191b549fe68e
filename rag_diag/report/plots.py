"""Report plots as self-contained SVG data URIs (matplotlib, no pyplot state, no fonts needed).

Each plot is returned as ``data:image/svg+xml;base64,…`` for an ``<img>``: isolated from the page
(no clashing element ids between plots), no network fetch, no JavaScript. Text is drawn as paths
(``svg.fonttype = "path"``), and the hash salt and date are fixed so equal inputs give equal bytes.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from rag_diag.report.data import CauseRow, DecileRow, StrategyRow

ACCENT = "#3b6ea5"
WARN = "#c0392b"
_RC: Any = {"svg.fonttype": "path", "svg.hashsalt": "rag-diag", "font.size": 10}


def _to_data_uri(figure: Figure) -> str:
    buffer = io.BytesIO()
    with matplotlib.rc_context(_RC):
        figure.savefig(buffer, format="svg", metadata={"Date": None}, bbox_inches="tight")
    return "data:image/svg+xml;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _figure(width: float = 6.4, height: float = 3.2) -> tuple[Figure, Axes]:
    with matplotlib.rc_context(_RC):
        figure = Figure(figsize=(width, height))
        axes = figure.subplots()
    axes.spines[["top", "right"]].set_visible(False)
    return figure, axes


def collapse_histogram(values: np.ndarray, label: str) -> str:
    """Histogram of per-document collapse rates with the median and 75th percentile marked."""
    figure, axes = _figure()
    bins = min(40, max(5, int(np.sqrt(len(values)))))
    axes.hist(values, bins=bins, color=ACCENT, edgecolor="white")
    for quantile, style in ((0.5, "--"), (0.75, ":")):
        position = float(np.quantile(values, quantile))
        axes.axvline(position, color=WARN, linestyle=style, label=f"p{int(quantile * 100)} = {position:.3f}")
    axes.set_xlabel(label)
    axes.set_ylabel("documents")
    axes.legend(frameon=False)
    return _to_data_uri(figure)


def decile_chart(rows: Sequence[DecileRow]) -> str:
    """Bar chart: failure rate per collapse-rate decile of the relevant document, n above each bar."""
    figure, axes = _figure()
    positions = np.arange(len(rows))
    rates = [row.failure_rate for row in rows]
    bars = axes.bar(positions, rates, color=ACCENT)
    for bar, row in zip(bars, rows, strict=True):
        axes.annotate(
            f"{row.n_failures}/{row.n_queries}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center", va="bottom", fontsize=8,
        )
    axes.set_xticks(positions, [f"D{row.decile}\n≤{row.high:.2f}" for row in rows], fontsize=8)
    axes.set_ylim(0, max(1.0, max(rates, default=0.0)) * 1.1)
    axes.set_xlabel("collapse-rate decile of the relevant document (upper edge)")
    axes.set_ylabel("failure rate (P@1 = 0)")
    return _to_data_uri(figure)


def cause_chart(rows: Sequence[CauseRow]) -> str:
    """Horizontal bars: failures per primary cause, in precedence order (first on top)."""
    figure, axes = _figure(height=0.35 * max(len(rows), 3) + 0.8)
    positions = np.arange(len(rows))[::-1]
    counts = [row.n_failures for row in rows]
    axes.barh(positions, counts, color=ACCENT)
    for position, row in zip(positions, rows, strict=True):
        axes.annotate(f"{row.n_failures} ({row.share:.0%})", (row.n_failures, position), va="center",
                      xytext=(3, 0), textcoords="offset points", fontsize=8)
    axes.set_yticks(positions, [row.cause for row in rows], fontsize=9)
    axes.set_xlim(0, max(max(counts, default=0), 1) * 1.2)
    axes.set_xlabel("failed queries (one primary cause each)")
    return _to_data_uri(figure)


def strategy_chart(rows: Sequence[StrategyRow]) -> str:
    """Horizontal bars of nDCG@10 per strategy (strategies without the metric are left out)."""
    measured = [row for row in rows if row.ndcg_at_10 is not None]
    figure, axes = _figure(height=max(1.6, 0.35 * len(measured) + 0.8))
    positions = np.arange(len(measured))
    colours = [WARN if row.strategy == "mean" else ACCENT for row in measured]
    axes.barh(positions, np.array([row.ndcg_at_10 for row in measured], dtype=np.float64), color=colours)
    axes.set_yticks(positions, [row.strategy for row in measured])
    axes.invert_yaxis()
    axes.set_xlim(0, 1)
    axes.set_xlabel("nDCG@10")
    return _to_data_uri(figure)
