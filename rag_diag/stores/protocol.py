"""What rag-diag needs from a vector store it audits: the :class:`StoreReader` protocol.

A reader hands over, by row in one deterministic order, the document ids, texts and metadata, the
stored vectors (streamed in batches of float32 rows), and the distance the store ranks with. The
LangChain FAISS and bare FAISS readers (:mod:`rag_diag.stores.stored`) also hand over their own FAISS
index, which is audited as it is (its ANN recall included); the Qdrant and Chroma readers
(:mod:`rag_diag.stores.qdrant`, :mod:`rag_diag.stores.chroma`) do not, and :func:`exact_index` builds
an exact FAISS index over their vectors with their distance:

==========  ===================================================  ==========================
distance    FAISS index                                          vectors in the index
==========  ===================================================  ==========================
``cosine``  ``IndexFlatIP`` (inner product)                      L2-normalised
``dot``     ``IndexFlatIP``                                      as stored
``l2``      ``IndexFlatL2`` (squared Euclidean, as Chroma's l2)  as stored
==========  ===================================================  ==========================
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import faiss
import numpy as np

from rag_diag.collapse.spill import SPILL_BYTES, spill_folder
from rag_diag.errors import RagDiagError
from rag_diag.mapped import flat_layout_known, mapped_flat

Distance = Literal["cosine", "dot", "l2"]
DISTANCES: tuple[Distance, ...] = ("cosine", "dot", "l2")

BATCH_SIZE = 1024
"""Rows per batch of :meth:`StoreReader.vectors`."""

UNIT_NORM_TOLERANCE = 1e-6
"""For a cosine store, rows whose norm is within this of 1 are kept bit for bit (the store, e.g. Qdrant,
already normalised them); the others are L2-normalised. float32 rounding of a unit vector stays far
below it (~1e-7)."""


@runtime_checkable
class StoreReader(Protocol):
    """A vector store opened for reading, rows in one deterministic order (every list has ``len(self)`` items).

    Attributes:
        kind: the store's kind: ``"langchain"``, ``"faiss"``, ``"qdrant"``, ``"chroma"``, ``"pgvector"``,
            ``"llamaindex"``.
        path: the store's folder (or index file).
        collection: the collection read, for stores that hold several (else None).
        dim: the dimension of the vectors.
        distance: what the store ranks with: ``"cosine"``, ``"dot"`` or ``"l2"``.
    """

    @property
    def kind(self) -> str: ...

    @property
    def path(self) -> Path: ...

    @property
    def collection(self) -> str | None: ...

    @property
    def dim(self) -> int: ...

    @property
    def distance(self) -> Distance: ...

    def __len__(self) -> int: ...

    def ids(self) -> list[str]:
        """Document ids by row."""
        ...

    def texts(self) -> list[str]:
        """Document texts by row."""
        ...

    def metadatas(self) -> list[dict[str, Any]]:
        """Document metadata by row (``{}`` where the store has none)."""
        ...

    def vectors(self, batch_size: int = BATCH_SIZE) -> Iterator[np.ndarray]:
        """The stored vectors by row, as float32 arrays of at most ``batch_size`` rows each."""
        ...

    def faiss_index(self) -> faiss.Index | None:
        """The store's own FAISS index when it searches with one (audited as is), else None."""
        ...

    def search(self, queries: np.ndarray, k: int) -> np.ndarray | None:
        """The store's own top-``k`` rows for each query, through the store's own search at its settings.

        Args:
            queries: float32 query vectors (n × dim), in the space of the stored vectors.
            k: results per query.

        Returns:
            An n × k int64 array of row numbers (this reader's row order), best first, −1 where the store
            returned fewer; or None when the store has no search of its own apart from :meth:`faiss_index`
            (then ANN recall is measured on that index, or is exact by construction).
        """
        ...

    def layout(self) -> Any:
        """The store's own records of its rows (e.g. Qdrant's point ids and payloads, LlamaIndex's nodes), which
        an export to a store of the same kind keeps as they are, so that only the vectors change; None where ids,
        texts and metadata are all its writer needs."""
        ...

    def close(self) -> None:
        """Release the store (Qdrant local mode locks its folder while a client holds it)."""
        ...


@dataclass(frozen=True)
class StoreRows:
    """What a store writer writes: by row, ids, texts, metadata and float32 vectors, and the distance.

    Writers (``write_*`` in each store module) store the vectors as given: a ``cosine`` store's vectors are
    L2-normalised by the caller, as a user's embedding function with ``normalize_embeddings=True`` gives them.
    """

    ids: list[str]
    texts: list[str]
    metadatas: list[dict[str, Any]]
    vectors: np.ndarray
    distance: Distance
    layout: Any = None
    """The audited store's own records (:meth:`StoreReader.layout`) when these rows are written back to a store of
    its kind: its writer then keeps them and changes only the vectors."""

    def __post_init__(self) -> None:
        n = len(self.ids)
        if len(self.texts) != n or len(self.metadatas) != n or self.vectors.ndim != 2 or self.vectors.shape[0] != n:
            raise RagDiagError(f"store rows disagree: {n} ids, {len(self.texts)} texts, "
                               f"{len(self.metadatas)} metadata, vectors {self.vectors.shape}")
        if len(set(self.ids)) != n:
            raise RagDiagError("store rows have duplicate ids")


def faiss_metric(distance: Distance) -> int:
    """The FAISS metric of a store distance (cosine is inner product on normalised vectors)."""
    if distance not in DISTANCES:
        raise RagDiagError(f"unsupported distance '{distance}' (supported: {', '.join(DISTANCES)})")
    return faiss.METRIC_L2 if distance == "l2" else faiss.METRIC_INNER_PRODUCT


def index_rows(vectors: np.ndarray, distance: Distance) -> np.ndarray:
    """The rows an exact index holds for ``vectors`` (float32, C-contiguous; normalised for cosine)."""
    rows = np.array(vectors, dtype=np.float32, order="C", copy=True)
    if rows.ndim != 2:
        raise RagDiagError(f"expected a 2-D batch of vectors, got shape {rows.shape}")
    if not np.isfinite(rows).all():
        raise RagDiagError("the store holds vectors with NaN or infinite values")
    if distance == "cosine":
        norms = np.linalg.norm(rows.astype(np.float64), axis=1)
        redo = np.abs(norms - 1.0) > UNIT_NORM_TOLERANCE
        if np.any(norms[redo] == 0.0):
            raise RagDiagError("a cosine store holds a zero vector (it has no direction)")
        rows[redo] = (rows[redo] / norms[redo, None]).astype(np.float32)
    return rows


def exact_index(reader: StoreReader, batch_size: int = BATCH_SIZE) -> faiss.Index:
    """An exact FAISS index (``IndexFlat``) over the reader's vectors, in its row order, with its distance.

    Over ``SPILL_BYTES`` of vectors (64 MiB: 43,690 rows of 384 floats) the index maps them from an unlinked file in
    the cache folder (:func:`rag_diag.mapped.mapped_flat`), as a FAISS store's own index is read: the rows stream
    from the store to the file, and their pages are dropped wherever the heap is trimmed. (In the heap, as below
    that size, should this faiss write its files in a layout rag_diag does not know.)
    """
    metric = faiss_metric(reader.distance)
    batches = (index_rows(_checked(reader, batch), reader.distance) for batch in reader.vectors(batch_size))
    if len(reader) * reader.dim * 4 > SPILL_BYTES and flat_layout_known(reader.dim, metric):
        index = mapped_flat(batches, reader.dim, metric, spill_folder())
    else:
        index = faiss.IndexFlat(reader.dim, metric)
        for rows in batches:
            index.add(rows)
    if index.ntotal != len(reader):
        raise RagDiagError(f"{reader.path}: read {index.ntotal} vectors for {len(reader)} documents")
    return index


def _checked(reader: StoreReader, batch: np.ndarray) -> np.ndarray:
    """``batch`` when its rows have the reader's dimension, else a one-line error."""
    if batch.shape[1:] != (reader.dim,):
        raise RagDiagError(f"{reader.path}: a stored vector has shape {batch.shape[1:]}, expected ({reader.dim},)")
    return batch


def rows_of(found_ids: list[list[Any]], row_of: dict[Any, int], k: int) -> np.ndarray:
    """An n × k int64 array of rows for per-query lists of store ids (best first), −1-padded to ``k``."""
    rows = np.full((len(found_ids), k), -1, dtype=np.int64)
    for position, ids in enumerate(found_ids):
        for rank, found in enumerate(ids[:k]):
            rows[position, rank] = row_of[found]
    return rows


def choose_collection(where: object, what: str, names: list[str], wanted: str | None, uri: str) -> str:
    """The collection to read: ``wanted`` if the store has it, else the only one; otherwise a one-line error.

    Args:
        where: the store folder (for the message).
        what: the store's name in messages ("Qdrant", "Chroma").
        names: the collections the store holds.
        wanted: the collection asked for (``--collection`` or the URI fragment), or None.
        uri: the URI form that names a collection, for the hint.
    """
    if wanted is None:
        if len(names) != 1:
            listed = ", ".join(names) or "none"
            raise RagDiagError(f"{where}: {len(names)} {what} collections ({listed}); choose one with "
                               f"--collection or {uri}")
        return names[0]
    if wanted not in names:
        raise RagDiagError(f"{where}: no {what} collection '{wanted}' (found: {', '.join(names) or 'none'})")
    return wanted


def missing_library(package: str, pin: str, what: str) -> RagDiagError:
    """The one-line error for a store whose client library is not installed."""
    return RagDiagError(f"reading a {what} needs the '{package}' package: pip install {pin}")


class RowsInMemory:
    """The row accessors of a reader that holds its ids, texts and metadata in lists (filled by ``__init__``)."""

    _ids: list[str]
    _texts: list[str]
    _metadatas: list[dict[str, Any]]
    _layout: Any = None

    def __len__(self) -> int:
        return len(self._ids)

    def ids(self) -> list[str]:
        """Document ids by row."""
        return list(self._ids)

    def texts(self) -> list[str]:
        """Document texts by row."""
        return list(self._texts)

    def metadatas(self) -> list[dict[str, Any]]:
        """Document metadata by row (copies)."""
        return [dict(metadata) for metadata in self._metadatas]

    def layout(self) -> Any:
        """The store's own records of its rows, kept by an export to its kind (None: none to keep)."""
        return self._layout
