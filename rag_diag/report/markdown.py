"""Render :class:`~rag_diag.report.data.ReportData` to a Markdown summary (GitHub-flavoured tables).

The summary carries the same numbers as the HTML page, without plots; confusions list the words
that differ instead of the full texts.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rag_diag.report.data import (
    Confusion,
    ReportData,
    format_bytes,
    format_p_value,
    format_signed,
    format_value,
    word_diff,
)


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else format_value(value)
    return " ".join(text.split()).replace("|", "\\|")


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; pipes and newlines in cells are escaped / folded."""
    lines = ["| " + " | ".join(_cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _strategies(data: ReportData) -> str:
    columns = ["strategy", "P@1", "MRR@10", "nDCG@10", f"Δ {data.delta_metric} vs mean", "p-value",
               "significant", "index size", "latency (ms)"]
    rows = [
        [r.strategy, r.p_at_1, r.mrr_at_10, r.ndcg_at_10, format_signed(r.delta_vs_mean),
         format_p_value(r.p_value), r.significant, format_bytes(r.index_bytes), format_value(r.latency_ms, 2)]
        for r in data.strategies
    ]
    return table(columns, rows)


def _confusion_line(confusion: Confusion) -> str:
    left, right = word_diff(confusion.relevant_text, confusion.confuser_text)
    only_relevant = "; ".join(text for kind, text in left if kind == "del") or "—"
    only_confuser = "; ".join(text for kind, text in right if kind == "ins") or "—"
    rank = "not retrieved" if confusion.relevant_rank is None else f"rank {confusion.relevant_rank}"
    return (
        f"- query `{confusion.query_id}`: relevant `{confusion.relevant_id}` ({rank}) lost to "
        f"`{confusion.confuser_id}`, SOCM "
        f"{format_value(confusion.socm)}, cosine {format_value(confusion.cos)}; only in relevant: "
        f"*{_cell(only_relevant)}*; only in confuser: *{_cell(only_confuser)}*"
    )


def render_markdown(data: ReportData, html_name: str = "report.html") -> str:
    """The Markdown summary as a string."""
    parts = [f"# {data.title}", f"Full report: [{html_name}]({html_name})."]
    if data.headline:
        parts.append("\n".join(
            f"- **{_cell(h.label)}**: {_cell(h.value)}" + (f" ({_cell(h.note)})" if h.note else "")
            for h in data.headline
        ))
    if data.verdict:
        evidence = "\n".join(f"- {line}" for line in data.verdict.evidence)
        parts.append(f"## Verdict: {data.verdict.label}\n\n{data.verdict.summary}\n\n{evidence}".rstrip())
    if data.strategies:
        parts.append("## Pooling strategies\n\n" + _strategies(data))
    if data.deciles:
        rows = [[d.decile, d.low, d.high, d.n_queries, d.n_failures, d.failure_rate] for d in data.deciles]
        parts.append("## Failure rate by collapse decile\n\n"
                     + table(["decile", "from", "to", "queries", "failures", "failure rate"], rows))
    if data.confusions:
        parts.append("## Worst confusions\n\n" + "\n".join(_confusion_line(c) for c in data.confusions))
    for section in data.sections:
        body = [section.text.strip()] if section.text.strip() else []
        if section.columns:
            body.append(table(section.columns, section.rows))
        parts.append(f"## {section.heading}\n\n" + "\n\n".join(body))
    if data.commands:
        parts.append("## Commands\n\n" + "\n".join(f"    {command}" for command in data.commands))
    if data.tables:
        parts.append("Tables: " + ", ".join(f"`{name}.parquet`" for name in data.tables) + ".")
    return "\n\n".join(parts) + "\n"
