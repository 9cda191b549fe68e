"""LangChain FAISS stores: our export opens with FAISS.load_local and returns our neighbours; import back."""

from __future__ import annotations

import numpy as np
import pytest
from test_index_helpers import licence_beir, licence_bundle  # noqa: F401  (fixtures)

from rag_diag.corpora.io import load_corpus, load_qrels, load_queries
from rag_diag.index import IndexBundle, search
from rag_diag.langchain_io import build_langchain_store, export_langchain, import_langchain, load_langchain_store
from rag_diag.models import minilm_path
from rag_diag.pooling import index_vectors, pool_store

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embeddings():
    from langchain_huggingface import HuggingFaceEmbeddings

    return HuggingFaceEmbeddings(
        model_name=str(minilm_path()), model_kwargs={"device": "cpu"}, encode_kwargs={"normalize_embeddings": True}
    )


def test_export_loads_and_returns_our_top10(licence_bundle, licence_beir, embeddings, tmp_path):  # noqa: F811
    from langchain_community.vectorstores import FAISS

    from rag_diag.encode import encode_texts

    folder = export_langchain(licence_bundle.path, tmp_path / "lc")
    store = FAISS.load_local(str(folder), embeddings, allow_dangerous_deserialization=True)
    queries = load_queries(licence_beir / "queries.jsonl")
    query_store = encode_texts(queries.texts, model="minilm", ids=queries.ids)
    vectors = index_vectors(pool_store("mean", query_store), "cosine")
    _, rows = search(licence_bundle.index("mean"), vectors, 10, "cosine")
    ids = licence_bundle.doc_ids
    for text, row in zip(queries.texts, rows, strict=True):
        found = [doc.metadata["id"] for doc in store.similarity_search(text, k=10)]
        assert found == [ids[r] for r in row]


def test_load_store_round_trip(licence_bundle, licence_beir, tmp_path):  # noqa: F811
    folder = export_langchain(licence_bundle.path, tmp_path / "lc")
    index, doc_ids, texts, metadatas = load_langchain_store(folder)
    corpus = load_corpus(licence_beir)
    assert doc_ids == corpus.ids and texts == corpus.texts and metadatas[0] == {"id": corpus.ids[0]}
    np.testing.assert_array_equal(index.reconstruct_n(0, 5), licence_bundle.index("mean").reconstruct_n(0, 5))


def test_user_built_store_imports_and_evaluates(licence_beir, tmp_path):  # noqa: F811
    from rag_diag.evaluate import evaluate_bundle

    folder = build_langchain_store(load_corpus(licence_beir), "minilm", tmp_path / "user-store")
    bundle = import_langchain(folder, tmp_path / "imported")
    assert isinstance(bundle, IndexBundle) and bundle.strategies == ["mean"]
    queries = load_queries(licence_beir / "queries.jsonl")
    qrels = load_qrels(licence_beir / "qrels" / "test.tsv", queries)
    result = evaluate_bundle(bundle.path, queries, qrels, out=tmp_path / "eval")
    assert 0.0 < result.metrics["mean"]["P@1"] <= 1.0
