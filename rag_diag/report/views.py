"""Report views: turn artefact objects (diagnosis, evaluation metrics) into :class:`ReportData` sections.

The domain packages return data and never import this package; jobs and the CLI call these views
and then :func:`rag_diag.report.render_report`.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from rag_diag.report.data import CauseRow, Confusion, DecileRow, Headline, ReportData, Section, StrategyRow, Verdict

WORST_CONFUSIONS = 10
"""Failures shown side by side in the report: those whose confuser is closest in mean (highest cosine)."""


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def strategy_rows(metrics: dict[str, Any], delta_metric: str = "nDCG@10") -> list[StrategyRow]:
    """Comparison rows from an evaluation manifest (Δ and corrected p-value on ``delta_metric`` vs mean)."""
    table = metrics.get("metrics") or {}
    baseline = (table.get("mean") or {}).get(delta_metric)
    rows = []
    for name, values in table.items():
        test = ((metrics.get("significance") or {}).get(name) or {}).get(delta_metric) or {}
        value = values.get(delta_metric)
        rows.append(StrategyRow(
            strategy=name, p_at_1=values.get("P@1"), mrr_at_10=values.get("MRR@10"),
            ndcg_at_10=values.get("nDCG@10"),
            delta_vs_mean=None if baseline is None or value is None else value - baseline,
            p_value=test.get("corrected_p_value", test.get("p_value")), significant=test.get("significant"),
        ))
    return rows


def diagnosis_headline(summary: dict[str, Any]) -> list[Headline]:
    """Headline numbers of a diagnosis: failure rate, high-SOCM share vs null, AUROCs, LR test."""
    collapse_auroc, cos_auroc = summary["collapse"]["auroc"], summary["cos_nn"]["auroc"]
    null, beyond = summary["high_socm_null"], summary["beyond_controls"]
    share = None if not null["n"] else null["n_high"] / null["n"]
    return [
        Headline("failure rate", f"{summary['failure_rate']:.3f}",
                 f"{summary['n_failures']} of {summary['n_queries']} queries miss rank 1"),
        Headline("failures with a high-SOCM pair", _fmt(share),
                 f"cosine-matched null {_fmt(null['null_share'])}, binomial p = {_fmt(null['p_value'], 4)}"),
        Headline("AUROC collapse rate → failure", _fmt(collapse_auroc["auroc"]),
                 f"95% CI {_fmt(collapse_auroc['ci_low'])}–{_fmt(collapse_auroc['ci_high'])} "
                 f"({collapse_auroc['direction']})"),
        Headline("AUROC collapse index → failure", _fmt(summary["collapse_index"]["auroc"]["auroc"]),
                 "d_Σ / ((c₁ + c₂)/4): collapse relative to its bound from concentration"),
        Headline("AUROC concentration → failure", _fmt(summary["concentration"]["auroc"]["auroc"]),
                 "token concentration of the relevant document"),
        Headline("AUROC mean cosine → failure", _fmt(cos_auroc["auroc"]),
                 f"95% CI {_fmt(cos_auroc['ci_low'])}–{_fmt(cos_auroc['ci_high'])}"),
        Headline("collapse beyond controls", f"p = {_fmt(beyond['p_value'], 4)}",
                 "likelihood-ratio test; controls: cos_nn, concentration, length"),
    ]


def confusions(diagnosis: Any, limit: int = WORST_CONFUSIONS) -> list[Confusion]:
    """The failures whose confuser is closest in mean to the relevant document, texts side by side."""
    worst = diagnosis.failures.sort("cos", descending=True, nulls_last=True).head(limit)
    return [
        Confusion(
            query_id=row["query_id"], query_text=diagnosis.query_texts.get(row["query_id"], ""),
            relevant_id=row["relevant_id"], relevant_text=diagnosis.texts.get(row["relevant_id"], ""),
            confuser_id=row["confuser_id"], confuser_text=diagnosis.texts.get(row["confuser_id"], ""),
            relevant_rank=row["relevant_rank"], socm=row["socm"], cos=row["cos"],
            relevant_label=row["relevant_label"], confuser_label=row["confuser_label"],
        )
        for row in worst.iter_rows(named=True)
    ]


def diagnosis_sections(diagnosis: Any) -> list[Section]:
    """The counterfactual table and the truncation figures of a diagnosis."""
    sections = []
    flips = diagnosis.counterfactuals
    if not flips.is_empty():
        table = flips.select("candidate", "fixes", "breaks", (pl.col("fixes") - pl.col("breaks")).alias("net"),
                             "both_succeed", "both_fail", "p_value", "corrected_p_value").sort("net", descending=True)
        sections.append(Section.from_frame("What each switch buys on these queries", table, (
            f"Against {diagnosis.strategy} at rank 1 (P@1 = 1): queries a candidate fixes and breaks, with an exact "
            "McNemar test (Holm-corrected over candidates). In-sample: these are the queries that were diagnosed.")))
    truncation = diagnosis.summary.get("truncation")
    if truncation:
        sections.append(Section("Truncation", (
            f"{truncation['n_truncated']} of {truncation['n_documents']} documents "
            f"({truncation['share_truncated']:.1%}) are longer than the {truncation['window']}-token window; "
            f"{truncation['tokens_cut']:,} tokens ({truncation['share_tokens_cut']:.1%}) are never seen by the "
            f"encoder. {truncation['n_failures_relevant_truncated']} failed queries have a truncated relevant "
            "document.")))
    return sections


def diagnosis_report(diagnosis: Any, title: str | None = None) -> ReportData:
    """Report sections of a :class:`~rag_diag.diagnosis.diagnose.Diagnosis`."""
    summary = diagnosis.summary
    entry = summary["verdict"]
    commands = [summary.get("eval_command"), summary.get("collapse_command"), summary.get("command")]
    return ReportData(
        title=title or f"rag-diag diagnosis of {diagnosis.strategy} pooling",
        answer=summary.get("answer", ""),
        headline=diagnosis_headline(summary),
        causes=[CauseRow(**row) for row in summary.get("taxonomy", [])],
        sections=diagnosis_sections(diagnosis),
        verdict=Verdict(entry["label"], entry["summary"], list(entry["evidence"])),
        strategies=strategy_rows(diagnosis.metrics),
        collapse_rates=diagnosis.collapse_rates,
        deciles=[DecileRow(**row) for row in summary["deciles"]],
        confusions=confusions(diagnosis),
        commands=[c for c in commands if c],
        tables={"failures": diagnosis.failures, "queries": diagnosis.queries,
                "counterfactuals": diagnosis.counterfactuals},
    )
