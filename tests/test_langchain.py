"""LangChain FAISS stores: our export opens with FAISS.load_local and returns our neighbours; a store
read back (and a user-built one) evaluates like the index it holds.

Fast tests export and re-import bundles built with the deterministic MockEncoder; the slow ones use
the real MiniLM through LangChain's own HuggingFaceEmbeddings.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_index_helpers import licence_beir  # noqa: F401  (fixture)

from rag_diag.corpora.io import Corpus, load_beir
from rag_diag.errors import RagDiagError
from rag_diag.evaluation.evaluate import evaluate_bundle
from rag_diag.retrieval.bundle import IndexBundle
from rag_diag.stores.langchain import build_langchain_store, load_langchain_store
from rag_diag.stores.stored import open_store


@pytest.fixture(scope="module")
def mock_encoder():
    from rag_diag.models.mock import MockEncoder

    return MockEncoder(max_seq_length=128)


@pytest.fixture(scope="module")
def mock_bundle(licence_beir, mock_encoder):  # noqa: F811
    from rag_diag.retrieval.bundle import build_indexes

    corpus, _, _ = load_beir(licence_beir)
    return build_indexes(corpus, model=mock_encoder, strategies="mean")


def imported_bundle(folder, model_identity: dict) -> IndexBundle:
    """What replaced ``import_langchain``: open the store, wrap its own index as an in-memory bundle."""
    stored = open_store(folder)
    return IndexBundle.from_index(stored.index, stored.doc_ids, model=model_identity,
                                  corpus_sha256=stored.corpus().content_hash(), source=str(folder))


# ---------------------------------------------------------------------------------------------- fast


def test_load_store_round_trip(mock_bundle, licence_beir, tmp_path):  # noqa: F811
    corpus, _, _ = load_beir(licence_beir)
    folder = mock_bundle.export_langchain(corpus, tmp_path / "lc")
    index, doc_ids, texts, metadatas = load_langchain_store(folder)
    assert doc_ids == corpus.ids and texts == corpus.texts and metadatas[0] == {"id": corpus.ids[0]}
    np.testing.assert_array_equal(index.reconstruct_n(0, index.ntotal),
                                  mock_bundle.index("mean").reconstruct_n(0, index.ntotal))


def test_export_refuses_another_corpus(mock_bundle, licence_beir, tmp_path):  # noqa: F811
    corpus, _, _ = load_beir(licence_beir)
    shuffled = Corpus(ids=corpus.ids[::-1], texts=corpus.texts[::-1])
    with pytest.raises(RagDiagError, match="differs from the one the index was built from"):
        mock_bundle.export_langchain(shuffled, tmp_path / "lc")
    assert not (tmp_path / "lc").exists()


def test_imported_store_evaluates_like_its_index(mock_bundle, mock_encoder, licence_beir, tmp_path):  # noqa: F811
    corpus, queries, qrels = load_beir(licence_beir)
    folder = mock_bundle.export_langchain(corpus, tmp_path / "lc")
    bundle = imported_bundle(folder, mock_encoder.identity)
    assert bundle.strategies == ["mean"] and bundle.path is None and bundle.doc_ids == corpus.ids
    imported = evaluate_bundle(bundle, queries, qrels, model=mock_encoder)
    original = evaluate_bundle(mock_bundle, queries, qrels, model=mock_encoder)
    assert imported.metrics == original.metrics  # the same vectors and the same queries: equal runs
    for query_id, ranking in original.runs["mean"].items():
        assert imported.runs["mean"][query_id].doc_ids == ranking.doc_ids


# ---------------------------------------------------------------------------------------------- real model


@pytest.fixture(scope="module")
def minilm_bundle(licence_beir, minilm):  # noqa: F811
    from rag_diag.retrieval.bundle import build_indexes

    corpus, _, _ = load_beir(licence_beir)
    return build_indexes(corpus, model=minilm, strategies="mean")


@pytest.fixture(scope="module")
def embeddings(minilm):
    from langchain_huggingface import HuggingFaceEmbeddings

    return HuggingFaceEmbeddings(model_name=minilm.identity["source"], model_kwargs={"device": "cpu"},
                                 encode_kwargs={"normalize_embeddings": True})


@pytest.mark.slow
def test_export_loads_and_returns_our_top10(minilm_bundle, minilm, licence_beir, embeddings, tmp_path):  # noqa: F811
    from langchain_community.vectorstores import FAISS

    from rag_diag.pooling import index_vectors, pool_store
    from rag_diag.retrieval.index import search
    from rag_diag.tokens.extract import encode_texts

    corpus, queries, _ = load_beir(licence_beir)
    folder = minilm_bundle.export_langchain(corpus, tmp_path / "lc")
    store = FAISS.load_local(str(folder), embeddings, allow_dangerous_deserialization=True)
    query_store = encode_texts(queries.texts, model=minilm, ids=queries.ids)
    vectors = index_vectors(pool_store("mean", query_store), "cosine")
    scores, rows = search(minilm_bundle.index("mean"), vectors, 11, "cosine")
    ids, eps32 = minilm_bundle.doc_ids, float(np.finfo(np.float32).eps)
    checked = 0
    for position, (text, row) in enumerate(zip(queries.texts, rows, strict=True)):
        found = [doc.metadata["id"] for doc in store.similarity_search(text, k=10)]
        # LangChain embeds the query itself (batch of one): its unit query q' is off ours by ‖q − q'‖, so each
        # unit document's score moves by ≤ ‖q − q'‖ plus a d-term float32 dot product's rounding, (d + 2)·eps32,
        # on each side; two places can swap only where adjacent scores are closer than twice that
        theirs = np.asarray(embeddings.embed_query(text), dtype=np.float64)
        slack = 2 * (float(np.linalg.norm(theirs - vectors[position])) + (len(theirs) + 2) * eps32)
        gaps = -np.diff(scores[position].astype(np.float64))  # 10 gaps between the 11 scores
        for place in range(10):
            if gaps[place] > slack and (place == 0 or gaps[place - 1] > slack):
                assert found[place] == ids[row[place]], (text, place)
                checked += 1
    assert checked >= 5 * len(queries.texts), "too few places decided by more than the query's drift"


@pytest.mark.slow
def test_user_built_store_imports_and_evaluates(minilm_bundle, minilm, licence_beir, tmp_path):  # noqa: F811
    corpus, queries, qrels = load_beir(licence_beir)
    folder = build_langchain_store(corpus, "minilm", tmp_path / "user-store")
    bundle = imported_bundle(folder, minilm.identity)
    assert bundle.strategies == ["mean"] and bundle.doc_ids == corpus.ids
    imported = evaluate_bundle(bundle, queries, qrels, model="minilm")
    ours = evaluate_bundle(minilm_bundle, queries, qrels, model="minilm")
    assert 0.5 < imported.metrics["mean"]["P@1"] <= 1.0  # 6 labels: chance is ~1/6
    theirs = open_store(folder).vectors(np.arange(len(corpus)))
    own = minilm_bundle.index("mean").reconstruct_n(0, len(corpus)).astype(np.float64)
    cosines = (theirs * own).sum(axis=1) / np.linalg.norm(theirs, axis=1) / np.linalg.norm(own, axis=1)
    assert cosines.min() > 0.99999  # the same model and pooling; float32 batch-padding noise is ~1e-6
    # rankings can then differ only where two scores are closer than that noise (< 1e-5): compare the
    # top documents wherever the gap is larger
    for query_id, ranking in ours.runs["mean"].items():
        other = imported.runs["mean"][query_id]
        if ranking.scores[0] - ranking.scores[1] > 1e-5:
            assert other.doc_ids[0] == ranking.doc_ids[0], query_id
