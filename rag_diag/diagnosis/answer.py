"""The short answer at the top of every report: what fails, why (the taxonomy), what to change.

It is assembled only from numbers already computed — a diagnosis summary and, when a held-out
recommendation exists (choose-pooling), its summary — so the answer and ``recommendation.json``
cannot disagree: the change it names is the recommendation's, with its out-of-fold evidence and what
following the rule gave held out (nested cross-validation).
Without a recommendation the change is the diagnosis' best counterfactual, labelled in-sample.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import polars as pl

SIGNIFICANCE_LEVEL = 0.05


def what_fails(summary: Mapping[str, Any]) -> str:
    return (f"{summary['n_failures']} of {summary['n_queries']} queries ({summary['failure_rate']:.0%}) have no "
            f"relevant document at rank 1 under {summary['strategy']} pooling.")


def why(summary: Mapping[str, Any]) -> str:
    counts = [row for row in summary.get("taxonomy", []) if row["n_failures"]]
    if not counts:
        return "No query fails."
    unchecked = [f"{row['cause']} ({row['not_checked']})" for row in summary["taxonomy"] if row.get("not_checked")]
    causes = ", ".join(f"{row['cause']} {row['n_failures']}" for row in counts)
    top = counts[0] if len(counts) == 1 else max(counts, key=lambda row: row["n_failures"])
    text = f"Primary causes: {causes}. The largest group is '{top['cause']}': {top['advice']}."
    truncation = summary.get("truncation") or {}
    if truncation.get("n_truncated"):
        text += (f" {truncation['n_truncated']} of {truncation['n_documents']} documents are longer than the "
                 f"{truncation['window']}-token window ({truncation['n_failures_relevant_truncated']} failures' "
                 "relevant documents among them).")
    if unchecked:
        text += f" Not checked: {', '.join(unchecked)}."
    return text


def _best_counterfactual(flips: pl.DataFrame) -> dict[str, Any] | None:
    if flips.is_empty():
        return None
    ranked = flips.with_columns((pl.col("fixes") - pl.col("breaks")).alias("net")).sort("net", descending=True)
    best = ranked.row(0, named=True)
    return best if best["net"] > 0 else None


def held_out_sentence(recommendation: Mapping[str, Any]) -> str:
    """What following the rule gave on queries it never saw (the nested cross-validation of choose-pooling)."""
    held, metric = recommendation["held_out"], recommendation["primary_metric"]
    picked = " and ".join(f"{name} in {count}" for name, count in Counter(held["families"]).most_common())
    return (f"Held out (nested cross-validation: the whole rule rerun without each fold's queries; it picked {picked} "
            f"of {len(held['families'])} folds), following the advice scores {metric} {held['score']:.3f} vs "
            f"{held['mean_metrics'][metric]:.3f} for mean (sign-flip p = {held['p_vs_mean']:.3g}) and fixes "
            f"{held['fixes']} and breaks {held['breaks']} queries at rank 1.")


def _keep_mean(recommendation: Mapping[str, Any], rows: Mapping[str, Mapping[str, Any]]) -> str:
    """Why mean stays: the highest other candidate and its corrected p; and when no test could have said more."""
    metric, alpha, mean = recommendation["primary_metric"], recommendation["alpha"], rows["mean"]
    others = [row for name, row in rows.items() if name != "mean"]
    if not others:
        return f"Keep mean pooling: it was the only candidate evaluated (out-of-fold {metric} {mean['score']:.3f})."
    top = max(others, key=lambda row: row["score"])
    text = (f"Keep mean pooling: no candidate beats it significantly on held-out queries (out-of-fold {metric} "
            f"{mean['score']:.3f}; the highest, {top['name']}, {top['score']:.3f} at corrected p = "
            f"{top['p_vs_mean']:.3g}).")
    floor = recommendation.get("smallest_corrected_p")
    if floor is not None and floor >= alpha:
        text += (f" With {top['n_differ']} queries scored differently, its corrected p could not go below "
                 f"{floor:.3g} (Holm over {len(others)} candidates): more queries are needed to show a difference.")
    return text


def what_to_change(summary: Mapping[str, Any], flips: pl.DataFrame,
                   recommendation: Mapping[str, Any] | None) -> str:
    if recommendation is not None:
        rows = {row["name"]: row for row in recommendation["table"]}
        chosen, mean = rows[recommendation["recommended"]], rows["mean"]
        metric = recommendation["primary_metric"]
        if recommendation["recommended"] == "mean":
            return f"{_keep_mean(recommendation, rows)} {held_out_sentence(recommendation)}"
        setting = "" if chosen["chosen"] == chosen["name"] else f" ({chosen['chosen']})"
        return (f"Switch to {chosen['name']}{setting}: out-of-fold {metric} {chosen['score']:.3f} vs "
                f"{mean['score']:.3f} for mean (corrected p = {chosen['p_vs_mean']:.3g}), chosen among "
                f"{len(rows) - 1} candidates on all queries. {held_out_sentence(recommendation)}")
    best = _best_counterfactual(flips)
    if best is None:
        return "No candidate tried here fixes more queries than it breaks."
    verdict = "significant" if best["corrected_p_value"] < SIGNIFICANCE_LEVEL else "not significant"
    return (f"On these queries (in-sample), {best['candidate']} fixes {best['fixes']} and breaks {best['breaks']} "
            f"at rank 1 (exact McNemar, corrected p = {best['corrected_p_value']:.3g}, {verdict}); run "
            "choose-pooling for a held-out recommendation.")


def answer(summary: Mapping[str, Any], flips: pl.DataFrame, recommendation: Mapping[str, Any] | None = None) -> str:
    """Three paragraphs: what fails, why, what to change."""
    return "\n\n".join((what_fails(summary), why(summary), what_to_change(summary, flips, recommendation)))
