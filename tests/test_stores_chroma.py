"""Chroma persistent folders (``chromadb.PersistentClient(path=FOLDER)``) read as a store under audit.

The stores are built with ``chromadb`` itself, as a user would (embeddings given, no embedding function
run). Fast tests use a few hand-made vectors (spaces, ids, URIs, refusals); the slow ones store the real
default model's mean vectors of real licence notices (ScanCode LicenseDB, nexB, CC-BY-4.0) with one
planted exact duplicate, and audit them.
"""

from __future__ import annotations

import json
import sys

import faiss
import numpy as np
import pytest

from rag_diag.errors import RagDiagError
from rag_diag.mapped import _mapped_codes
from rag_diag.stores import protocol
from rag_diag.stores.protocol import StoreReader, exact_index
from rag_diag.stores.stored import open_reader, open_store

PIN = "chromadb==1.5.9"
HINT = f"needs chromadb: pip install {PIN}"
COLLECTION = "licences"


@pytest.fixture(scope="module")
def chromadb():
    """The ``chromadb`` module (the test is skipped, with the install command, when it is missing)."""
    return pytest.importorskip("chromadb", reason=HINT)


def build(folder, chromadb, vectors, *, ids, documents, metadatas=None, space="cosine", collection=COLLECTION,
          legacy=False):
    """A persistent collection written through the client in the given order (``legacy``: space in metadata)."""
    client = chromadb.PersistentClient(path=str(folder))
    if legacy:
        target = client.create_collection(collection, metadata={"hnsw:space": space}, embedding_function=None)
    else:
        target = client.create_collection(collection, configuration={"hnsw": {"space": space}},
                                          embedding_function=None)
    target.add(ids=list(ids), embeddings=np.asarray(vectors, dtype=np.float32), documents=documents,
               metadatas=metadatas)
    return folder


# ----------------------------------------------------------------------------------------------- fast


@pytest.fixture
def small():
    """Five 4-d vectors with ids inserted out of order."""
    vectors = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    ids = ["e", "b", "d", "a", "c"]
    return vectors, ids, [f"text {i}" for i in ids]


@pytest.mark.parametrize(("space", "metric", "legacy"), [
    ("ip", faiss.METRIC_INNER_PRODUCT, False), ("l2", faiss.METRIC_L2, False), ("l2", faiss.METRIC_L2, True),
    ("ip", faiss.METRIC_INNER_PRODUCT, True),
])
def test_rows_sorted_by_id_and_vectors_kept_as_stored(tmp_path, chromadb, small, space, metric, legacy):
    vectors, ids, documents = small
    metadatas = [{"label": f"l{i}"} if i != "b" else None for i in ids]
    stored = open_store(build(tmp_path / "c", chromadb, vectors, ids=ids, documents=documents, metadatas=metadatas,
                              space=space, legacy=legacy))
    order = np.argsort(ids)
    assert stored.kind == "chroma" and stored.doc_ids == ["a", "b", "c", "d", "e"]
    assert stored.texts == ["text a", "text b", "text c", "text d", "text e"]
    assert stored.metadatas == [{"label": "la"}, {}, {"label": "lc"}, {"label": "ld"}, {"label": "le"}]
    assert stored.index.metric_type == metric and stored.index.ntotal == 5
    np.testing.assert_array_equal(stored.vectors(np.arange(5)).astype(np.float32), vectors[order])


def test_cosine_store_is_inner_product_on_unit_vectors(tmp_path, chromadb, small):
    vectors, ids, documents = small
    stored = open_store(build(tmp_path / "c", chromadb, vectors * 3.0, ids=ids, documents=documents))
    got = stored.vectors(np.arange(5))
    assert stored.index.metric_type == faiss.METRIC_INNER_PRODUCT
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6, rtol=0)
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    np.testing.assert_allclose(got, unit[np.argsort(ids)], atol=1e-6, rtol=0)


@pytest.mark.parametrize("space", ["cosine", "l2"])
def test_a_large_store_is_held_as_a_mapped_exact_index_equal_to_the_heap_one(tmp_path, chromadb, space, monkeypatch):
    """Over SPILL_BYTES (here 0) the exact index maps its vectors from a file; rows streamed 7 at a time give the
    vectors and neighbours of the index built in memory."""
    vectors = np.random.default_rng(4).standard_normal((300, 8)).astype(np.float32) * 2.0
    ids = [f"d{i:03d}" for i in range(300)]
    folder = build(tmp_path / "c", chromadb, vectors, ids=ids, documents=ids, space=space)
    reader = open_reader(folder)
    try:
        heap = exact_index(reader, batch_size=7)
        monkeypatch.setattr(protocol, "SPILL_BYTES", 0)
        mapped = exact_index(reader, batch_size=7)
        monkeypatch.setattr(protocol, "flat_layout_known", lambda dim, metric: False)  # a faiss of another layout
        fallback = exact_index(reader, batch_size=7)
    finally:
        reader.close()
    assert _mapped_codes(heap) is None and _mapped_codes(mapped) is not None and _mapped_codes(fallback) is None
    np.testing.assert_array_equal(fallback.reconstruct_n(0, 300), heap.reconstruct_n(0, 300))
    assert mapped.metric_type == heap.metric_type and mapped.ntotal == 300
    np.testing.assert_array_equal(mapped.reconstruct_n(0, 300), heap.reconstruct_n(0, 300))
    queries = vectors[:20]
    np.testing.assert_array_equal(mapped.search(queries, 5)[1], heap.search(queries, 5)[1])


def test_default_space_is_l2(tmp_path, chromadb, small):
    vectors, ids, documents = small
    client = chromadb.PersistentClient(path=str(tmp_path / "c"))
    client.create_collection(COLLECTION, embedding_function=None).add(ids=ids, embeddings=vectors, documents=documents)
    assert open_store(tmp_path / "c").index.metric_type == faiss.METRIC_L2


def test_collection_without_documents_is_refused(tmp_path, chromadb, small):
    vectors, ids, _ = small
    folder = build(tmp_path / "c", chromadb, vectors, ids=ids, documents=None)
    with pytest.raises(RagDiagError, match="record 'a' has no document text") as error:
        open_store(folder)
    assert "\n" not in str(error.value)


def test_uri_collection_choice_and_reader_protocol(tmp_path, chromadb, small, monkeypatch):
    vectors, ids, documents = small
    folder = build(tmp_path / "c", chromadb, vectors, ids=ids, documents=documents, space="ip")
    build(folder, chromadb, vectors[:2] * 2, ids=["x", "y"], documents=["x", "y"], collection="other")
    with pytest.raises(RagDiagError, match=r"2 Chroma collections \(licences, other\); choose one"):
        open_store(folder)
    with pytest.raises(RagDiagError, match="no Chroma collection 'nope'"):
        open_store(f"chroma://{folder}#nope")
    assert open_store(folder, collection="other").doc_ids == ["x", "y"]
    assert open_store(f"chroma+path://{folder}#other").doc_ids == ["x", "y"]
    monkeypatch.chdir(tmp_path)
    reader = open_reader(f"chroma://c#{COLLECTION}")
    try:
        assert isinstance(reader, StoreReader)
        assert (reader.kind, reader.collection, reader.dim, reader.distance, len(reader)) == (
            "chroma", COLLECTION, 4, "dot", 5)
        batches = list(reader.vectors(batch_size=2))
        assert [len(b) for b in batches] == [2, 2, 1] and all(b.dtype == np.float32 for b in batches)
        np.testing.assert_array_equal(np.concatenate(batches), vectors[np.argsort(ids)])
    finally:
        reader.close()


def test_metadata_chroma_cannot_hold_is_written_as_json_text(tmp_path, chromadb):
    """Chroma 1.5 refuses None values, nested objects, empty and mixed lists (corpora perturb's variants carry a
    nested ``metadata`` object): such values are left out (None) or written as JSON text; the rest as they are."""
    from rag_diag.stores.chroma import write_chroma
    from rag_diag.stores.protocol import StoreRows

    metadata = {"label": "gpl", "n": 3, "x": 0.5, "ok": True, "tags": ["a", "b"], "none": None,
                "edit": {"before": "1.2", "after": "2.2"}, "empty": [], "mixed": [1, "x"]}
    spec = write_chroma(tmp_path / "c", StoreRows(["d1", "d2"], ["one", "two"], [metadata, {}],
                                                  np.eye(2, 4, dtype=np.float32), "cosine"), collection=COLLECTION)
    stored = open_store(spec)
    assert stored.metadatas == [{"label": "gpl", "n": 3, "x": 0.5, "ok": True, "tags": ["a", "b"],
                                 "edit": '{"after": "2.2", "before": "1.2"}', "empty": "[]", "mixed": '[1, "x"]'}, {}]


def test_bad_uris(tmp_path):
    with pytest.raises(RagDiagError, match="no such chroma store folder"):
        open_store(f"chroma://{tmp_path / 'missing'}")
    with pytest.raises(RagDiagError, match="not a Chroma persistent folder"):
        open_store(f"chroma://{tmp_path}")
    with pytest.raises(RagDiagError, match="unknown option"):
        open_store(f"chroma://{tmp_path}?vector=x")
    with pytest.raises(RagDiagError, match="lost a '/'"):
        from pathlib import Path

        open_store(Path(f"chroma://{tmp_path}"))
    with pytest.raises(RagDiagError, match="--documents is only for a bare FAISS index file, not a chroma store"):
        (tmp_path / "chroma.sqlite3").write_bytes(b"")
        open_store(tmp_path, tmp_path / "docs.txt")


def test_missing_library_is_one_line_with_pip_command(tmp_path, monkeypatch):
    (tmp_path / "chroma.sqlite3").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "chromadb", None)  # import chromadb → ImportError
    with pytest.raises(RagDiagError) as error:
        open_store(tmp_path)
    assert str(error.value) == f"reading a Chroma store needs the 'chromadb' package: pip install {PIN}"


# ----------------------------------------------------------------------------------------------- slow


@pytest.fixture(scope="module")
def real_store(licences, minilm, chromadb, tmp_path_factory):
    """A cosine collection of the real model's mean vectors (as the model gives them, not normalised: Chroma
    normalises for cosine itself), records added shuffled; and one of CLS vectors."""
    from rag_diag.tokens.extract import encode_texts

    doc_ids, texts, labels = licences
    tokens = encode_texts(texts, model=minilm, ids=doc_ids)
    means = tokens.means()
    cls = np.stack([tokens.tokens(i)[0] for i in range(len(texts))])
    order = np.random.default_rng(1).permutation(len(texts))
    metadatas = [{"label": lab} for lab in labels]
    folder, cls_folder = tmp_path_factory.mktemp("chroma") / "store", tmp_path_factory.mktemp("chroma") / "cls"
    build(folder, chromadb, means[order], ids=[doc_ids[i] for i in order], documents=[texts[i] for i in order],
          metadatas=[metadatas[i] for i in order])
    build(cls_folder, chromadb, cls, ids=doc_ids, documents=texts, metadatas=metadatas)
    return folder, cls_folder, means


@pytest.mark.slow
def test_real_store_round_trips(real_store, licences, chromadb):
    folder, _, means = real_store
    doc_ids, texts, labels = licences
    rows = np.argsort(doc_ids)
    stored = open_store(f"chroma://{folder}#{COLLECTION}")
    assert len(doc_ids) >= 19 and stored.doc_ids == sorted(doc_ids)
    assert stored.texts == [texts[r] for r in rows]
    assert stored.metadatas == [{"label": labels[r]} for r in rows]
    # the reader streams bit for bit what Chroma's own client returns (for a cosine space Chroma gives the
    # means back to within float32 rounding, not bit for bit); the index holds them L2-normalised
    reader = open_reader(folder)
    try:
        assert reader.distance == "cosine" and reader.ids() == stored.doc_ids
        streamed = np.concatenate(list(reader.vectors(batch_size=7)))
    finally:
        reader.close()
    held = chromadb.PersistentClient(path=str(folder)).get_collection(COLLECTION, embedding_function=None)
    raw = held.get(ids=stored.doc_ids, include=["embeddings"])
    by_id = dict(zip(raw["ids"], np.asarray(raw["embeddings"], dtype=np.float32), strict=True))
    assert streamed.dtype == np.float32
    np.testing.assert_array_equal(streamed, np.stack([by_id[d] for d in stored.doc_ids]))
    np.testing.assert_allclose(streamed, means[rows], rtol=1e-6, atol=1e-7)
    unit = means[rows].astype(np.float64) / np.linalg.norm(means[rows].astype(np.float64), axis=1, keepdims=True)
    got = stored.vectors(np.arange(len(doc_ids)))
    np.testing.assert_allclose(got, unit, atol=1e-6, rtol=0)
    assert isinstance(stored.index, faiss.IndexFlat) and stored.index.metric_type == faiss.METRIC_INNER_PRODUCT


@pytest.mark.slow
def test_real_store_audit(real_store, licences, minilm):
    from rag_diag.jobs.audit import audit_store

    folder, _, _ = real_store
    doc_ids, _, _ = licences
    result = audit_store(open_store(folder), model=minilm, k=3, sample=10)
    check = result.summary["model_check"]
    assert check["passed"] and check["median_cos"] >= 0.99
    assert result.summary["store_kind"] == "chroma" and result.summary["n_documents"] == len(doc_ids)
    clusters = [set(members) for members in result.clusters["doc_ids"].to_list()]
    assert any({doc_ids[0], "planted-copy"} <= members for members in clusters), clusters


@pytest.mark.slow
def test_store_of_cls_vectors_is_refused(real_store, minilm):
    from rag_diag.jobs.audit import audit_store

    _, cls_folder, _ = real_store
    with pytest.raises(RagDiagError, match=r"the stored vectors agree with minilm\+cls, not minilm\+mean .*"
                                           r"pass --pooling cls$") as error:
        audit_store(open_store(cls_folder), model=minilm, k=3, sample=10)
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_cli_refuses_cls_store_by_uri(real_store, tmp_path, capsys):
    from rag_diag.cli import main

    _, cls_folder, _ = real_store
    status = main(["audit", "--store", f"chroma://{cls_folder}#{COLLECTION}", "--out", str(tmp_path / "audit"),
                   "--sample", "10"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and "agree with minilm+cls, not minilm+mean" in err[0], err
    assert not (tmp_path / "audit").exists()


@pytest.mark.slow
def test_cls_store_audited_as_cls_with_native_search(real_store, licences, minilm):
    """Told the right pooling, the audit checks it, evaluates the store's cls index beside an exact mean
    index, measures Chroma's own HNSW search, and lists the planted copy for deletion."""
    from rag_diag.jobs.audit import audit_store
    from rag_diag.stores.stored import opened_store

    _, cls_folder, _ = real_store
    doc_ids, _, _ = licences
    with opened_store(cls_folder) as stored:
        result = audit_store(stored, model=minilm, pooling="cls", k=3, sample=10)
    summary = result.summary
    check = summary["model_check"]
    assert summary["pooling"] == check["pooling"] == "cls" and check["passed"]
    assert check["agreement"]["cls"] >= 0.99 > check["agreement"]["mean"]
    assert {"cls", "mean"} <= set(result.evaluation.per_query["strategy"].unique().to_list())
    ann = summary["ann"]
    # 20 documents: Chroma's HNSW visits them all, so its own search finds the exact top-3
    assert ann["native"] and ann["index_type"] == "chroma search" and ann["recall_at_k"] == 1.0
    duplicates = summary["exact_duplicates"]
    assert duplicates["n_groups"] == 1 and duplicates["ids_to_delete"] == ["planted-copy"]
    assert duplicates["groups"] == [{"keep": doc_ids[0], "delete": ["planted-copy"]}]


@pytest.mark.slow
def test_export_writes_the_chosen_pooling_as_a_new_collection(real_store, licences, minilm, tmp_path):
    """``audit --export`` writes the audit's own encoder pass pooled with cls into a new Chroma folder, which
    a cls audit accepts and whose vectors are the normalised CLS vectors (to the two passes' float32 round-off)."""
    from test_encode import forward_atol

    from rag_diag.cli import main
    from rag_diag.tokens.extract import encode_texts

    folder, _, _ = real_store
    doc_ids, texts, _ = licences
    out, export = tmp_path / "audit", tmp_path / "cls-store"
    status = main(["audit", "--store", str(folder), "--out", str(out), "--k", "3", "--sample", "10",
                   "--export", str(export), "--export-pooling", "cls"])
    assert status == 0
    summary = json.loads((out / "audit.json").read_text())
    assert summary["export"]["pooling"] == "cls" and summary["export"]["store"] == f"chroma://{export}#rag-diag-cls"
    reader = open_reader(summary["export"]["store"])
    try:
        assert reader.ids() == sorted(doc_ids) and reader.distance == "cosine"
        got = np.concatenate(list(reader.vectors()))
    finally:
        reader.close()
    tokens = encode_texts(texts, model=minilm, ids=doc_ids)
    raw = np.stack([tokens.tokens(i)[0] for i in range(len(texts))]).astype(np.float64)
    cls = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    rows = [doc_ids.index(d) for d in sorted(doc_ids)]
    # two encoder passes (the audit's, this one) batched differently: states within η, the suite's float32
    # round-off estimate (test_encode.forward_atol), so a unit CLS vector moves by ≤ 2√d·η/‖cls‖ (plus its storage)
    all_states = np.concatenate([np.asarray(tokens.tokens(i)) for i in range(len(texts))])
    eta = forward_atol(all_states)
    bound = 2 * np.sqrt(raw.shape[1]) * (eta / np.linalg.norm(raw, axis=1) + float(np.finfo(np.float32).eps))
    assert (np.linalg.norm(got - cls[rows], axis=1) <= bound[rows]).all()
    status = main(["audit", "--store", str(export), "--out", str(tmp_path / "again"), "--pooling", "cls",
                   "--k", "3", "--sample", "10"])
    assert status == 0
