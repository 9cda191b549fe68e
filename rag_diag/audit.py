"""Audit an existing vector store: does the model reproduce it, what is near-duplicate, what collapses.

Input is a LangChain FAISS store folder (``index.faiss`` + ``index.pkl``) or a bare FAISS index file
with a documents file (BEIR ``corpus.jsonl`` or one text per line, in index order). The stored texts are
encoded **once** into a token store; every statistic below comes from that pass:

- **model check**: the model must have the store's dimension, and on a seeded sample of stored rows the
  re-encoded mean-pooled vector μ must point where the stored vector v points:
  agreement = median over the sample of cos(μ, v) ≥ MODEL_AGREEMENT_MIN. Cosine makes the check
  indifferent to whether the store L2-normalised its vectors (LangChain's ``normalize_embeddings``).
  The sample is checked before the whole store is encoded, so a wrong model is refused early;
- **collapse**: per-document collapse rate, SOCM against the k nearest mean-pooled neighbours
  (:func:`rag_diag.collapse_knn.knn_collapse`);
- **near-duplicate clusters** and **hubness** of that same kNN graph (:mod:`rag_diag.hubness`);
- **ANN recall@k** of the stored index against exact search (``IndexFlat`` with the store's metric) over
  the exact vectors, on a seeded sample of documents used as queries. A hit counts when its exact score
  is within TIE_TOLERANCE of the k-th exact score, so tied near-duplicates are not counted as misses.
  For a flat store this is 1.0 by construction;
- **evaluation and diagnosis** with the user's queries and qrels, or, without them, with probe queries.

Probe queries (no qrels given): for a seeded sample of stored documents, :func:`perturb_corpus` makes a
copy with one meaning-bearing edit (a number, a negation, "only" ↔ "or later", a swapped word). The
probe is that whole perturbed copy and its one relevant document is the original: the copy is one edit
away from the original and at least as far from every other stored document *unless* the original has
a near-duplicate that differs from it by about as little. A hit ranks the original first; a miss means
the index cannot resolve that document from its near-duplicates at the scale of a one-token edit.
Copies identical to a stored text are dropped.
"""

from __future__ import annotations

import pickle
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import polars as pl

from rag_diag import atomic
from rag_diag.collapse_knn import KnnResult, knn_collapse, mean_vectors
from rag_diag.corpora.io import Corpus, Qrels, Queries, load_corpus, load_qrels, load_queries, write_beir
from rag_diag.corpora.perturb import perturb_corpus
from rag_diag.encode import TokenStore, encode_texts
from rag_diag.errors import RagDiagError
from rag_diag.hubness import HIGH_HUBNESS_SKEW, HUB_FACTOR, Hubness, hubness, near_duplicate_clusters
from rag_diag.models import Encoder, load_encoder

MODEL_AGREEMENT_MIN = 0.99
"""Median cos(re-encoded μ, stored vector) a model must reach on the sample. The same model gives
≈ 1.0 (float32 and batch-padding noise only); another model, even of the same architecture and
dimension, gives far less."""

NEAR_DUPLICATE_COS = 0.95
"""kNN pairs with mean-pooled cosine at or above this are near-duplicate edges."""

ANN_RECALL_OK = 0.95
"""ANN recall@k below this is reported as a lossy index (the index drops true neighbours)."""

TIE_TOLERANCE = 1e-5
"""An ANN hit whose exact score is within this of the k-th exact score counts as a true neighbour."""

NORM_TOLERANCE = 1e-3
"""Stored vectors whose norms all lie within this of 1 are treated as L2-normalised."""

TOP_HUBS = 10
DEFAULT_K = 10
DEFAULT_SAMPLE = 200


@dataclass(frozen=True)
class StoredIndex:
    """A store under audit: the FAISS index and, by row, document ids, texts and metadata."""

    path: Path
    kind: str
    index: faiss.Index
    doc_ids: list[str]
    texts: list[str]
    metadatas: list[dict[str, Any]]

    def corpus(self) -> Corpus:
        """The stored documents as a corpus (metadata kept, e.g. ``label``)."""
        return Corpus(ids=self.doc_ids, texts=self.texts, source=str(self.path), metadata=self.metadatas)


@dataclass(frozen=True)
class ModelCheck:
    """Agreement between re-encoded and stored vectors on a sample of rows."""

    model: str
    dim: int
    n_sample: int
    median_cos: float
    min_cos: float
    mean_cos: float
    normalised: bool

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "threshold": MODEL_AGREEMENT_MIN, "passed": self.median_cos >= MODEL_AGREEMENT_MIN}


@dataclass
class AuditResult:
    """What :func:`audit_store` wrote: ``audit.json`` content, the per-document and cluster tables."""

    out: Path
    summary: dict[str, Any]
    documents: pl.DataFrame
    clusters: pl.DataFrame
    diagnosis: Any = None


# ---------------------------------------------------------------------------------------------- inputs


def load_stored_index(store: str | Path, documents: str | Path | None = None) -> StoredIndex:
    """Open a LangChain FAISS store folder, or a FAISS index file with its documents file (index order)."""
    from rag_diag.langchain_io import load_langchain_store

    store = Path(store)
    if store.is_dir():
        if documents is not None:
            raise RagDiagError(f"{store}: --documents is only for a bare FAISS index file, not a store folder")
        index, doc_ids, texts, metadatas = load_langchain_store(store)
        return StoredIndex(store, "langchain", index, doc_ids, texts, metadatas)
    if not store.is_file():
        raise RagDiagError(f"{store}: no such store folder or FAISS index file")
    if documents is None:
        raise RagDiagError(f"{store}: a bare FAISS index needs --documents (corpus.jsonl or text lines, index order)")
    try:
        index = faiss.read_index(str(store))
    except RuntimeError:
        raise RagDiagError(f"{store}: not a readable FAISS index") from None
    corpus = load_corpus(documents)
    if len(corpus) != index.ntotal:
        raise RagDiagError(f"{store}: index holds {index.ntotal} vectors but {documents} has {len(corpus)} documents")
    metadatas = corpus.metadata or [{} for _ in corpus.ids]
    return StoredIndex(store, "faiss", index, corpus.ids, corpus.texts, metadatas)


def _load_queries(
    queries: Queries | str | Path | None, qrels: Qrels | str | Path | None
) -> tuple[Queries | None, Qrels | None]:
    if (queries is None) != (qrels is None):
        raise RagDiagError("give both --queries and --qrels, or neither (then probe queries are generated)")
    if queries is None:
        return None, None
    loaded = queries if isinstance(queries, Queries) else load_queries(queries)
    judged = qrels if isinstance(qrels, Qrels) else load_qrels(qrels, loaded)  # type: ignore[arg-type]
    return loaded, judged


# ---------------------------------------------------------------------------------------------- model check


def stored_vectors(index: faiss.Index, rows: np.ndarray) -> np.ndarray:
    """The stored vectors of ``rows`` (approximate for quantising indexes such as IVF-PQ)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.make_direct_map()
    try:
        return np.stack([index.reconstruct(int(row)) for row in rows]).astype(np.float64)
    except RuntimeError:
        name = type(index).__name__
        raise RagDiagError(f"cannot read vectors back from a {name}: the model cannot be checked") from None


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return np.einsum("ij,ij->i", a, b) / norms


def sample_rows(n_rows: int, sample: int, seed: int) -> np.ndarray:
    """Sorted seeded sample of ``min(sample, n_rows)`` row indices."""
    if sample >= n_rows:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=sample, replace=False))


def check_model(stored: StoredIndex, encoder: Encoder, sample: int, seed: int) -> ModelCheck:
    """Refuse a model that does not reproduce the stored vectors (dimension, then median cosine on a sample)."""
    if stored.index.d != encoder.dim:
        raise RagDiagError(
            f"{stored.path}: the store has dimension {stored.index.d} but model '{encoder.name}' has "
            f"dimension {encoder.dim}: pass the model the store was built with (--model)"
        )
    rows = sample_rows(stored.index.ntotal, sample, seed)
    saved = stored_vectors(stored.index, rows)
    store = encode_texts([stored.texts[r] for r in rows], model=encoder, ids=[stored.doc_ids[r] for r in rows])
    cosines = _cosines(mean_vectors(store).astype(np.float64), saved)
    norms = np.linalg.norm(saved, axis=1)
    check = ModelCheck(
        model=encoder.name, dim=encoder.dim, n_sample=len(rows), median_cos=float(np.median(cosines)),
        min_cos=float(cosines.min()), mean_cos=float(cosines.mean()),
        normalised=bool(np.all(np.abs(norms - 1.0) <= NORM_TOLERANCE)),
    )
    if check.median_cos < MODEL_AGREEMENT_MIN:
        raise RagDiagError(
            f"{stored.path}: model '{encoder.name}' does not reproduce the stored vectors (median cosine "
            f"{check.median_cos:.3f} on {check.n_sample} sampled documents, need ≥ {MODEL_AGREEMENT_MIN}): "
            "the store was built with another model; pass that one (--model)"
        )
    return check


# ---------------------------------------------------------------------------------------------- ANN recall


def ann_recall(index: faiss.Index, exact: np.ndarray, rows: np.ndarray, k: int) -> dict[str, Any]:
    """Recall@k of ``index`` against exact search over ``exact`` (the true stored vectors), queries = ``rows``.

    recall@k = mean over queries of |{hits h : s(q, h) ≥ s_k(q) − TIE_TOLERANCE}| / k, where s is the
    exact score under the index's metric (inner product, or −‖q − v‖² for L2) and s_k(q) the k-th best.
    """
    k = min(k, index.ntotal)
    vectors = np.ascontiguousarray(exact, dtype=np.float32)
    flat = faiss.IndexFlat(vectors.shape[1], index.metric_type)
    flat.add(vectors)
    queries = vectors[rows]
    exact_scores, _ = flat.search(queries, k)
    _, found = index.search(queries, k)
    l2 = index.metric_type == faiss.METRIC_L2
    kth = -exact_scores[:, -1] if l2 else exact_scores[:, -1]
    hits = np.zeros(len(rows))
    for position, (query, row_hits) in enumerate(zip(queries, found, strict=True)):
        valid = row_hits[row_hits >= 0]
        candidates = vectors[valid].astype(np.float64)
        scores = -((candidates - query) ** 2).sum(axis=1) if l2 else candidates @ query.astype(np.float64)
        hits[position] = np.count_nonzero(scores >= kth[position] - TIE_TOLERANCE)
    recall = float((hits / k).mean())
    verdict = "exact" if recall == 1.0 else "ok" if recall >= ANN_RECALL_OK else "lossy"
    return {
        "recall_at_k": recall, "k": k, "n_queries": len(rows), "index_type": type(index).__name__,
        "metric": "l2" if l2 else "inner_product", "threshold": ANN_RECALL_OK, "verdict": verdict,
    }


def exact_vectors(store: TokenStore, normalised: bool) -> np.ndarray:
    """The vectors the store should hold: re-encoded means, L2-normalised when the stored ones are."""
    means = mean_vectors(store).astype(np.float64)
    if normalised:
        means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    return means


# ---------------------------------------------------------------------------------------------- probes


def probe_queries(stored: StoredIndex, sample: int, seed: int) -> tuple[Queries, Qrels]:
    """Perturbed copies of a seeded sample of stored documents, each judged relevant to its original.

    See the module docstring for why this probes near-duplicate resolution.
    """
    rows = sample_rows(len(stored.doc_ids), sample, seed)
    subset = Corpus(ids=[stored.doc_ids[r] for r in rows], texts=[stored.texts[r] for r in rows])
    perturbed = perturb_corpus(subset, seed=seed)
    variant_text = dict(zip(perturbed.docs.ids, perturbed.docs.texts, strict=True))
    existing = set(stored.texts)
    edits = [e for e in perturbed.edits if variant_text[e.variant_id] not in existing]
    if not edits:
        raise RagDiagError(
            f"{stored.path}: no stored document has a word the perturbation generator can edit; "
            "give --queries and --qrels"
        )
    ids = [f"probe~{edit.variant_id}" for edit in edits]
    queries = Queries(
        ids=ids, texts=[variant_text[e.variant_id] for e in edits],
        metadata=[{"source": e.source_id, "edit": e.edit, "before": e.before, "after": e.after} for e in edits],
    )
    return queries, Qrels({query_id: {edit.source_id: 1} for query_id, edit in zip(ids, edits, strict=True)})


# ---------------------------------------------------------------------------------------------- tables


def documents_frame(stored: StoredIndex, knn: KnnResult, hubs: Hubness, cluster_ids: np.ndarray) -> pl.DataFrame:
    """One row per stored document: collapse rates, top confuser, k-occurrence, cluster, concentration."""
    ids = np.asarray(stored.doc_ids, dtype=object)
    n_docs = len(ids)
    nearest_cos = knn.pairs.cos.reshape(n_docs, -1).max(axis=1)
    labels = [meta.get("label") for meta in stored.metadatas]
    return pl.DataFrame(
        {
            "doc_id": stored.doc_ids,
            "collapse_mean": knn.collapse_mean.astype(np.float64),
            "collapse_max": knn.collapse_max.astype(np.float64),
            "top_confuser": ids[knn.top_confuser].tolist(),
            "k_occurrence": hubs.k_occurrence,
            "cluster_id": pl.Series([None if c < 0 else int(c) for c in cluster_ids], dtype=pl.Int64),
            "concentration": knn.text_stats.concentration.astype(np.float64),
            "n_tokens": knn.text_stats.n_tokens.astype(np.int64),
            "nearest_cos": nearest_cos.astype(np.float64),
            "label": pl.Series([None if v is None else str(v) for v in labels], dtype=pl.String),
        }
    )


def clusters_frame(documents: pl.DataFrame, knn: KnnResult, cluster_ids: np.ndarray) -> pl.DataFrame:
    """One row per near-duplicate cluster: size, members, weakest / strongest edge, distinct labels."""
    in_cluster = (cluster_ids[knn.doc_a] >= 0) & (cluster_ids[knn.doc_a] == cluster_ids[knn.doc_b])
    in_cluster &= knn.pairs.cos >= NEAR_DUPLICATE_COS
    edges = pl.DataFrame({"cluster_id": cluster_ids[knn.doc_a][in_cluster], "cos": knn.pairs.cos[in_cluster]})
    edge_stats = edges.group_by("cluster_id").agg(pl.col("cos").min().alias("min_edge_cos"),
                                                  pl.col("cos").max().alias("max_edge_cos"))
    members = (
        documents.filter(pl.col("cluster_id").is_not_null())
        .group_by("cluster_id")
        .agg(pl.len().alias("size"), pl.col("doc_id").alias("doc_ids"),
             pl.col("label").drop_nulls().unique().sort().alias("labels"),
             pl.col("collapse_mean").mean().alias("mean_collapse"))
    )
    schema: dict[str, Any] = {
        "cluster_id": pl.Int64, "size": pl.UInt32, "doc_ids": pl.List(pl.String), "labels": pl.List(pl.String),
        "mean_collapse": pl.Float64, "min_edge_cos": pl.Float64, "max_edge_cos": pl.Float64}
    if members.is_empty():
        return pl.DataFrame(schema=schema)
    table = members.join(edge_stats.with_columns(pl.col("cluster_id").cast(pl.Int64)), on="cluster_id", how="left")
    return table.select(list(schema)).sort("cluster_id").cast(pl.Schema(schema))


# ---------------------------------------------------------------------------------------------- evaluation


def _langchain_folder(stored: StoredIndex, folder: Path) -> Path:
    """A LangChain store folder for the audited index (the store itself, or one written for a bare index)."""
    if stored.kind == "langchain":
        return stored.path
    from langchain_community.docstore.in_memory import InMemoryDocstore
    from langchain_core.documents import Document

    documents = {
        doc_id: Document(id=doc_id, page_content=text, metadata=meta)
        for doc_id, text, meta in zip(stored.doc_ids, stored.texts, stored.metadatas, strict=True)
    }
    with atomic.atomic_dir(folder) as tmp:
        faiss.write_index(stored.index, str(tmp / "index.faiss"))
        (tmp / "index.pkl").write_bytes(pickle.dumps((InMemoryDocstore(documents), dict(enumerate(stored.doc_ids)))))
    return folder


def _write_collapse(folder: Path, stored: StoredIndex, knn: KnnResult, store: TokenStore, k: int, command: str) -> None:
    """The kNN collapse folder in the layout of ``rag-diag collapse --knn`` (what diagnose reads)."""
    from rag_diag.collapse_io import collapse_summary, docs_frame, pairs_frame

    docs = docs_frame(stored.doc_ids, np.arange(len(stored.doc_ids)), knn.text_stats, knn)
    pairs = pairs_frame(stored.doc_ids, knn.doc_a, knn.doc_b, knn.pairs)
    with atomic.atomic_dir(folder) as tmp:
        atomic.write_parquet(tmp / "docs.parquet", docs)
        atomic.write_parquet(tmp / "pairs.parquet", pairs)
        summary = collapse_summary(store, pairs, docs, mode="knn", drop_special=False, command=command)
        atomic.write_json(tmp / "summary.json", {**summary, "k": k, "rank": None})


def evaluate_store(
    stored: StoredIndex, model: str, queries: Queries, qrels: Qrels, knn: KnnResult, store: TokenStore,
    out: Path, k: int, command: str,
) -> Any:
    """Evaluate the stored index on (queries, qrels) and diagnose its failures; returns the Diagnosis.

    Writes ``index/`` (the store as a one-strategy bundle), ``kb/`` (BEIR copy of the stored documents
    and the queries), ``eval/``, ``collapse/`` and ``diagnosis/`` under ``out``.
    """
    from rag_diag.diagnose import diagnose
    from rag_diag.evaluate import evaluate_bundle
    from rag_diag.langchain_io import import_langchain

    bundle = import_langchain(_langchain_folder(stored, out / "store"), out / "index", model=model)
    with atomic.atomic_dir(out / "kb") as tmp:
        write_beir(tmp, stored.corpus(), queries, qrels)
    evaluate_bundle(bundle.path, queries, qrels, k=k, out=out / "eval", model=model, command=command)
    _write_collapse(out / "collapse", stored, knn, store, knn.doc_b.size // len(store), command)
    return diagnose(out / "eval", out / "collapse", out / "diagnosis", corpus=out / "kb", report=False,
                    command=command)


# ---------------------------------------------------------------------------------------------- API


def _command(store: Path, model: str, documents: Any, queries: Any, qrels: Any, k: int, out: Path) -> str:
    parts = ["rag-diag", "audit", "--store", str(store), "--model", model]
    for flag, value in (("--documents", documents), ("--queries", queries), ("--qrels", qrels)):
        if isinstance(value, str | Path):
            parts += [flag, str(value)]
    return shlex.join([*parts, "--k", str(k), "--out", str(out)])


def _hubness_summary(hubs: Hubness, doc_ids: list[str]) -> dict[str, Any]:
    top = hubs.top_hubs(TOP_HUBS)
    return {
        "k": hubs.k, "skewness": hubs.skewness, "n_hubs": hubs.n_hubs, "hub_factor": HUB_FACTOR,
        "n_antihubs": hubs.n_antihubs, "sum_k_occurrence": int(hubs.k_occurrence.sum()),
        "max_k_occurrence": int(hubs.k_occurrence.max()), "threshold_skew": HIGH_HUBNESS_SKEW,
        "verdict": "high" if hubs.skewness > HIGH_HUBNESS_SKEW else "low",
        "top_hubs": [{"doc_id": doc_ids[r], "k_occurrence": int(hubs.k_occurrence[r])} for r in top],
    }


def audit_store(
    store_path: str | Path,
    model: str = "minilm",
    queries: Queries | str | Path | None = None,
    qrels: Qrels | str | Path | None = None,
    documents: str | Path | None = None,
    out: str | Path = "audit",
    k: int = DEFAULT_K,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    command: str | None = None,
) -> AuditResult:
    """Audit a stored index and write ``audit.json``, ``documents.parquet``, ``clusters.parquet`` and the report.

    Args:
        store_path: a LangChain FAISS store folder, or a FAISS index file (then ``documents`` is needed).
        model: the encoder the store was built with (registry name or local folder); checked, not trusted.
        queries, qrels: the store's queries and judgements (objects or files); without them probe queries
            are generated (module docstring).
        documents: for a bare FAISS index: its documents in index order (corpus.jsonl or text lines).
        out: output folder (created; the sub-folders index/, kb/, eval/, collapse/, diagnosis/ hold the
            intermediate artefacts).
        k: neighbours per document for collapse, hubness and clusters, and the ANN recall / metric cut-off.
        sample: documents in the model-check sample, the ANN-recall query sample and the probe sample.
        seed: seed of those samples and of the probe edits.
        command: command line to record (default: the equivalent ``rag-diag audit`` call).
    """
    if k < 1:
        raise RagDiagError(f"--k must be at least 1, got {k}")
    if sample < 1:
        raise RagDiagError(f"--sample must be at least 1, got {sample}")
    out = Path(out)
    command = command or _command(Path(store_path), model, documents, queries, qrels, k, out)
    loaded_queries, loaded_qrels = _load_queries(queries, qrels)
    stored = load_stored_index(store_path, documents)
    if len(stored.doc_ids) < 2:
        raise RagDiagError(f"{stored.path}: the store holds {len(stored.doc_ids)} document(s); an audit needs two")
    encoder = load_encoder(model)
    check = check_model(stored, encoder, sample, seed)
    token_store = encode_texts(stored.texts, model=encoder, ids=stored.doc_ids, show_progress=True)
    k_graph = min(k, len(stored.doc_ids) - 1)
    knn = knn_collapse(token_store, k_graph, show_progress=True)
    hubs = hubness(knn.doc_b.reshape(len(stored.doc_ids), k_graph))
    cluster_ids = near_duplicate_clusters(len(stored.doc_ids), knn.doc_a, knn.doc_b, knn.pairs.cos, NEAR_DUPLICATE_COS)
    documents_table = documents_frame(stored, knn, hubs, cluster_ids)
    clusters = clusters_frame(documents_table, knn, cluster_ids)
    recall = ann_recall(stored.index, exact_vectors(token_store, check.normalised),
                        sample_rows(len(stored.doc_ids), sample, seed + 1), k)
    probes = loaded_queries is None
    if probes:
        loaded_queries, loaded_qrels = probe_queries(stored, sample, seed)
    out.mkdir(parents=True, exist_ok=True)
    diagnosis = evaluate_store(stored, model, loaded_queries, loaded_qrels, knn, token_store, out, k, command)  # type: ignore[arg-type]
    summary = _summary(stored, check, knn, hubs, clusters, recall, diagnosis, probes, k_graph, command)
    result = AuditResult(out=out, summary=summary, documents=documents_table, clusters=clusters, diagnosis=diagnosis)
    from rag_diag.report import render_report

    render_report(out, audit_report(result))
    atomic.write_json(out / "audit.json", summary)
    return result


def _summary(
    stored: StoredIndex, check: ModelCheck, knn: KnnResult, hubs: Hubness, clusters: pl.DataFrame,
    recall: dict[str, Any], diagnosis: Any, probes: bool, k: int, command: str,
) -> dict[str, Any]:
    """The content of ``audit.json``: every number, the thresholds behind each verdict, the command."""
    n_docs = len(stored.doc_ids)
    hubness_summary = _hubness_summary(hubs, stored.doc_ids)
    in_clusters = int(clusters["size"].sum()) if clusters.height else 0
    diagnosed = diagnosis.summary
    mean_metrics = (diagnosis.metrics.get("metrics") or {}).get("mean", {})
    return {
        "store": str(stored.path), "store_kind": stored.kind, "n_documents": n_docs, "dim": stored.index.d,
        "model_check": check.to_dict(),
        "collapse": {
            "k": k, "mean_collapse_rate": float(knn.collapse_mean.mean()),
            "median_collapse_rate": float(np.median(knn.collapse_mean)),
            "max_collapse_rate": float(knn.collapse_max.max()),
            "mean_concentration": float(knn.text_stats.concentration.mean()),
        },
        "near_duplicates": {
            "threshold_cos": NEAR_DUPLICATE_COS, "n_clusters": clusters.height, "n_documents_in_clusters": in_clusters,
            "share_documents_in_clusters": in_clusters / n_docs,
            "largest_cluster": int(clusters["size"].max()) if clusters.height else 0,  # type: ignore[arg-type]
            "n_clusters_mixed_labels": int((clusters["labels"].list.len() > 1).sum()) if clusters.height else 0,
        },
        "hubness": hubness_summary,
        "ann": recall,
        "evaluation": {
            "queries": "probes" if probes else "given", "n_queries": diagnosed["n_queries"],
            "metrics": mean_metrics, "eval_dir": diagnosed["eval_dir"],
        },
        "diagnosis": {
            "verdict": diagnosed["verdict"], "failure_rate": diagnosed["failure_rate"],
            "n_failures": diagnosed["n_failures"], "share_failures_high_socm": diagnosed["share_failures_high_socm"],
            "collapse_auroc": diagnosed["collapse"]["auroc"], "cos_nn_auroc": diagnosed["cos_nn"]["auroc"],
        },
        "verdicts": {
            "model_check": "pass", "hubness": hubness_summary["verdict"],
            "ann": recall["verdict"], "mean_pooling": diagnosed["verdict"]["label"],
        },
        "command": command,
    }


# ---------------------------------------------------------------------------------------------- report


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def audit_report(result: AuditResult) -> Any:
    """ReportData: audit headline, the diagnosis' verdict / deciles / confusions, and the audit sections."""
    from rag_diag.report import Headline, ReportData, Section

    summary = result.summary
    base = result.diagnosis.report_data()
    check, dups, hub, ann = summary["model_check"], summary["near_duplicates"], summary["hubness"], summary["ann"]
    evaluation = summary["evaluation"]
    headline = [
        Headline("documents", f"{summary['n_documents']:,}",
                 f"dimension {summary['dim']}, {summary['store_kind']} store"),
        Headline("model agreement", _fmt(check["median_cos"], 4),
                 f"median cosine on {check['n_sample']} documents (need ≥ {MODEL_AGREEMENT_MIN})"),
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
    top_hubs = pl.DataFrame(hub["top_hubs"]).join(
        result.documents.select("doc_id", "cluster_id", "collapse_mean"), on="doc_id", how="left"
    )
    cluster_rows = result.clusters.with_columns(
        pl.col("doc_ids").list.head(6).list.join(", ").alias("members"),
        pl.col("labels").list.join(", ").alias("labels"),
    ).select("cluster_id", "size", "members", "labels", "min_edge_cos", "mean_collapse")
    sections = [
        Section("Model check", (
            f"Model '{check['model']}' re-encoded {check['n_sample']} seeded stored documents: cosine with the "
            f"stored vectors median {check['median_cos']:.5f}, min {check['min_cos']:.5f}, mean "
            f"{check['mean_cos']:.5f} (required median ≥ {MODEL_AGREEMENT_MIN}). Stored vectors are "
            f"{'L2-normalised' if check['normalised'] else 'not normalised'}.")),
        Section.from_frame("Hubness", top_hubs, (
            f"k-occurrence N_k over the {hub['k']}-NN graph (Σ N_k = {hub['sum_k_occurrence']:,} = N·k): skewness "
            f"{hub['skewness']:.3f} ({hub['verdict']}; high above {HIGH_HUBNESS_SKEW}), {hub['n_hubs']} hubs "
            f"(N_k ≥ {HUB_FACTOR}k), {hub['n_antihubs']} documents never a neighbour. Top hubs:")),
        Section("ANN recall", (
            f"recall@{ann['k']} of the stored {ann['index_type']} against exact search ({ann['metric']}) on "
            f"{ann['n_queries']} stored documents as queries: {ann['recall_at_k']:.4f} ({ann['verdict']}; "
            f"lossy below {ANN_RECALL_OK}). A flat index is exact by construction.")),
        Section.from_frame("Near-duplicate clusters", cluster_rows, (
            f"{dups['n_clusters']} connected components of kNN pairs with mean-pooled cosine ≥ {NEAR_DUPLICATE_COS}, "
            f"{dups['n_documents_in_clusters']} documents ({dups['share_documents_in_clusters']:.1%}); "
            f"{dups['n_clusters_mixed_labels']} clusters mix labels.")),
    ]
    if evaluation["queries"] == "probes":
        sections.append(Section("Probe queries", (
            "No queries were given. Each probe is a stored document with one meaning-bearing edit (number, "
            "negation, 'only' ↔ 'or later', swapped word); its relevant document is the original. A miss means "
            "the index cannot resolve that document from its near-duplicates at the scale of a one-word edit.")))
    return ReportData(
        title=f"rag-diag audit of {Path(summary['store']).name}",
        headline=headline, verdict=base.verdict, strategies=base.strategies,
        collapse_rates=result.documents["collapse_mean"].to_numpy(), deciles=base.deciles,
        confusions=base.confusions, sections=sections, commands=[summary["command"]],
        tables={"documents": result.documents, "clusters": result.clusters},
    )
