"""One report for the main job: the audit of an existing store, the pooling comparison, the diagnosis.

It takes the in-memory results of :func:`rag_diag.audit.audit_store` and
:func:`rag_diag.choose.choose_pooling` and renders them as one self-contained ``report.html`` plus
``summary.md`` (every number comes from those two results; nothing is recomputed here).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rag_diag.audit import AuditResult, audit_report
from rag_diag.choose import Recommendation, choose_report
from rag_diag.report import Headline, ReportData, render_report


def merge_reports(audit: ReportData, choice: ReportData, title: str, commands: list[str]) -> ReportData:
    """The audit's findings and diagnosis, with the pooling comparison's table and recommendation."""
    recommended = [h for h in choice.headline if h.label in ("recommended", f"{choice.delta_metric} gain over mean")]
    return ReportData(
        title=title,
        headline=[*audit.headline, *(Headline(f"pooling {h.label}", h.value, h.note) for h in recommended)],
        verdict=audit.verdict,
        strategies=choice.strategies,
        delta_metric=choice.delta_metric,
        collapse_rates=audit.collapse_rates,
        collapse_label=audit.collapse_label,
        deciles=audit.deciles,
        confusions=audit.confusions,
        sections=[*choice.sections, *audit.sections],
        commands=[*commands, *audit.commands, *choice.commands],
        tables={**audit.tables, **choice.tables},
    )


def write_demo_report(
    audit: AuditResult,
    recommendation: Recommendation,
    out: str | Path,
    title: str | None = None,
    commands: list[str] | None = None,
) -> tuple[Path, Path]:
    """Render ``out/report.html`` and ``out/summary.md`` from an audit and a pooling recommendation."""
    if recommendation.out is None:
        raise ValueError("the recommendation was not written to a folder")
    summary: dict[str, Any] = json.loads((recommendation.out / "recommendation.json").read_text(encoding="utf-8"))
    merged = merge_reports(
        audit_report(audit),
        choose_report(recommendation, summary),
        title or "rag-diag report",
        list(commands or []),
    )
    return render_report(out, merged)
