"""Audit of an existing vector store: built here with LangChain from real licence notices (ScanCode
LicenseDB, nexB, CC-BY-4.0), audited with the real default model."""

from __future__ import annotations

import json

import faiss
import numpy as np
import polars as pl
import pytest
from scipy import stats
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from test_index_helpers import write_licence_beir

from rag_diag.audit import StoredIndex, ann_recall, audit_store, check_model, load_stored_index
from rag_diag.corpora.io import load_corpus, load_qrels, load_queries
from rag_diag.errors import RagDiagError
from rag_diag.hubness import hubness, k_occurrence, near_duplicate_clusters

K = 4


@pytest.fixture(scope="module")
def beir(tmp_path_factory):
    return write_licence_beir(tmp_path_factory.mktemp("audit") / "beir", docs=5, queries=2)


@pytest.fixture(scope="module")
def lc_store(beir, tmp_path_factory):
    from rag_diag.langchain_io import build_langchain_store

    return build_langchain_store(load_corpus(beir), "minilm", tmp_path_factory.mktemp("audit") / "store")


@pytest.fixture(scope="module")
def audited(beir, lc_store, tmp_path_factory):
    out = tmp_path_factory.mktemp("audit") / "out"
    return audit_store(lc_store, "minilm", beir / "queries.jsonl", beir / "qrels" / "test.tsv", out=out, k=K,
                       sample=20)


# ---------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_audit_reports_every_document(audited, lc_store):
    stored = load_stored_index(lc_store)
    table = pl.read_parquet(audited.out / "documents.parquet")
    assert table["doc_id"].to_list() == stored.doc_ids
    expected = {"doc_id", "collapse_mean", "collapse_max", "top_confuser", "k_occurrence", "cluster_id",
                "concentration"}
    assert expected <= set(table.columns)
    assert table["collapse_mean"].is_not_null().all() and set(table["top_confuser"]) <= set(stored.doc_ids)
    assert int(table["k_occurrence"].sum()) == len(stored.doc_ids) * K
    summary = json.loads((audited.out / "audit.json").read_text())
    assert summary["model_check"]["passed"] and summary["model_check"]["median_cos"] >= 0.99
    assert summary["model_check"]["normalised"] is True
    assert summary["ann"]["recall_at_k"] == 1.0  # LangChain's default store is a flat index
    assert summary["evaluation"]["queries"] == "given" and summary["evaluation"]["n_queries"] == 12
    assert summary["verdicts"]["mean_pooling"] in ("adequate", "at risk", "unsuitable")
    for name in ("report.html", "summary.md", "clusters.parquet"):
        assert (audited.out / name).is_file()
    assert "Hubness" in (audited.out / "report.html").read_text()


@pytest.mark.slow
def test_audit_numbers_agree_with_evaluation(audited):
    metrics = json.loads((audited.out / "eval" / "metrics.json").read_text())
    assert audited.summary["evaluation"]["metrics"] == metrics["metrics"]["mean"]


@pytest.mark.slow
def test_cluster_table_matches_documents(audited):
    clusters = pl.read_parquet(audited.out / "clusters.parquet")
    documents = audited.documents.filter(pl.col("cluster_id").is_not_null())
    assert clusters["size"].sum() == documents.height
    for row in clusters.iter_rows(named=True):
        members = documents.filter(pl.col("cluster_id") == row["cluster_id"])["doc_id"].to_list()
        assert sorted(members) == sorted(row["doc_ids"]) and row["min_edge_cos"] >= 0.95


@pytest.mark.slow
def test_probe_mode_without_queries(lc_store, tmp_path):
    result = audit_store(lc_store, out=tmp_path / "probe", k=K, sample=10)
    assert result.summary["evaluation"]["queries"] == "probes"
    queries = load_queries(tmp_path / "probe" / "kb" / "queries.jsonl")
    qrels = load_qrels(tmp_path / "probe" / "kb" / "qrels" / "test.tsv", queries)
    stored = load_stored_index(lc_store)
    texts = dict(zip(stored.doc_ids, stored.texts, strict=True))
    for query_id, text in zip(queries.ids, queries.texts, strict=True):
        (source,) = qrels.relevant(query_id)
        assert text != texts[source] and len(text.split()) >= len(texts[source].split()) - 1


# ---------------------------------------------------------------------------------------------- refusals


@pytest.mark.slow
def test_store_of_another_model_is_refused(lc_store, tmp_path):
    with pytest.raises(RagDiagError, match="does not reproduce the stored vectors"):
        audit_store(lc_store, model="random-minilm", out=tmp_path / "x", sample=10)
    assert not (tmp_path / "x" / "audit.json").exists()


def test_dimension_mismatch_is_refused(tmp_path, minilm):
    index = faiss.IndexFlatIP(8)
    index.add(np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32))
    faiss.write_index(index, str(tmp_path / "index.faiss"))
    (tmp_path / "docs.txt").write_text("one text\nanother text\na third text\n")
    with pytest.raises(RagDiagError, match="dimension 8 but model 'minilm' has dimension 384"):
        audit_store(tmp_path / "index.faiss", documents=tmp_path / "docs.txt", out=tmp_path / "out")


def test_unnormalised_bare_index_passes_the_model_check(tmp_path, minilm, tiny_texts, tiny_store):
    from rag_diag.collapse_knn import mean_vectors

    index = faiss.IndexFlatIP(minilm.dim)
    index.add(mean_vectors(tiny_store))
    ids = [str(i) for i in range(len(tiny_texts))]
    stored = StoredIndex(tmp_path, "faiss", index, ids, list(tiny_texts), [{} for _ in ids])
    check = check_model(stored, minilm, sample=5, seed=0)
    assert check.n_sample == 5 and check.median_cos > 0.9999 and check.normalised is False


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    import rag_diag.cli.audit  # noqa: F401  (registers the commands)
    from rag_diag.cli import main

    status = main(["audit", "--store", str(tmp_path / "missing"), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.startswith("error: ") and "missing" in err and len(err.splitlines()) == 1


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
    assert result.skewness == pytest.approx(stats.skew(brute, bias=True))
    assert result.n_antihubs == brute.count(0) and result.n_hubs == sum(c >= 2 * k for c in brute)


def test_knn_graph_of_real_vectors_has_nk_sum(tiny_store):
    from rag_diag.collapse_knn import knn_neighbours, mean_vectors

    neighbours = knn_neighbours(mean_vectors(tiny_store), 3)
    assert hubness(neighbours).k_occurrence.sum() == len(tiny_store) * 3


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


def test_ann_recall_flat_is_exact_and_coarse_ivf_is_not():
    rng = np.random.default_rng(2)
    vectors = rng.standard_normal((500, 16)).astype(np.float32)
    faiss.normalize_L2(vectors)
    flat = faiss.IndexFlatIP(16)
    flat.add(vectors)
    rows = np.arange(0, 500, 10)
    assert ann_recall(flat, vectors, rows, 10)["recall_at_k"] == 1.0
    quantizer = faiss.IndexFlatIP(16)
    ivf = faiss.IndexIVFFlat(quantizer, 16, 32, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.seed = 0
    ivf.train(vectors)
    ivf.add(vectors)
    ivf.nprobe = 1
    result = ann_recall(ivf, vectors, rows, 10)
    assert result["recall_at_k"] < 0.95 and result["verdict"] == "lossy"


def test_ann_recall_counts_ties_as_hits():
    vectors = np.repeat(np.eye(4, dtype=np.float32), 3, axis=0)  # every vector has two exact duplicates
    flat = faiss.IndexFlatIP(4)
    flat.add(vectors[::-1].copy())  # another order: tied neighbours come back in another order
    assert ann_recall(flat, vectors[::-1].copy(), np.arange(12), 2)["recall_at_k"] == 1.0
