"""Choose a retrieval strategy for a knowledge base, held out: pooling, re-rankers, BM25, fusion, windows.

One encoder pass indexes every pooling strategy (:func:`rag_diag.retrieval.bundle.build_indexes`); the
evaluation adds every re-ranker of the mean top-k (blend weights α ∈ ALPHAS), BM25, BM25 fused with
mean pooling (lexical weights in :data:`rag_diag.evaluation.candidates.FUSION_WEIGHTS`) and windowed
encoding. The rule that picks one, the per-family evidence it reads (parameters tuned in-fold) and the nested
cross-validation that measures what following it gives are in :mod:`rag_diag.jobs.rule`. Beside them, a plain
best-score pick over every configuration is scored out-of-fold too: its in-sample score minus its out-of-fold one
is the optimism a user picking the best row of a table would fall for.

Each candidate also gets its counterfactual against mean (queries fixed / broken at P@1, exact McNemar
test, Holm-corrected over candidates), out-of-fold. Costs: ``bytes_per_doc`` (index / N, plus the token store
for re-rankers, plus both indexes for fusion) and ``latency_ms`` per query (median of LATENCY_REPEATS, shared
encoder pass excluded, on the first LATENCY_QUERIES queries; reported, not used by the rule: timings vary and the
recommendation must not).

Without queries and qrels, distractor probes (:mod:`rag_diag.corpora.probes`) are used.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss

from rag_diag import atomic
from rag_diag.corpora.io import Corpus, Qrels, Queries
from rag_diag.corpora.probes import distractor_probes
from rag_diag.defaults import DEFAULT_PROBES
from rag_diag.errors import RagDiagError
from rag_diag.evaluation.crossval import query_groups
from rag_diag.evaluation.result import EvalResult
from rag_diag.evaluation.significance import ALPHA
from rag_diag.jobs.rule import (
    BASELINE,
    FOLDS,
    PRIMARY_METRIC,
    RULE,
    Candidate,
    HeldOutAdvice,
    candidates_from,
    cross_validate_families,
    cross_validate_selection,
    decide,
    family,
    held_out_advice,
    smallest_corrected_p,
)
from rag_diag.models.protocol import Encoder
from rag_diag.retrieval.bundle import IndexBundle

__all__ = ["BASELINE", "PRIMARY_METRIC", "Candidate", "Choice", "choose_pooling", "decide", "write_choice"]

LATENCY_REPEATS = 3
LATENCY_QUERIES = 50
"""Queries timed per candidate (the first ones): per-query latency needs no more, and re-rankers are slow."""
ALPHAS = (0.25, 0.75)
"""Blend weights tried besides the default 0.5 for the ``blend`` and ``hybrid`` re-rankers."""
KIND = "choose-pooling"


@dataclass
class Recommendation:
    """The recommended candidate, why, the rule, every candidate's evidence, the rule's own held-out score
    (nested cross-validation) and the plain best-score pick's optimism."""

    recommended: str
    reason: str
    rule: str
    candidates: list[Candidate]
    held_out: HeldOutAdvice
    selection: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "recommended": self.recommended, "reason": self.reason, "rule": self.rule,
            "primary_metric": PRIMARY_METRIC, "alpha": ALPHA,
            "smallest_corrected_p": smallest_corrected_p(self.candidates),
            "held_out": {**asdict(self.held_out), "score": self.held_out.score, "families": self.held_out.families},
            "selection": self.selection, "table": [asdict(c) for c in self.candidates],
        }


# ---------------------------------------------------------------------------------------------- evidence


def _median_ms(action: Any, n_queries: int) -> float:
    """Median over LATENCY_REPEATS runs of ``action()`` wall time, per query, in milliseconds."""
    times = []
    for _ in range(LATENCY_REPEATS):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times) / max(n_queries, 1)


def measure_costs(bundle: IndexBundle, query_store: Any, rerankers: list[str],
                  extra: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """bytes_per_doc, index_bytes and latency_ms per family (module docstring)."""
    from rag_diag.evaluation.evaluate import RUN_DEPTH, retrieve
    from rag_diag.evaluation.evaluate import rerank as rerank_run
    from rag_diag.retrieval.rerank import RerankConfig

    n_docs, n_queries = len(bundle.doc_ids), len(query_store)
    costs: dict[str, dict[str, Any]] = {}
    for name in bundle.strategies:
        size = int(faiss.serialize_index(bundle.index(name)).nbytes)
        latency = _median_ms(lambda name=name: retrieve(bundle, name, query_store, RUN_DEPTH, "cpu"), n_queries)
        costs[name] = {"index_bytes": size, "latency_ms": latency, "dim": bundle.strategy_manifest(name)["dim"]}
    base = costs[BASELINE]
    if rerankers:
        doc_store = bundle.token_store()
        first_stage = retrieve(bundle, BASELINE, query_store, RUN_DEPTH, "cpu")
        for name in rerankers:
            extra_ms = _median_ms(lambda name=name: rerank_run(name, first_stage, query_store, doc_store,
                                                              RerankConfig()), n_queries)
            costs[f"rerank-{name}"] = {"index_bytes": base["index_bytes"] + int(doc_store.embeddings.nbytes),
                                       "latency_ms": base["latency_ms"] + extra_ms, "dim": base["dim"]}
    for name, nbytes in extra.get("index_bytes", {}).items():
        fused = name.startswith("bm25+")
        costs[family(name)] = {
            "index_bytes": nbytes + (base["index_bytes"] if fused else 0),
            "latency_ms": extra["latency_ms"][name] + (base["latency_ms"] if fused else 0.0), "dim": None,
        }
    for cost in costs.values():
        cost["bytes_per_doc"] = cost["index_bytes"] / n_docs
    return costs


# ---------------------------------------------------------------------------------------------- API


def _names(strategies: str | list[str] | None, rerankers: str | list[str] | None) -> tuple[list[str], list[str]]:
    from rag_diag.pooling import parse_strategies
    from rag_diag.retrieval.rerank import parse_rerankers

    names = parse_strategies("all" if strategies is None else strategies)  # "" is an error, as for index
    if BASELINE not in names:
        names = [BASELINE, *names]
    reranks = parse_rerankers("all" if rerankers is None else None if rerankers == "none" else rerankers)
    return names, reranks


@dataclass
class Choice:
    """A choose-pooling run in memory: the recommendation, its summary, the bundle and the evaluation."""

    recommendation: Recommendation
    summary: dict[str, Any]
    bundle: IndexBundle
    evaluation: EvalResult


def choose_pooling(
    corpus: Corpus,
    *,
    queries: Queries | None = None,
    qrels: Qrels | None = None,
    model: str | Encoder = "minilm",
    strategies: str | list[str] | None = None,
    rerankers: str | list[str] | None = None,
    k: int = 10,
    probes: int = DEFAULT_PROBES,
    seed: int = 0,
    lexical: bool = True,
    windowed: bool = True,
    command: str = "",
) -> Choice:
    """Evaluate every candidate on the knowledge base and recommend one, held out (module docstring).

    Args:
        corpus: the knowledge base.
        queries, qrels: its queries and judgements; without them distractor probes are generated.
        model: registry name or local model folder.
        strategies: pooling strategies (names, comma-separated, or None = all); ``mean`` is always added.
        rerankers: re-rankers of the mean top-k (None = all, "none" or [] = none).
        k: cut-off of the extra @k metrics.
        probes: documents perturbed into probe variants when no queries are given.
        seed: seed of the probe sample and edits, and of the folds.
        lexical, windowed: add BM25 (and its fusions with mean) and windowed encoding.
    """
    from rag_diag.evaluation.evaluate import encode_queries, evaluate_bundle, judged_subset
    from rag_diag.retrieval.bundle import build_indexes
    from rag_diag.retrieval.rerank import RerankConfig

    names, reranks = _names(strategies, rerankers)
    if (queries is None) != (qrels is None):
        raise RagDiagError("give both --queries and --qrels, or neither (then probe queries are generated)")
    probe_mode = queries is None or qrels is None
    if queries is None or qrels is None:
        corpus, queries, qrels = distractor_probes(corpus, probes, seed)
    bundle = build_indexes(corpus, model=model, strategies=names, command=command)
    evaluation = evaluate_bundle(bundle, queries, qrels, k=k, rerankers=reranks, model=model, command=command,
                                 config=RerankConfig(extra_alphas=ALPHAS), corpus=corpus, lexical=lexical,
                                 windowed=windowed)
    judged_queries, _ = judged_subset(queries, qrels)
    if len(judged_queries) < FOLDS:
        raise RagDiagError(f"{len(judged_queries)} judged queries: cross-validation needs at least {FOLDS}")
    query_ids = list(judged_queries.ids)
    if any(list(run) != query_ids for run in evaluation.runs.values()):
        raise RagDiagError("internal: a run does not list the judged queries in order")
    per_query = evaluation.scores  # per-query metrics of every run, in that same order
    groups = query_groups(query_ids, qrels)
    by_family = cross_validate_families(per_query, query_ids, groups, seed)
    overall = cross_validate_selection(per_query, query_ids, groups, seed)
    timed = Queries(ids=judged_queries.ids[:LATENCY_QUERIES], texts=judged_queries.texts[:LATENCY_QUERIES])
    costs = measure_costs(bundle, encode_queries(bundle, timed, model, "cpu"), reranks,
                          evaluation.manifest.get("extra_costs") or {})
    candidates = candidates_from(by_family, query_ids, costs)
    recommended, reason = decide(candidates)
    held_out = held_out_advice(per_query, query_ids, groups, costs, seed)
    selection = {
        "folds": FOLDS, "seed": seed, "in_sample_best": dict(overall.in_sample_best.parameters)["run"],
        "in_sample_score": overall.in_sample[PRIMARY_METRIC], "out_of_fold_score": overall.out_of_fold_mean,
        "optimism": overall.optimism, "per_fold": [dict(f.chosen.parameters)["run"] for f in overall.folds],
    }
    recommendation = Recommendation(recommended, reason, RULE, candidates, held_out, selection)
    summary = {
        **recommendation.to_dict(), "queries": "probes" if probe_mode else "given",
        "n_queries": evaluation.manifest["n_queries"], "n_documents": len(corpus),
        "model": evaluation.manifest["model"], "corpus_sha256": corpus.content_hash(), "command": command,
    }
    return Choice(recommendation, summary, bundle, evaluation)


def write_choice(choice: Choice, out: str | Path, *, force: bool = False) -> Path:
    """Write ``index/``, ``eval/``, ``recommendation.json`` and the report into one atomically replaced folder."""
    from rag_diag.report import render_report
    from rag_diag.report.choose import choose_report

    with atomic.atomic_dir(out, kind=KIND, force=force) as tmp:
        choice.bundle.write(tmp / "index")
        choice.evaluation.write(tmp / "eval")
        render_report(tmp, choose_report(choice.recommendation, choice.summary))
        atomic.write_json(tmp / "recommendation.json", choice.summary)
    return Path(out)
