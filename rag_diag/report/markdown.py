"""Render :class:`~rag_diag.report.data.ReportData` to a Markdown summary (GitHub-flavoured tables).

The summary carries the same numbers as the HTML page, without plots; confusions list the words
that differ instead of the full texts.

Text that comes from data (ids, document words, titles, table cells) goes through
:func:`escape_markdown` or :func:`code_span`, so a document containing ``|``, ``*``, ``<script>`` or a
newline cannot break a table, start emphasis, inject HTML or links into the summary.
"""

from __future__ import annotations

import re
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

_SPECIAL = re.compile(r"([\\`*_\[\]<>|])")


def escape_markdown(text: str) -> str:
    """``text`` as literal inline Markdown: one line, with every character that Markdown would interpret escaped.

    Backslashes, backticks, ``*``, ``_``, brackets, angle brackets and pipes get a backslash (GitHub
    renders them as themselves, and a pipe no longer splits a table cell); newlines and other runs of
    whitespace fold to one space, so a cell or list item stays on its line.
    """
    return _SPECIAL.sub(r"\\\1", " ".join(text.split()))


def code_span(text: str) -> str:
    """``text`` as an inline code span, on one line, whatever backticks it contains.

    Backslashes do not escape inside code spans, so the fence is one backtick longer than the longest
    run of backticks in ``text`` (padded with spaces when ``text`` starts or ends with one).
    """
    text = " ".join(text.split())
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * (longest + 1)
    padded = f" {text} " if text.startswith("`") or text.endswith("`") else text
    return f"{fence}{padded}{fence}"


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else format_value(value)
    return escape_markdown(text)


def table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A Markdown table; cells are escaped with :func:`escape_markdown` (pipes, markup, newlines folded)."""
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
        f"- query {code_span(confusion.query_id)}: relevant {code_span(confusion.relevant_id)} ({rank}) lost to "
        f"{code_span(confusion.confuser_id)}, SOCM "
        f"{format_value(confusion.socm)}, cosine {format_value(confusion.cos)}; only in relevant: "
        f"*{_cell(only_relevant)}*; only in confuser: *{_cell(only_confuser)}*"
    )


def render_markdown(data: ReportData, html_name: str = "report.html") -> str:
    """The Markdown summary as a string."""
    parts = [f"# {escape_markdown(data.title)}", f"Full report: [{html_name}]({html_name})."]
    if data.answer:
        parts.append("## The answer\n\n" + "\n\n".join(escape_markdown(p) for p in data.answer.split("\n\n")))
    if data.headline:
        parts.append("\n".join(
            f"- **{_cell(h.label)}**: {_cell(h.value)}" + (f" ({_cell(h.note)})" if h.note else "")
            for h in data.headline
        ))
    if data.verdict:
        evidence = "\n".join(f"- {line}" for line in data.verdict.evidence)
        parts.append(f"## Verdict: {data.verdict.label}\n\n{data.verdict.summary}\n\n{evidence}".rstrip())
    if data.causes:
        causes: list[list[object]] = [
            [c.cause, c.n_failures, c.share, c.advice] if c.not_checked is None
            else [c.cause, "not checked", "—", f"not checked: {c.not_checked}"] for c in data.causes]
        parts.append("## Why queries fail (one primary cause per failure)\n\n"
                     + table(["cause", "failures", "share", "what to do"], causes))
    if data.strategies:
        parts.append("## Retrieval strategies compared\n\n" + _strategies(data))
    if data.deciles:
        rows = [[d.decile, d.low, d.high, d.n_queries, d.n_failures, d.failure_rate] for d in data.deciles]
        parts.append("## Failure rate by collapse decile\n\n"
                     + table(["decile", "from", "to", "queries", "failures", "failure rate"], rows))
    if data.confusions:
        parts.append("## Worst confusions\n\n" + "\n".join(_confusion_line(c) for c in data.confusions))
    for section in data.sections:
        paragraphs = [escape_markdown(p) for p in re.split(r"\n\s*\n", section.text.strip()) if p.strip()]
        body = ["\n\n".join(paragraphs)] if paragraphs else []
        if section.columns:
            body.append(table(section.columns, section.rows))
        parts.append(f"## {escape_markdown(section.heading)}\n\n" + "\n\n".join(body))
    if data.commands:
        parts.append("## Commands\n\n" + "\n".join(f"    {command}" for command in data.commands))
    if data.tables:
        parts.append("Tables: " + ", ".join(code_span(f"{name}.parquet") for name in data.tables) + ".")
    return "\n\n".join(parts) + "\n"
