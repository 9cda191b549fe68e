"""The audit report: the store's headline numbers, the diagnosis' verdict and the audit's own sections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl

from rag_diag.diagnosis.duplicates import NEAR_DUPLICATE_COS
from rag_diag.diagnosis.hubness import HIGH_HUBNESS_SKEW, HUB_FACTOR
from rag_diag.diagnosis.store_checks import ANN_RECALL_OK, MODEL_AGREEMENT_MIN
from rag_diag.report.data import Headline, ReportData, Section
from rag_diag.report.views import diagnosis_report


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _ids(ids: list[str], total: int) -> str:
    """The listed ids, and how many more there are."""
    shown = ", ".join(ids[:10]) or "none"
    return shown + (f" and {total - min(len(ids), 10)} more" if total > min(len(ids), 10) else "")


def _scale_text(summary: dict[str, Any]) -> str:
    memory, estimate, timings = summary["memory"], summary["estimate"], summary["timings"]
    graph, bound = summary["collapse"]["neighbours"], summary["collapse"].get("error_bound")
    checked = "" if graph["exact"] else f" on {graph['n_recall_queries']} queries"
    text = (f"Plan: {memory['mode']} ({memory['reason']}). Estimated before the pass: {estimate['n_tokens']:,} "
            f"tokens, {estimate['forward_passes']:,} forward passes, {estimate['seconds']:.1f} s of encoding for "
            f"every document. Neighbours from {graph['index_type']} (recall@k {graph['recall_at_k']:.4f}{checked}).")
    if "encode_seconds" in timings:
        text += (f" Measured: encoding {timings['encode_seconds']:.1f} s"
                 f"{' (token cache hit)' if timings.get('encode_cache_hit') else ''}, kNN collapse "
                 f"{timings['knn_collapse_seconds']:.1f} s.")
    if bound:
        text += (f" Collapse rates come from rank-{bound['rank']} summaries: per-pair SOCM error bound max "
                 f"{bound['max_socm_error_bound']:.4f}, mean {bound['mean_socm_error_bound']:.4f} "
                 f"({bound['share_pairs_exact']:.1%} of pairs with nothing truncated, exact up to rounding; the "
                 f"bounds include it, at most {bound.get('max_rounding_slack', 0.0):.1e})")
        if "mean_collapse_rate_interval" in bound:
            low, high = bound["mean_collapse_rate_interval"]
            text += (f"; exact SOCM lies at most {bound['mean_socm_above']:.4f} above a pair's value on average and "
                     f"{bound['mean_socm_below']:.4f} below it, so the exact mean collapse rate lies in "
                     f"[{low:.4f}, {high:.4f}]")
        text += "; failure pairs outside the kNN graph are computed exactly."
    for name, figure in (summary.get("estimates") or {}).items():
        if isinstance(figure, dict):
            low, high = figure["ci_low"], figure["ci_high"]
            span = "" if low is None else f" [{low:.4f}, {high:.4f}]"
            text += f" {name.replace('_', ' ')}: {figure['value']:.4f}{span} ({figure['method']}, n = {figure['n']});"
    return text


def audit_report(result: Any) -> ReportData:
    """ReportData: audit headline, the diagnosis' verdict / deciles / confusions, and the audit sections."""
    summary = result.summary
    base = diagnosis_report(result.diagnosis)
    check, dups, hub, ann = summary["model_check"], summary["near_duplicates"], summary["hubness"], summary["ann"]
    evaluation = summary["evaluation"]
    headline = [
        Headline("documents", f"{summary['n_documents']:,}",
                 f"dimension {summary['dim']}, {summary['store_kind']} store"),
        Headline("model agreement", _fmt(check["median_cos"], 4),
                 f"{check['model']}+{check['pooling']}: median cosine on {check['n_sample']} documents "
                 f"(need ≥ {MODEL_AGREEMENT_MIN})"),
        Headline("exact duplicates", f"{summary['exact_duplicates']['n_to_delete']:,}", "chunks to delete"),
        Headline("near-duplicate clusters", f"{dups['n_clusters']:,}",
                 f"{dups['n_documents_in_clusters']} documents at cosine ≥ {NEAR_DUPLICATE_COS}"),
        Headline("hubness (N_k skew)", _fmt(hub["skewness"]), f"{hub['n_hubs']} hubs with N_k ≥ {HUB_FACTOR}k"),
        Headline(f"ANN recall@{ann['k']}", _fmt(ann["recall_at_k"]), ann["index_type"]),
        Headline("mean collapse rate", _fmt(summary["collapse"]["mean_collapse_rate"], 4),
                 f"SOCM with the {summary['collapse']['k']} nearest neighbours"),
        *(h for h in base.headline if h.label == "failure rate"),
        Headline("MRR@10", _fmt(evaluation["metrics"].get("MRR@10")),
                 f"{evaluation['n_queries']} {'probe' if evaluation['queries'] == 'probes' else 'given'} queries"),
    ]
    agreement = ", ".join(f"{name} {value:.3f}" for name, value in check["agreement"].items())
    exact, long = summary["exact_duplicates"], summary["long_chunks"]
    top_hubs = pl.DataFrame(hub["top_hubs"]).join(
        result.documents.select("doc_id", "cluster_id", "collapse_mean"), on="doc_id", how="left"
    )
    cluster_rows = result.clusters.with_columns(
        pl.col("doc_ids").list.head(6).list.join(", ").alias("members"),
        pl.col("labels").list.join(", ").alias("labels"),
    ).select("cluster_id", "size", "members", "labels", "min_edge_cos", "mean_collapse")
    sections = [
        Section("Model and pooling check", (
            f"Model '{check['model']}' re-encoded {check['n_sample']} seeded stored documents; pooled with "
            f"{check['pooling']}, their cosine with the stored vectors has median {check['median_cos']:.5f}, min "
            f"{check['min_cos']:.5f}, mean {check['mean_cos']:.5f} (required median ≥ {MODEL_AGREEMENT_MIN}). "
            f"Median cosine of every candidate pooling: {agreement}. Stored vectors are "
            f"{'L2-normalised' if check['normalised'] else 'not normalised'}.")),
        Section("Chunks to delete or re-chunk", (
            f"{exact['n_groups']} groups of chunks with identical text: delete {exact['n_to_delete']} "
            f"({_ids(exact['ids_to_delete'], exact['n_to_delete'])}), keeping the first of each group. "
            f"{long['n_chunks']} chunks ({long['share']:.1%}) are longer than the model window of {long['window']} "
            f"tokens ({long['tokens_not_embedded']:,} tokens never embedded): re-chunk "
            f"{_ids(long['ids'], long['n_chunks'])}.")),
        Section.from_frame("Hubness", top_hubs, (
            f"k-occurrence N_k over the {hub['k']}-NN graph (Σ N_k = {hub['sum_k_occurrence']:,} = N·k): skewness "
            f"{hub['skewness']:.3f} ({hub['verdict']}; high above {HIGH_HUBNESS_SKEW}), {hub['n_hubs']} hubs "
            f"(N_k ≥ {HUB_FACTOR}k), {hub['n_antihubs']} documents never a neighbour. Top hubs:")),
        Section("ANN recall", (
            f"recall@{ann['k']} of the store's {ann['index_type']} against exact search ({ann['metric']}) on "
            f"{ann['n_queries']} stored documents as queries: {ann['recall_at_k']:.4f} ({ann['verdict']}; "
            f"lossy below {ANN_RECALL_OK}). "
            + ("The store answered through its own search, at its own settings." if ann.get("native") else
               "A flat index is exact by construction."))),
        Section.from_frame("Near-duplicate clusters", cluster_rows, (
            f"{dups['n_clusters']} connected components of kNN pairs with mean-pooled cosine ≥ {NEAR_DUPLICATE_COS}, "
            f"{dups['n_documents_in_clusters']} documents ({dups['share_documents_in_clusters']:.1%}); "
            + (f"{dups['n_clusters_mixed_labels']} clusters mix labels." if dups.get("n_clusters_mixed_labels")
               is not None else "no document has a label in its metadata, so whether clusters mix labels is "
               "unknown."))),
    ]
    sections.append(Section("Memory, time and scale", _scale_text(summary)))
    if evaluation["queries"] == "probes":
        sections.append(Section("Probe queries", (
            "No queries were given. Each probe is a stored document with one meaning-bearing edit (number, "
            "negation, 'only' ↔ 'or later', swapped word); its relevant document is the original. A miss means "
            "the index cannot resolve that document from its near-duplicates at the scale of a one-word edit.")))
    return ReportData(
        title=f"rag-diag audit of {Path(summary['store']).name}",
        answer=base.answer, headline=headline, verdict=base.verdict, strategies=base.strategies,
        collapse_rates=result.documents["collapse_mean"].to_numpy(), deciles=base.deciles, causes=base.causes,
        confusions=base.confusions, sections=[*base.sections, *sections], commands=[summary["command"]],
        tables={"documents": result.documents, "clusters": result.clusters},
    )
