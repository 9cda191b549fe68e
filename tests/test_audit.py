"""Audit of an existing vector store.

Fast tests audit a LangChain store exported from a MockEncoder index of real licence notices
(ScanCode LicenseDB, nexB, CC-BY-4.0) with queries whose outcome is known by construction; the slow
ones build the store with LangChain itself and audit it with the real default model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import faiss
import numpy as np
import polars as pl
import pytest
from scipy import stats
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from test_collapse import gram_atol
from test_index_helpers import write_licence_beir

from rag_diag.corpora.io import Corpus, Qrels, Queries, load_beir, load_corpus
from rag_diag.diagnosis.duplicates import NEAR_DUPLICATE_COS, near_duplicate_clusters
from rag_diag.diagnosis.hubness import hubness, k_occurrence
from rag_diag.diagnosis.store_checks import ann_recall, check_model
from rag_diag.errors import RagDiagError
from rag_diag.jobs.audit import audit_store, write_audit
from rag_diag.models.mock import MockEncoder
from rag_diag.sampling import seeded_sample
from rag_diag.stores.stored import StoredIndex, open_store

K = 4
EPS64 = float(np.finfo(np.float64).eps)
# Two notices that differ in one word: their mean vectors are near-duplicates (cosine ≥ 0.95).
DUP_TEXT = ("This program is free software; you can redistribute it and/or modify it under the terms of the "
            "GNU General Public License as published by the Free Software Foundation; either version {} of "
            "the License, or (at your option) any later version.")
DUPS = {"dup-2": DUP_TEXT.format("2"), "dup-3": DUP_TEXT.format("3")}
N_QUERIES, MISJUDGED = 10, 2


@dataclass
class OtherMock(MockEncoder):
    """Same dimension and tokenizer as MockEncoder, other token vectors: another model (and so, by the
    Encoder contract, another identity — the identity keys the token cache)."""

    name: str = "other-mock"

    def _token_vector(self, token_id: int) -> np.ndarray:
        return np.random.default_rng(token_id + 7).standard_normal(self.dim).astype(np.float32)


@pytest.fixture(scope="module")
def mock_encoder():
    return MockEncoder(max_seq_length=128)


@pytest.fixture(scope="module")
def kb(tmp_path_factory) -> Corpus:
    corpus = load_corpus(write_licence_beir(tmp_path_factory.mktemp("audit") / "beir", docs=5, queries=0))
    return Corpus(ids=[*corpus.ids, *DUPS], texts=[*corpus.texts, *DUPS.values()])


@pytest.fixture(scope="module")
def mock_store(kb, mock_encoder, tmp_path_factory):
    """A LangChain FAISS store of normalised mock mean vectors, opened as a store under audit."""
    from rag_diag.retrieval.bundle import build_indexes

    bundle = build_indexes(kb, model=mock_encoder, strategies="mean")
    return open_store(bundle.export_langchain(kb, tmp_path_factory.mktemp("audit") / "store"))


def copy_queries(kb: Corpus) -> tuple[Queries, Qrels]:
    """Queries that are exact copies of the first N_QUERIES notices, so each ranks its copy first (cosine 1;
    no other notice has the same text). The first MISJUDGED are judged relevant to the *next* notice
    instead, so exactly they fail: failure rate 2/10 = 0.20, between 0.10 and 0.30 → "at risk" by the
    rule whatever the collapse evidence says."""
    ids = [f"q{i}" for i in range(N_QUERIES)]
    judged = {q: {kb.ids[i + 1 if i < MISJUDGED else i]: 1} for i, q in enumerate(ids)}
    return Queries(ids=ids, texts=kb.texts[:N_QUERIES]), Qrels(judged)


@pytest.fixture(scope="module")
def audited(kb, mock_store, mock_encoder):
    queries, qrels = copy_queries(kb)
    return audit_store(mock_store, model=mock_encoder, queries=queries, qrels=qrels, k=K, sample=20,
                       command="rag-diag audit (test)")


@pytest.fixture(scope="module")
def written(audited, tmp_path_factory):
    return write_audit(audited, tmp_path_factory.mktemp("audit") / "out")


# ---------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow  # a whole audit: BM25, fusion, re-rankers, windows (ranx compiles its kernels)
def test_audit_reports_every_document(audited, mock_store, written):
    table = pl.read_parquet(written / "documents.parquet")
    assert table["doc_id"].to_list() == mock_store.doc_ids
    expected = {"doc_id", "collapse_mean", "collapse_max", "top_confuser", "k_occurrence", "cluster_id",
                "concentration"}
    assert expected <= set(table.columns)
    assert table["collapse_mean"].is_not_null().all() and set(table["top_confuser"]) <= set(mock_store.doc_ids)
    assert int(table["k_occurrence"].sum()) == len(mock_store.doc_ids) * K
    summary = json.loads((written / "audit.json").read_text())
    # the store holds the same model's normalised means: agreement is float32 rounding away from 1
    assert summary["model_check"]["passed"] and summary["model_check"]["median_cos"] > 1 - 1e-6
    assert summary["model_check"]["normalised"] is True
    assert summary["ann"]["recall_at_k"] == 1.0  # our export is a flat index: exact by construction
    assert summary["evaluation"]["queries"] == "given" and summary["evaluation"]["n_queries"] == N_QUERIES
    for name in ("report.html", "summary.md", "clusters.parquet", "eval/metrics.json", "collapse/summary.json",
                 "diagnosis/diagnosis.json"):
        assert (written / name).is_file(), name
    assert "Hubness" in (written / "report.html").read_text()
    # the mock store's documents carry no label: the mixing of labels is unknown, not zero
    assert summary["near_duplicates"]["n_labelled_documents"] == 0
    assert summary["near_duplicates"]["n_clusters_mixed_labels"] is None
    assert "whether clusters mix labels is unknown" in (written / "report.html").read_text()


@pytest.mark.slow  # a whole audit: BM25, fusion, re-rankers, windows (ranx compiles its kernels)
def test_verdict_is_the_one_the_queries_were_built_for(audited):
    diagnosis = audited.diagnosis
    failed = set(diagnosis.failures["query_id"].to_list())
    assert failed == {f"q{i}" for i in range(MISJUDGED)}
    for row in diagnosis.failures.iter_rows(named=True):  # each misjudged query ranks its own copy first
        assert row["confuser_id"] == audited.evaluation.runs["mean"][row["query_id"]].doc_ids[0]
    assert audited.summary["diagnosis"]["failure_rate"] == MISJUDGED / N_QUERIES
    assert audited.summary["verdicts"]["mean_pooling"] == "at risk"


@pytest.mark.slow  # a whole audit: BM25, fusion, re-rankers, windows (ranx compiles its kernels)
def test_audit_numbers_agree_with_evaluation(audited, written):
    metrics = json.loads((written / "eval" / "metrics.json").read_text())
    assert audited.summary["evaluation"]["metrics"] == metrics["metrics"]["mean"]
    assert metrics["metrics"]["mean"]["P@1"] == 1 - MISJUDGED / N_QUERIES


@pytest.mark.slow  # a whole audit: BM25, fusion, re-rankers, windows (ranx compiles its kernels)
def test_cluster_table_matches_documents(audited, written):
    clusters = pl.read_parquet(written / "clusters.parquet")
    documents = audited.documents.filter(pl.col("cluster_id").is_not_null())
    assert clusters["size"].sum() == documents.height
    for row in clusters.iter_rows(named=True):
        members = documents.filter(pl.col("cluster_id") == row["cluster_id"])["doc_id"].to_list()
        assert sorted(members) == sorted(row["doc_ids"]) and row["min_edge_cos"] >= NEAR_DUPLICATE_COS
    ids = audited.documents.filter(pl.col("doc_id").is_in(list(DUPS)))["cluster_id"].to_list()
    assert ids[0] is not None and ids[0] == ids[1]  # the one-word variants are near-duplicates


@pytest.mark.slow  # a whole audit: BM25, fusion, re-rankers, windows (ranx compiles its kernels)
def test_probe_mode_without_queries(mock_store, mock_encoder):
    result = audit_store(mock_store, model=mock_encoder, k=K, sample=10)
    assert result.summary["evaluation"]["queries"] == "probes"
    texts = dict(zip(mock_store.doc_ids, mock_store.texts, strict=True))
    qrels = result.evaluation.qrels.judgements
    assert qrels and set(qrels) <= set(result.diagnosis.query_texts)
    for query_id, judged in qrels.items():
        ((source, _),) = judged.items()
        text = result.diagnosis.query_texts[query_id]
        assert text != texts[source] and len(text.split()) >= len(texts[source].split()) - 1


# ---------------------------------------------------------------------------------------------- refusals


def test_store_of_another_model_is_refused(mock_store):
    with pytest.raises(RagDiagError, match="does not reproduce the stored vectors"):
        audit_store(mock_store, model=OtherMock(max_seq_length=128), sample=10)


def test_dimension_mismatch_is_refused(tmp_path):
    index = faiss.IndexFlatIP(8)
    index.add(np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32))
    faiss.write_index(index, str(tmp_path / "index.faiss"))
    (tmp_path / "docs.txt").write_text("one text\nanother text\na third text\n")
    stored = open_store(tmp_path / "index.faiss", tmp_path / "docs.txt")
    with pytest.raises(RagDiagError, match="dimension 8 but model 'mock' has dimension 16"):
        audit_store(stored, model=MockEncoder())


def test_unnormalised_bare_index_passes_the_model_check(tmp_path, tiny_texts, mock_encoder):
    from rag_diag.tokens.extract import encode_texts

    store = encode_texts(tiny_texts, model=mock_encoder, out=tmp_path / "tokens", cache=False)
    index = faiss.IndexFlatIP(mock_encoder.dim)
    index.add(store.means())
    ids = [str(i) for i in range(len(tiny_texts))]
    stored = StoredIndex(tmp_path, "faiss", index, ids, list(tiny_texts), [{} for _ in ids])
    check = check_model(stored, mock_encoder, sample=5, seed=0)
    # identical tokens give identical means: cosine is 1 up to float32 rounding (~1e-7)
    assert check.n_sample == 5 and check.median_cos > 1 - 1e-6 and check.normalised is False


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    from rag_diag.cli import main

    status = main(["audit", "--store", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.startswith("error: ") and "missing" in err and len(err.splitlines()) == 1


# ---------------------------------------------------------------------------------------------- real model


@pytest.fixture(scope="module")
def lc_store(tmp_path_factory):
    from rag_diag.stores.langchain import build_langchain_store

    beir = write_licence_beir(tmp_path_factory.mktemp("audit") / "real", docs=5, queries=2)
    corpus = load_beir(beir)[0]
    labelled = replace(corpus, metadata=[{"label": rule_label(doc_id)} for doc_id in corpus.ids])
    return beir, build_langchain_store(labelled, "minilm", tmp_path_factory.mktemp("audit") / "lc")


def rule_label(rule_id: str) -> str:
    """A ScanCode rule's licence: its file name's stem without the rule number (``gpl-2.0_12`` → ``gpl-2.0``)."""
    return rule_id.rsplit("_", 1)[0]


@pytest.mark.slow
def test_real_store_audit_end_to_end(lc_store, tmp_path):
    import pytrec_eval

    from rag_diag.cli import main

    beir, folder = lc_store
    out = tmp_path / "out"
    assert main(["audit", "--store", str(folder), "--model", "minilm", "--queries", str(beir / "queries.jsonl"),
                 "--qrels", str(beir / "qrels" / "test.tsv"), "--k", str(K), "--sample", "20",
                 "--out", str(out)]) == 0
    summary = json.loads((out / "audit.json").read_text())
    stored = open_store(folder)
    assert summary["n_documents"] == len(stored.doc_ids) == 30 and summary["evaluation"]["n_queries"] == 12
    # the library's own pass mark (MODEL_AGREEMENT_MIN): the same model reproduces its vectors far above it
    assert summary["model_check"]["passed"] and summary["model_check"]["median_cos"] >= 0.99
    assert summary["model_check"]["normalised"] is True  # LangChain was asked to normalise
    assert summary["ann"]["recall_at_k"] == 1.0  # LangChain's default store is a flat index
    assert pl.read_parquet(out / "documents.parquet")["k_occurrence"].sum() == 30 * K
    # the failure rate, independently: 1 − P@1 of the written mean run under trec_eval
    qrels = {}
    for line in (out / "eval" / "qrels.tsv").read_text().splitlines()[1:]:
        query_id, doc_id, score = line.split("\t")
        qrels.setdefault(query_id, {})[doc_id] = int(score)
    from rag_diag.corpora.trec import read_trec_run

    run = read_trec_run(out / "eval" / "runs" / "mean.trec")
    p_at_1 = np.mean([v["P_1"] for v in pytrec_eval.RelevanceEvaluator(qrels, {"P.1"}).evaluate(run).values()])
    rate = summary["diagnosis"]["failure_rate"]
    assert rate == pytest.approx(1 - p_at_1, abs=1e-12)  # a count over 12 queries, two ways
    label = summary["verdicts"]["mean_pooling"]
    if rate <= 0.10:
        assert label == "adequate"
    elif rate < 0.30:
        assert label == "at risk"
    else:
        assert label == ("unsuitable" if summary["diagnosis"]["verdict"]["collapse_implicated"] else "at risk")
    assert "Hubness" in (out / "report.html").read_text()
    # the store kept the corpus's labels: clusters mixing them, counted again from the written cluster table
    labels = [{rule_label(doc_id) for doc_id in row["doc_ids"]}
              for row in pl.read_parquet(out / "clusters.parquet").iter_rows(named=True)]
    assert summary["near_duplicates"]["n_labelled_documents"] == 30
    assert summary["near_duplicates"]["n_clusters_mixed_labels"] == sum(len(found) > 1 for found in labels)


@pytest.mark.slow
def test_store_of_another_real_model_is_refused(lc_store):
    _, folder = lc_store
    with pytest.raises(RagDiagError, match="does not reproduce the stored vectors"):
        audit_store(open_store(folder), model="random-minilm", sample=10)


# ---------------------------------------------------------------------------------------------- graph statistics


def test_k_occurrence_matches_brute_force_and_sums_to_nk():
    rng = np.random.default_rng(0)
    n_docs, k = 40, 5
    neighbours = np.stack(
        [rng.choice(np.delete(np.arange(n_docs), row), size=k, replace=False) for row in range(n_docs)]
    )
    counts = k_occurrence(neighbours, n_docs)
    brute = [sum(target in neighbours[row] for row in range(n_docs)) for target in range(n_docs)]
    assert counts.tolist() == brute and counts.sum() == n_docs * k
    result = hubness(neighbours)
    # both are scipy's biased skewness of the same 40 integers: equal up to float rounding
    assert result.skewness == pytest.approx(stats.skew(brute, bias=True), rel=1e-12)
    assert result.n_antihubs == brute.count(0) and result.n_hubs == sum(c >= 2 * k for c in brute)


def test_knn_graph_of_mock_vectors_has_nk_sum(tiny_texts, mock_encoder, tmp_path):
    from rag_diag.collapse.knn import neighbour_graph
    from rag_diag.tokens.extract import encode_texts

    store = encode_texts(tiny_texts, model=mock_encoder, out=tmp_path / "tokens", cache=False)
    neighbours = neighbour_graph(store.means(), 3).neighbours  # exact below EXACT_LIMIT
    assert all(row not in neighbours[row] for row in range(len(store)))  # self excluded
    assert hubness(neighbours).k_occurrence.sum() == len(store) * 3


def test_clusters_are_scipy_connected_components():
    rng = np.random.default_rng(1)
    n_docs = 60
    doc_a = np.repeat(np.arange(n_docs), 3)
    doc_b = rng.integers(0, n_docs, size=len(doc_a))
    cos = rng.uniform(0.8, 1.0, size=len(doc_a))
    ours = near_duplicate_clusters(n_docs, doc_a, doc_b, cos, 0.97)
    keep = cos >= 0.97
    graph = coo_matrix((np.ones(keep.sum()), (doc_a[keep], doc_b[keep])), shape=(n_docs, n_docs))
    _, theirs = connected_components(graph, directed=False)
    sizes = np.bincount(theirs)
    assert ((ours == -1) == (sizes[theirs] == 1)).all()
    for a in range(n_docs):
        for b in range(a + 1, n_docs):
            assert (ours[a] >= 0 and ours[a] == ours[b]) == (theirs[a] == theirs[b])
    assert ours.max() + 1 == int((sizes >= 2).sum())
    cluster_sizes = np.bincount(ours[ours >= 0])
    assert (np.diff(cluster_sizes) <= 0).all()  # numbered by decreasing size


def _as_store(index: faiss.Index, native=None) -> StoredIndex:
    ids = [str(i) for i in range(index.ntotal)]
    return StoredIndex(Path("store"), "faiss", index, ids, ids, [{} for _ in ids], native_search=native)


def test_ann_recall_flat_is_exact_and_coarse_ivf_is_not():
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((500, 16)).astype(np.float32)
    faiss.normalize_L2(vectors)
    flat = faiss.IndexFlatIP(16)
    flat.add(vectors)
    rows = np.arange(0, 500, 10)
    assert ann_recall(_as_store(flat), vectors, rows, 10)["recall_at_k"] == 1.0
    quantizer = faiss.IndexFlatIP(16)
    ivf = faiss.IndexIVFFlat(quantizer, 16, 32, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.seed = 0
    ivf.train(vectors)
    ivf.add(vectors)
    ivf.nprobe = 1
    result = ann_recall(_as_store(ivf), vectors, rows, 10)
    assert result["recall_at_k"] < 0.95 and result["verdict"] == "lossy" and result["index_type"] == "IndexIVFFlat"


def test_ann_recall_measures_the_store_own_search_when_it_has_one():
    """A store's own search (here one that drops its 10th hit) is what is measured, not the exact copy."""
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((200, 8)).astype(np.float32)
    faiss.normalize_L2(vectors)
    flat = faiss.IndexFlatIP(8)
    flat.add(vectors)

    def drops_last(queries, k):
        found = flat.search(queries, k)[1]
        found[:, -1] = -1
        return found

    result = ann_recall(_as_store(flat, drops_last), vectors, np.arange(0, 200, 5), 10)
    assert result["recall_at_k"] == pytest.approx(0.9, abs=1e-12) and result["native"]
    assert result["index_type"] == "faiss search"


@pytest.mark.parametrize("metric", [faiss.METRIC_INNER_PRODUCT, faiss.METRIC_L2])
def test_ann_recall_read_chunk_by_chunk_matches_a_float64_reference(metric):
    """The exact search reads the true vectors 7 rows at a time (across chunk edges) from a function, as the audit
    does from a store: each query's recall equals the float64 brute-force count of the IVF's hits scoring at least
    the k-th best exact score (less the tie tolerance)."""
    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((300, 8)).astype(np.float32)
    ivf = faiss.IndexIVFFlat(faiss.IndexFlat(8, metric), 8, 16, metric)
    ivf.cp.seed = 0
    ivf.train(vectors)
    ivf.add(vectors)
    ivf.nprobe = 2
    rows, k = np.arange(0, 300, 7), 10
    result = ann_recall(_as_store(ivf), lambda asked: vectors[asked], rows, k, chunk=7)
    exact = vectors.astype(np.float64)
    found = ivf.search(vectors[rows], k)[1]
    # the library counts hits against faiss' float32 k-th score, this test against the float64 one: they differ by
    # ≤ γ, a float32 inner product's or squared distance's rounding, so the count lies between the counts at kth ± γ
    eps32, norms = float(np.finfo(np.float32).eps), np.linalg.norm(exact, axis=1)
    low, high = [], []
    for query, hits in zip(rows, found, strict=True):
        scores = -((exact - exact[query]) ** 2).sum(axis=1) if metric == faiss.METRIC_L2 else exact @ exact[query]
        gamma = ((8 + 4) * eps32 * (norms[query] + norms.max()) ** 2 if metric == faiss.METRIC_L2
                 else (8 + 2) * eps32 * norms[query] * norms.max())
        kth, hit_scores = np.sort(scores)[::-1][k - 1], scores[hits[hits >= 0]]
        low.append(np.count_nonzero(hit_scores >= kth + 2 * gamma) / k)
        high.append(np.count_nonzero(hit_scores >= kth - 2 * gamma) / k)
    assert all(lo <= got <= hi for lo, got, hi in zip(low, result["per_query"], high, strict=True))
    assert 0 < result["recall_at_k"] < 1  # the IVF misses some neighbours: the check is not vacuous


def test_ann_recall_counts_ties_as_hits():
    vectors = np.repeat(np.eye(4, dtype=np.float32), 3, axis=0)  # every vector has two exact duplicates
    flat = faiss.IndexFlatIP(4)
    flat.add(vectors[::-1].copy())  # another order: tied neighbours come back in another order
    assert ann_recall(_as_store(flat), vectors[::-1].copy(), np.arange(12), 2)["recall_at_k"] == 1.0


# ---------------------------------------------------------------------------------------------- bounded memory


@pytest.mark.slow  # two whole audits
def test_budget_below_the_token_store_audits_from_shard_built_summaries(kb, mock_store, mock_encoder, audited):
    """A budget smaller than the token store: the pass is shard-built, kNN collapse runs on the rank-r
    summaries and reports its bound, which holds against the token-store audit's exact SOCM; every run (the
    store's own, BM25, the re-rankers) scores the same; the pass keeps the rows of the documents the evaluation
    reads rather than encoding them again."""
    queries, qrels = copy_queries(kb)
    store_bytes = audited.summary["estimate"]["store_bytes"]
    plans: list = []
    small = audit_store(mock_store, model=mock_encoder, queries=queries, qrels=qrels, k=K, sample=20,
                        memory_budget=store_bytes // 4, command="rag-diag audit (small budget)", on_plan=plans.append)
    memory = small.summary["memory"]
    assert [plan.to_dict() for plan in plans] == [memory]  # announced before the pass, as it ran
    assert audited.summary["memory"]["mode"] == "token-store" and memory["mode"] == "summaries"
    timings = small.summary["timings"]
    assert memory["shard_docs"] < len(kb.ids) and timings["n_shards"] > 1
    parts = (timings["pass_encode_seconds"], timings["pass_summaries_seconds"])  # parts of the pass, timed inside it
    assert min(parts) > 0 and sum(parts) <= timings["encode_seconds"]
    assert small.tokens is None and memory["rank"] >= 1
    bound = small.summary["collapse"]["error_bound"]
    exact, approx = audited.collapse.pairs, small.collapse.pairs
    for column in ("doc_a", "doc_b"):  # the same kNN pairs: the summaries keep the means exactly
        assert exact[column].to_list() == approx[column].to_list()
    # the bound (maths) plus one Gram-route rounding per side, at the longest text and largest trace here
    docs = audited.collapse.docs
    width, trace = int(docs["n_tokens"].max()), float(docs["concentration"].max())
    rounding = gram_atol(width, mock_encoder.dim, trace, trace) + gram_atol(memory["rank"], mock_encoder.dim,
                                                                           trace, trace)
    errors = np.abs(exact["socm"].to_numpy() - approx["socm"].to_numpy())
    assert errors.max() <= bound["max_socm_error_bound"] + rounding
    # the re-rankers read the candidates' rows the pass kept (bit for bit the mock's rows): the same scores
    small_metrics, whole_metrics = small.evaluation.manifest["metrics"], audited.evaluation.manifest["metrics"]
    assert [name for name in small_metrics if name.startswith("rerank-")]
    # over summaries the windowed candidate is the store's top-k re-ranked by best chunk; the rest is the same
    assert set(small_metrics) - set(whole_metrics) == {"rerank-windowed"}
    assert set(whole_metrics) - set(small_metrics) == {"windowed"}
    for name in set(small_metrics) & set(whole_metrics):
        assert small_metrics[name] == whole_metrics[name], name
    kept = small.summary["timings"]["evaluation_documents_kept"]
    assert kept < len(kb.ids) and "evaluation_documents_encoded" not in small.summary["timings"]
    assert small.summary["long_chunks"] == audited.summary["long_chunks"]
    # the truncation figures are the corpus', not those of the documents the evaluation kept
    assert small.diagnosis.summary["truncation"] == audited.diagnosis.summary["truncation"]
    assert small.diagnosis.summary["truncation"]["n_documents"] == len(kb.ids)
    # the windowed re-rank is the one a whole-corpus windowed index gives the same head: the held documents' index
    # has the same chunks
    from rag_diag.evaluation.candidates import windowed_rerank_run
    from rag_diag.retrieval.windowed import WindowedIndex
    from rag_diag.tokens.extract import encode_texts

    depth = small.evaluation.manifest["rerank"]["depth"]
    judged = [q for q in queries.ids if q in qrels.judgements]
    query_store = encode_texts([queries.texts[queries.ids.index(q)] for q in judged], model=mock_encoder, ids=judged)
    reference = windowed_rerank_run(WindowedIndex.build(kb, mock_encoder, audited.tokens),
                                    audited.evaluation.runs["mean"], query_store, depth)
    for query_id, ranking in small.evaluation.runs["rerank-windowed"].items():
        assert ranking.doc_ids == reference[query_id].doc_ids
        np.testing.assert_array_equal(ranking.scores, reference[query_id].scores)
    # and it lets the taxonomy check truncation: no cause is left unchecked
    assert [row["cause"] for row in small.diagnosis.summary["taxonomy"] if row["not_checked"]] == []
    assert small.summary["exact_duplicates"] == audited.summary["exact_duplicates"]


@pytest.mark.slow  # a sampled audit beside the full one
def test_estimate_mode_samples_documents_and_brackets_the_full_audit(kb, mock_store, mock_encoder, audited):
    """--estimate: encodes only the sample, its neighbours and the relevant documents; graph figures equal the
    full audit's (same neighbours: the stored vectors are the model's means), the collapse rates of the rated
    documents equal the full audit's exactly, and the interval holds the sample mean it is built around."""
    queries, qrels = copy_queries(kb)
    sample = 6
    small = audit_store(mock_store, model=mock_encoder, queries=queries, qrels=qrels, k=K, sample=sample,
                        estimate_only=True, command="rag-diag audit --estimate (test)")
    estimates = small.summary["estimates"]
    assert small.summary["memory"]["mode"] == "sample" and estimates["sample"] == sample
    full_docs = audited.documents.sort("doc_id")
    rated = small.documents.filter(pl.col("collapse_mean").is_not_null()).sort("doc_id")
    assert 0 < rated.height < len(kb.ids)
    reference = full_docs.filter(pl.col("doc_id").is_in(rated["doc_id"].implode()))
    # the same exact SOCM pairs by the Gram route both times, in differently padded pair groups: each SOCM is off by
    # ≤ gram_atol per evaluation (at the longest text and largest normalised trace), so a mean of k of them by twice
    # that, plus the k-term sum's rounding
    docs = audited.collapse.docs
    width, trace = int(docs["n_tokens"].max()), float(docs["concentration"].max())
    socm = reference["collapse_mean"].to_numpy()
    atol = 2 * gram_atol(width, mock_encoder.dim, trace, trace) + K * EPS64 * float(np.abs(socm).max())
    np.testing.assert_allclose(rated["collapse_mean"].to_numpy(), socm, atol=atol, rtol=0)
    assert small.summary["timings"]["documents_encoded_for_collapse"] <= len(kb.ids)
    assert small.summary["hubness"]["skewness"] == pytest.approx(audited.summary["hubness"]["skewness"], abs=1e-9)
    assert estimates["hubness_skew"]["ci_low"] == estimates["hubness_skew"]["value"]
    rate = estimates["mean_collapse_rate"]
    assert rate["ci_low"] <= rate["value"] <= rate["ci_high"] and rate["n"] == sample
    rows = small.documents["doc_id"].to_list()
    sampled_ids = [rows[r] for r in seeded_sample(len(rows), sample, 0)]
    sampled_rates = small.documents.filter(pl.col("doc_id").is_in(sampled_ids))["collapse_mean"].to_numpy()
    assert rate["value"] == pytest.approx(float(sampled_rates.mean()), abs=1e-12)
    # the other corpus figures and the high-SOCM threshold are the random sample's too, not every rated document's
    # (the rated set adds the relevant documents and top hits)
    assert small.summary["collapse"]["median_collapse_rate"] == float(np.median(sampled_rates))
    from rag_diag.diagnosis.verdict import HIGH_SOCM_QUANTILE

    sample_pairs = small.collapse.pairs.filter(pl.col("doc_a").is_in(pl.Series(sampled_ids).implode()))
    threshold = small.diagnosis.summary["high_socm_threshold"]
    assert threshold["n_pairs"] == sample * K < small.collapse.pairs.height
    assert threshold["value"] == float(np.quantile(sample_pairs["socm"].to_numpy(), HIGH_SOCM_QUANTILE))
    assert estimates["truncated_share"]["value"] == audited.summary["long_chunks"]["share"]
    truncation, whole = small.diagnosis.summary["truncation"], audited.diagnosis.summary["truncation"]
    assert (truncation["n_documents"], truncation["n_truncated"], truncation["tokens_cut"]) == (
        len(kb.ids), whole["n_truncated"], whole["tokens_cut"])
    # the hub rule reads each confuser's N_k over the whole graph, not over the rated documents' neighbour lists
    failures = small.diagnosis.failures.drop_nulls("confuser_id")
    n_k = dict(zip(audited.documents["doc_id"].to_list(), audited.documents["k_occurrence"].to_list(), strict=True))
    assert failures.height > 0
    assert failures["confuser_k_occurrence"].to_list() == [n_k[c] for c in failures["confuser_id"].to_list()]


@pytest.mark.slow  # a sampled audit (BM25, fusion, re-rankers)
def test_estimate_mode_rates_every_document_tied_with_a_top_hit(kb, mock_encoder, tmp_path):
    """Exact duplicates tie at the top of a query's ranking, and a deeper search may order them otherwise: every
    tied document is rated (found at 100,000 kb-scale documents, where the evaluation's confuser was the twin)."""
    from rag_diag.retrieval.bundle import build_indexes

    twin = Corpus(ids=[*kb.ids, "twin-a", "twin-b"], texts=[*kb.texts, kb.texts[3], kb.texts[3]])
    store = open_store(build_indexes(twin, model=mock_encoder, strategies="mean").export_langchain(
        twin, tmp_path / "store"))
    queries = Queries(ids=["q-twin"], texts=[kb.texts[3]])  # ties kb.ids[3], twin-a and twin-b at cosine 1
    qrels = Qrels({"q-twin": {kb.ids[0]: 1}})  # judged elsewhere: the query fails, its confuser a tied document
    small = audit_store(store, model=mock_encoder, queries=queries, qrels=qrels, k=K, sample=1, estimate_only=True)
    rated = set(small.documents.filter(pl.col("collapse_mean").is_not_null())["doc_id"].to_list())
    assert {kb.ids[3], "twin-a", "twin-b", kb.ids[0]} <= rated
    assert small.summary["diagnosis"]["n_failures"] == 1


def test_neighbour_cosines_in_chunks_equal_the_float64_dot_products():
    from rag_diag.jobs.sampled import neighbour_cosines

    rng = np.random.default_rng(3)
    unit = rng.normal(size=(11, 5))
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    neighbours = rng.integers(0, 11, size=(11, 3))
    expected = [unit[i] @ unit[j] for i in range(11) for j in neighbours[i]]
    # two 5-term float64 sums of products of unit-norm entries, each within 5·eps of the exact value
    np.testing.assert_allclose(neighbour_cosines(unit, neighbours, chunk=4), expected, rtol=0,
                               atol=2 * 5 * np.finfo(np.float64).eps)


def test_all_vectors_are_the_stored_vectors_in_float32_read_in_chunks():
    """``all_vectors`` equals the float64 read-back cast to float32, across chunk edges; with ``unit`` each row is
    that row normalised in float64 then rounded (so within one float32 rounding, eps32/2 relative), zero rows
    staying zero."""
    rng = np.random.default_rng(6)
    vectors = rng.standard_normal((23, 6)).astype(np.float32)
    vectors[7] = 0.0
    flat = faiss.IndexFlatIP(6)
    flat.add(vectors)
    stored = _as_store(flat)
    raw = stored.all_vectors(chunk=5)
    assert raw.dtype == np.float32
    np.testing.assert_array_equal(raw, vectors)
    unit = stored.all_vectors(unit=True, chunk=5)
    want = vectors.astype(np.float64)
    norms = np.linalg.norm(want, axis=1, keepdims=True)
    want = np.divide(want, norms, out=np.zeros_like(want), where=norms > 0)
    eps32 = float(np.finfo(np.float32).eps)
    np.testing.assert_allclose(unit, want, rtol=eps32, atol=0)
    assert not unit[7].any()


@pytest.mark.parametrize(("engine", "estimate", "message"), [
    (("local", "127.0.0.1:1"), False, "--ray-address needs --engine ray"),
    (("ray", None), True, "--estimate encodes only its sample, on the local engine"),
    (("spark", None), False, "--engine must be local or ray"),
])
def test_engine_options_that_would_be_ignored_are_refused(mock_store, mock_encoder, engine, estimate, message):
    from rag_diag.jobs.corpus_pass import Engine

    with pytest.raises(RagDiagError, match=message):
        audit_store(mock_store, model=mock_encoder, k=K, engine=Engine(*engine), estimate_only=estimate)
