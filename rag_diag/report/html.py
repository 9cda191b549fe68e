"""Render :class:`~rag_diag.report.data.ReportData` to one self-contained HTML page.

Jinja2 with autoescape on: every text from a corpus, a query or a caller is escaped. Plots are SVG
data URIs, the style sheet is inline, there is no script: the page reads the same offline and without
JavaScript.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

import jinja2

from rag_diag.report import plots
from rag_diag.report.data import (
    ReportData,
    format_bytes,
    format_p_value,
    format_signed,
    format_value,
    word_diff,
)


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.PackageLoader("rag_diag.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters.update(
        value=format_value, pvalue=format_p_value, signed=format_signed, bytes=format_bytes
    )
    return environment


def _package_version() -> str:
    try:
        return version("rag-diag")
    except PackageNotFoundError:
        return "dev"


def _plots(data: ReportData) -> dict[str, str | None]:
    rates = data.finite_collapse_rates()
    return {
        "collapse": plots.collapse_histogram(rates, data.collapse_label) if len(rates) else None,
        "deciles": plots.decile_chart(data.deciles) if data.deciles else None,
        "causes": plots.cause_chart(data.causes) if data.causes else None,
        "strategies": (
            plots.strategy_chart(data.strategies)
            if any(row.ndcg_at_10 is not None for row in data.strategies)
            else None
        ),
    }


def render_html(data: ReportData) -> str:
    """The report page as a string (plots embedded, texts escaped, word differences highlighted)."""
    confusions: list[dict[str, Any]] = []
    for confusion in data.confusions:
        left, right = word_diff(confusion.relevant_text, confusion.confuser_text)
        confusions.append({"c": confusion, "left": left, "right": right})
    template = _environment().get_template("report.html.j2")
    return template.render(
        data=data,
        plots=_plots(data),
        confusions=confusions,
        collapse_count=len(data.finite_collapse_rates()),
        tables=[f"{name}.parquet" for name in data.tables],
        version=_package_version(),
    )
