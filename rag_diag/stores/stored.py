"""A vector store under audit, in memory: its FAISS index and, by row, document ids, texts, metadata.

:func:`open_store` reads, through a :class:`~rag_diag.stores.protocol.StoreReader`:

- a **LangChain FAISS store folder** (``index.faiss`` + ``index.pkl``; :mod:`rag_diag.stores.langchain`);
- a **bare FAISS index file** beside a documents file (BEIR ``corpus.jsonl`` or one text per line,
  in index order);
- a **Qdrant local-mode folder** (``QdrantClient(path=FOLDER)``: ``meta.json`` + ``collection/``;
  :mod:`rag_diag.stores.qdrant`, needs ``qdrant-client``);
- a **Chroma persistent folder** (``chromadb.PersistentClient(path=FOLDER)``: ``chroma.sqlite3``;
  :mod:`rag_diag.stores.chroma`, needs ``chromadb``).

A folder is recognised by what it holds: ``chroma.sqlite3`` → Chroma; ``meta.json`` and
``collection/`` → Qdrant; otherwise a LangChain FAISS store. The kind can also be named by a URI:

- ``qdrant+path://FOLDER`` or ``qdrant+path://FOLDER#COLLECTION``, with the options
  ``?vector=NAME`` (one of several named vectors) and ``?text=KEY`` (the payload key of the text),
  placed before the fragment as in any URI: ``qdrant+path://stores/qdrant?vector=dense&text=body#docs``;
- ``chroma://FOLDER`` or ``chroma://FOLDER#COLLECTION`` (``chroma+path://`` is the same);
- ``langchain://FOLDER`` and ``faiss://FILE`` (the latter with ``documents``).

FOLDER is a filesystem path taken as written after ``://`` (relative to the working directory unless
it starts with ``/``, so ``qdrant+path:///srv/qdrant#docs`` is absolute; ``~`` is expanded;
``%23`` / ``%3F`` stand for a ``#`` / ``?`` in the path). The collection may also be given as
``collection=`` (the CLI's ``--collection``); a folder holding one collection needs neither.

Qdrant and Chroma stores become an exact FAISS index (``IndexFlat``) over their stored vectors, rows
sorted by id, with their distance (cosine: inner product on L2-normalised vectors; dot: inner product;
euclid/l2: L2). FAISS stores keep their own index, which is what the audit measures.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote

import faiss
import numpy as np

from rag_diag.corpora.io import Corpus, load_corpus
from rag_diag.errors import RagDiagError
from rag_diag.stores.protocol import BATCH_SIZE, Distance, RowsInMemory, StoreReader, exact_index

SCHEMES = {"qdrant+path": "qdrant", "chroma": "chroma", "chroma+path": "chroma", "langchain": "langchain",
           "faiss": "faiss"}
"""URI schemes of :func:`open_store` and the store kind each names."""
OPTIONS = {"qdrant": ("vector", "text"), "chroma": (), "langchain": (), "faiss": ()}


@dataclass(frozen=True)
class StoredIndex:
    """A store under audit: the FAISS index and, by row, document ids, texts and metadata."""

    path: Path
    kind: str
    index: faiss.Index
    doc_ids: list[str]
    texts: list[str]
    metadatas: list[dict[str, Any]]

    def corpus(self) -> Corpus:
        """The stored documents as a corpus (metadata kept, e.g. ``label``)."""
        return Corpus(ids=self.doc_ids, texts=self.texts, source=str(self.path), metadata=self.metadatas)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The stored vectors of ``rows`` in float64 (approximate for quantising indexes such as IVF-PQ)."""
        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is not None:
            ivf.make_direct_map()
        try:
            return np.stack([self.index.reconstruct(int(row)) for row in rows]).astype(np.float64)
        except RuntimeError:
            name = type(self.index).__name__
            raise RagDiagError(f"cannot read vectors back from a {name}: the model cannot be checked") from None


class FaissReader(RowsInMemory):
    """A FAISS index with its documents by row (a LangChain store or a bare index) as a StoreReader."""

    collection = None

    def __init__(self, path: Path, kind: str, index: faiss.Index, doc_ids: list[str], texts: list[str],
                 metadatas: list[dict[str, Any]]) -> None:
        self.path, self.kind, self._index = path, kind, index
        self._ids, self._texts, self._metadatas = doc_ids, texts, metadatas
        self.dim = int(index.d)

    @property
    def distance(self) -> Distance:
        """``dot`` for an inner-product index (cosine when its vectors are normalised), ``l2`` for L2."""
        if self._index.metric_type == faiss.METRIC_INNER_PRODUCT:
            return "dot"
        if self._index.metric_type == faiss.METRIC_L2:
            return "l2"
        raise RagDiagError(f"{self.path}: FAISS metric {self._index.metric_type} is neither inner product nor L2")

    def vectors(self, batch_size: int = BATCH_SIZE) -> Iterator[np.ndarray]:
        stored = StoredIndex(self.path, self.kind, self._index, self._ids, self._texts, self._metadatas)
        for start in range(0, self._index.ntotal, batch_size):
            rows = np.arange(start, min(start + batch_size, self._index.ntotal))
            yield stored.vectors(rows).astype(np.float32)

    def faiss_index(self) -> faiss.Index:
        return self._index

    def close(self) -> None:
        return None


def parse_store(store: str | Path) -> tuple[str | None, Path, str | None, dict[str, str]]:
    """(kind named by a URI or None, path, collection from the fragment or None, URI options)."""
    text = str(store)
    scheme, sep, rest = text.partition("://")
    if not sep or "/" in scheme or "\\" in scheme:
        head, colon, _ = text.partition(":")
        if colon and head.lower() in SCHEMES and not Path(store).expanduser().exists():
            raise RagDiagError(f"{text}: a store URI that lost a '/' (passed as a Path?); pass it as a string, "
                               f"{head}://FOLDER")
        return None, Path(store).expanduser(), None, {}
    kind = SCHEMES.get(scheme.lower())
    if kind is None:
        hint = " (a Qdrant server is not supported: use a local-mode folder, qdrant+path://FOLDER)" \
            if scheme.lower() in ("qdrant", "http", "https", "grpc") else ""
        raise RagDiagError(f"{text}: unknown store scheme '{scheme}' (known: {', '.join(SCHEMES)}){hint}")
    rest, _, fragment = rest.partition("#")
    rest, _, query = rest.partition("?")
    if not rest:
        raise RagDiagError(f"{text}: no folder after '{scheme}://'")
    options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=False)) if query else {}
    unknown = sorted(set(options) - set(OPTIONS[kind]))
    if unknown:
        known = ", ".join(OPTIONS[kind]) or "none"
        raise RagDiagError(f"{text}: unknown option(s) {', '.join(unknown)} for a {kind} store (known: {known})")
    collection = unquote(fragment) or None
    if collection is not None and kind in ("langchain", "faiss"):
        raise RagDiagError(f"{text}: a {kind} store has no collections")
    return kind, Path(unquote(rest)).expanduser(), collection, options


def sniff(path: Path) -> str:
    """The kind of store at ``path``: ``chroma``, ``qdrant``, ``langchain`` (any other folder) or ``faiss`` (a file)."""
    from rag_diag.stores.chroma import is_chroma_folder
    from rag_diag.stores.qdrant import is_qdrant_folder

    if path.is_dir():
        if is_chroma_folder(path):
            return "chroma"
        if is_qdrant_folder(path):
            return "qdrant"
        return "langchain"
    if path.is_file():
        return "faiss"
    raise RagDiagError(f"{path}: no such store folder or FAISS index file")


def open_reader(
    store: str | Path, documents: str | Path | None = None, *, trust_store: bool = False,
    collection: str | None = None,
) -> StoreReader:
    """A :class:`StoreReader` over the store at ``store`` (a path or URI, see the module docstring); close it."""
    kind, path, fragment, options = parse_store(store)
    if fragment is not None and collection is not None and fragment != collection:
        raise RagDiagError(f"{store}: names collection '{fragment}' but --collection is '{collection}'")
    collection = collection or fragment
    if kind is None:
        kind = sniff(path)
    elif kind != "faiss" and not path.is_dir():
        raise RagDiagError(f"{path}: no such {kind} store folder")
    if kind in ("qdrant", "chroma"):
        if documents is not None:
            raise RagDiagError(f"{path}: --documents is only for a bare FAISS index file, not a {kind} store")
        if kind == "qdrant":
            from rag_diag.stores.qdrant import QdrantReader

            return QdrantReader(path, collection, vector_name=options.get("vector"), text_key=options.get("text"))
        from rag_diag.stores.chroma import ChromaReader

        return ChromaReader(path, collection)
    if collection is not None:
        raise RagDiagError(f"{path}: --collection is only for Qdrant and Chroma stores, not a {kind} store")
    if kind == "langchain":
        from rag_diag.stores.langchain import load_langchain_store

        if documents is not None:
            raise RagDiagError(f"{path}: --documents is only for a bare FAISS index file, not a store folder")
        return FaissReader(path, "langchain", *load_langchain_store(path, trust_store=trust_store))
    if not path.is_file():
        raise RagDiagError(f"{path}: no such FAISS index file")
    if documents is None:
        raise RagDiagError(f"{path}: a bare FAISS index needs --documents (corpus.jsonl or text lines, index order)")
    try:
        index = faiss.read_index(str(path))
    except RuntimeError:
        raise RagDiagError(f"{path}: not a readable FAISS index") from None
    corpus = load_corpus(documents)
    if len(corpus) != index.ntotal:
        raise RagDiagError(f"{path}: index holds {index.ntotal} vectors but {documents} has {len(corpus)} documents")
    metadatas = corpus.metadata or [{} for _ in corpus.ids]
    return FaissReader(path, "faiss", index, corpus.ids, corpus.texts, metadatas)


def stored_from_reader(reader: StoreReader) -> StoredIndex:
    """The store under audit: the reader's own FAISS index, else an exact one over its vectors."""
    index = reader.faiss_index()
    if index is None:
        index = exact_index(reader)
    return StoredIndex(reader.path, reader.kind, index, reader.ids(), reader.texts(), reader.metadatas())


def open_store(
    store: str | Path, documents: str | Path | None = None, *, trust_store: bool = False,
    collection: str | None = None,
) -> StoredIndex:
    """Open a store under audit: a LangChain FAISS folder, a FAISS index file with its documents file
    (index order), a Qdrant local-mode folder or a Chroma persistent folder, by path or URI (module docstring)."""
    reader = open_reader(store, documents, trust_store=trust_store, collection=collection)
    try:
        return stored_from_reader(reader)
    finally:
        reader.close()
