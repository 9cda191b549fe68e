"""LlamaIndex persisted storage (``index.storage_context.persist(persist_dir=FOLDER)``) read as a store under audit.

The stores are built with ``llama-index`` itself, as a user would: ``TextNode``s that carry their embeddings
go into a ``VectorStoreIndex`` (LlamaIndex's default ``SimpleVectorStore``, or a ``FaissVectorStore``), whose
embed model refuses to embed, so nothing is ever embedded or downloaded. Fast tests use a few hand-made
vectors (row order, metrics, index ids, refusals, the writer); the slow ones store the real default model's
mean vectors of real licence notices (ScanCode LicenseDB, nexB, CC-BY-4.0) with one planted exact
duplicate, and audit them.
"""

from __future__ import annotations

import json
import sys

import faiss
import numpy as np
import pytest

from rag_diag.errors import RagDiagError
from rag_diag.stores.protocol import StoreReader, StoreRows
from rag_diag.stores.stored import stored_from_reader

PIN = "llama-index-core==0.14.25"
FAISS_PIN = "llama-index-vector-stores-faiss==0.7.0"


@pytest.fixture(scope="module")
def core():
    """``llama_index.core`` (the test is skipped, with the install command, when it is missing)."""
    return pytest.importorskip("llama_index.core", reason=f"needs llama-index-core: pip install {PIN}")


@pytest.fixture(scope="module")
def faiss_store(core):
    """LlamaIndex's ``FaissVectorStore`` class (skipped, with the install command, when missing)."""
    module = pytest.importorskip("llama_index.vector_stores.faiss", reason=f"needs {FAISS_PIN}")
    return module.FaissVectorStore


def guard():
    """An embed model that raises if LlamaIndex ever tries to embed (every node carries its vector)."""
    from rag_diag.stores.llamaindex import _refusing_embedding

    return _refusing_embedding()


def nodes_of(ids, texts, vectors, metadatas=None):
    from llama_index.core.schema import TextNode

    metadatas = metadatas or [{} for _ in ids]
    return [TextNode(id_=i, text=t, metadata=m, embedding=np.asarray(v, dtype=np.float32).tolist())
            for i, t, v, m in zip(ids, texts, vectors, metadatas, strict=True)]


def build(folder, core, nodes, *, vector_store=None, index_id=None, storage=None):
    """A VectorStoreIndex over ``nodes`` persisted to ``folder`` (``storage``: add it to a shared context)."""
    storage = storage or core.StorageContext.from_defaults(vector_store=vector_store)
    index = core.VectorStoreIndex(nodes, storage_context=storage, embed_model=guard())
    if index_id is not None:
        index.set_index_id(index_id)
    index.storage_context.persist(persist_dir=str(folder))
    return index


def read(folder, index_id=None):
    from rag_diag.stores.llamaindex import LlamaIndexReader

    return LlamaIndexReader(folder, index_id)


def one_line_error(match, folder, index_id=None):
    with pytest.raises(RagDiagError, match=match) as error:
        read(folder, index_id)
    assert "\n" not in str(error.value)
    return str(error.value)


# ----------------------------------------------------------------------------------------------- fast


@pytest.fixture
def small():
    """Five 4-d vectors (not unit length) with ids inserted out of order, and metadata (one node without)."""
    vectors = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32) * 3.0
    ids = ["e", "b", "d", "a", "c"]
    metadatas = [{"label": f"l{i}", "page": ord(i)} if i != "b" else {} for i in ids]
    return vectors, ids, [f"text {i}" for i in ids], metadatas


def test_simple_store_rows_sorted_by_node_id_with_vectors_bit_for_bit(tmp_path, core, small):
    vectors, ids, texts, metadatas = small
    build(tmp_path / "s", core, nodes_of(ids, texts, vectors, metadatas), index_id="docs")
    # the format: a JSON embedding_dict keyed by node id, nodes_dict mapping each node id to itself
    stored_json = json.loads((tmp_path / "s" / "default__vector_store.json").read_text())
    assert sorted(stored_json["embedding_dict"]) == sorted(ids)
    structure = json.loads(json.loads((tmp_path / "s" / "index_store.json").read_text())
                           ["index_store/data"]["docs"]["__data__"])
    assert structure["nodes_dict"] == {i: i for i in ids}
    order = np.argsort(ids)
    reader = read(tmp_path / "s")
    assert isinstance(reader, StoreReader)
    assert (reader.kind, reader.collection, reader.dim, reader.distance, len(reader)) == (
        "llamaindex", "docs", 4, "cosine", 5)
    assert reader.ids() == ["a", "b", "c", "d", "e"]
    # raw node text: the metadata LlamaIndex prepends for embedding is not part of it
    assert reader.texts() == ["text a", "text b", "text c", "text d", "text e"]
    assert reader.metadatas() == [{"label": "la", "page": 97}, {}, {"label": "lc", "page": 99},
                                  {"label": "ld", "page": 100}, {"label": "le", "page": 101}]
    batches = list(reader.vectors(batch_size=2))
    assert [len(b) for b in batches] == [2, 2, 1] and all(b.dtype == np.float32 for b in batches)
    # LlamaIndex writes float32 values as JSON doubles, which read back exactly: no tolerance
    np.testing.assert_array_equal(np.concatenate(batches), vectors[order])
    assert reader.faiss_index() is None and reader.search(vectors[:2], 3) is None
    # the audited index is the exact cosine one: inner product on the unit vectors (float32 rounding of a
    # division by the norm: ≤ a few ulp of 1, far below 1e-6)
    stored = stored_from_reader(reader)
    assert isinstance(stored.index, faiss.IndexFlat) and stored.index.metric_type == faiss.METRIC_INNER_PRODUCT
    unit = vectors[order] / np.linalg.norm(vectors[order], axis=1, keepdims=True)
    np.testing.assert_allclose(stored.vectors(np.arange(5)), unit, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("flat", "metric", "distance"), [
    (faiss.IndexFlatL2, faiss.METRIC_L2, "l2"), (faiss.IndexFlatIP, faiss.METRIC_INNER_PRODUCT, "dot"),
])
def test_faiss_store_rows_in_faiss_order_with_its_own_index(tmp_path, core, faiss_store, small, flat, metric,
                                                            distance):
    vectors, ids, texts, metadatas = small
    build(tmp_path / "f", core, nodes_of(ids, texts, vectors, metadatas), vector_store=faiss_store(flat(4)),
          index_id="docs")
    # the format: the same file name as the simple store, but a binary FAISS index; nodes_dict maps the
    # FAISS row (as a string) to the node id
    on_disk = faiss.read_index(str(tmp_path / "f" / "default__vector_store.json"))
    assert type(on_disk) is flat and on_disk.ntotal == 5
    structure = json.loads(json.loads((tmp_path / "f" / "index_store.json").read_text())
                           ["index_store/data"]["docs"]["__data__"])
    assert structure["nodes_dict"] == {str(row): i for row, i in enumerate(ids)}
    reader = read(tmp_path / "f")
    assert (reader.ids(), reader.texts(), reader.metadatas()) == (ids, texts, metadatas)
    assert (reader.distance, reader.dim, reader.collection) == (distance, 4, "docs")
    index = reader.faiss_index()
    assert type(index) is flat and index.metric_type == metric and index.ntotal == 5
    assert reader.search(vectors[:2], 3) is None
    np.testing.assert_array_equal(np.concatenate(list(reader.vectors(batch_size=3))), vectors)
    assert stored_from_reader(reader).index is index  # audited as is, not an exact copy


def test_several_indexes_need_an_index_id(tmp_path, core, small):
    vectors, ids, texts, _ = small
    storage = core.StorageContext.from_defaults()
    build(tmp_path / "m", core, nodes_of(ids[:3], texts[:3], vectors[:3]), storage=storage, index_id="first")
    build(tmp_path / "m", core, nodes_of(["x", "y"], ["x", "y"], vectors[3:] * 2), storage=storage,
          index_id="second")
    message = one_line_error(r"2 LlamaIndex collections \(first, second\); choose one", tmp_path / "m")
    assert "llamaindex://FOLDER#INDEX_ID" in message
    one_line_error(r"no LlamaIndex collection 'third' \(found: first, second\)", tmp_path / "m", "third")
    first, second = read(tmp_path / "m", "first"), read(tmp_path / "m", "second")
    assert (first.collection, first.ids(), first.texts()) == ("first", ["b", "d", "e"], ["text b", "text d", "text e"])
    assert (second.collection, second.ids()) == ("second", ["x", "y"])
    np.testing.assert_array_equal(np.concatenate(list(second.vectors())), vectors[3:] * 2)


def test_faiss_index_shared_by_two_indexes_is_refused(tmp_path, core, faiss_store, small):
    vectors, ids, texts, _ = small
    storage = core.StorageContext.from_defaults(vector_store=faiss_store(faiss.IndexFlatL2(4)))
    build(tmp_path / "m", core, nodes_of(ids[:3], texts[:3], vectors[:3]), storage=storage, index_id="first")
    build(tmp_path / "m", core, nodes_of(ids[3:], texts[3:], vectors[3:]), storage=storage, index_id="second")
    one_line_error(r"#second: FAISS row 0 maps to no node \(3 of 5 rows unmapped; is the FAISS index shared",
                   tmp_path / "m", "second")


def test_refusals_are_one_line(tmp_path, core, small):
    vectors, ids, texts, _ = small
    one_line_error("not a LlamaIndex storage folder", tmp_path)
    # a node deleted from the docstore but still indexed
    index = build(tmp_path / "d", core, nodes_of(ids, texts, vectors), index_id="docs")
    index.docstore.delete_document("d")
    index.storage_context.persist(persist_dir=str(tmp_path / "d"))
    one_line_error(r"#docs: node 'd' is not in docstore.json", tmp_path / "d")
    # an embedding deleted from the vector store but the node still indexed
    index = build(tmp_path / "v", core, nodes_of(ids, texts, vectors), index_id="docs")
    index.vector_store.delete_nodes(["c"])
    index.storage_context.persist(persist_dir=str(tmp_path / "v"))
    one_line_error(r"#docs: node 'c' has no embedding in default__vector_store.json \(1 of 5", tmp_path / "v")
    # no vector store file, a corrupt one, an empty index, no vector index at all
    build(tmp_path / "n", core, nodes_of(ids, texts, vectors))
    (tmp_path / "n" / "default__vector_store.json").unlink()
    one_line_error("LlamaIndex storage without a vector store", tmp_path / "n")
    build(tmp_path / "c", core, nodes_of(ids, texts, vectors))
    (tmp_path / "c" / "default__vector_store.json").write_text('{"embedding_dict": ')
    one_line_error("unreadable LlamaIndex storage", tmp_path / "c")
    build(tmp_path / "e", core, [], index_id="none")
    one_line_error(r"#none: the index is empty", tmp_path / "e")
    core.SummaryIndex(nodes_of(ids, texts, vectors)).storage_context.persist(persist_dir=str(tmp_path / "s"))
    one_line_error("holds no vector index", tmp_path / "s")


def test_missing_library_is_one_line_with_pip_command(tmp_path, core, faiss_store, small, monkeypatch):
    vectors, ids, texts, _ = small
    build(tmp_path / "s", core, nodes_of(ids, texts, vectors))
    build(tmp_path / "f", core, nodes_of(ids, texts, vectors), vector_store=faiss_store(faiss.IndexFlatL2(4)))
    monkeypatch.setitem(sys.modules, "llama_index.vector_stores.faiss", None)  # its import → ImportError
    message = one_line_error("needs the", tmp_path / "f")
    assert message == f"reading a LlamaIndex FAISS store needs the 'llama-index-vector-stores-faiss' package: " \
                      f"pip install {FAISS_PIN}"
    assert read(tmp_path / "s").ids() == sorted(ids)  # the simple store needs only the core
    monkeypatch.setitem(sys.modules, "llama_index.core", None)
    message = one_line_error("needs the", tmp_path / "s")
    assert message == f"reading a LlamaIndex store needs the 'llama-index-core' package: pip install {PIN}"


def test_writer_never_embeds(core):
    from llama_index.core.schema import TextNode

    with pytest.raises(RagDiagError, match="LlamaIndex asked to embed a text"):
        core.VectorStoreIndex([TextNode(id_="a", text="no vector")], embed_model=guard())


@pytest.mark.parametrize(("flavour", "distance", "kind", "read_as"), [
    ("simple", "cosine", faiss.IndexFlat, "cosine"), ("faiss", "cosine", faiss.IndexFlatIP, "dot"),
    ("faiss", "dot", faiss.IndexFlatIP, "dot"), ("faiss", "l2", faiss.IndexFlatL2, "l2"),
])
def test_write_llamaindex_round_trips(tmp_path, core, faiss_store, small, flavour, distance, kind, read_as):
    from rag_diag.stores.llamaindex import write_llamaindex

    vectors, ids, texts, metadatas = small
    if distance == "cosine":
        vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    spec = write_llamaindex(tmp_path / "w", StoreRows(ids, texts, metadatas, vectors, distance), flavour=flavour)
    assert spec == str(tmp_path / "w")
    reader = read(spec)
    rows = np.argsort(ids) if flavour == "simple" else np.arange(5)  # sorted ids, or FAISS rows as written
    assert reader.ids() == [ids[r] for r in rows] and reader.texts() == [texts[r] for r in rows]
    assert reader.metadatas() == [metadatas[r] for r in rows]
    assert (reader.distance, reader.collection) == (read_as, "rag-diag")
    np.testing.assert_array_equal(np.concatenate(list(reader.vectors())), vectors[rows])
    index = stored_from_reader(reader).index
    assert type(index) is kind and (reader.faiss_index() is index) == (flavour == "faiss")
    # LlamaIndex itself loads the folder and retrieves a stored vector's own node first
    storage = core.StorageContext.from_defaults(
        persist_dir=spec, vector_store=faiss_store.from_persist_dir(spec) if flavour == "faiss" else None)
    loaded = core.load_index_from_storage(storage, embed_model=guard())
    from llama_index.core.schema import QueryBundle

    hits = loaded.as_retriever(similarity_top_k=2).retrieve(QueryBundle("q", embedding=vectors[1].tolist()))
    assert hits[0].node.node_id == ids[1] and hits[0].node.get_content() == texts[1]


def test_rewritten_index_keeps_its_nodes_relationships_and_index_id(tmp_path, core, small):
    """``audit --export`` of a LlamaIndex store: documents split into nodes keep their source document (the
    docstore's ref-doc records) and excluded metadata keys; only the vectors change."""
    from llama_index.core.schema import NodeRelationship, RelatedNodeInfo

    from rag_diag.stores.llamaindex import write_llamaindex

    vectors, ids, texts, metadatas = small
    nodes = nodes_of(ids, texts, vectors / np.linalg.norm(vectors, axis=1, keepdims=True), metadatas)
    for position, node in enumerate(nodes):
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=f"chapter-{position % 2}")
        node.excluded_embed_metadata_keys = ["page"]
    build(tmp_path / "s", core, nodes, index_id="mine")
    stored = stored_from_reader(read(tmp_path / "s"))
    new_vectors = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    new_vectors /= np.linalg.norm(new_vectors, axis=1, keepdims=True)
    write_llamaindex(tmp_path / "w", StoreRows(stored.doc_ids, stored.texts, stored.metadatas, new_vectors, "cosine",
                                               layout=stored.layout))
    reader = read(tmp_path / "w")
    assert (reader.ids(), reader.texts(), reader.metadatas(), reader.collection) == (
        stored.doc_ids, stored.texts, stored.metadatas, "mine")
    np.testing.assert_array_equal(np.concatenate(list(reader.vectors())), new_vectors)
    before, after = (core.StorageContext.from_defaults(persist_dir=str(tmp_path / name)).docstore for name in "sw")
    def members(docstore):  # each source document's nodes (in insertion order, which the reader's row order sets)
        return {doc: sorted(info.node_ids) for doc, info in docstore.get_all_ref_doc_info().items()}

    assert members(after) == members(before) == {"chapter-0": ["c", "d", "e"], "chapter-1": ["a", "b"]}
    for node_id in stored.doc_ids:
        old, new = before.get_node(node_id), after.get_node(node_id)
        assert (new.ref_doc_id, new.excluded_embed_metadata_keys) == (old.ref_doc_id, ["page"])


def test_writer_refusals(tmp_path, small):
    from rag_diag.stores.llamaindex import write_llamaindex

    vectors, ids, texts, metadatas = small
    with pytest.raises(RagDiagError, match="a simple LlamaIndex store ranks by cosine, not dot"):
        write_llamaindex(tmp_path / "w", StoreRows(ids, texts, metadatas, vectors, "dot"))
    with pytest.raises(RagDiagError, match="unknown LlamaIndex store flavour 'hnsw'"):
        write_llamaindex(tmp_path / "w", StoreRows(ids, texts, metadatas, vectors, "l2"), flavour="hnsw")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a store")
    with pytest.raises(RagDiagError, match="not empty and was not written by rag-diag"):
        write_llamaindex(tmp_path / "mine", StoreRows(ids, texts, metadatas, vectors, "l2"), flavour="faiss")
    assert not (tmp_path / "w").exists() and (tmp_path / "mine" / "notes.txt").read_text() == "not a store"


# ----------------------------------------------------------------------------------------------- slow


@pytest.fixture(scope="module")
def real_store(licences, minilm, core, faiss_store, tmp_path_factory):
    """The real model's L2-normalised mean vectors as node embeddings, nodes added shuffled: a simple store
    and a FAISS store over an HNSW inner-product index; and a simple store of CLS vectors."""
    from rag_diag.tokens.extract import encode_texts

    doc_ids, texts, labels = licences
    tokens = encode_texts(texts, model=minilm, ids=doc_ids)
    means = tokens.means().astype(np.float32)
    unit = means / np.linalg.norm(means, axis=1, keepdims=True)
    cls = np.stack([tokens.tokens(i)[0] for i in range(len(texts))])
    order = np.random.default_rng(1).permutation(len(texts))
    metadatas = [{"label": lab} for lab in labels]
    shuffled = nodes_of([doc_ids[i] for i in order], [texts[i] for i in order], unit[order],
                        [metadatas[i] for i in order])
    root = tmp_path_factory.mktemp("llamaindex")
    build(root / "simple", core, shuffled)
    hnsw = faiss.IndexHNSWFlat(unit.shape[1], 16, faiss.METRIC_INNER_PRODUCT)
    build(root / "faiss", core, shuffled, vector_store=faiss_store(hnsw))
    build(root / "cls", core, nodes_of(doc_ids, texts, cls, metadatas))
    return root, unit, order


@pytest.mark.slow
def test_real_store_round_trips_and_audits(real_store, licences, minilm):
    from rag_diag.jobs.audit import audit_store

    root, unit, _ = real_store
    doc_ids, texts, labels = licences
    rows = np.argsort(doc_ids)
    reader = read(root / "simple")
    assert len(doc_ids) >= 19 and reader.ids() == sorted(doc_ids)
    assert reader.texts() == [texts[r] for r in rows] and reader.metadatas() == [{"label": labels[r]} for r in rows]
    np.testing.assert_array_equal(np.concatenate(list(reader.vectors(batch_size=7))), unit[rows])
    result = audit_store(stored_from_reader(reader), model=minilm, k=3, sample=10)
    check = result.summary["model_check"]
    assert check["passed"] and check["median_cos"] >= 0.99  # the store holds this model's normalised means
    assert result.summary["store_kind"] == "llamaindex" and result.summary["n_documents"] == len(doc_ids)
    clusters = [set(members) for members in result.clusters["doc_ids"].to_list()]
    assert any({doc_ids[0], "planted-copy"} <= members for members in clusters), clusters


@pytest.mark.slow
def test_store_of_cls_vectors_is_refused(real_store, minilm):
    from rag_diag.jobs.audit import audit_store

    root, _, _ = real_store
    refusal = r"the stored vectors agree with minilm\+cls, not minilm\+mean .*pass --pooling cls$"
    with pytest.raises(RagDiagError, match=refusal) as error:
        audit_store(stored_from_reader(read(root / "cls")), model=minilm, k=3, sample=10)
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_faiss_store_audits_its_own_hnsw_index(real_store, licences, minilm):
    from rag_diag.jobs.audit import audit_store

    root, unit, order = real_store
    doc_ids, _, _ = licences
    reader = read(root / "faiss")
    assert reader.ids() == [doc_ids[i] for i in order] and reader.distance == "dot"
    # IndexHNSWFlat keeps the vectors uncompressed: reconstruct gives them back exactly
    np.testing.assert_array_equal(np.concatenate(list(reader.vectors())), unit[order])
    result = audit_store(stored_from_reader(reader), model=minilm, k=3, sample=10)
    assert result.summary["ann"]["index_type"] == type(reader.faiss_index()).__name__ == "IndexHNSWFlat"
    assert result.summary["model_check"]["median_cos"] >= 0.99
    clusters = [set(members) for members in result.clusters["doc_ids"].to_list()]
    assert any({doc_ids[0], "planted-copy"} <= members for members in clusters), clusters
