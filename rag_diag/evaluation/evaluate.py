"""Query evaluation of an index bundle: runs per strategy and re-ranker, IR metrics, per-query table.

Every strategy of the bundle (and every requested re-ranker of the ``mean`` top-k) yields a run of
the top ``max(100, k)`` documents per judged query. Metrics are computed by ranx (P@k, R@k, MRR@10,
nDCG@10, MAP, hit@10) and by ragas' ID-based context precision / recall at k; significance against
``mean`` is in :mod:`rag_diag.evaluation.significance`.

Ties: FAISS and re-rankers order candidates; trec_eval would re-order tied scores by document id.
Runs are therefore written with *monotone-adjusted* float32 scores s'_1 = s_1,
s'_r = min(s_r, the float32 just below s'_{r−1}) — trec_eval compares scores in float32 — written
exactly, so ranx, trec_eval and the per-query table all see the same order.
Scores of documents below the re-rank depth keep their first-stage (mean cosine) value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, TypeVar

import numpy as np
import polars as pl

from rag_diag.corpora.io import Corpus, Qrels, Queries
from rag_diag.errors import RagDiagError
from rag_diag.evaluation.candidates import extra_runs
from rag_diag.evaluation.result import PER_QUERY_SCHEMA, EvalResult, Run, ranked, rescored_head, run_scores
from rag_diag.evaluation.significance import compare_to_baseline
from rag_diag.models.loading import load_encoder
from rag_diag.models.protocol import Encoder
from rag_diag.pooling import get_strategy, index_vectors, pool_store
from rag_diag.progress import release_heap
from rag_diag.retrieval.bundle import IndexBundle, check_encoder
from rag_diag.retrieval.index import search
from rag_diag.retrieval.rerank import RerankConfig, parse_rerankers, rerank_scores
from rag_diag.tokens.extract import encode_texts
from rag_diag.tokens.store import TokenStore

RUN_DEPTH = 100
BASELINE = "mean"
RANX_METRICS = {
    "P@1": "precision@1",
    "P@5": "precision@5",
    "P@10": "precision@10",
    "R@10": "recall@10",
    "R@100": "recall@100",
    "MRR@10": "mrr@10",
    "nDCG@10": "ndcg@10",
    "MAP": "map",
    "hit@10": "hit_rate@10",
}


def metric_names(k: int) -> dict[str, str]:
    """Our metric names → ranx names: the fixed set plus P@k, R@k, nDCG@k for another ``k``."""
    names = dict(RANX_METRICS)
    names.update({f"P@{k}": f"precision@{k}", f"R@{k}": f"recall@{k}", f"nDCG@{k}": f"ndcg@{k}"})
    return names


T = TypeVar("T")
RANX_ID_WIDTH = 12
"""Digits of the document codes handed to ranx (up to 10¹² distinct documents in one evaluation)."""


def ranx_codes(*judgements: Mapping[str, Mapping[str, object]]) -> dict[str, str]:
    """Every document id of ``judgements`` → its rank in their sorted union, as ``RANX_ID_WIDTH`` zero-padded digits.

    ranx holds document ids as NumPy fixed-width strings, and numba compiles its data-structure functions for each
    width (``UnicodeCharSeq(L)``, L = the longest id) and caches each on disk; so every store whose longest id has a
    new length compiled them again in its evaluation, taking seconds and LLVM memory that stays in the process. Codes
    of one width compile once. The codes sort as the ids do, so any ordering ranx makes by id is unchanged.
    """
    ids = sorted({doc_id for judged in judgements for per_query in judged.values() for doc_id in per_query})
    if len(ids) >= 10**RANX_ID_WIDTH:
        raise RagDiagError(f"{len(ids):,} documents in one evaluation: at most 10^{RANX_ID_WIDTH} - 1 are supported")
    return {doc_id: f"{rank:0{RANX_ID_WIDTH}d}" for rank, doc_id in enumerate(ids)}


def recoded(judgements: dict[str, dict[str, T]], code: dict[str, str]) -> dict[str, dict[str, T]]:
    """``judgements`` (qrels or run scores) with every document id replaced by ``code[id]``."""
    return {query_id: {code[doc_id]: value for doc_id, value in per_query.items()}
            for query_id, per_query in judgements.items()}


def ranx_per_query(qrels: Qrels, run: Run, name: str, k: int) -> dict[str, np.ndarray]:
    """Per-query values of every metric (query order = ``run``'s), computed by ranx."""
    from ranx import Qrels as RanxQrels
    from ranx import Run as RanxRun
    from ranx import evaluate

    names = metric_names(k)
    judged = {query_id: qrels.judgements[query_id] for query_id in run}
    scores = run_scores(run)
    code = ranx_codes(judged, scores)
    values = evaluate(RanxQrels(recoded(judged, code)), RanxRun(recoded(scores, code), name=name), list(names.values()),
                      return_mean=False)
    query_order = sorted(judged)  # ranx reports queries in sorted-id order
    position = {query_id: i for i, query_id in enumerate(query_order)}
    order = np.array([position[query_id] for query_id in run])
    return {ours: np.asarray(values[theirs])[order] for ours, theirs in names.items()}


def ragas_context_scores(qrels: Qrels, run: Run, k: int) -> dict[str, float]:
    """ragas ID-based context precision and recall of the top-k, averaged over every query of ``run``.

    ragas's precision divides by the number of IDs retrieved, not by k: a run that returns fewer than k documents
    (BM25 when few share a word with the query) can score above its P@k. A query with nothing retrieved, which
    ragas scores NaN, counts 0 here (as in P@k), so both figures average over the same queries as ranx's.
    """
    import warnings

    from ragas import EvaluationDataset, evaluate
    from ragas.metrics import IDBasedContextPrecision, IDBasedContextRecall

    samples = [
        {
            "retrieved_context_ids": ranking.doc_ids[:k],
            "reference_context_ids": sorted(qrels.relevant(query_id)),
        }
        for query_id, ranking in run.items()
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = evaluate(
            EvaluationDataset.from_list(samples),
            metrics=[IDBasedContextPrecision(), IDBasedContextRecall()],
            show_progress=False,
        )
    frame = result.to_pandas()  # type: ignore[union-attr]
    return {
        "context_precision": float(frame["id_based_context_precision"].fillna(0.0).mean()),
        "context_recall": float(frame["id_based_context_recall"].fillna(0.0).mean()),
    }


def retrieve(bundle: IndexBundle, strategy: str, query_store: TokenStore, depth: int, device: str) -> Run:
    """Top-``depth`` documents of every query in ``query_store`` under one pooling strategy, tied scores by document
    id (as every other run: FAISS leaves their order to its kernels, and an exact duplicate of the relevant document
    ranked above it would decide the query)."""
    spec = get_strategy(strategy)
    meta = bundle.strategy_manifest(strategy)
    vectors = index_vectors(pool_store(strategy, query_store, bundle.stats(strategy)), spec.metric)
    scores, rows = search(bundle.index(strategy), vectors, depth, meta["metric"], device)
    doc_ids = bundle.doc_ids
    return {
        query_id: ranked([doc_ids[r] for r in row if r >= 0], score[row >= 0])
        for query_id, score, row in zip(query_store.doc_ids, scores, rows, strict=True)
    }


def rerank(
    name: str, first_stage: Run, query_store: TokenStore, doc_store: TokenStore, config: RerankConfig
) -> Run:
    """Re-score the top ``config.depth`` of ``first_stage`` with reranker ``name``; the tail keeps its order.

    MaxSim-based scorers use token matrices without special tokens when ``config.drop_special``;
    second-order scorers always use all tokens (as the SOCM definition does).
    """
    from rag_diag.progress import progress_bar

    drop = config.drop_special and name in ("maxsim", "hybrid")
    row_of = {doc_id: row for row, doc_id in enumerate(doc_store.doc_ids)}
    run: Run = {}
    with progress_bar(f"re-ranking ({name})", len(first_stage), enabled=len(first_stage) >= 100) as advance:
        for query_index, (query_id, ranking) in enumerate(first_stage.items()):
            head_ids = ranking.doc_ids[: config.depth]
            documents = [doc_store.tokens(row_of[doc_id], drop_special=drop) for doc_id in head_ids]
            query = query_store.tokens(query_index, drop_special=drop)
            scores = rerank_scores(name, query, documents, ranking.scores[: len(head_ids)], config.alpha)
            run[query_id] = rescored_head(ranking, config.depth, scores)
            advance(1)
            # each query's freed buffers go back at once (about 8 ms): after a sharded 100,000-document pass the
            # heap kept them, and 16 queries between two returns still climbed 0.3 GiB (1.42 -> 1.75)
            release_heap()
    return run


def per_query_rows(strategy: str, run: Run, qrels: Qrels) -> list[dict[str, Any]]:
    """First relevant rank, top document and the confuser (best non-relevant above the first relevant)."""
    rows = []
    for query_id, ranking in run.items():
        relevant = qrels.relevant(query_id)
        hit = next((rank for rank, doc_id in enumerate(ranking.doc_ids) if doc_id in relevant), None)
        has_confuser = hit != 0 and len(ranking.doc_ids) > 0
        rows.append(
            {
                "query_id": query_id,
                "strategy": strategy,
                "first_relevant_rank": None if hit is None else hit + 1,
                "first_relevant_id": None if hit is None else ranking.doc_ids[hit],
                "relevant_score": None if hit is None else float(ranking.scores[hit]),
                "top_doc": ranking.doc_ids[0] if ranking.doc_ids else None,
                "top_score": float(ranking.scores[0]) if ranking.doc_ids else None,
                "confuser": ranking.doc_ids[0] if has_confuser else None,
                "confuser_score": float(ranking.scores[0]) if has_confuser else None,
                "n_relevant": len(relevant),
            }
        )
    return rows


def judged_subset(queries: Queries, qrels: Qrels) -> tuple[Queries, Qrels]:
    """Only queries with at least one relevant document are evaluated (as trec_eval does)."""
    keep = [i for i, query_id in enumerate(queries.ids) if qrels.relevant(query_id)]
    if not keep:
        raise RagDiagError("no query has a relevant document in the qrels: nothing to evaluate")
    ids = [queries.ids[i] for i in keep]
    subset = Queries(ids=ids, texts=[queries.texts[i] for i in keep], source=queries.source)
    return subset, Qrels({query_id: qrels.judgements[query_id] for query_id in ids}, source=qrels.source)


def check_qrels_documents(bundle: IndexBundle, qrels: Qrels) -> None:
    """Every judged document must be in the index."""
    known = set(bundle.doc_ids)
    for query_id, docs in qrels.judgements.items():
        unknown = [doc_id for doc_id in docs if doc_id not in known]
        if unknown:
            raise RagDiagError(
                f"qrels for query '{query_id}' name document '{unknown[0]}' that is not in the index"
            )


def collect_runs(
    bundle: IndexBundle,
    query_store: TokenStore,
    rerankers: list[str],
    depth: int,
    config: RerankConfig,
    device: str = "cpu",
) -> dict[str, Run]:
    """One run per pooling strategy, then ``rerank-<name>`` runs over the ``mean`` run."""
    runs = {name: retrieve(bundle, name, query_store, depth, device) for name in bundle.strategies}
    if rerankers:
        if BASELINE not in runs:
            raise RagDiagError(f"{bundle.path}: re-ranking needs a 'mean' index (build it with --pooling)")
        doc_store = bundle.token_store()
        for name in rerankers:
            runs[f"rerank-{name}"] = rerank(name, runs[BASELINE], query_store, doc_store, config)
            if name in ("blend", "hybrid"):
                for alpha in config.extra_alphas:
                    tuned = replace(config, alpha=alpha)
                    runs[f"rerank-{name}@{alpha:g}"] = rerank(name, runs[BASELINE], query_store, doc_store, tuned)
            doc_store.release_pages()  # the candidates' token pages: read again if needed, not held
            release_heap()  # and the re-ranker's freed buffers (200 queries, 10,000 documents: +0.5 GiB kept)
    return runs


def score_runs(runs: dict[str, Run], qrels: Qrels, k: int) -> tuple[dict, dict, pl.DataFrame, dict]:
    """(mean metrics, significance vs mean, per-query table, per-query metric values) for runs on the same queries."""
    per_query = {name: ranx_per_query(qrels, run, name, k) for name, run in runs.items()}
    metrics = {
        name: {
            **{metric: float(values.mean()) for metric, values in per_query[name].items()},
            **ragas_context_scores(qrels, run, k),
        }
        for name, run in runs.items()
    }
    significance = compare_to_baseline(per_query, BASELINE) if BASELINE in runs else {}
    rows = [row for name, run in runs.items() for row in per_query_rows(name, run, qrels)]
    return metrics, significance, pl.DataFrame(rows, schema=PER_QUERY_SCHEMA), per_query


def query_encoder(bundle: IndexBundle, model: str | Encoder | None, device: str) -> Encoder:
    """The encoder for the queries: ``model`` or the bundle's own; another model than the bundle's is refused."""
    encoder = model if isinstance(model, Encoder) else load_encoder(model or bundle.model["name"], device)
    check_encoder(bundle, encoder)
    return encoder


def encode_queries(bundle: IndexBundle, queries: Queries, model: str | Encoder | None, device: str) -> TokenStore:
    """Encode the queries with the bundle's model (``model`` must be that model, else refused)."""
    return encode_texts(queries.texts, model=query_encoder(bundle, model, device), ids=queries.ids)


def evaluate_bundle(
    bundle: IndexBundle,
    queries: Queries,
    qrels: Qrels,
    *,
    k: int = 10,
    rerankers: str | list[str] | None = None,
    model: str | Encoder | None = None,
    config: RerankConfig | None = None,
    device: str = "cpu",
    command: str = "",
    corpus: Corpus | None = None,
    lexical: bool = False,
    windowed: bool = False,
    windowed_rerank: bool = False,
) -> EvalResult:
    """Evaluate every strategy of a bundle (and re-rankers of its mean run); nothing is written.

    The caller writes the result once (:meth:`EvalResult.write`) where it wants it.

    Args:
        bundle: an index bundle from :func:`rag_diag.retrieval.index.build_indexes` (or an imported store).
        queries: the queries; only those with a relevant document in ``qrels`` are evaluated.
        qrels: relevance judgements; every judged document must be in the index.
        k: cut-off for the context precision / recall and the extra @k metrics.
        rerankers: re-rankers of the mean top-``config.depth`` (maxsim, w2, blend, hybrid).
        model: the encoder for the queries; default the bundle's; another model is refused.
        config: re-ranking depth, blend weight, special-token handling.
        corpus: the bundle's documents (its texts); needed by the ``lexical`` and ``windowed`` candidates.
        lexical: add BM25 and its fusions with ``mean`` (:mod:`rag_diag.evaluation.candidates`).
        windowed: add windowed encoding of long documents.
        windowed_rerank: without ``windowed``, re-rank the mean top-``config.depth`` by best chunk
            (``rerank-windowed``; the bundle's token store must hold those documents).
    """
    if k < 1:
        raise RagDiagError(f"--k must be at least 1, got {k}")
    names = parse_rerankers(rerankers)
    config = config or RerankConfig()
    queries, qrels = judged_subset(queries, qrels)
    check_qrels_documents(bundle, qrels)
    encoder = query_encoder(bundle, model, device)
    query_store = encode_texts(queries.texts, model=encoder, ids=queries.ids)
    depth = max(RUN_DEPTH, k)
    runs = collect_runs(bundle, query_store, names, depth, config, device)
    costs = {}
    if lexical or windowed or windowed_rerank:
        if corpus is None or corpus.ids != bundle.doc_ids or corpus.content_hash() != bundle.manifest.get(
                "corpus_sha256", corpus.content_hash()):
            raise RagDiagError("lexical and windowed candidates need the bundle's own corpus (same texts, index order)")
        doc_store = bundle.tokens if bundle.tokens is not None or bundle.token_store_path is None \
            else bundle.token_store()
        extra = extra_runs(corpus, queries, query_store, encoder, runs.get(BASELINE), depth, doc_store,
                           lexical=lexical, windowed=windowed,
                           windowed_rerank=config.depth if windowed_rerank else None)
        runs |= extra.runs
        costs = {"index_bytes": extra.index_bytes, "latency_ms": extra.latency_ms, "build_seconds": extra.build_seconds}
    metrics, significance, table, scores = score_runs(runs, qrels, k)
    manifest = {
        "metrics": metrics,
        "significance": significance,
        "k": k,
        "model": bundle.model,
        "index": bundle.where if bundle.path is None else str(bundle.path.resolve()),
        "corpus": bundle.manifest.get("corpus"),
        "corpus_sha256": bundle.manifest.get("corpus_sha256"),
        "token_store": None if bundle.token_store_path is None else str(bundle.token_store_path.resolve()),
        "rerank": {"depth": config.depth, "alpha": config.alpha, "drop_special": config.drop_special},
        "n_queries": len(queries),
        "extra_costs": costs,
        "command": command,
    }
    return EvalResult(manifest=manifest, per_query=table, runs=runs, qrels=qrels, scores=scores)
