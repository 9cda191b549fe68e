"""The failure taxonomy: one primary cause per failed query, by a fixed precedence, with its evidence.

A failed query's relevant document was outranked by a *confuser*. The causes, checked in this order
(the first that holds is the primary cause; all are recorded as evidence):

1. ``duplicate`` — the confuser says the same as the relevant document: the same vocabulary (the
   same set of lower-cased alphanumeric words; order, case, punctuation and repetition ignored;
   rapidfuzz ratio 100 on the sorted word sets).
   No retriever can separate them; deduplicate the store or merge the qrels. A one-word difference
   ("version 2" / "version 3") is *not* a duplicate: that is exactly what retrieval must resolve.
2. ``truncated`` — the relevant document is longer than the model window and windowed encoding
   (every chunk encoded, best chunk scores; or, over summaries, the mean top-k re-ranked so) ranks it
   first: the matching part lay beyond the window.
3. ``lexical`` — BM25 ranks the relevant document first: names, numbers, versions decide.
4. ``second-order`` — a second-order scorer (W₂ re-rank, blend, mean+std) ranks it first: the
   two documents are close in mean but their token distributions differ.
5. ``token-level`` — a token-level scorer (MaxSim re-rank) ranks it first.
6. ``hub`` — the confuser is a hub of the kNN graph (k-occurrence ≥ HUB_FACTOR·k): it comes back for
   many queries.
7. ``encoder`` — none of the above: no scorer the evaluation consulted separates them (the runs are named in
   the table); another pooling of the same encoder (``choose-pooling``) or another embedding model may.

Fixes come before ``hub`` and ``encoder`` because a fix that works is the actionable answer; among the
fixes the cheaper family comes first (lexical < second-order < token-level in index size and latency).
Causes whose evidence is missing (no BM25 run, no texts …) are skipped and say so in the table
(:func:`unchecked_causes`): a count of 0 there would claim a check that never ran — an evaluation without a
windowed run, for one, cannot tell a ``truncated`` failure from the causes after it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
import polars as pl

from rag_diag.corpora.io import Qrels
from rag_diag.diagnosis.hubness import HUB_FACTOR
from rag_diag.evaluation.result import Run

CAUSES = ("duplicate", "truncated", "lexical", "second-order", "token-level", "hub", "encoder")
CAUSE_ADVICE = {
    "duplicate": "deduplicate the store or merge the qrels: the texts say the same",
    "truncated": "encode long documents in windows (chunking): the match lies beyond the model window",
    "lexical": "add BM25 (or fuse it with the dense run): names, numbers and versions decide",
    "second-order": "re-rank the mean top-k with a second-order score (W₂ / blend) or index mean+std",
    "token-level": "re-rank the mean top-k with MaxSim over token vectors",
    "hub": "the confuser is a hub: down-weight or remove it, or add hubness reduction",
    "encoder": "nothing consulted here separates them: compare the other poolings of this encoder "
               "(choose-pooling), else another embedding model",
}
RUNS_FOR_CAUSE = {
    "truncated": ("windowed", "rerank-windowed"),
    "lexical": ("bm25",),
    "second-order": ("rerank-w2", "rerank-blend", "mean+std"),
    "token-level": ("rerank-maxsim", "rerank-hybrid"),
}
_WORD = re.compile(r"[a-z0-9]+")


def _words(text: str) -> list[str]:
    return sorted(set(_WORD.findall(text.lower())))


def same_words(first: str, second: str) -> bool:
    """True when the two texts have the same set of lower-cased alphanumeric words."""
    from rapidfuzz import fuzz

    a, b = " ".join(_words(first)), " ".join(_words(second))
    return bool(a) and fuzz.ratio(a, b) == 100.0


def text_similarity(first: str, second: str) -> float:
    """Normalised indel similarity of the two texts in [0, 1] (rapidfuzz ratio / 100), as evidence."""
    from rapidfuzz import fuzz

    return float(fuzz.ratio(first, second)) / 100.0


def first_relevant_rank(run: Run, qrels: Qrels, query_id: str) -> int | None:
    """1-based rank of the first relevant document of ``query_id`` in ``run`` (None if not retrieved)."""
    ranking = run.get(query_id)
    if ranking is None:
        return None
    relevant = qrels.relevant(query_id)
    return next((rank for rank, doc in enumerate(ranking.doc_ids, start=1) if doc in relevant), None)


def k_occurrence(pairs: pl.DataFrame, doc_ids: list[str]) -> dict[str, int]:
    """N_k of each of ``doc_ids`` in a kNN pair table: how many documents list it among their neighbours.

    Documents no one lists are absent (N_k = 0).
    """
    named = pl.Series(doc_ids, dtype=pl.String).unique()
    counts = pairs.filter(pl.col("doc_b").is_in(named)).group_by("doc_b").len()
    return dict(zip(counts["doc_b"].to_list(), counts["len"].to_list(), strict=True))


def _fixed_by(names: tuple[str, ...], ranks: Mapping[str, int | None]) -> bool | None:
    present = [name for name in names if name in ranks]
    if not present:
        return None
    return any(ranks[name] == 1 for name in present)


def classify(
    failures: pl.DataFrame,
    runs: Mapping[str, Run],
    qrels: Qrels,
    *,
    texts: Mapping[str, str],
    full_lengths: Mapping[str, int],
    window: int | None,
    hubs: Mapping[str, int],
    k: int | None,
) -> pl.DataFrame:
    """``failures`` with the primary ``cause`` and its evidence columns added (one row per failure).

    Evidence columns: ``same_words``, ``text_similarity``, ``relevant_tokens`` (before truncation),
    ``window``, ``relevant_truncated``, ``<run>_rank`` for every run a cause consults, and
    ``confuser_k_occurrence``.
    """
    consulted = sorted({name for names in RUNS_FOR_CAUSE.values() for name in names if name in runs})
    rows = []
    for row in failures.iter_rows(named=True):
        query, relevant, confuser = row["query_id"], row["relevant_id"], row["confuser_id"]
        ranks = {name: first_relevant_rank(runs[name], qrels, query) for name in consulted}
        has_texts = relevant in texts and confuser in texts
        evidence = {
            "same_words": same_words(texts[relevant], texts[confuser]) if has_texts else None,
            "text_similarity": text_similarity(texts[relevant], texts[confuser]) if has_texts else None,
            "relevant_tokens": full_lengths.get(relevant),
            "window": window,
            "relevant_truncated": None if window is None or relevant not in full_lengths
            else bool(full_lengths[relevant] > window),
            "confuser_k_occurrence": hubs.get(confuser, 0) if k else None,
            **{f"{name}_rank": rank for name, rank in ranks.items()},
        }
        holds = {
            "duplicate": evidence["same_words"],
            "truncated": bool(evidence["relevant_truncated"]) and _fixed_by(RUNS_FOR_CAUSE["truncated"], ranks),
            "lexical": _fixed_by(RUNS_FOR_CAUSE["lexical"], ranks),
            "second-order": _fixed_by(RUNS_FOR_CAUSE["second-order"], ranks),
            "token-level": _fixed_by(RUNS_FOR_CAUSE["token-level"], ranks),
            "hub": None if not k else hubs.get(confuser, 0) >= HUB_FACTOR * k,
        }
        cause = next((name for name in CAUSES[:-1] if holds[name]), "encoder")
        rows.append({"query_id": query, "cause": cause, **evidence})
    schema = {"query_id": pl.String, "cause": pl.String, "same_words": pl.Boolean, "text_similarity": pl.Float64,
              "relevant_tokens": pl.Int64, "window": pl.Int64, "relevant_truncated": pl.Boolean,
              "confuser_k_occurrence": pl.Int64, **{f"{name}_rank": pl.Int64 for name in consulted}}
    table = pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)
    return failures.join(table, on="query_id", how="left")


def unchecked_causes(runs: Mapping[str, Run], *, has_texts: bool, window: int | None,
                     k: int | None) -> dict[str, str]:
    """The causes :func:`classify` could not check, each with the evidence that was missing."""
    missing = {cause: "no " + " / ".join(names) + " run" for cause, names in RUNS_FOR_CAUSE.items()
               if not any(name in runs for name in names)}
    if not has_texts:
        missing["duplicate"] = "no document texts"
    if window is None:
        missing["truncated"] = "no token counts"
    if not k:
        missing["hub"] = "no kNN graph"
    return {cause: missing[cause] for cause in CAUSES if cause in missing}


def cause_counts(failures: pl.DataFrame, unchecked: Mapping[str, str] | None = None) -> list[dict[str, object]]:
    """One row per cause (in precedence order): count, share of failures, the advice, and ``not_checked`` (what
    was missing, for a cause that could not be checked; else None); counts sum to failures."""
    total = len(failures)
    unchecked = unchecked or {}
    grouped = failures.group_by("cause").len() if total else pl.DataFrame({"cause": [], "len": []})
    counts = dict(zip(grouped["cause"].to_list(), grouped["len"].to_list(), strict=True))
    return [{"cause": cause, "n_failures": int(counts.get(cause, 0)),
             "share": float(counts.get(cause, 0)) / total if total else 0.0, "advice": CAUSE_ADVICE[cause],
             "not_checked": unchecked.get(cause)}
            for cause in CAUSES]


def truncation_summary(full_lengths: np.ndarray, window: int, failures: pl.DataFrame) -> dict[str, object]:
    """Share of documents longer than the window, tokens cut, and how many failures' relevant documents were cut."""
    lengths = np.asarray(full_lengths, dtype=np.int64)
    cut = np.maximum(lengths - window, 0)
    failed_cut = int(failures["relevant_truncated"].fill_null(False).sum()) if len(failures) else 0
    return {
        "window": int(window), "n_documents": int(len(lengths)), "n_truncated": int((cut > 0).sum()),
        "share_truncated": float((cut > 0).mean()) if len(lengths) else 0.0,
        "tokens_cut": int(cut.sum()), "share_tokens_cut": float(cut.sum() / max(lengths.sum(), 1)),
        "n_failures_relevant_truncated": failed_cut,
    }
