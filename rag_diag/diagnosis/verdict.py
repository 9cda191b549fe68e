"""Corpus-level evidence on collapse and the verdict on mean pooling, with every threshold's reason.

Three pieces of evidence decide whether second-order collapse explains a strategy's failures:

1. the failure rate (the share of queries whose relevant document is not ranked first);
2. the share of failures whose (relevant, confuser) pair has a high SOCM, tested against its null:
   the share expected among corpus neighbour pairs of the *same mean cosine* (binomial test), since
   SOCM carries the factor (1 − d_μ) and near-identical pairs have high SOCM whatever the cause;
3. the AUROC of the relevant document's collapse rate for failure, with a CI from a bootstrap that
   resamples relevant documents; its *direction* is reported: above 0.5 (collapse goes with
   failure), below 0.5 (an inverse association: the relevant documents of failing queries have lower collapse
   rates, so mean pooling hides less second-order difference where retrieval fails), or neither;

and a likelihood-ratio test asks whether the collapse rate predicts failure beyond the mean-pooled
cosine, the token concentration and the length of the relevant document (science.md §4: the raw
rate is mostly a function of concentration).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from scipy import stats as sps

from rag_diag.diagnosis import stats

FAILURE_RATE_ADEQUATE = 0.10
"""At or below this share of failed queries mean pooling is *adequate*: one query in ten lost at
rank 1 is within what a re-ranker is expected to fix, and on the licence benchmarks a TF-IDF
baseline already fails about this often."""

FAILURE_RATE_UNSUITABLE = 0.30
"""At or above this failure share, *with* collapse implicated, mean pooling is *unsuitable*: almost
one query in three loses its answer at rank 1 and the evidence says the pooling is why."""

HIGH_SOCM_QUANTILE = 0.75
"""A pair counts as high-SOCM at or above this quantile of the corpus' neighbour-pair SOCMs: the top
quarter of pairs whose token distributions differ most while their means agree."""

SIGNIFICANCE_LEVEL = 0.05
"""Level of the binomial test of the high-SOCM share and of the likelihood-ratio test."""

COSINE_BINS = 10
"""The null of the high-SOCM share is taken among corpus pairs in the same cosine decile as each
failure pair (cosine-matched), so a share is not called high just because failures are near-duplicates."""

THRESHOLDS = {
    "FAILURE_RATE_ADEQUATE": FAILURE_RATE_ADEQUATE,
    "FAILURE_RATE_UNSUITABLE": FAILURE_RATE_UNSUITABLE,
    "HIGH_SOCM_QUANTILE": HIGH_SOCM_QUANTILE,
    "SIGNIFICANCE_LEVEL": SIGNIFICANCE_LEVEL,
    "COSINE_BINS": COSINE_BINS,
}


def high_socm_null(failures: pl.DataFrame, pairs: pl.DataFrame, threshold: float) -> dict[str, Any]:
    """Binomial test: is the share of failures with a high-SOCM pair above its cosine-matched null?

    p₀ = mean over failures of P(SOCM ≥ threshold | corpus pair in the failure pair's cosine decile);
    the count of high-SOCM failures is tested against Binomial(n_failures, p₀), one-sided (greater).
    """
    usable = failures.drop_nulls(["socm", "cos"])
    n, hits = len(usable), int((usable["socm"] >= threshold).sum()) if len(usable) else 0
    if n == 0 or pairs.is_empty():
        return {"n": n, "n_high": hits, "null_share": None, "p_value": None}
    cos = np.asarray(pairs["cos"].to_numpy(), dtype=np.float64)  # no copy of a float64 column
    high = np.asarray(pairs["socm"].to_numpy(), dtype=np.float64) >= threshold
    edges = np.unique(np.quantile(cos, np.linspace(0, 1, COSINE_BINS + 1)))
    n_bins = max(len(edges) - 1, 1)
    bins = np.clip(np.searchsorted(edges, cos, side="right") - 1, 0, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    rate = np.bincount(bins, weights=high, minlength=n_bins) / np.maximum(counts, 1)  # 0.0 in an empty bin
    own = np.clip(np.searchsorted(edges, usable["cos"].to_numpy(), side="right") - 1, 0, len(rate) - 1)
    null = float(np.clip(rate[own].mean(), 1e-12, 1 - 1e-12))
    p_value = float(sps.binomtest(hits, n, null, alternative="greater").pvalue)
    return {"n": n, "n_high": hits, "null_share": null, "p_value": p_value}


def corpus_statistics(queries: pl.DataFrame, lengths: dict[str, int]) -> dict[str, Any]:
    """Collapse rate, normalised index and cos_nn of the relevant document as predictors of failure.

    Rows with a missing predictor are left out (counted in ``n_used``; the collapse index, missing where no
    neighbour pair has a bound, has its own ``n_used``). AUROC CIs resample relevant
    documents (queries sharing one are not independent); the likelihood-ratio test controls for
    cos_nn, concentration and length.
    """
    usable = queries.drop_nulls(["relevant_collapse_mean", "relevant_cos_nn", "relevant_concentration"])
    failed = usable["failed"].to_numpy()
    groups = usable["relevant_id"].to_numpy()
    rate = usable["relevant_collapse_mean"].to_numpy().astype(np.float64)
    concentration = usable["relevant_concentration"].to_numpy().astype(np.float64)
    cos_nn = usable["relevant_cos_nn"].to_numpy().astype(np.float64)
    length = np.array([lengths.get(doc, 0) for doc in groups], dtype=np.float64)
    indexed = usable["relevant_collapse_index"].is_not_null().to_numpy()  # null: no neighbour with a bound
    index = usable["relevant_collapse_index"].to_numpy()[indexed].astype(np.float64)
    beyond = stats.likelihood_ratio_test(np.column_stack([cos_nn, concentration, length]), rate, failed)
    adds = None if beyond["p_value"] is None else bool(beyond["p_value"] < SIGNIFICANCE_LEVEL)
    return {
        "n_used": len(usable),
        "deciles": stats.failure_rate_by_decile(rate, failed),
        "collapse": {"auroc": stats.auroc_with_ci(rate, failed, groups=groups).to_dict(),
                     "spearman": stats.spearman(rate, failed)},
        "collapse_index": {"auroc": stats.auroc_with_ci(index, failed[indexed], groups=groups[indexed]).to_dict(),
                           "n_used": int(indexed.sum())},
        "concentration": {"auroc": stats.auroc_with_ci(concentration, failed, groups=groups).to_dict()},
        "cos_nn": {"auroc": stats.auroc_with_ci(cos_nn, failed, groups=groups).to_dict(),
                   "spearman": stats.spearman(cos_nn, failed)},
        "beyond_controls": {**beyond, "controls": ["cos_nn", "concentration", "n_tokens"],
                            "collapse_adds_information": adds},
    }


def collapse_implicated(summary: dict[str, Any]) -> bool:
    """Collapse explains failures when the high-SOCM share beats its cosine-matched null (binomial,
    one-sided) or the collapse-rate AUROC lies above 0.5 *and* the rate adds information beyond the
    controls (likelihood-ratio test, positive coefficient)."""
    null = summary["high_socm_null"]
    share_beats_null = null["p_value"] is not None and null["p_value"] < SIGNIFICANCE_LEVEL
    beyond = summary["beyond_controls"]
    positive = summary["collapse"]["auroc"]["direction"] == "positive"
    adds = bool(beyond["collapse_adds_information"]) and (beyond["coef_extra"] or 0.0) > 0
    return share_beats_null or (positive and adds)


def judge(failure_rate: float, implicated: bool) -> str:
    """``adequate`` at failure rate ≤ FAILURE_RATE_ADEQUATE; ``unsuitable`` at ≥ FAILURE_RATE_UNSUITABLE
    with collapse implicated; ``at risk`` otherwise (monotone in both arguments)."""
    if failure_rate <= FAILURE_RATE_ADEQUATE:
        return "adequate"
    if failure_rate >= FAILURE_RATE_UNSUITABLE and implicated:
        return "unsuitable"
    return "at risk"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def direction_sentence(auroc: dict[str, Any]) -> str:
    """The AUROC and its CI in plain words, the direction included."""
    numbers = f"AUROC {_fmt(auroc['auroc'])} (95% CI {_fmt(auroc['ci_low'])}–{_fmt(auroc['ci_high'])})"
    if auroc["direction"] == "positive":
        return f"{numbers}: documents with higher collapse rates fail more often"
    if auroc["direction"] == "inverse":
        return (f"{numbers}: an inverse association — the relevant documents of failing queries have "
                "lower collapse rates than those of succeeding ones, so mean pooling hides less second-order "
                "difference where retrieval fails: collapse does not explain these failures")
    return f"{numbers}: no association either way"


def verdict(summary: dict[str, Any]) -> dict[str, Any]:
    """Label, one-sentence summary and the evidence lines, from the corpus statistics in ``summary``."""
    implicated = collapse_implicated(summary)
    label = judge(summary["failure_rate"], implicated)
    null, beyond = summary["high_socm_null"], summary["beyond_controls"]
    evidence = [
        f"failure rate {summary['failure_rate']:.3f} ({summary['n_failures']} of {summary['n_queries']} "
        f"queries have no relevant document at rank 1); adequate ≤ {FAILURE_RATE_ADEQUATE}, "
        f"unsuitable ≥ {FAILURE_RATE_UNSUITABLE} when collapse is implicated",
        f"{null['n_high']} of {null['n']} failures have a (relevant, confuser) pair with SOCM ≥ the corpus' "
        f"{HIGH_SOCM_QUANTILE:.0%} quantile; cosine-matched null share {_fmt(null['null_share'])}, "
        f"binomial p = {_fmt(null['p_value'], 4)}",
        "collapse rate of the relevant document → failure: " + direction_sentence(summary["collapse"]["auroc"]),
        f"collapse rate beyond cos_nn, concentration and length: likelihood-ratio p = "
        f"{_fmt(beyond['p_value'], 4)} (coefficient {_fmt(beyond['coef_extra'])} log-odds per SD)",
    ]
    if label == "adequate":
        text = "failures are rare enough that mean pooling serves this knowledge base."
    elif implicated:
        text = "failures track second-order collapse: second-order scoring is the candidate fix."
    elif summary["collapse"]["auroc"]["direction"] == "inverse":
        text = ("failures are frequent and go with low collapse: the confusers share the relevant "
                "document's mean and token spread, so the failure taxonomy below says what separates them.")
    else:
        text = "failures are frequent and not explained by second-order collapse; see the failure taxonomy."
    return {"label": label, "summary": text, "evidence": evidence, "collapse_implicated": bool(implicated)}
