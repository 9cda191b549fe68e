"""One report for the main job: the audit of an existing store, the pooling comparison, the diagnosis.

It takes the in-memory results of the audit (:func:`rag_diag.jobs.audit.audit_store`) and of the
pooling choice (:func:`rag_diag.jobs.choose.choose_pooling`) and renders them as one self-contained
``report.html`` plus ``summary.md``; every number comes from those two results.
"""

from __future__ import annotations

from pathlib import Path

from rag_diag.diagnosis.answer import answer
from rag_diag.jobs.audit import AuditResult
from rag_diag.jobs.choose import Choice
from rag_diag.report import ReportData, render_report
from rag_diag.report.audit import audit_report
from rag_diag.report.choose import choose_report


def merge_reports(audit: ReportData, choice: ReportData, title: str, commands: list[str]) -> ReportData:
    """The audit's findings and diagnosis, with the pooling comparison's table and recommendation."""
    labels = ("recommended", f"{choice.delta_metric} gain over mean, held out", "fixes / breaks at rank 1")
    recommended = [h for h in choice.headline if h.label in labels]
    return ReportData(
        title=title,
        headline=[*audit.headline, *recommended],
        verdict=audit.verdict,
        strategies=choice.strategies,
        delta_metric=choice.delta_metric,
        collapse_rates=audit.collapse_rates,
        collapse_label=audit.collapse_label,
        deciles=audit.deciles,
        causes=audit.causes,
        confusions=audit.confusions,
        sections=[*choice.sections, *audit.sections],
        commands=[*commands, *audit.commands, *choice.commands],
        tables={**audit.tables, **choice.tables},
    )


def write_demo_report(
    audit: AuditResult, choice: Choice, out: str | Path, title: str | None = None, commands: list[str] | None = None,
) -> tuple[Path, Path]:
    """Render ``out/report.html`` and ``out/summary.md`` from an audit and a pooling choice."""
    merged = merge_reports(audit_report(audit), choose_report(choice.recommendation, choice.summary),
                           title or "rag-diag report", list(commands or []))
    merged.answer = answer(audit.diagnosis.summary, audit.diagnosis.counterfactuals, choice.summary)
    return render_report(out, merged)
