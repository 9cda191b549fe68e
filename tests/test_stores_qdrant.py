"""Qdrant local mode (``QdrantClient(path=FOLDER)``) read as a store under audit.

The stores are built with ``qdrant-client`` itself, as a user would. Fast tests use a few hand-made
vectors (distances, ids, payload shapes, URIs, refusals); the slow ones store the real default model's
mean vectors of real licence notices (ScanCode LicenseDB, nexB, CC-BY-4.0) with one planted exact
duplicate, and audit them.
"""

from __future__ import annotations

import json
import sys
import uuid

import faiss
import numpy as np
import pytest

from rag_diag.errors import RagDiagError
from rag_diag.stores.protocol import StoreReader
from rag_diag.stores.stored import open_reader, open_store

PIN = "qdrant-client==1.20.0"
HINT = f"needs qdrant-client: pip install {PIN}"
COLLECTION = "licences"


@pytest.fixture(scope="module")
def qdrant():
    """The ``qdrant_client`` module (the test is skipped, with the install command, when it is missing)."""
    return pytest.importorskip("qdrant_client", reason=HINT)


def build(folder, qdrant, vectors, *, ids, payloads, distance="Cosine", collection=COLLECTION, name=None):
    """A local-mode collection written through the client, points upserted in the given order; closed."""
    models = qdrant.models
    params = models.VectorParams(size=vectors.shape[1], distance=models.Distance(distance))
    client = qdrant.QdrantClient(path=str(folder))
    try:
        client.create_collection(collection, vectors_config=params if name is None else {name: params})
        client.upsert(collection, points=[
            models.PointStruct(id=point_id, vector=vector.tolist() if name is None else {name: vector.tolist()},
                               payload=payload)
            for point_id, vector, payload in zip(ids, vectors, payloads, strict=True)
        ])
    finally:
        client.close()
    return folder


def client_vectors(folder, qdrant, ids, collection=COLLECTION):
    """What the client itself returns for ``ids``, float32, in that order."""
    client = qdrant.QdrantClient(path=str(folder))
    try:
        records = {r.id: r.vector for r in client.retrieve(collection, ids=ids, with_vectors=True)}
    finally:
        client.close()
    return np.asarray([records[i] for i in ids], dtype=np.float32)


# ----------------------------------------------------------------------------------------------- fast


@pytest.fixture
def small(tmp_path, qdrant):
    """Five 4-d points, inserted out of id order, with integer ids whose string order differs (10 < 9)."""
    vectors = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    ids = [10, 2, 9, 0, 1]
    payloads = [{"text": f"text {i}", "label": f"l{i}"} for i in ids]
    return vectors, ids, payloads


@pytest.mark.parametrize(("distance", "metric"), [("Dot", faiss.METRIC_INNER_PRODUCT), ("Euclid", faiss.METRIC_L2)])
def test_rows_sorted_by_id_and_vectors_kept_as_stored(tmp_path, qdrant, small, distance, metric):
    vectors, ids, payloads = small
    stored = open_store(build(tmp_path / "q", qdrant, vectors, ids=ids, payloads=payloads, distance=distance))
    order = np.argsort(ids)
    assert stored.kind == "qdrant" and stored.doc_ids == ["0", "1", "2", "9", "10"]
    assert stored.texts == [f"text {i}" for i in sorted(ids)]
    assert stored.metadatas == [{"label": f"l{i}"} for i in sorted(ids)]
    assert stored.index.metric_type == metric and stored.index.ntotal == 5
    np.testing.assert_array_equal(stored.vectors(np.arange(5)).astype(np.float32), vectors[order])


def test_cosine_store_is_inner_product_on_unit_vectors(tmp_path, qdrant, small):
    vectors, ids, payloads = small
    folder = build(tmp_path / "q", qdrant, vectors * 3.0, ids=ids, payloads=payloads, distance="Cosine")
    stored = open_store(folder)
    got = stored.vectors(np.arange(5))
    assert stored.index.metric_type == faiss.METRIC_INNER_PRODUCT
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6, rtol=0)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(got, unit[np.argsort(ids)], atol=1e-6, rtol=0)
    scores, rows = stored.index.search(np.ascontiguousarray(got[:1], dtype=np.float32), 5)
    assert rows[0, 0] == 0 and scores[0, 0] == pytest.approx(1.0, abs=1e-6)


def test_manhattan_is_refused(tmp_path, qdrant, small):
    vectors, ids, payloads = small
    folder = build(tmp_path / "q", qdrant, vectors, ids=ids, payloads=payloads, distance="Manhattan")
    with pytest.raises(RagDiagError, match="Manhattan is not supported"):
        open_store(folder)


def test_uuid_ids_after_integers_and_langchain_payload(tmp_path, qdrant):
    """LangChain's QdrantVectorStore writes UUID ids and {page_content, metadata: {...}} payloads."""
    vectors = np.eye(4, dtype=np.float32)
    uuids = sorted(str(uuid.uuid5(uuid.NAMESPACE_URL, f"doc{i}")) for i in range(3))
    ids = [uuids[2], 7, uuids[0], uuids[1]]
    payloads = [{"page_content": f"page {i}", "metadata": {"source": f"s{i}"}} for i in range(4)]
    stored = open_store(build(tmp_path / "q", qdrant, vectors, ids=ids, payloads=payloads, distance="Dot"))
    assert stored.doc_ids == ["7", *uuids]
    assert stored.texts == ["page 1", "page 2", "page 3", "page 0"]
    assert stored.metadatas[0] == {"source": "s1"} and stored.metadatas[3] == {"source": "s0"}
    np.testing.assert_array_equal(stored.vectors(np.arange(4)), vectors[[1, 2, 3, 0]])


def test_llamaindex_payload_text_comes_from_the_node(tmp_path, qdrant):
    """LlamaIndex's Qdrant store writes node_to_metadata_dict(node): the node's metadata flat, beside the node as
    JSON and its ref_doc_id three times. Metadata keys named like a text key stay metadata."""
    schema = pytest.importorskip("llama_index.core.schema", reason="needs llama-index-core")
    from llama_index.core.vector_stores.utils import node_to_metadata_dict

    nodes = [schema.TextNode(text=f"chunk {i}", metadata={"label": f"l{i}", "document": "report.pdf", "text": "x"})
             for i in range(2)]
    nodes[0].relationships[schema.NodeRelationship.SOURCE] = schema.RelatedNodeInfo(node_id="report")
    payloads = [node_to_metadata_dict(node, remove_text=False, flat_metadata=False) for node in nodes]
    ids = sorted(node.node_id for node in nodes)
    by_id = {node.node_id: payload for node, payload in zip(nodes, payloads, strict=True)}
    stored = open_store(build(tmp_path / "q", qdrant, np.eye(2, 4, dtype=np.float32), ids=ids,
                              payloads=[by_id[i] for i in ids]))
    expected = {node.node_id: (node.text, {**node.metadata, **({"ref_doc_id": "report"} if node is nodes[0] else {})})
                for node in nodes}
    assert stored.doc_ids == ids
    assert list(zip(stored.texts, stored.metadatas, strict=True)) == [expected[i] for i in ids]


@pytest.mark.parametrize("derived", [True, False])
def test_haystack_meta_is_lifted_and_its_ids_read(tmp_path, qdrant, derived):
    """Haystack's layout: payload Document.to_dict(flatten=False) = {id, content, meta: {...}, ...}, point id the
    UUID5 of ``id`` in Haystack's namespace (as hex), so its ids are found without ?id=id (needed otherwise)."""
    namespace = uuid.UUID("3896d314-1e95-4a3a-b45a-945f9f0b541d")  # haystack_integrations' Qdrant converters
    payloads = [{"id": f"h{i}", "content": f"text {i}", "blob": None, "meta": {"label": f"l{i}", "page": i}}
                for i in range(2)]
    ids = [uuid.uuid5(namespace, p["id"]).hex for p in payloads] if derived else [0, 1]
    folder = build(tmp_path / "q", qdrant, np.eye(2, 4, dtype=np.float32), ids=ids, payloads=payloads)
    stored = open_store(folder if derived else f"qdrant+path://{folder}?id=id#{COLLECTION}")
    assert sorted(zip(stored.doc_ids, stored.texts, strict=True)) == [("h0", "text 0"), ("h1", "text 1")]
    assert sorted(stored.metadatas, key=lambda m: m["page"]) == [
        {"blob": None, "label": "l0", "page": 0}, {"blob": None, "label": "l1", "page": 1}]


def test_written_store_keeps_a_metadata_key_named_like_its_id_key(tmp_path):
    pytest.importorskip("qdrant_client", reason=HINT)
    from rag_diag.stores.protocol import StoreRows
    from rag_diag.stores.qdrant import ID_KEY, write_qdrant

    metadatas = [{"label": "a", ID_KEY: "EXT-9"}, {"label": "b"}]
    spec = write_qdrant(tmp_path / "w", StoreRows(ids=["d1", "d2"], texts=["one", "two"], metadatas=metadatas,
                                                  vectors=np.eye(2, 4, dtype=np.float32), distance="cosine"),
                        collection=COLLECTION)
    stored = open_store(spec)
    assert dict(zip(stored.doc_ids, stored.metadatas, strict=True)) == {"d1": metadatas[0], "d2": metadatas[1]}


def test_rewritten_collection_keeps_point_ids_payloads_and_vector_name(tmp_path, qdrant):
    """``audit --export`` of a LlamaIndex-written collection (named vector, ids read with ?id=): the copy keeps
    every point's id and payload, so LlamaIndex still rebuilds its nodes; only the vectors change."""
    schema = pytest.importorskip("llama_index.core.schema", reason="needs llama-index-core")
    from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict

    from rag_diag.stores.protocol import StoreRows
    from rag_diag.stores.qdrant import write_qdrant

    nodes = [schema.TextNode(id_=str(uuid.uuid5(uuid.NAMESPACE_URL, f"n{i}")), text=f"chunk {i}",
                             metadata={"label": f"l{i}", "key": f"k{i}"}) for i in range(3)]
    payloads = [node_to_metadata_dict(node, remove_text=False, flat_metadata=False) for node in nodes]
    folder = build(tmp_path / "q", qdrant, np.eye(3, 4, dtype=np.float32), ids=[n.node_id for n in nodes],
                   payloads=payloads, name="text-dense")
    stored = open_store(f"qdrant+path://{folder}?id=key#{COLLECTION}")
    new_vectors = np.eye(3, 4, k=1, dtype=np.float32)
    spec = write_qdrant(tmp_path / "w", StoreRows(stored.doc_ids, stored.texts, stored.metadatas, new_vectors,
                                                  "cosine", layout=stored.layout), collection=COLLECTION)
    assert spec == f"qdrant+path://{tmp_path / 'w'}?vector=text-dense&id=key#{COLLECTION}"
    again = open_store(spec)
    assert (again.doc_ids, again.texts, again.metadatas) == (stored.doc_ids, stored.texts, stored.metadatas)
    np.testing.assert_array_equal(again.vectors(np.arange(3)), new_vectors)
    client = qdrant.QdrantClient(path=str(tmp_path / "w"))
    try:
        records = {r.id: r for r in client.retrieve(COLLECTION, ids=[n.node_id for n in nodes], with_vectors=True)}
    finally:
        client.close()
    for node, payload in zip(nodes, payloads, strict=True):
        record = records[node.node_id]
        assert record.payload == payload and set(record.vector) == {"text-dense"}
        assert metadata_dict_to_node(record.payload).get_content() == node.text


def test_text_key_option_and_missing_text(tmp_path, qdrant, small):
    vectors, ids, _ = small
    folder = build(tmp_path / "q", qdrant, vectors, ids=ids, payloads=[{"body": f"b{i}"} for i in ids], distance="Dot")
    with pytest.raises(RagDiagError, match=r"has no text in its payload.*payload keys: body.*\?text=KEY") as error:
        open_store(folder)
    assert "\n" not in str(error.value)
    stored = open_store(f"qdrant+path://{folder}?text=body#{COLLECTION}")
    assert stored.texts == [f"b{i}" for i in sorted(ids)] and stored.metadatas == [{}] * 5


def test_named_vectors_uri_and_collection_choice(tmp_path, qdrant, small):
    vectors, ids, payloads = small
    folder = build(tmp_path / "q", qdrant, vectors, ids=ids, payloads=payloads, distance="Dot", name="dense")
    assert open_store(folder).index.ntotal == 5  # the only named vector
    with pytest.raises(RagDiagError, match="no vector named 'sparse'.*found: dense"):
        open_store(f"qdrant+path://{folder}?vector=sparse")
    client = qdrant.QdrantClient(path=str(folder))
    client.create_collection("other", vectors_config=qdrant.models.VectorParams(size=2, distance="Dot"))
    client.close()
    with pytest.raises(RagDiagError, match=r"2 Qdrant collections \(licences, other\); choose one"):
        open_store(folder)
    with pytest.raises(RagDiagError, match="no Qdrant collection 'nope'"):
        open_store(folder, collection="nope")
    with pytest.raises(RagDiagError, match="names collection 'licences' but --collection is 'other'"):
        open_store(f"qdrant+path://{folder}#{COLLECTION}", collection="other")
    by_uri = open_store(f"qdrant+path://{folder}?vector=dense#{COLLECTION}")
    by_option = open_store(folder, collection=COLLECTION)
    assert by_uri.doc_ids == by_option.doc_ids == ["0", "1", "2", "9", "10"]
    np.testing.assert_array_equal(by_uri.vectors(np.arange(5)), by_option.vectors(np.arange(5)))


def test_relative_uri_and_reader_protocol(tmp_path, qdrant, small, monkeypatch):
    vectors, ids, payloads = small
    build(tmp_path / "q", qdrant, vectors, ids=ids, payloads=payloads, distance="Dot")
    monkeypatch.chdir(tmp_path)
    reader = open_reader(f"qdrant+path://q#{COLLECTION}")
    try:
        assert isinstance(reader, StoreReader)
        assert (reader.kind, reader.collection, reader.dim, reader.distance, len(reader)) == (
            "qdrant", COLLECTION, 4, "dot", 5)
        batches = list(reader.vectors(batch_size=2))
        assert [len(b) for b in batches] == [2, 2, 1] and all(b.dtype == np.float32 for b in batches)
        np.testing.assert_array_equal(np.concatenate(batches), vectors[np.argsort(ids)])
    finally:
        reader.close()


def test_locked_folder_is_one_line_error(tmp_path, qdrant, small):
    vectors, ids, payloads = small
    folder = build(tmp_path / "q", qdrant, vectors, ids=ids, payloads=payloads, distance="Dot")
    holder = qdrant.QdrantClient(path=str(folder))
    try:
        with pytest.raises(RagDiagError, match="cannot open the Qdrant folder.*already accessed") as error:
            open_store(folder)
        assert "\n" not in str(error.value)
    finally:
        holder.close()
    assert open_store(folder).index.ntotal == 5  # and the reader released its own lock after reading
    assert open_store(folder).index.ntotal == 5


def test_bad_uris(tmp_path):
    with pytest.raises(RagDiagError, match="a Qdrant server is qdrant\\+http://HOST:PORT#COLLECTION"):
        open_store("qdrant://localhost:6333#docs")
    with pytest.raises(RagDiagError, match="unknown option.*colour"):
        open_store(f"qdrant+path://{tmp_path}?colour=red")
    with pytest.raises(RagDiagError, match="no such qdrant store folder"):
        open_store(f"qdrant+path://{tmp_path / 'missing'}")
    with pytest.raises(RagDiagError, match="not a Qdrant local-mode folder"):
        open_store(f"qdrant+path://{tmp_path}")


def test_unreachable_server_is_one_line(qdrant):
    """A server URL goes to the server (here a closed port on loopback): one line naming the URL."""
    import socket

    with socket.socket() as probe:  # a port that was free a moment ago: nothing listens there
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RagDiagError) as error:
        open_store(f"qdrant+http://127.0.0.1:{port}#docs")
    message = str(error.value)
    assert message.startswith(f"127.0.0.1:{port}: cannot read the Qdrant store (") and "\n" not in message


def test_missing_library_is_one_line_with_pip_command(tmp_path, monkeypatch):
    folder = tmp_path / "q"
    (folder / "collection").mkdir(parents=True)
    (folder / "meta.json").write_text(json.dumps({"collections": {}, "aliases": {}}))
    monkeypatch.setitem(sys.modules, "qdrant_client", None)  # import qdrant_client → ImportError
    with pytest.raises(RagDiagError) as error:
        open_store(folder)
    assert str(error.value) == f"reading a Qdrant store needs the 'qdrant-client' package: pip install {PIN}"


# ----------------------------------------------------------------------------------------------- slow


@pytest.fixture(scope="module")
def real_store(licences, minilm, qdrant, tmp_path_factory):
    """A Cosine collection of the real model's L2-normalised mean vectors, point ids inserted shuffled."""
    from rag_diag.tokens.extract import encode_texts

    doc_ids, texts, labels = licences
    tokens = encode_texts(texts, model=minilm, ids=doc_ids)
    means = tokens.means()
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    cls = np.stack([tokens.tokens(i)[0] for i in range(len(texts))])
    cls /= np.linalg.norm(cls, axis=1, keepdims=True)
    order = np.random.default_rng(1).permutation(len(texts))
    payloads = [{"text": t, "doc_id": d, "label": lab} for d, t, lab in zip(doc_ids, texts, labels, strict=True)]
    folder, cls_folder = tmp_path_factory.mktemp("qdrant") / "store", tmp_path_factory.mktemp("qdrant") / "cls"
    build(folder, qdrant, means[order], ids=[int(i) for i in order], payloads=[payloads[i] for i in order])
    build(cls_folder, qdrant, cls, ids=list(range(len(texts))), payloads=payloads)
    return folder, cls_folder, means


@pytest.mark.slow
def test_real_store_round_trips(real_store, licences, qdrant):
    folder, _, means = real_store
    doc_ids, texts, labels = licences
    stored = open_store(f"qdrant+path://{folder}#{COLLECTION}")
    n = len(doc_ids)
    assert n >= 19 and stored.doc_ids == [str(i) for i in range(n)]  # point ids 0..n-1, numeric order
    assert stored.texts == texts
    assert stored.metadatas == [{"doc_id": d, "label": lab} for d, lab in zip(doc_ids, labels, strict=True)]
    got = stored.vectors(np.arange(n))
    assert got.dtype == np.float64 and np.array_equal(got.astype(np.float32).astype(np.float64), got)
    # bit for bit what the client itself returns, and the model's normalised means
    np.testing.assert_array_equal(got.astype(np.float32), client_vectors(folder, qdrant, list(range(n))))
    np.testing.assert_allclose(got, means, atol=1e-6, rtol=0)
    assert isinstance(stored.index, faiss.IndexFlat) and stored.index.metric_type == faiss.METRIC_INNER_PRODUCT


@pytest.mark.slow
def test_real_store_audit(real_store, licences, minilm):
    from rag_diag.jobs.audit import audit_store

    folder, _, _ = real_store
    doc_ids, _, _ = licences
    result = audit_store(open_store(folder), model=minilm, k=3, sample=10)
    check = result.summary["model_check"]
    assert check["passed"] and check["median_cos"] >= 0.99 and check["normalised"]
    assert result.summary["store_kind"] == "qdrant" and result.summary["n_documents"] == len(doc_ids)
    original, copy = "0", str(len(doc_ids) - 1)  # the first notice and its planted copy
    clusters = [set(members) for members in result.clusters["doc_ids"].to_list()]
    assert any({original, copy} <= members for members in clusters), clusters


@pytest.mark.slow
def test_store_of_cls_vectors_is_refused(real_store, minilm):
    from rag_diag.jobs.audit import audit_store

    _, cls_folder, _ = real_store
    stored = open_store(cls_folder)
    with pytest.raises(RagDiagError, match=r"the stored vectors agree with minilm\+cls, not minilm\+mean .*"
                                           r"pass --pooling cls$") as error:
        audit_store(stored, model=minilm, k=3, sample=10)
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_cli_refuses_cls_store_by_uri_and_collection(real_store, tmp_path, capsys):
    from rag_diag.cli import main

    _, cls_folder, _ = real_store
    status = main(["audit", "--store", f"qdrant+path://{cls_folder}", "--collection", COLLECTION,
                   "--out", str(tmp_path / "audit"), "--sample", "10"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "agree with minilm+cls, not minilm+mean" in err[0], err
    assert not (tmp_path / "audit").exists()
