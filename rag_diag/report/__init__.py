"""Reports: one self-contained HTML page, a Markdown summary and the parquet tables, side by side.

Fill a :class:`ReportData` (diagnose, choose-pooling and audit each contribute sections) and call
:func:`render_report`.
"""

from __future__ import annotations

from pathlib import Path

from rag_diag import atomic
from rag_diag.report.data import (
    VERDICT_LABELS,
    Confusion,
    DecileRow,
    Headline,
    ReportData,
    Section,
    StrategyRow,
    Verdict,
    word_diff,
)

HTML_NAME = "report.html"
MARKDOWN_NAME = "summary.md"


def render_report(out_dir: str | Path, sections: ReportData) -> tuple[Path, Path]:
    """Write ``report.html``, ``summary.md`` and ``<name>.parquet`` for each table into ``out_dir``.

    Every file is written atomically; other files already in ``out_dir`` (e.g. diagnose's parquet
    tables) are left in place.

    Returns:
        (path of report.html, path of summary.md).
    """
    from rag_diag.report.html import render_html
    from rag_diag.report.markdown import render_markdown

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, frame in sections.tables.items():
        atomic.write_parquet(out_dir / f"{name}.parquet", frame)
    html_path = atomic.write_text(out_dir / HTML_NAME, render_html(sections))
    md_path = atomic.write_text(out_dir / MARKDOWN_NAME, render_markdown(sections, HTML_NAME))
    return html_path, md_path


__all__ = [
    "VERDICT_LABELS",
    "Confusion",
    "DecileRow",
    "Headline",
    "ReportData",
    "Section",
    "StrategyRow",
    "Verdict",
    "render_report",
    "word_diff",
]
