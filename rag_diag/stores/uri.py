"""``--store`` forms: a path (a folder or FAISS index file, recognised by what it holds) or a URI.

==========================================================  =================================================
form                                                        store
==========================================================  =================================================
``FOLDER`` with ``index.faiss`` + ``index.pkl``               LangChain FAISS (``langchain://FOLDER``)
``FILE`` + ``--documents DOCS``                              bare FAISS index (``faiss://FILE``)
``FOLDER`` with ``index.faiss`` + ``corpus.jsonl``           bare FAISS index and its documents
``FOLDER`` with ``chroma.sqlite3``                           Chroma persistent (``chroma://FOLDER#COLLECTION``)
``FOLDER`` with ``meta.json`` + ``collection/``              Qdrant local mode (``qdrant+path://FOLDER#COLLECTION``)
``qdrant+http://HOST:PORT#COLLECTION`` (or ``+https``)       Qdrant server (API key from ``QDRANT_API_KEY``)
``FOLDER`` with ``docstore.json`` + ``index_store.json``     LlamaIndex storage (``llamaindex://FOLDER#INDEX_ID``)
``postgresql://USER@HOST:PORT/DB#COLLECTION``                Postgres + pgvector, LangChain ``PGVector`` layout
``postgresql://…?table=TABLE``                               Postgres + pgvector, a plain table
``FOLDER`` with ``PG_VERSION`` (``pgvector+path://FOLDER``)   a Postgres data folder, started with pgserver
==========================================================  =================================================

Options go in the query string, before the fragment, as in any URI:

- Qdrant: ``vector=NAME`` (one of several named vectors), ``text=KEY`` (payload key of the text),
  ``id=KEY`` (payload key of the document id; :func:`rag_diag.stores.qdrant.write_qdrant` writes ``doc_id``);
- Postgres: ``table=``, ``id=``, ``text=``, ``embedding=``, ``metadata=`` (a plain table's columns; without
  ``metadata=`` its rows have no metadata) and ``distance=``
  (``cosine``, ``dot``, ``l2`` when no pgvector index names it); any other query parameter (``host=``,
  ``sslmode=`` …) stays in the connection string.

FOLDER is a filesystem path taken as written after ``://`` (relative to the working directory unless it
starts with ``/``, so ``qdrant+path:///srv/qdrant#docs`` is absolute; ``~`` is expanded; ``%23`` / ``%3F``
stand for a ``#`` / ``?`` in the path). The collection may also be given as ``--collection``; a store
holding one collection needs neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode

from rag_diag.errors import RagDiagError

SCHEMES = {
    "qdrant+path": "qdrant", "qdrant+http": "qdrant", "qdrant+https": "qdrant", "chroma": "chroma",
    "chroma+path": "chroma", "langchain": "langchain", "faiss": "faiss", "llamaindex": "llamaindex",
    "postgresql": "pgvector", "postgres": "pgvector", "postgresql+psycopg": "pgvector", "pgvector+path": "pgvector",
}
"""URI schemes and the store kind each names."""
OPTIONS = {"qdrant": ("vector", "text", "id"), "pgvector": ("table", "id", "text", "embedding", "metadata", "distance")}
WITH_COLLECTIONS = ("qdrant", "chroma", "llamaindex", "pgvector")
SERVERS = ("qdrant+http", "qdrant+https", "postgresql", "postgres", "postgresql+psycopg")


@dataclass(frozen=True)
class StoreSpec:
    """A parsed ``--store``: its kind (None: sniff the path), path, collection, options, and server address."""

    kind: str | None
    path: Path
    """The folder or file; for a server, its address without scheme or password (for messages)."""
    collection: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    url: str | None = None
    """A server's address (``http://…`` for Qdrant, a libpq ``postgresql://…`` for Postgres), else None."""


def redact(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages)."""
    scheme, sep, rest = url.partition("://")
    authority, slash, tail = rest.partition("/")
    user, at, host = authority.rpartition("@")
    if at and ":" in user:
        authority = f"{user.split(':', 1)[0]}:***@{host}"
    return f"{scheme}{sep}{authority}{slash}{tail}"


def _scheme_error(text: str, scheme: str) -> RagDiagError:
    hint = ""
    if scheme in ("qdrant", "http", "https", "grpc"):
        hint = "; a Qdrant server is qdrant+http://HOST:PORT#COLLECTION"
    return RagDiagError(f"{text}: unknown store scheme '{scheme}' (known: {', '.join(SCHEMES)}){hint}")


def parse_store(store: str | Path) -> StoreSpec:
    """The :class:`StoreSpec` of a path or URI (module docstring); a malformed one is a one-line error."""
    text = str(store)
    scheme, sep, rest = text.partition("://")
    if not sep or "/" in scheme or "\\" in scheme:
        head, colon, _ = text.partition(":")
        if colon and head.lower() in SCHEMES and not Path(store).expanduser().exists():
            raise RagDiagError(f"{redact(text)}: a store URI that lost a '/' (passed as a Path?); pass it as a "
                               f"string, {head}://…")
        return StoreSpec(None, Path(store).expanduser())
    scheme = scheme.lower()
    kind = SCHEMES.get(scheme)
    if kind is None:
        raise _scheme_error(redact(text), scheme)
    rest, _, fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    if not rest:
        raise RagDiagError(f"{redact(text)}: nothing after '{scheme}://'")
    pairs = parse_qsl(query, keep_blank_values=True) if query else []
    known = OPTIONS.get(kind, ())
    options = {key: value for key, value in pairs if key in known}
    passed_on = [(key, value) for key, value in pairs if key not in known]
    if passed_on and scheme not in ("postgresql", "postgres", "postgresql+psycopg"):
        names = ", ".join(key for key, _ in passed_on)
        raise RagDiagError(f"{redact(text)}: unknown option(s) {names} for a {kind} store (known: "
                           f"{', '.join(known) or 'none'})")
    collection = unquote(fragment) or None
    if collection is not None and kind not in WITH_COLLECTIONS:
        raise RagDiagError(f"{redact(text)}: a {kind} store has no collections")
    if scheme in SERVERS:
        if kind == "qdrant":
            url = f"{scheme.split('+')[1]}://{rest}"
        else:
            url = "postgresql://" + rest + (f"?{urlencode(passed_on)}" if passed_on else "")
        return StoreSpec(kind, Path(redact(url).split("://", 1)[1]), collection, options, url)
    return StoreSpec(kind, Path(unquote(rest)).expanduser(), collection, options)


BARE_INDEX, BARE_DOCUMENTS = "index.faiss", "corpus.jsonl"


def is_bare_faiss_folder(path: Path) -> bool:
    """A bare FAISS store folder: ``index.faiss`` beside ``corpus.jsonl`` (index order) and no ``index.pkl``."""
    return (path / BARE_INDEX).is_file() and (path / BARE_DOCUMENTS).is_file() and not (path / "index.pkl").exists()


def sniff(path: Path) -> str:
    """The kind of store at ``path`` by what it holds: ``chroma``, ``qdrant``, ``llamaindex``, ``pgvector`` (a
    Postgres data folder), ``faiss`` (a file, or a folder of ``index.faiss`` + ``corpus.jsonl``) or
    ``langchain`` (any other folder)."""
    from rag_diag.stores.chroma import is_chroma_folder
    from rag_diag.stores.llamaindex import is_llamaindex_folder
    from rag_diag.stores.pgvector import is_postgres_folder
    from rag_diag.stores.qdrant import is_qdrant_folder

    if path.is_dir():
        for kind, test in (("chroma", is_chroma_folder), ("qdrant", is_qdrant_folder),
                           ("llamaindex", is_llamaindex_folder), ("pgvector", is_postgres_folder),
                           ("faiss", is_bare_faiss_folder)):
            if test(path):
                return kind
        return "langchain"
    if path.is_file():
        return "faiss"
    raise RagDiagError(f"{path}: no such store folder or FAISS index file")
