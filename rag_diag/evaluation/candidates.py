"""Candidates beyond pooled dense indexes: BM25, BM25 fused with mean pooling, windowed encoding.

Near-duplicate knowledge bases are where names, numbers and versions decide, and where users run
lexical or hybrid search; long documents are where a single window hides the part that matters.
Each candidate yields a run over the same queries as the pooled indexes, so every metric, test and
counterfactual treats it alike:

- ``bm25``: :class:`rag_diag.retrieval.lexical.BM25Index` over the corpus texts;
- ``bm25+mean@w``: ranx ``wsum`` fusion of the ``bm25`` and ``mean`` runs with lexical weight w
  (min-max normalised), one run per weight so the weight can be tuned in-fold;
- ``windowed``: :class:`rag_diag.retrieval.windowed.WindowedIndex` (best chunk of each document);
- ``rerank-windowed``: where windowing every document is too costly (an audit over summaries), each query's mean
  top-N re-scored by its best chunk, over a windowed index of only those N documents of every query
  (:func:`windowed_rerank_run`): like the other re-rankers it reorders the head and keeps the tail.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rag_diag.corpora.io import Corpus, Queries
from rag_diag.evaluation.result import Run, from_scores, rescored_head, run_scores
from rag_diag.models.protocol import Encoder
from rag_diag.progress import release_heap
from rag_diag.tokens.store import TokenStore

if TYPE_CHECKING:
    from rag_diag.retrieval.windowed import WindowedIndex

FUSION_WEIGHTS = (0.25, 0.5, 0.75)
"""Lexical weights of the fused candidates: a coarse grid, tuned in-fold by choose-pooling."""


def fusion_name(weight: float) -> str:
    """Run name of the fusion of BM25 and mean pooling with lexical weight ``weight``."""
    return f"bm25+mean@{weight:g}"


@dataclass
class ExtraRuns:
    """Runs of the extra candidates, with their index sizes (bytes) and query latencies (ms per query)."""

    runs: dict[str, Run] = field(default_factory=dict)
    index_bytes: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    build_seconds: dict[str, float] = field(default_factory=dict)


def extra_runs(
    corpus: Corpus,
    queries: Queries,
    query_store: TokenStore,
    encoder: Encoder,
    mean_run: Run | None,
    depth: int,
    doc_store: TokenStore | None = None,
    *,
    lexical: bool = True,
    windowed: bool = True,
    windowed_rerank: int | None = None,
    fusion_weights: Sequence[float] = FUSION_WEIGHTS,
) -> ExtraRuns:
    """BM25, its fusions with the ``mean`` run, and windowed encoding, as requested; without ``windowed``,
    ``windowed_rerank`` = N re-ranks the ``mean`` run's top N by best chunk (``doc_store`` must hold those
    documents: it serves the ones that fit the window)."""
    from rag_diag.retrieval.fusion import fuse_runs
    from rag_diag.retrieval.lexical import BM25Index
    from rag_diag.retrieval.windowed import WindowedIndex

    extra = ExtraRuns()
    if lexical:
        started = time.perf_counter()
        bm25 = BM25Index.from_corpus(corpus)
        extra.build_seconds["bm25"] = time.perf_counter() - started
        scores, seconds = bm25.search_timed(queries.ids, queries.texts, depth)
        extra.runs["bm25"] = from_scores(scores)
        extra.index_bytes["bm25"] = bm25.index_bytes
        extra.latency_ms["bm25"] = 1000.0 * float(seconds.mean()) if len(seconds) else 0.0
        if mean_run is not None:
            dense = run_scores(mean_run)
            for weight in fusion_weights:
                name = fusion_name(weight)
                extra.runs[name] = from_scores(fuse_runs(scores, dense, "wsum", weight, depth=depth))
                extra.index_bytes[name] = bm25.index_bytes
                extra.latency_ms[name] = extra.latency_ms["bm25"]
        del bm25
        release_heap()  # the index and its build's buffers: 0.13 GiB on 100,000 kb-scale texts, else kept to the end
    if windowed:
        started = time.perf_counter()
        index = WindowedIndex.build(corpus, encoder, doc_store)
        extra.build_seconds["windowed"] = time.perf_counter() - started
        started = time.perf_counter()
        extra.runs["windowed"] = from_scores(index.search(queries, query_store, depth))
        extra.latency_ms["windowed"] = 1000.0 * (time.perf_counter() - started) / max(len(queries), 1)
        extra.index_bytes["windowed"] = index.index_bytes
    elif windowed_rerank and mean_run is not None and doc_store is not None:
        started = time.perf_counter()
        text_of = dict(zip(corpus.ids, corpus.texts, strict=True))
        heads = list(dict.fromkeys(doc_id for ranking in mean_run.values()
                                   for doc_id in ranking.doc_ids[:windowed_rerank]))
        index = WindowedIndex.build(Corpus(ids=heads, texts=[text_of[doc_id] for doc_id in heads]), encoder, doc_store)
        extra.build_seconds["rerank-windowed"] = time.perf_counter() - started
        started = time.perf_counter()
        extra.runs["rerank-windowed"] = windowed_rerank_run(index, mean_run, query_store, windowed_rerank)
        extra.latency_ms["rerank-windowed"] = 1000.0 * (time.perf_counter() - started) / max(len(queries), 1)
        extra.index_bytes["rerank-windowed"] = index.index_bytes
    return extra


def windowed_rerank_run(index: WindowedIndex, first_stage: Run, query_store: TokenStore, depth: int) -> Run:
    """Each query's top ``depth`` in ``first_stage`` re-scored by s(q, d) = max_c cos(μ_q, μ_c) over the document's
    chunks (:meth:`WindowedIndex.best_chunk_scores`) and sorted by it (stable); the tail keeps its order and scores.
    Every head document must be in ``index``."""
    from rag_diag.retrieval.windowed import unit_rows

    query_row = {query_id: row for row, query_id in enumerate(query_store.doc_ids)}
    queries = unit_rows(query_store.means())
    run: Run = {}
    for query_id, ranking in first_stage.items():
        scores = index.best_chunk_scores(queries[query_row[query_id]], ranking.doc_ids[:depth])
        run[query_id] = rescored_head(ranking, depth, scores)
    return run
