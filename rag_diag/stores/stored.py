"""A vector store under audit, in memory: its FAISS index and, by row, document ids, texts, metadata.

:func:`open_reader` opens any supported store (the ``--store`` forms of :mod:`rag_diag.stores.uri`) as a
:class:`~rag_diag.stores.protocol.StoreReader`: LangChain FAISS folders and bare FAISS index files
(:class:`FaissReader`, over :mod:`rag_diag.stores.langchain`), Qdrant (:mod:`rag_diag.stores.qdrant`),
Chroma (:mod:`rag_diag.stores.chroma`), Postgres + pgvector (:mod:`rag_diag.stores.pgvector`) and
LlamaIndex storage (:mod:`rag_diag.stores.llamaindex`); each but the FAISS ones needs its optional extra.

:func:`opened_store` / :func:`open_store` turn a reader into a :class:`StoredIndex`. FAISS stores keep their
own index, which is what the audit measures (its ANN recall included). The others become an exact FAISS
index (``IndexFlat``, its vectors mapped from a file when large) over their stored vectors, in the reader's row
order, with their distance (cosine: inner product on L2-normalised vectors; dot: inner product; l2: L2); while
:func:`opened_store` holds the reader open, :meth:`StoredIndex.search` goes through the store's own search, so
ANN recall is that of the store's real index.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from rag_diag.corpora.io import Corpus, load_corpus
from rag_diag.errors import RagDiagError
from rag_diag.mapped import read_index
from rag_diag.stores.protocol import BATCH_SIZE, Distance, RowsInMemory, StoreReader, exact_index
from rag_diag.stores.uri import BARE_DOCUMENTS, BARE_INDEX, is_bare_faiss_folder, parse_store, sniff


@dataclass(frozen=True)
class StoredIndex:
    """A store under audit: the FAISS index and, by row, document ids, texts and metadata. The index may map its
    vectors from a file (:mod:`rag_diag.mapped`: a FAISS store's own, or a large exact index's): read it, never
    add to it."""

    path: Path
    kind: str
    index: faiss.Index
    doc_ids: list[str]
    texts: list[str]
    metadatas: list[dict[str, Any]]
    distance: Distance | None = None
    """The store's distance (None for a FAISS store, whose index metric says it)."""
    native_search: Callable[[np.ndarray, int], np.ndarray | None] | None = None
    """The store's own search (:meth:`StoreReader.search`) while its reader is open, else None."""
    layout: Any = None
    """The store's own records of its rows (:meth:`StoreReader.layout`), kept by ``audit --export``."""

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, str]:
        """Top-``k`` rows per query (n × k, −1 padded) through the store's own search when it has one, else
        through :attr:`index` (queries as float32 in the stored vectors' space), and what answered."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.native_search is not None:
            found = self.native_search(queries, k)
            if found is not None:
                return np.asarray(found, dtype=np.int64), f"{self.kind} search"
        return self.index.search(queries, k)[1].astype(np.int64), type(self.index).__name__

    def corpus(self) -> Corpus:
        """The stored documents as a corpus (metadata kept, e.g. ``label``)."""
        return Corpus(ids=self.doc_ids, texts=self.texts, source=str(self.path), metadata=self.metadatas)

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """The stored vectors of ``rows`` in float64 (approximate for quantising indexes such as IVF-PQ)."""
        ivf = faiss.try_extract_index_ivf(self.index)
        if ivf is not None and ivf.direct_map.no():  # built once, not per read
            ivf.make_direct_map()
        try:
            return self.index.reconstruct_batch(np.asarray(rows, dtype=np.int64)).astype(np.float64)
        except RuntimeError:
            name = type(self.index).__name__
            raise RagDiagError(f"cannot read vectors back from a {name}: the model cannot be checked") from None

    def all_vectors(self, *, unit: bool = False, chunk: int = 8192) -> np.ndarray:
        """Every stored vector as float32 (N × d), L2-normalised with ``unit`` (zero vectors stay zero), read
        ``chunk`` rows at a time: no N·d float64 copy is ever held (307 MB at 100,000 × 384)."""
        n_docs = self.index.ntotal
        out = np.empty((n_docs, self.index.d), dtype=np.float32)
        for start in range(0, n_docs, chunk):
            stop = min(start + chunk, n_docs)
            out[start:stop] = self.float32_vectors(np.arange(start, stop), unit=unit)
        return out

    def float32_vectors(self, rows: np.ndarray, *, unit: bool = False) -> np.ndarray:
        """The stored vectors of ``rows`` as float32, L2-normalised in float64 with ``unit`` (zero vectors stay
        zero)."""
        part = self.vectors(rows)
        if unit:
            part /= np.maximum(np.linalg.norm(part, axis=1, keepdims=True), 1e-12)
        return part.astype(np.float32)


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

    def search(self, queries: np.ndarray, k: int) -> None:
        """None: the store searches with its FAISS index (:meth:`faiss_index`), which is audited as is."""
        return None

    def close(self) -> None:
        return None


def open_reader(
    store: str | Path, documents: str | Path | None = None, *, trust_store: bool = False,
    collection: str | None = None,
) -> StoreReader:
    """A :class:`StoreReader` over the store at ``store`` (a path or URI, :mod:`rag_diag.stores.uri`); close it."""
    spec = parse_store(store)
    if spec.collection is not None and collection is not None and spec.collection != collection:
        raise RagDiagError(f"{spec.path}: names collection '{spec.collection}' but --collection is '{collection}'")
    collection = collection or spec.collection
    kind, path = spec.kind, spec.path
    if kind is None:
        kind = sniff(path)
    elif spec.url is None and kind != "faiss" and not path.is_dir():
        raise RagDiagError(f"{path}: no such {kind} store folder")
    if documents is not None and kind != "faiss":
        raise RagDiagError(f"{path}: --documents is only for a bare FAISS index file, not a {kind} store")
    if collection is not None and kind in ("langchain", "faiss"):
        raise RagDiagError(f"{path}: --collection is not for a {kind} store (it holds one)")
    if kind == "qdrant":
        from rag_diag.stores.qdrant import QdrantReader

        return QdrantReader(path, collection, vector_name=spec.options.get("vector"), url=spec.url,
                            text_key=spec.options.get("text"), id_key=spec.options.get("id"))
    if kind == "chroma":
        from rag_diag.stores.chroma import ChromaReader

        return ChromaReader(path, collection)
    if kind == "pgvector":
        from rag_diag.stores.pgvector import PgvectorReader, open_folder

        names = {"table": "table", "id": "id_column", "text": "text_column", "embedding": "embedding_column",
                 "metadata": "metadata_column", "distance": "distance"}
        options: dict[str, Any] = {names[key]: value for key, value in spec.options.items()}
        if spec.url is None:
            return open_folder(path, collection=collection, **options)
        return PgvectorReader(spec.url, collection=collection, path=path, **options)
    if kind == "llamaindex":
        from rag_diag.stores.llamaindex import LlamaIndexReader

        return LlamaIndexReader(path, collection)
    if kind == "langchain":
        from rag_diag.stores.langchain import load_langchain_store

        return FaissReader(path, "langchain", *load_langchain_store(path, trust_store=trust_store))
    return _bare_faiss(path, documents)


def _bare_faiss(path: Path, documents: str | Path | None) -> FaissReader:
    """A bare FAISS index file beside its documents file (index order), or a folder holding both
    (``index.faiss`` + ``corpus.jsonl``, as ``store build --store-kind faiss`` writes)."""
    if path.is_dir() and is_bare_faiss_folder(path) and documents is None:
        path, documents = path / BARE_INDEX, path / BARE_DOCUMENTS
    if not path.is_file():
        raise RagDiagError(f"{path}: no such FAISS index file")
    if documents is None:
        raise RagDiagError(f"{path}: a bare FAISS index needs --documents (corpus.jsonl or text lines, index order)")
    try:
        index = read_index(path)
    except RuntimeError:
        raise RagDiagError(f"{path}: not a readable FAISS index") from None
    corpus = load_corpus(documents)
    if len(corpus) != index.ntotal:
        raise RagDiagError(f"{path}: index holds {index.ntotal} vectors but {documents} has {len(corpus)} documents")
    metadatas = corpus.metadata or [{} for _ in corpus.ids]
    return FaissReader(path, "faiss", index, corpus.ids, corpus.texts, metadatas)


def stored_from_reader(reader: StoreReader, *, native: bool = False) -> StoredIndex:
    """The store under audit: the reader's own FAISS index, else an exact one over its vectors; with
    ``native`` (the reader stays open meanwhile) :meth:`StoredIndex.search` uses the store's own search."""
    index = reader.faiss_index()
    own = index is not None
    if index is None:
        index = exact_index(reader)
    return StoredIndex(reader.path, reader.kind, index, reader.ids(), reader.texts(), reader.metadatas(),
                       distance=None if own else reader.distance,
                       native_search=reader.search if native and not own else None, layout=reader.layout())


@contextmanager
def opened_store(
    store: str | Path, documents: str | Path | None = None, *, trust_store: bool = False,
    collection: str | None = None,
) -> Iterator[StoredIndex]:
    """The store under audit with its reader held open, so its own search can be measured; closed on exit."""
    reader = open_reader(store, documents, trust_store=trust_store, collection=collection)
    try:
        yield stored_from_reader(reader, native=True)
    finally:
        reader.close()


def open_store(
    store: str | Path, documents: str | Path | None = None, *, trust_store: bool = False,
    collection: str | None = None,
) -> StoredIndex:
    """The store under audit, read and closed (no store-native search): any ``--store`` form."""
    reader = open_reader(store, documents, trust_store=trust_store, collection=collection)
    try:
        return stored_from_reader(reader)
    finally:
        reader.close()
