"""The audit's one pass over the stored texts, in the memory it is allowed (:mod:`rag_diag.collapse.summaries`).

- **token-store mode** (the store fits the budget): every text is encoded into one token store; kNN collapse
  is exact; the store also serves the re-rankers, windowed candidates and the diagnosis.
- **summaries mode** (it does not): texts are encoded in shards reduced to rank-r summaries; kNN collapse
  runs on them with its per-pair error bound reported; the evaluation gets a token store of just the
  documents it reads — the first stage's top re-ranking depth for every query, and the relevant
  documents — on which the diagnosis also computes the exact SOCM of every failure pair that is not a
  kNN pair. Windowed candidates (which re-encode every document) are left out in this mode. When those
  documents are known before the pass (:func:`evaluation_rows`: the first stage is the store's own index), the
  pass keeps their token rows out of the shards it encodes (:mod:`rag_diag.tokens.subset`) rather than
  encoding them a second time.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rag_diag.collapse.knn import KnnResult, knn_collapse
from rag_diag.collapse.summaries import MemoryPlan, build_summaries, collapse_from_summaries
from rag_diag.corpora.io import Qrels, Queries
from rag_diag.errors import RagDiagError
from rag_diag.evaluation.evaluate import BASELINE, retrieve
from rag_diag.models.protocol import Encoder
from rag_diag.progress import peak_rss_gib
from rag_diag.retrieval.bundle import IndexBundle
from rag_diag.retrieval.rerank import RerankConfig
from rag_diag.stores.stored import StoredIndex
from rag_diag.tokens.extract import encode_texts, parse_layers
from rag_diag.tokens.store import TokenStore
from rag_diag.tokens.subset import SubsetWriter, kept_store


@dataclass
class CorpusPass:
    """What the pass gives the audit (``tokens`` is None in summaries mode until :func:`evaluation_store`)."""

    plan: MemoryPlan
    knn: KnnResult
    summary_means: np.ndarray | None
    full_lengths: np.ndarray
    window: int
    tokens: TokenStore | None
    error_bound: dict[str, Any] | None
    timings: dict[str, Any] = field(default_factory=dict)
    kept: TokenStore | None = None
    """Summaries mode: the store of the ``keep_rows`` texts the pass was given, kept from its shards."""

    def unit_means(self) -> np.ndarray:
        """Every document's L2-normalised mean vector (read from the token store only when asked: the
        exact mean index a store of another pooling is evaluated beside)."""
        if self.summary_means is not None:
            return self.summary_means.astype(np.float64)
        assert self.tokens is not None
        means = self.tokens.means().astype(np.float64)
        return means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)

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

    def check(self) -> None:
        """Refuse an unknown engine, and a Ray address given to the local engine (it would be ignored)."""
        if self.name not in ("local", "ray"):
            raise RagDiagError(f"--engine must be local or ray, got {self.name!r}")
        if self.address is not None and self.name != "ray":
            raise RagDiagError("--ray-address needs --engine ray")


def run_pass(stored: StoredIndex, encoder: Encoder, plan: MemoryPlan, k: int, engine: Engine | None = None,
             full_lengths: np.ndarray | None = None, keep_rows: np.ndarray | None = None) -> CorpusPass:
    """Encode the stored texts as ``plan`` says and run kNN collapse with ``k`` neighbours per document.

    With the Ray engine the summaries come from :func:`rag_diag.collapse.ray_engine.ray_summaries` and the
    untruncated lengths from ``full_lengths`` (the tokeniser's, from the estimate). In summaries mode on the
    local engine, the token rows of the texts ``keep_rows`` are kept as they are encoded (``CorpusPass.kept``)."""
    started = time.perf_counter()
    if plan.mode == "token-store":
        tokens = encode_texts(stored.texts, model=encoder, ids=stored.doc_ids, show_progress=True)
        timings: dict[str, Any] = {"encode_seconds": time.perf_counter() - started,
                                   "encode_cache_hit": bool(tokens.report and tokens.report.cache_hit),
                                   "peak_rss_gib_after_encode": peak_rss_gib()}
        started = time.perf_counter()
        knn = knn_collapse(tokens, k, token_budget=plan.token_rows, show_progress=True)
        timings["knn_collapse_seconds"] = time.perf_counter() - started
        return CorpusPass(plan, knn, None, np.asarray(tokens.full_lengths), int(tokens.window), tokens, None, timings)
    assert plan.rank is not None and plan.shard_docs is not None
    engine = engine or Engine()
    keeping: AbstractContextManager[tuple[SubsetWriter | None, list[TokenStore]]] = nullcontext((None, []))
    if keep_rows is not None and len(keep_rows) and engine.name == "local":
        keeping = kept_store(encoder, stored.doc_ids, stored.texts, keep_rows, parse_layers("last", encoder.num_layers))
    with keeping as (writer, kept):
        streamed = build_summaries(stored.texts, stored.doc_ids, encoder, plan.rank, shard_docs=plan.shard_docs,
                                   full_lengths=full_lengths, engine=engine.name, address=engine.address,
                                   model=engine.model, keep=None if writer is None else writer.take)
    timings = {"encode_seconds": time.perf_counter() - started, "encode_cache_hit": False,
               "n_shards": streamed.n_shards, "engine": engine.name, "peak_rss_gib_after_encode": peak_rss_gib()}
    timings |= {f"pass_{part}_seconds": value for part, value in streamed.seconds.items()}
    if kept:
        timings["evaluation_documents_kept"] = len(kept[0])
    started = time.perf_counter()
    knn, bound = collapse_from_summaries(streamed.summary, k, plan.rank, plan.token_rows)
    timings["knn_collapse_seconds"] = time.perf_counter() - started
    return CorpusPass(plan, knn, streamed.summary.means, streamed.full_lengths, streamed.window, None, bound, timings,
                      kept[0] if kept else None)


def evaluation_rows(bundle: IndexBundle, stored: StoredIndex, queries: Queries, qrels: Qrels, encoder: Encoder,
                    config: RerankConfig | None = None) -> np.ndarray:
    """Rows of the stored texts the evaluation reads (sorted): the top ``config.depth`` of the re-rankers' first
    stage (the bundle's ``mean`` index) for some query, and every document relevant to one."""
    config = config or RerankConfig()
    query_store = encode_texts(queries.texts, model=encoder, ids=queries.ids)
    first_stage = retrieve(bundle, BASELINE, query_store, config.depth, "cpu")
    needed = {doc_id for ranking in first_stage.values() for doc_id in ranking.doc_ids[: config.depth]}
    needed |= {doc_id for query_id in qrels.judgements for doc_id in qrels.relevant(query_id)}
    return np.array([row for row, doc_id in enumerate(stored.doc_ids) if doc_id in needed], dtype=np.int64)


def evaluation_store(
    whole: TokenStore | None, bundle: IndexBundle, stored: StoredIndex, queries: Queries, qrels: Qrels,
    encoder: Encoder, timings: dict[str, Any], config: RerankConfig | None = None,
) -> TokenStore:
    """The token store the evaluation and diagnosis read: ``whole`` (every stored text) when there is one,
    else one of the documents in the top ``config.depth`` of the re-rankers' first stage for some query, or
    relevant to one (their count goes into ``timings``)."""
    if whole is not None:
        return whole
    rows = evaluation_rows(bundle, stored, queries, qrels, encoder, config).tolist()
    tokens = encode_texts([stored.texts[r] for r in rows], model=encoder, ids=[stored.doc_ids[r] for r in rows],
                          show_progress=True)
    timings["evaluation_documents_encoded"] = len(rows)
    return tokens
