"""The audit's one pass over the stored texts, in the memory it is allowed (:mod:`rag_diag.collapse.summaries`).

- **token-store mode** (the store fits the budget): every text is encoded into one token store; kNN collapse
  is exact; the store also serves the re-rankers, windowed candidates and the diagnosis.
- **summaries mode** (it does not): texts are encoded in shards reduced to rank-r summaries; kNN collapse
  runs on them with its per-pair error bound reported; the evaluation gets a token store of just the
  documents it reads — the first stage's top re-ranking depth for every query, and the relevant
  documents — on which the diagnosis also computes the exact SOCM of every failure pair that is not a
  kNN pair. Windowed candidates (which re-encode every document) are left out in this mode.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rag_diag.collapse.knn import KnnResult, knn_collapse
from rag_diag.collapse.summaries import (
    MemoryPlan,
    StreamedSummaries,
    bound_summary,
    socm_error_bound,
    stream_summaries,
)
from rag_diag.corpora.io import Qrels, Queries
from rag_diag.errors import RagDiagError
from rag_diag.evaluation.evaluate import BASELINE, retrieve
from rag_diag.models.protocol import Encoder
from rag_diag.retrieval.bundle import IndexBundle
from rag_diag.retrieval.rerank import RerankConfig
from rag_diag.stores.stored import StoredIndex
from rag_diag.tokens.extract import encode_texts
from rag_diag.tokens.store import TokenStore


@dataclass
class CorpusPass:
    """What the pass gives the audit (``tokens`` is None in summaries mode until :func:`evaluation_store`)."""

    plan: MemoryPlan
    knn: KnnResult
    unit_means: np.ndarray
    full_lengths: np.ndarray
    window: int
    tokens: TokenStore | None
    error_bound: dict[str, Any] | None
    timings: dict[str, Any] = field(default_factory=dict)

    @property
    def whole(self) -> bool:
        """True when ``tokens`` holds every stored text (token-store mode)."""
        return self.plan.mode == "token-store"


@dataclass(frozen=True)
class Engine:
    """Where the summaries are built: this process (``local``) or Ray (``ray``, at ``address`` or a local
    instance), whose actors load ``model`` (a registry name or folder travels better than a loaded model)."""

    name: str = "local"
    address: str | None = None
    model: str | None = None


def run_pass(stored: StoredIndex, encoder: Encoder, plan: MemoryPlan, k: int, engine: Engine | None = None,
             full_lengths: np.ndarray | None = None) -> CorpusPass:
    """Encode the stored texts as ``plan`` says and run kNN collapse with ``k`` neighbours per document.

    With the Ray engine the summaries come from :func:`rag_diag.collapse.ray_engine.ray_summaries` and the
    untruncated lengths from ``full_lengths`` (the tokeniser's, from the estimate)."""
    started = time.perf_counter()
    if plan.mode == "token-store":
        tokens = encode_texts(stored.texts, model=encoder, ids=stored.doc_ids, show_progress=True)
        timings: dict[str, Any] = {"encode_seconds": time.perf_counter() - started,
                                   "encode_cache_hit": bool(tokens.report and tokens.report.cache_hit)}
        started = time.perf_counter()
        knn = knn_collapse(tokens, k, token_budget=plan.token_rows, show_progress=True)
        timings["knn_collapse_seconds"] = time.perf_counter() - started
        means = tokens.means().astype(np.float64)
        unit = means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
        return CorpusPass(plan, knn, unit, np.asarray(tokens.full_lengths), int(tokens.window), tokens, None, timings)
    assert plan.rank is not None and plan.shard_docs is not None
    engine = engine or Engine()
    if engine.name == "ray":
        from rag_diag.collapse.ray_engine import ray_summaries

        if full_lengths is None:
            raise RagDiagError("the Ray engine needs the texts' token lengths (from the estimate)")
        summary = ray_summaries(stored.texts, stored.doc_ids, model=engine.model or encoder, rank=plan.rank,
                                max_seq_length=encoder.max_seq_length, address=engine.address, show_progress=True)
        streamed = StreamedSummaries(summary, np.asarray(full_lengths), encoder.max_seq_length, 0, 0)
    else:
        streamed = stream_summaries(stored.texts, stored.doc_ids, encoder, plan.rank, shard_docs=plan.shard_docs,
                                    show_progress=True)
    timings = {"encode_seconds": time.perf_counter() - started, "encode_cache_hit": False,
               "n_shards": streamed.n_shards, "engine": engine.name}
    started = time.perf_counter()
    knn = knn_collapse(None, k, summary=streamed.summary, token_budget=plan.token_rows, show_progress=True)
    timings["knn_collapse_seconds"] = time.perf_counter() - started
    tail = streamed.summary.tail
    bound = bound_summary(socm_error_bound(knn.pairs, tail[knn.doc_a], tail[knn.doc_b]), plan.rank)
    unit = streamed.summary.means.astype(np.float64)
    return CorpusPass(plan, knn, unit, streamed.full_lengths, streamed.window, None, bound, timings)


def evaluation_store(
    whole: TokenStore | None, bundle: IndexBundle, stored: StoredIndex, queries: Queries, qrels: Qrels,
    encoder: Encoder, timings: dict[str, Any], config: RerankConfig | None = None,
) -> TokenStore:
    """The token store the evaluation and diagnosis read: ``whole`` (every stored text) when there is one,
    else one of the documents in the top ``config.depth`` of the re-rankers' first stage for some query, or
    relevant to one (their count goes into ``timings``)."""
    if whole is not None:
        return whole
    config = config or RerankConfig()
    query_store = encode_texts(queries.texts, model=encoder, ids=queries.ids)
    first_stage = retrieve(bundle, BASELINE, query_store, config.depth, "cpu")
    needed = {doc_id for ranking in first_stage.values() for doc_id in ranking.doc_ids[: config.depth]}
    needed |= {doc_id for query_id in qrels.judgements for doc_id in qrels.relevant(query_id)}
    rows = sorted(row for row, doc_id in enumerate(stored.doc_ids) if doc_id in needed)
    tokens = encode_texts([stored.texts[r] for r in rows], model=encoder, ids=[stored.doc_ids[r] for r in rows],
                          show_progress=True)
    timings["evaluation_documents_encoded"] = len(rows)
    return tokens
