"""Audit an existing vector store: does the model reproduce it, what is near-duplicate, what collapses.

The stored texts are encoded **once** (:mod:`rag_diag.jobs.corpus_pass`: one token store when it fits the
memory budget, shard-built rank-r summaries when it does not, on this machine or Ray actors; or, with
``--estimate``, only a seeded sample: :mod:`rag_diag.jobs.sampled`); every statistic comes from that pass
and from objects held in memory (nothing is written to be read back):

- the model and pooling check, and the ANN recall of the store's own search
  (:mod:`rag_diag.diagnosis.store_checks`);
- store-native findings: exact duplicate chunks with the ids to delete, hub chunks, chunks longer than the
  model window (:mod:`rag_diag.diagnosis.store_findings`);
- collapse: per-document SOCM against the k nearest mean-pooled neighbours (:mod:`rag_diag.collapse.knn`);
- near-duplicate clusters and hubness of that kNN graph (:mod:`rag_diag.diagnosis.duplicates`,
  :mod:`rag_diag.diagnosis.hubness`);
- evaluation of the store's own index with the user's queries, or probe queries
  (:mod:`rag_diag.corpora.probes`), and the diagnosis of its failures.

:func:`write_audit` then writes every artefact once, by its owner, into one atomically replaced folder:
``audit.json``, ``documents.parquet``, ``clusters.parquet``, ``eval/``, ``collapse/``,
``diagnosis/`` and the report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import polars as pl

from rag_diag import atomic
from rag_diag.collapse.knn import KnnResult
from rag_diag.collapse.summaries import DEFAULT_MEMORY_BUDGET, MemoryPlan, plan_memory
from rag_diag.collapse.table import CollapseTable, docs_frame, pairs_frame
from rag_diag.corpora.io import Qrels, Queries
from rag_diag.corpora.probes import copy_probes
from rag_diag.defaults import DEFAULT_K, DEFAULT_SAMPLE
from rag_diag.diagnosis.diagnose import Diagnosis, diagnose
from rag_diag.diagnosis.duplicates import NEAR_DUPLICATE_COS, clusters_frame, documents_frame, near_duplicate_clusters
from rag_diag.diagnosis.hubness import HIGH_HUBNESS_SKEW, HUB_FACTOR, Hubness, hubness
from rag_diag.diagnosis.store_checks import ModelCheck, ann_recall, check_model, exact_vectors
from rag_diag.diagnosis.store_findings import exact_duplicates, long_chunks
from rag_diag.errors import RagDiagError
from rag_diag.evaluation.evaluate import evaluate_bundle, retrieve
from rag_diag.evaluation.result import EvalResult
from rag_diag.jobs.corpus_pass import CorpusPass, Engine, evaluation_rows, evaluation_store, run_pass
from rag_diag.jobs.sampled import full_view, run_sampled_pass, sample_estimates
from rag_diag.models.loading import load_encoder
from rag_diag.models.protocol import Encoder
from rag_diag.progress import peak_rss_gib, release_heap
from rag_diag.retrieval.bundle import IndexBundle
from rag_diag.retrieval.index import build_faiss
from rag_diag.sampling import seeded_sample
from rag_diag.stores.export import pooled_rows, write_store
from rag_diag.stores.protocol import Distance
from rag_diag.stores.stored import StoredIndex
from rag_diag.tokens.estimate import EncodeEstimate, estimate_encode
from rag_diag.tokens.extract import encode_texts
from rag_diag.tokens.store import TokenStore

KIND = "audit"
AUDIT_RERANKERS = ("w2", "blend", "maxsim")
"""Re-rankers of the store's own top-k tried for every failure (the taxonomy's second-order and token-level
evidence), next to BM25, its fusion with the store's ranking and windowed encoding (the whole corpus when the
token store is held, else the store's top-k re-ranked by best chunk: ``rerank-windowed``)."""
TOP_HUBS = 10
TIE_DEPTH, TIE_ATOL = 10, 1e-6
"""--estimate rates each query's top hit and the documents tied with it: float32 cosines within TIE_ATOL (a few
ulps of 1; exact duplicates tie exactly), among the first TIE_DEPTH."""


@dataclass
class AuditResult:
    """Everything an audit found, in memory; :func:`write_audit` writes it."""

    summary: dict[str, Any]
    tokens: TokenStore | None
    """The audit's one encoder pass over every stored text (what ``--export`` pools); None in summaries mode."""
    documents: pl.DataFrame
    clusters: pl.DataFrame
    evaluation: EvalResult
    collapse: CollapseTable
    diagnosis: Diagnosis


def _hubness_summary(hubs: Hubness, doc_ids: list[str]) -> dict[str, Any]:
    top = hubs.top_hubs(TOP_HUBS)
    return {
        "k": hubs.k, "skewness": hubs.skewness, "n_hubs": hubs.n_hubs, "hub_factor": HUB_FACTOR,
        "n_antihubs": hubs.n_antihubs, "sum_k_occurrence": int(hubs.k_occurrence.sum()),
        "max_k_occurrence": int(hubs.k_occurrence.max()), "threshold_skew": HIGH_HUBNESS_SKEW,
        "verdict": "high" if hubs.skewness > HIGH_HUBNESS_SKEW else "low",
        "top_hubs": [{"doc_id": doc_ids[r], "k_occurrence": int(hubs.k_occurrence[r])} for r in top],
    }


def _summary(
    stored: StoredIndex, check: ModelCheck, knn: KnnResult, hubs: Hubness, clusters: pl.DataFrame,
    recall: dict[str, Any], diagnosis: Diagnosis, probes: bool, k: int, command: str, findings: dict[str, Any],
) -> dict[str, Any]:
    """The content of ``audit.json``: every number, the thresholds behind each verdict, the command."""
    n_docs = len(stored.doc_ids)
    hubness_summary = _hubness_summary(hubs, stored.doc_ids)
    in_clusters = int(clusters["size"].sum()) if clusters.height else 0
    labelled = sum(metadata.get("label") is not None for metadata in stored.metadatas)
    diagnosed = diagnosis.summary
    store_metrics = (diagnosis.metrics.get("metrics") or {}).get(check.pooling, {})
    null = diagnosed["high_socm_null"]
    return {
        "store": str(stored.path), "store_kind": stored.kind, "n_documents": n_docs, "dim": stored.index.d,
        "pooling": check.pooling, "model_check": check.to_dict(), **findings,
        "collapse": {
            "k": k, "mean_collapse_rate": float(knn.collapse_mean.mean()),
            "median_collapse_rate": float(np.median(knn.collapse_mean)),
            "max_collapse_rate": float(knn.collapse_max.max()),
            "mean_concentration": float(knn.text_stats.concentration.mean()),
            "neighbours": knn.graph,
        },
        "near_duplicates": {
            "threshold_cos": NEAR_DUPLICATE_COS, "n_clusters": clusters.height, "n_documents_in_clusters": in_clusters,
            "share_documents_in_clusters": in_clusters / n_docs,
            "largest_cluster": int(clusters["size"].max()) if clusters.height else 0,  # type: ignore[arg-type]
            "n_labelled_documents": labelled,
            "n_clusters_mixed_labels": (int((clusters["labels"].list.len() > 1).sum()) if clusters.height else 0)
            if labelled else None,  # unknown when no document has a ``label`` in its metadata
        },
        "hubness": hubness_summary,
        "ann": recall,
        "evaluation": {"queries": "probes" if probes else "given", "n_queries": diagnosed["n_queries"],
                       "metrics": store_metrics},
        "diagnosis": {
            "verdict": diagnosed["verdict"], "failure_rate": diagnosed["failure_rate"],
            "n_failures": diagnosed["n_failures"], "high_socm_null": null,
            "collapse_auroc": diagnosed["collapse"]["auroc"], "cos_nn_auroc": diagnosed["cos_nn"]["auroc"],
        },
        "verdicts": {
            "model_check": "pass", "hubness": hubness_summary["verdict"],
            "ann": recall["verdict"], "mean_pooling": diagnosed["verdict"]["label"],
        },
        "command": command,
    }


def audit_store(
    stored: StoredIndex,
    *,
    model: str | Encoder = "minilm",
    pooling: str = "mean",
    queries: Queries | None = None,
    qrels: Qrels | None = None,
    k: int = DEFAULT_K,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    command: str = "",
    memory_budget: int = DEFAULT_MEMORY_BUDGET,
    max_store: int | None = None,
    estimate_only: bool = False,
    engine: Engine | None = None,
    on_estimate: Callable[[EncodeEstimate], None] | None = None,
    on_plan: Callable[[MemoryPlan], None] | None = None,
) -> AuditResult:
    """Audit a stored index; nothing is written (see :func:`write_audit`).

    Args:
        stored: the store (:func:`rag_diag.stores.stored.open_store`).
        model: the encoder the store was built with (registry name or local folder); checked, not trusted.
        pooling: the pooling the store was built with (mean, cls, max, last); checked, and the refusal names
            the pooling that does reproduce the store. A store of another pooling is evaluated beside an exact
            mean-pooled index (the re-rankers' first stage and the collapse diagnosis are about mean pooling).
        queries, qrels: the store's queries and judgements; without them copy probes are generated.
        k: neighbours per document for collapse, hubness and clusters, and the ANN recall / metric cut-off.
        sample: documents in the model-check sample, the ANN-recall query sample and the probe sample.
        seed: seed of those samples and of the probe edits.
        command: command line to record.
        memory_budget: bytes of corpus data the audit may hold; over it (or over ``max_store``, the largest token
            store allowed), the pass keeps shard-built summaries instead (:mod:`rag_diag.jobs.corpus_pass`).
        estimate_only: estimate the corpus-level figures from the ``sample`` documents, with 95 % intervals,
            instead of encoding every document (:mod:`rag_diag.jobs.sampled`).
        engine: where the summaries are built (local, or Ray: summaries whatever the size); see
            :class:`rag_diag.jobs.corpus_pass.Engine`.
        on_estimate: called, before the encoder pass, with what it will cost (:mod:`rag_diag.tokens.estimate`).
        on_plan: called, before the encoder pass, with how it will hold the corpus (not with ``estimate_only``).
    """
    if k < 1:
        raise RagDiagError(f"--k must be at least 1, got {k}")
    if sample < 1:
        raise RagDiagError(f"--sample must be at least 1, got {sample}")
    if (queries is None) != (qrels is None):
        raise RagDiagError("give both --queries and --qrels, or neither (then probe queries are generated)")
    n_docs = len(stored.doc_ids)
    if n_docs < 2:
        raise RagDiagError(f"{stored.path}: the store holds {n_docs} document(s); an audit needs two")
    engine = engine or Engine()
    engine.check()
    if estimate_only and engine.name == "ray":
        raise RagDiagError("--estimate encodes only its sample, on the local engine: drop --engine ray")
    encoder = model if isinstance(model, Encoder) else load_encoder(model)
    check = check_model(stored, encoder, sample, seed, pooling)
    estimate = estimate_encode(stored.texts, encoder, seed=seed)
    if on_estimate is not None:
        on_estimate(estimate)
    k_graph = min(k, n_docs - 1)
    if estimate_only:
        return _estimated_audit(stored, encoder, check, estimate, queries, qrels, k=k, k_graph=k_graph,
                                sample=sample, seed=seed, command=command)
    if engine.name == "ray" and engine.model is None and isinstance(model, str):
        engine = Engine("ray", engine.address, model)
    plan = plan_memory(n_docs, estimate.n_tokens, estimate.store_bytes, encoder.dim, memory_budget, max_store,
                       summaries=engine.name == "ray", lengths=estimate.lengths)
    if on_plan is not None:
        on_plan(plan)
    probes = queries is None
    if queries is None or qrels is None:
        queries, qrels = copy_probes(stored.corpus(), sample, seed)
    corpus = stored.corpus()
    bundle = None
    if pooling == "mean":  # the re-rankers' first stage is the store's own index: its candidates are known now
        bundle = _store_bundle(stored, encoder, pooling, {}, corpus.content_hash())
    keep = None if bundle is None or plan.mode == "token-store" else evaluation_rows(bundle, stored, queries, qrels,
                                                                                      encoder)
    rss_before_pass = peak_rss_gib()
    corpus_pass = run_pass(stored, encoder, plan, k_graph, engine, np.asarray(estimate.full_lengths), keep)
    release_heap()  # the pass's freed buffers (0.44 GiB of 1.20 at 10,000 in summaries mode) before the rest
    corpus_pass.timings |= {"peak_rss_gib_before_pass": rss_before_pass, "peak_rss_gib_after_pass": peak_rss_gib()}
    knn = corpus_pass.knn
    hubs = hubness(knn.doc_b.reshape(n_docs, k_graph))
    cluster_ids = near_duplicate_clusters(n_docs, knn.doc_a, knn.doc_b, knn.pairs.cos)
    documents = documents_frame(stored.doc_ids, [m.get("label") for m in stored.metadatas], knn, hubs, cluster_ids)
    clusters = clusters_frame(documents, knn, cluster_ids)
    recall = ann_recall(stored, _true_vectors(stored, corpus_pass, check, pooling),
                        seeded_sample(n_docs, sample, seed + 1), k)
    recall.pop("per_query")
    release_heap()  # the stored vectors the recall check paged in (0.14 GiB at 100,000 × 384), before the evaluation
    findings = {"exact_duplicates": exact_duplicates(stored.doc_ids, stored.texts),
                "long_chunks": long_chunks(stored.doc_ids, corpus_pass.full_lengths, corpus_pass.window),
                "estimate": estimate.to_dict(), "memory": plan.to_dict(), "timings": corpus_pass.timings}
    if bundle is None:
        others = {"mean": build_faiss(corpus_pass.unit_means(), "cosine")[0]}
        bundle = _store_bundle(stored, encoder, pooling, others, corpus.content_hash())
    token_store = corpus_pass.kept if corpus_pass.kept is not None else evaluation_store(
        corpus_pass.tokens, bundle, stored, queries, qrels, encoder, corpus_pass.timings)
    bundle.tokens = token_store
    started = time.perf_counter()
    evaluation = evaluate_bundle(bundle, queries, qrels, k=k, model=encoder, rerankers=list(AUDIT_RERANKERS),
                                 corpus=corpus, lexical=True, windowed=corpus_pass.whole,
                                 windowed_rerank=not corpus_pass.whole, command=command)
    corpus_pass.timings |= {"evaluation_seconds": time.perf_counter() - started,
                            "peak_rss_gib_after_evaluation": peak_rss_gib()}
    release_heap()  # the evaluation's freed buffers (BM25's build, the re-rankers) before the diagnosis
    corpus_pass.timings |= {f"{name}_build_seconds": seconds
                            for name, seconds in evaluation.manifest["extra_costs"].get("build_seconds", {}).items()}
    collapse = CollapseTable.build(
        token_store, docs_frame(stored.doc_ids, np.arange(n_docs), knn.text_stats, knn),
        pairs_frame(stored.doc_ids, knn.doc_a, knn.doc_b, knn.pairs), mode="knn", drop_special=False,
        command=command, corpus_sha256=corpus.content_hash(), k=k_graph, rank=plan.rank,
    )
    release_heap()  # what the pairs frame's build freed, before the diagnosis allocates
    diagnosis = diagnose(evaluation, collapse, strategy=pooling, corpus=corpus, queries=queries,
                         token_store=token_store, corpus_lengths=corpus_pass.full_lengths, command=command)
    release_heap()  # the diagnosis's freed copies of the N·k pair columns, before the output is written
    summary = _summary(stored, check, knn, hubs, clusters, recall, diagnosis, probes, k_graph, command, findings)
    summary["collapse"]["error_bound"] = corpus_pass.error_bound
    return AuditResult(summary, token_store if corpus_pass.whole else None, documents, clusters, evaluation,
                       collapse, diagnosis)


def _store_bundle(stored: StoredIndex, encoder: Encoder, pooling: str, others: dict[str, faiss.Index],
                  corpus_sha256: str) -> IndexBundle:
    """The stored index as an evaluation bundle of strategy ``pooling`` (and the ``others`` indexes beside it)."""
    return IndexBundle.from_index(stored.index, stored.doc_ids, model=encoder.identity, strategy=pooling,
                                  others=others, corpus_sha256=corpus_sha256, source=str(stored.path))


def _estimated_audit(
    stored: StoredIndex, encoder: Encoder, check: ModelCheck, estimate: EncodeEstimate, queries: Queries | None,
    qrels: Qrels | None, *, k: int, k_graph: int, sample: int, seed: int, command: str,
) -> AuditResult:
    """The audit from a seeded sample (:mod:`rag_diag.jobs.sampled`): graph figures exact, rates estimated."""
    if check.pooling != "mean":
        raise RagDiagError("--estimate takes neighbours from the stored vectors, so it needs a mean-pooled store")
    n_docs = len(stored.doc_ids)
    rows = seeded_sample(n_docs, sample, seed)  # the probe sample too (copy_probes draws the same rows)
    probes = queries is None
    if queries is None or qrels is None:
        queries, qrels = copy_probes(stored.corpus(), sample, seed)
    corpus = stored.corpus()
    bundle = IndexBundle.from_index(stored.index, stored.doc_ids, model=encoder.identity,
                                    corpus_sha256=corpus.content_hash(), source=str(stored.path))
    # rated beside the sample: what the diagnosis reads, each query's relevant documents and the store's top hit
    named = {doc_id for query_id in qrels.judgements for doc_id in qrels.relevant(query_id)}
    query_store = encode_texts(queries.texts, model=encoder, ids=queries.ids)
    for ranking in retrieve(bundle, "mean", query_store, TIE_DEPTH, "cpu").values():
        # the top hit, and every document tied with it (exact duplicates): a deeper search may order them otherwise
        named |= {doc_id for doc_id, score in zip(ranking.doc_ids, ranking.scores, strict=True)
                  if score >= ranking.scores[0] - TIE_ATOL}
    extra = np.array([r for r, doc_id in enumerate(stored.doc_ids) if doc_id in named], dtype=np.int64)
    rss_before_pass = peak_rss_gib()
    sampled = run_sampled_pass(stored, encoder, k_graph, rows, extra, seed)
    rss_after_pass = peak_rss_gib()
    view, rated = full_view(sampled, n_docs, k_graph)
    hubs = hubness(sampled.neighbours)
    cluster_ids = near_duplicate_clusters(n_docs, view.doc_a, view.doc_b, view.pairs.cos)
    unrated = ("collapse_mean", "collapse_max", "top_confuser", "concentration", "n_tokens")
    documents = documents_frame(stored.doc_ids, [m.get("label") for m in stored.metadatas], view, hubs,
                                cluster_ids).with_columns(
        *(pl.when(pl.Series(rated)).then(pl.col(c)).otherwise(None).alias(c) for c in unrated))
    clusters = clusters_frame(documents, view, cluster_ids)
    recall = ann_recall(stored, stored.float32_vectors, seeded_sample(n_docs, sample, seed + 1), k)
    release_heap()  # the stored vectors the recall check paged in, before the evaluation encodes
    estimates = sample_estimates(
        sampled, rows, n_docs, hub_skew=hubs.skewness, duplicate_share=float(np.mean(cluster_ids >= 0)),
        truncated_share=estimate.n_truncated / n_docs, per_query_recall=np.asarray(recall.pop("per_query")))
    timings: dict[str, Any] = {"documents_encoded_for_collapse": len(sampled.tokens),
                               "peak_rss_gib_before_pass": rss_before_pass, "peak_rss_gib_after_pass": rss_after_pass}
    token_store = evaluation_store(None, bundle, stored, queries, qrels, encoder, timings)
    bundle.tokens = token_store
    evaluation = evaluate_bundle(bundle, queries, qrels, k=k, model=encoder, rerankers=list(AUDIT_RERANKERS),
                                 corpus=corpus, lexical=True, windowed=False, windowed_rerank=True, command=command)
    timings["peak_rss_gib_after_evaluation"] = peak_rss_gib()
    knn = sampled.knn
    collapse = CollapseTable.build(
        sampled.tokens, docs_frame(stored.doc_ids, sampled.rated, knn.text_stats, knn),
        pairs_frame(stored.doc_ids, knn.doc_a, knn.doc_b, knn.pairs), mode="knn", drop_special=False,
        command=command, corpus_sha256=corpus.content_hash(), k=k_graph, rank=None, estimated=True,
    )
    diagnosis = diagnose(evaluation, collapse, corpus=corpus, queries=queries, token_store=token_store,
                         corpus_lengths=np.asarray(estimate.full_lengths), command=command,
                         graph_k_occurrence=dict(zip(stored.doc_ids, hubs.k_occurrence.tolist(), strict=True)),
                         reference_docs=[stored.doc_ids[r] for r in rows])
    findings = {"exact_duplicates": exact_duplicates(stored.doc_ids, stored.texts),
                "long_chunks": long_chunks(stored.doc_ids, np.asarray(estimate.full_lengths), encoder.max_seq_length),
                "estimate": estimate.to_dict(), "estimates": estimates, "timings": timings,
                "memory": {"mode": "sample", "reason": f"--estimate from {len(rows)} sampled documents"}}
    summary = _summary(stored, check, view, hubs, clusters, recall, diagnosis, probes, k_graph, command, findings)
    in_sample = np.isin(sampled.rated, rows)  # the rated documents are the sample plus relevant ones and top hits
    summary["collapse"] |= {"mean_collapse_rate": estimates["mean_collapse_rate"]["value"],
                            "median_collapse_rate": float(np.median(knn.collapse_mean[in_sample])),
                            "max_collapse_rate": float(knn.collapse_max[in_sample].max()),
                            "mean_concentration": float(knn.text_stats.concentration[in_sample].mean()),
                            "rated": int(rated.sum()), "figures_from": f"the {len(rows)} sampled documents"}
    return AuditResult(summary, None, documents, clusters, evaluation, collapse, diagnosis)


def _true_vectors(stored: StoredIndex, corpus_pass: CorpusPass, check: ModelCheck,
                  pooling: str) -> np.ndarray | Callable[[np.ndarray], np.ndarray]:
    """What the store should hold, for ANN recall: the re-encoded texts pooled as the store is (token-store
    mode), or the stored vectors themselves, read as asked (summaries mode, which keeps no token matrices)."""
    normalised = check.normalised or stored.distance == "cosine"
    if corpus_pass.tokens is not None:
        return exact_vectors(corpus_pass.tokens, normalised, pooling)
    return partial(stored.float32_vectors, unit=normalised)


def store_distance(stored: StoredIndex, check: dict[str, Any]) -> Distance:
    """The audited store's distance: the reader's, or for a FAISS store its metric (cosine on unit vectors)."""
    if stored.distance is not None:
        return stored.distance
    if stored.index.metric_type == faiss.METRIC_L2:
        return "l2"
    return "cosine" if check["normalised"] else "dot"


def export_pooling(result: AuditResult, stored: StoredIndex, destination: str, pooling: str, collection: str) -> str:
    """Write the audited texts pooled with ``pooling`` as a new store of the audited store's kind (no
    re-encoding: the audit's token store is pooled); records it in the summary; returns the new store's form."""
    if result.tokens is None:
        raise RagDiagError("--export pools the audit's token store, which a summaries-mode audit does not keep: "
                           "raise --memory-budget (or --max-store) so the token store fits")
    rows = pooled_rows(result.tokens, pooling, texts=stored.texts, metadatas=stored.metadatas,
                       distance=store_distance(stored, result.summary["model_check"]), layout=stored.layout)
    flavour = "faiss" if stored.distance is None else "simple"  # a LlamaIndex store kept its own FAISS index
    written = write_store(stored.kind, destination, rows, collection=collection, flavour=flavour)
    result.summary["export"] = {"pooling": pooling, "store": written, "kind": stored.kind, "distance": rows.distance,
                                "n_documents": len(rows.ids), "dim": int(rows.vectors.shape[1])}
    return written


def write_audit(result: AuditResult, out: str | Path, *, force: bool = False) -> Path:
    """Write every artefact of an audit once, and its report, into one atomically replaced folder."""
    from rag_diag.report import render_report
    from rag_diag.report.audit import audit_report

    with atomic.atomic_dir(out, kind=KIND, force=force) as tmp:
        result.evaluation.write(tmp / "eval")
        release_heap()  # each parquet writer's freed buffers, before the next one allocates its own
        result.collapse.write(tmp / "collapse")
        release_heap()
        result.diagnosis.write(tmp / "diagnosis")
        release_heap()
        render_report(tmp, audit_report(result))
        atomic.write_json(tmp / "audit.json", result.summary)
    return Path(out)
