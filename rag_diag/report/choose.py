"""The choose-pooling report: the recommendation, the candidates out-of-fold with flips and costs, the rule."""

from __future__ import annotations

from typing import Any

import polars as pl

from rag_diag.diagnosis.answer import what_to_change
from rag_diag.report.data import Headline, ReportData, Section, StrategyRow


def candidate_table(recommendation: Any) -> pl.DataFrame:
    """One row per candidate: out-of-fold and in-sample scores, tests, flips, costs."""
    return pl.DataFrame([
        {"candidate": c.name, "chosen": c.chosen, **c.metrics, "out_of_fold": c.score, "in_sample": c.in_sample,
         "p_vs_mean": c.p_vs_mean, "p_vs_best": c.p_vs_best, "fixes": c.fixes, "breaks": c.breaks,
         "net": c.fixes - c.breaks, "p_flips": c.p_flips, "bytes_per_doc": c.bytes_per_doc,
         "index_bytes": c.index_bytes, "latency_ms": c.latency_ms}
        for c in recommendation.candidates
    ])


KINDS = (("pooling", lambda name: not name.startswith(("rerank-", "bm25", "windowed"))),
         ("re-rankers", lambda name: name.startswith("rerank-")), ("BM25", lambda name: name == "bm25"),
         ("fusion", lambda name: name.startswith("bm25+")), ("windowed", lambda name: name == "windowed"))


def candidate_kinds(candidates: list[Any]) -> str:
    """The kinds of candidate this run evaluated, e.g. ``pooling 3, re-rankers 2, BM25 1`` (mean included)."""
    counts = [(kind, sum(is_kind(c.name) for c in candidates)) for kind, is_kind in KINDS]
    return ", ".join(f"{kind} {count}" for kind, count in counts if count)


def choose_report(recommendation: Any, summary: dict[str, Any]) -> ReportData:
    """ReportData: the recommendation as headline, the candidate table (out-of-fold), the counterfactuals."""
    primary, alpha, selection = summary["primary_metric"], summary["alpha"], summary["selection"]
    by_name = {c.name: c for c in recommendation.candidates}
    chosen, mean = by_name[recommendation.recommended], by_name["mean"]
    rows = [
        StrategyRow(
            strategy=c.name, p_at_1=c.metrics["P@1"], mrr_at_10=c.metrics["MRR@10"], ndcg_at_10=c.metrics["nDCG@10"],
            delta_vs_mean=c.score - mean.score, p_value=c.p_vs_mean,
            significant=None if c.p_vs_mean is None else c.p_vs_mean < alpha,
            index_bytes=c.index_bytes, latency_ms=c.latency_ms,
        )
        for c in sorted(recommendation.candidates, key=lambda c: -c.score)
    ]
    table = candidate_table(recommendation)
    queries = "probe" if summary["queries"] == "probes" else "given"
    held = summary["held_out"]
    honesty = (
        f"Each family's score is out-of-fold for its parameter: {selection['folds']}-fold cross-validation over "
        f"the queries, queries sharing a relevant document kept in one fold, the parameter chosen on the training "
        f"folds. The choice among families is made on all queries, so the recommended family's row is optimistic; "
        f"what following the rule gives is measured by nested cross-validation (the whole rule rerun without each "
        f"fold's queries, inner folds {', '.join(map(str, held['inner_folds']))}; picks per fold: "
        f"{', '.join(held['picks'])}): {primary} {held['score']:.4f} against mean's "
        f"{held['mean_metrics'][primary]:.4f}. "
        f"A plain pick of the best configuration on all queries would report {primary} "
        f"{selection['in_sample_score']:.4f} ({selection['in_sample_best']}); the same pick scored out-of-fold "
        f"gives {selection['out_of_fold_score']:.4f} (optimism {selection['optimism']:+.4f})."
    )
    return ReportData(
        title="rag-diag: choice of retrieval strategy",
        answer=what_to_change({}, pl.DataFrame(), summary),
        headline=[
            Headline("recommended", recommendation.recommended, f"{chosen.chosen}; out-of-fold {primary} "
                     f"{chosen.score:.3f}, chosen on all queries"),
            Headline(f"{primary} gain over mean, held out", f"{held['score'] - held['mean_metrics'][primary]:+.3f}",
                     f"following the advice (nested CV); mean {held['mean_metrics'][primary]:.3f}"),
            Headline("fixes / breaks at rank 1", f"{held['fixes']} / {held['breaks']}",
                     "following the advice vs mean, held out (nested CV)"),
            Headline("queries", f"{summary['n_queries']:,}",
                     f"{queries} queries, {summary['n_documents']:,} documents"),
            Headline("candidates", str(len(recommendation.candidates)), candidate_kinds(recommendation.candidates)),
        ],
        strategies=rows, delta_metric=primary,
        sections=[
            Section("Recommendation", f"{recommendation.reason}.\n\nRule: {recommendation.rule}\n\n{honesty}"),
            Section.from_frame("Candidates: evidence, counterfactuals and cost", table, (
                f"p-values: Holm-corrected sign-flip permutation tests on per-query out-of-fold {primary} (exact up "
                "to 16 non-zero differences, else 20,000 seeded flips); fixes / breaks: queries whose relevant "
                "document the candidate puts at rank 1 where mean does not / the reverse, with an exact McNemar "
                "test, Holm-corrected (p_flips); bytes_per_doc is what query time needs per document; "
                "latency is per query, excluding the shared encoder pass.")),
        ],
        commands=[summary["command"]],
        tables={"candidates": table},
    )
