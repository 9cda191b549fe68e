"""LlamaIndex persisted storage (``index.storage_context.persist(persist_dir=FOLDER)``) as a
:class:`~rag_diag.stores.protocol.StoreReader`, and :func:`write_llamaindex` to write one.

A persisted folder holds ``docstore.json`` (the nodes: id, text, metadata), ``index_store.json`` (one
structure per index; a vector index's ``nodes_dict`` maps the vector store's ids to node ids) and the
default vector store, ``default__vector_store.json``, in one of two flavours:

- **simple** (LlamaIndex's default ``SimpleVectorStore``): JSON, ``embedding_dict`` (node id → list of
  floats) beside ``metadata_dict`` and ``text_id_to_ref_doc_id``; ``nodes_dict`` maps each node id to itself.
  Searched by exact cosine similarity.
- **faiss** (``FaissVectorStore`` of ``llama-index-vector-stores-faiss``): the same file name, but a binary
  FAISS index (``faiss.write_index``); ``nodes_dict`` maps the FAISS row, as a string (``"0"``, ``"1"`` …),
  to the node id.

The flavour is told by the file's first byte (``{`` → JSON). The reader loads the folder with LlamaIndex's
own loaders (``StorageContext.from_defaults(persist_dir=FOLDER)``, with ``FaissVectorStore.from_persist_dir``
as its vector store for the FAISS flavour) and reads what they load; no JSON is parsed by hand, no
embedding model or LLM is ever resolved. An index id plays the role of a collection when the folder holds
several vector indexes (other kinds of index are ignored).

- **rows**: simple → the index's node ids, sorted; faiss → the FAISS rows in order (the index is audited
  as it is, like a LangChain FAISS store; a FAISS index shared with another LlamaIndex index is refused).
- **texts**: the docstore node's raw text (``get_content()`` without metadata). LlamaIndex embeds a node's
  text with its metadata prepended (``MetadataMode.EMBED``), so a store whose nodes carry metadata and were
  embedded by LlamaIndex may fail the model check; nodes given their own embeddings pass it.
- **metadata**: the docstore node's metadata.
- **layout** (:class:`LlamaIndexLayout`): the docstore nodes themselves (their relationships, e.g. the source
  document, and excluded metadata keys) and the index id, which :func:`write_llamaindex` keeps when it writes
  another pooling of the index (``audit --export``).
- **vectors**: the stored floats as float32 (bit for bit: LlamaIndex writes float32 values as JSON doubles);
  distance simple → ``cosine``; faiss → from the FAISS metric (inner product → ``dot``, L2 → ``l2``).

:meth:`LlamaIndexReader.search` returns None: the simple store's own search is an exact cosine scan (a
Python loop per query, float64), which the exact ``IndexFlatIP`` over the normalised vectors reproduces,
so calling it would only cost time; the FAISS store searches with its FAISS index (:meth:`faiss_index`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import faiss
import numpy as np

from rag_diag import atomic
from rag_diag.errors import RagDiagError, first_line
from rag_diag.stores.protocol import BATCH_SIZE, Distance, RowsInMemory, StoreRows, choose_collection, missing_library

KIND = "llamaindex"
PIN = "llama-index-core==0.14.25"
FAISS_PACKAGE = "llama-index-vector-stores-faiss"
FAISS_PIN = "llama-index-vector-stores-faiss==0.7.0"
DOCSTORE = "docstore.json"
INDEX_STORE = "index_store.json"
VECTOR_STORE = "default__vector_store.json"
FLAVOURS = ("simple", "faiss")
WRITTEN_INDEX_ID = "rag-diag"
"""The index id :func:`write_llamaindex` gives its index (LlamaIndex's default is a random UUID)."""


@dataclass(frozen=True)
class LlamaIndexLayout:
    """A vector index's own records: its docstore nodes by row, and its index id."""

    nodes: list[Any]
    index_id: str


def is_llamaindex_folder(path: Path) -> bool:
    """LlamaIndex persisted storage: ``docstore.json`` and ``index_store.json`` in the folder."""
    return (path / DOCSTORE).is_file() and (path / INDEX_STORE).is_file()


def vector_store_flavour(path: Path) -> str:
    """``simple`` (JSON) or ``faiss`` (binary FAISS index) for the folder's ``default__vector_store.json``."""
    file = path / VECTOR_STORE
    if not file.is_file():
        raise RagDiagError(f"{path}: LlamaIndex storage without a vector store ({VECTOR_STORE}); an index kept in "
                           "a remote vector store is read from that store")
    with open(file, "rb") as handle:
        head = handle.read(64).lstrip()
    return "simple" if head.startswith(b"{") else "faiss"


def _import_core() -> Any:
    try:
        import llama_index.core
    except ImportError:
        raise missing_library("llama-index-core", PIN, "LlamaIndex store") from None
    return llama_index.core


def _faiss_store_class() -> Any:
    _import_core()
    try:
        from llama_index.vector_stores.faiss import FaissVectorStore
    except ImportError:
        raise missing_library(FAISS_PACKAGE, FAISS_PIN, "LlamaIndex FAISS store") from None
    return FaissVectorStore


def _storage(path: Path, flavour: str) -> Any:
    """The folder loaded by LlamaIndex (``StorageContext.from_defaults``), one-line error when it fails."""
    core = _import_core()
    faiss_store = _faiss_store_class() if flavour == "faiss" else None
    try:
        vector_store = None if faiss_store is None else faiss_store.from_persist_dir(str(path))
        return core.StorageContext.from_defaults(persist_dir=str(path), vector_store=vector_store)
    except Exception as exc:  # corrupt JSON or FAISS files can fail in any way
        raise RagDiagError(f"{path}: unreadable LlamaIndex storage ({first_line(exc)})") from None


class LlamaIndexReader(RowsInMemory):
    """One vector index of a LlamaIndex storage folder: node ids sorted (simple) or FAISS rows (faiss)."""

    kind = KIND

    def __init__(self, path: str | Path, index_id: str | None = None) -> None:
        self.path = Path(path)
        if not is_llamaindex_folder(self.path):
            raise RagDiagError(f"{self.path}: not a LlamaIndex storage folder (needs {DOCSTORE} and {INDEX_STORE})")
        self.flavour = vector_store_flavour(self.path)
        atomic.protect_input(self.path)
        storage = _storage(self.path, self.flavour)
        from llama_index.core.data_structs.struct_type import IndexStructType

        structs = {s.index_id: s for s in storage.index_store.index_structs()
                   if s.get_type() == IndexStructType.VECTOR_STORE}
        if not structs:
            raise RagDiagError(f"{self.path}: the LlamaIndex storage holds no vector index")
        self.collection: str | None = choose_collection(self.path, "LlamaIndex", sorted(structs), index_id,
                                                        "llamaindex://FOLDER#INDEX_ID")
        where = f"{self.path}#{self.collection}"
        nodes_dict: dict[str, str] = dict(structs[self.collection].nodes_dict)
        if not nodes_dict:
            raise RagDiagError(f"{where}: the index is empty (no nodes)")
        self._index: faiss.Index | None = None
        if self.flavour == "simple":
            keys = sorted(nodes_dict, key=lambda key: (nodes_dict[key], key))
            self._embeddings: Mapping[str, Any] = storage.vector_store.data.embedding_dict
            missing = [nodes_dict[key] for key in keys if key not in self._embeddings]
            if missing:
                raise RagDiagError(f"{where}: node '{missing[0]}' has no embedding in {VECTOR_STORE} "
                                   f"({len(missing)} of {len(keys)} nodes)")
            self._keys = keys
            self.dim: int = len(self._embeddings[keys[0]] or [])
            if self.dim == 0:
                raise RagDiagError(f"{where}: node '{nodes_dict[keys[0]]}' has an empty embedding")
            self.distance: Distance = "cosine"
        else:
            self._index = storage.vector_store.client
            self._keys = self._faiss_keys(where, nodes_dict, int(self._index.ntotal))
            self.dim = int(self._index.d)
            self.distance = _faiss_distance(where, self._index)
        self._ids = [nodes_dict[key] for key in self._keys]
        if len(set(self._ids)) != len(self._ids):
            twice = Counter(self._ids).most_common(1)[0][0]
            raise RagDiagError(f"{where}: node '{twice}' is stored in more than one vector row")
        self._texts, self._metadatas = [], []
        from llama_index.core.schema import MetadataMode

        nodes = []
        for node_id in self._ids:
            node = storage.docstore.get_node(node_id, raise_error=False)
            if node is None:
                raise RagDiagError(f"{where}: node '{node_id}' is not in {DOCSTORE}")
            self._texts.append(node.get_content(metadata_mode=MetadataMode.NONE))
            self._metadatas.append(dict(node.metadata or {}))
            nodes.append(node)
        self._layout = LlamaIndexLayout(nodes, self.collection)

    @staticmethod
    def _faiss_keys(where: str, nodes_dict: dict[str, str], ntotal: int) -> list[str]:
        """The ``nodes_dict`` keys by FAISS row: every row of the index, and only those, must be mapped."""
        keys = [str(row) for row in range(ntotal)]
        unmapped = [key for key in keys if key not in nodes_dict]
        if unmapped:
            raise RagDiagError(f"{where}: FAISS row {unmapped[0]} maps to no node ({len(unmapped)} of {ntotal} rows "
                               "unmapped; is the FAISS index shared with another index?)")
        extra = sorted(set(nodes_dict) - set(keys))
        if extra:
            raise RagDiagError(f"{where}: node '{nodes_dict[extra[0]]}' maps to FAISS row {extra[0]}, which the "
                               f"index (ntotal {ntotal}) does not hold")
        return keys

    # ----------------------------------------------------------------------------------- the protocol

    def vectors(self, batch_size: int = BATCH_SIZE) -> Iterator[np.ndarray]:
        batch_size = max(1, batch_size)
        for start in range(0, len(self._keys), batch_size):
            stop = min(start + batch_size, len(self._keys))
            if self._index is not None:
                yield _reconstruct(self._index, start, stop)
                continue
            rows = [self._embeddings[key] for key in self._keys[start:stop]]
            for key, row in zip(self._keys[start:stop], rows, strict=True):
                if not isinstance(row, list) or len(row) != self.dim:
                    size = len(row) if isinstance(row, list) else 0
                    raise RagDiagError(f"{self.path}#{self.collection}: node '{key}' has an embedding of {size} "
                                       f"values, expected {self.dim}")
            yield np.asarray(rows, dtype=np.float32)

    def faiss_index(self) -> faiss.Index | None:
        """The FAISS flavour's own index (audited as is); None for the simple store."""
        return self._index

    def search(self, queries: np.ndarray, k: int) -> None:
        """None: the simple store's search is exact cosine, the FAISS store's is its FAISS index (module docstring)."""
        return None

    def close(self) -> None:
        return None


def _faiss_distance(where: str, index: faiss.Index) -> Distance:
    if index.metric_type == faiss.METRIC_INNER_PRODUCT:
        return "dot"
    if index.metric_type == faiss.METRIC_L2:
        return "l2"
    raise RagDiagError(f"{where}: FAISS metric {index.metric_type} is neither inner product nor L2")


def _reconstruct(index: faiss.Index, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of a FAISS index as float32 (approximate for quantising indexes)."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.make_direct_map()
    try:
        return np.asarray(index.reconstruct_n(start, stop - start), dtype=np.float32)
    except RuntimeError:
        raise RagDiagError(f"cannot read vectors back from a {type(index).__name__}: the model cannot be "
                           "checked") from None


def _refuse_to_embed(*_: Any) -> NoReturn:
    raise RagDiagError("LlamaIndex asked to embed a text, but rag-diag gives every node its own vector")


def _refusing_embedding() -> Any:
    """An embed model for LlamaIndex that refuses to embed (a guard: every node comes with its own vector)."""
    from llama_index.core.embeddings import BaseEmbedding

    class RefusingEmbedding(BaseEmbedding):
        def _get_query_embedding(self, query: str) -> list[float]:
            _refuse_to_embed(query)

        async def _aget_query_embedding(self, query: str) -> list[float]:
            _refuse_to_embed(query)

        def _get_text_embedding(self, text: str) -> list[float]:
            _refuse_to_embed(text)

    return RefusingEmbedding(model_name="rag-diag-refuses-to-embed")


def write_llamaindex(folder: Path, rows: StoreRows, *, flavour: str = "simple") -> str:
    """Persist ``rows`` as a LlamaIndex ``VectorStoreIndex`` in ``folder`` (atomically); returns its spec.

    Each row becomes a ``TextNode(id_=id, text=text, metadata=metadata, embedding=vector)`` (the vectors as
    given: nothing is embedded, the embed model refuses). The index id is :data:`WRITTEN_INDEX_ID`. Rows read
    from a LlamaIndex index (``rows.layout`` a :class:`LlamaIndexLayout`) are written as copies of its nodes
    (relationships, excluded metadata keys and all) with the new vectors, under its index id.

    Args:
        folder: the storage folder (replaced only when it is a rag-diag ``llamaindex-store``).
        rows: ids, texts, metadata, float32 vectors and the distance.
        flavour: ``simple`` (LlamaIndex's default store: cosine only) or ``faiss`` (a ``FaissVectorStore``
            over ``IndexFlatIP`` for cosine and dot, ``IndexFlatL2`` for l2; read back as ``dot`` / ``l2``).
    """
    if flavour not in FLAVOURS:
        raise RagDiagError(f"unknown LlamaIndex store flavour '{flavour}' (known: {', '.join(FLAVOURS)})")
    if flavour == "simple" and rows.distance != "cosine":
        raise RagDiagError(f"a simple LlamaIndex store ranks by cosine, not {rows.distance}; write flavour 'faiss'")
    if not rows.ids:
        raise RagDiagError(f"{folder}: no rows to write to a LlamaIndex store")
    core = _import_core()
    faiss_store = _faiss_store_class() if flavour == "faiss" else None
    from llama_index.core.schema import TextNode

    vectors = np.asarray(rows.vectors, dtype=np.float32)
    layout = rows.layout if isinstance(rows.layout, LlamaIndexLayout) else None
    if layout is None:
        nodes = [TextNode(id_=node_id, text=text, metadata=dict(metadata), embedding=vector.tolist())
                 for node_id, text, metadata, vector in zip(rows.ids, rows.texts, rows.metadatas, vectors, strict=True)]
    elif [node.node_id for node in layout.nodes] != list(rows.ids):
        raise RagDiagError("the LlamaIndex layout's nodes are not the rows to write")
    else:
        nodes = [node.model_copy(deep=True, update={"embedding": vector.tolist()})
                 for node, vector in zip(layout.nodes, vectors, strict=True)]
    vector_store = None
    if faiss_store is not None:
        flat = faiss.IndexFlatL2 if rows.distance == "l2" else faiss.IndexFlatIP
        vector_store = faiss_store(faiss_index=flat(int(vectors.shape[1])))
    with atomic.atomic_dir(folder, kind="llamaindex-store") as tmp:
        storage = core.StorageContext.from_defaults(vector_store=vector_store)
        index = core.VectorStoreIndex(nodes, storage_context=storage, embed_model=_refusing_embedding())
        index.set_index_id(WRITTEN_INDEX_ID if layout is None else layout.index_id)
        index.storage_context.persist(persist_dir=str(tmp))
    return str(folder)
