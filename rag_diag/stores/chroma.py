"""Chroma persistent folders (``chromadb.PersistentClient(path=FOLDER)``) as a
:class:`~rag_diag.stores.protocol.StoreReader`.

A persistent folder holds ``chroma.sqlite3`` (collections, ids, documents, metadata, embeddings log) and
one HNSW folder per collection. The reader opens it with ``chromadb`` itself (no embedding function is
attached, so nothing is ever embedded or downloaded) and reads one collection.

- **rows**: the records sorted by id (Chroma ids are strings).
- **texts**: the records' documents (a collection stored without documents cannot be audited).
- **metadata**: the records' metadata (``{}`` where none).
- **vectors**: the stored embeddings as float32; distance from the collection's configuration
  (``hnsw`` or ``spann`` ``space``) or its legacy ``hnsw:space`` metadata, Chroma's default ``l2``
  otherwise: ``cosine`` → cosine, ``ip`` → dot, ``l2`` → l2.

- **search**: the collection's own ``query`` (its HNSW index at the collection's settings), so the audit
  measures the ANN recall Chroma gives; the exact copy of the vectors is what the evaluation searches.

:func:`write_chroma` writes rows to a new persistent folder (the form ``store build`` and ``--export`` give).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from rag_diag import atomic
from rag_diag.errors import RagDiagError, first_line
from rag_diag.stores.protocol import (
    BATCH_SIZE,
    Distance,
    RowsInMemory,
    StoreRows,
    choose_collection,
    missing_library,
    rows_of,
)

KIND = "chroma"
PIN = "chromadb==1.5.9"
SQLITE = "chroma.sqlite3"
SPACES: dict[str, Distance] = {"cosine": "cosine", "ip": "dot", "l2": "l2"}
SPACE_OF = {distance: space for space, distance in SPACES.items()}


def is_chroma_folder(path: Path) -> bool:
    """A Chroma persistent folder: it holds ``chroma.sqlite3``."""
    return (path / SQLITE).is_file()


def _space(configuration: dict[str, Any] | None, metadata: dict[str, Any] | None) -> str:
    """The collection's distance space: its configuration, else its legacy metadata, else Chroma's default."""
    for section in ("hnsw", "spann"):
        part = (configuration or {}).get(section)
        if isinstance(part, dict) and part.get("space"):
            return str(part["space"])
    return str((metadata or {}).get("hnsw:space", "l2"))


class ChromaReader(RowsInMemory):
    """One collection of a Chroma persistent folder, rows sorted by id."""

    kind = KIND

    def __init__(self, path: str | Path, collection: str | None = None) -> None:
        self.path = Path(path)
        if not is_chroma_folder(self.path):
            raise RagDiagError(f"{self.path}: not a Chroma persistent folder (needs {SQLITE})")
        try:
            import chromadb
        except ImportError:
            raise missing_library("chromadb", PIN, "Chroma store") from None
        atomic.protect_input(self.path)
        try:
            # Default settings: an in-process client of the same folder with other settings would be refused.
            self._client: Any = chromadb.PersistentClient(path=str(self.path))
        except Exception as exc:  # a corrupt or newer-format database can fail in any way
            raise RagDiagError(f"{self.path}: unreadable Chroma folder ({first_line(exc)})") from None
        try:
            self._read(collection)
        except RagDiagError:
            self.close()
            raise
        except Exception as exc:
            self.close()
            raise RagDiagError(f"{self.path}: unreadable Chroma collection ({first_line(exc)})") from None

    def _read(self, collection: str | None) -> None:
        names = sorted(str(getattr(c, "name", c)) for c in self._client.list_collections())
        collection = choose_collection(self.path, "Chroma", names, collection, "chroma://FOLDER#COLLECTION")
        self.collection: str | None = collection
        self._collection = self._client.get_collection(collection, embedding_function=None)  # type: ignore[arg-type]
        configuration = getattr(self._collection, "configuration_json", None)
        space = _space(configuration, self._collection.metadata)
        if space not in SPACES:
            raise RagDiagError(f"{self.path}#{collection}: distance space '{space}' is not supported "
                               f"(supported: {', '.join(SPACES)})")
        self.distance: Distance = SPACES[space]
        self._batch = max(1, min(BATCH_SIZE, int(self._client.get_max_batch_size())))
        total = self._collection.count()
        if total == 0:
            raise RagDiagError(f"{self.path}#{collection}: the collection is empty")
        records: dict[str, tuple[Any, Any]] = {}
        for offset in range(0, total, self._batch):
            page = self._collection.get(include=["documents", "metadatas"], limit=self._batch, offset=offset)
            texts: list[Any] = page["documents"] or [None] * len(page["ids"])
            metadatas: list[Any] = page["metadatas"] or [None] * len(page["ids"])
            for doc_id, text, metadata in zip(page["ids"], texts, metadatas, strict=True):
                records[doc_id] = (text, metadata)
        if len(records) != total:
            raise RagDiagError(f"{self.path}#{collection}: read {len(records)} records of {total} (was it written to "
                               "while being read?)")
        self._ids = sorted(records)
        self._texts: list[str] = []
        self._metadatas: list[dict[str, Any]] = []
        for doc_id in self._ids:
            text, metadata = records[doc_id]
            if not isinstance(text, str):
                raise RagDiagError(f"{self.path}#{collection}: record '{doc_id}' has no document text (a collection "
                                   "stored without documents cannot be audited)")
            self._texts.append(text)
            self._metadatas.append(dict(metadata or {}))
        first = self._collection.get(ids=[self._ids[0]], include=["embeddings"])["embeddings"]
        if first is None or len(first) != 1:
            raise RagDiagError(f"{self.path}#{collection}: record '{self._ids[0]}' has no embedding")
        self.dim: int = int(np.asarray(first[0]).shape[0])

    def vectors(self, batch_size: int = BATCH_SIZE) -> Iterator[np.ndarray]:
        step = max(1, min(batch_size, self._batch))
        for start in range(0, len(self._ids), step):
            chunk = self._ids[start : start + step]
            got = self._collection.get(ids=chunk, include=["embeddings"])
            embeddings = got["embeddings"]
            if embeddings is None or len(got["ids"]) != len(chunk):
                raise RagDiagError(f"{self.path}#{self.collection}: some records of this batch have no embedding")
            position = {doc_id: row for row, doc_id in enumerate(got["ids"])}
            batch = np.asarray(embeddings, dtype=np.float32)
            yield batch[[position[doc_id] for doc_id in chunk]]

    def faiss_index(self) -> None:
        return None

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """The collection's own ``query`` (HNSW) for each query (rows of this reader, −1 padded)."""
        row_of = {doc_id: row for row, doc_id in enumerate(self._ids)}
        found: list[list[Any]] = []
        step = max(1, self._batch)
        queries = np.asarray(queries, dtype=np.float32)
        for start in range(0, len(queries), step):
            answer = self._collection.query(query_embeddings=queries[start : start + step],
                                            n_results=min(k, len(self._ids)), include=[])
            found.extend(answer["ids"])
        return rows_of(found, row_of, k)

    def close(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            close = getattr(client, "close", None)
            if close is not None:
                close()
            self._client = None


def flat_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """``metadata`` as Chroma 1.5 stores it: None values left out (Chroma refuses them; an absent key reads as none),
    and every value other than a str, int, float, bool or a non-empty list of one of those types written as its JSON
    text (e.g. the ``metadata`` object ``corpora perturb`` gives each variant, which Chroma refused in a traceback)."""
    scalars = (str, int, float, bool)

    def storable(value: Any) -> bool:
        if isinstance(value, list):
            return bool(value) and all(isinstance(v, scalars) for v in value) and len({type(v) for v in value}) == 1
        return isinstance(value, scalars)

    return {key: value if storable(value) else json.dumps(value, sort_keys=True, ensure_ascii=False)
            for key, value in metadata.items() if value is not None}


def write_chroma(folder: str | Path, rows: StoreRows, *, collection: str) -> str:
    """A persistent Chroma folder holding one collection of ``rows`` in their distance's space, written
    atomically; returns the URI that reads it back.

    Records are added in batches no larger than the client allows; nothing is embedded by Chroma (no
    embedding function is attached); empty metadata is stored as none (Chroma refuses ``{}``), and a value Chroma
    cannot hold (a nested object, a list of objects: :func:`flat_metadata`) as its JSON text.
    """
    try:
        import chromadb
    except ImportError:
        raise missing_library("chromadb", PIN, "Chroma store") from None
    with atomic.atomic_dir(folder, kind="chroma-store") as tmp:
        client = chromadb.PersistentClient(path=str(tmp))
        configuration: Any = {"hnsw": {"space": SPACE_OF[rows.distance]}}
        target = client.create_collection(collection, configuration=configuration,
                                          embedding_function=None)  # type: ignore[arg-type]
        step = int(client.get_max_batch_size())
        for start in range(0, len(rows.ids), step):
            stop = min(start + step, len(rows.ids))
            target.add(ids=rows.ids[start:stop], documents=rows.texts[start:stop],
                       embeddings=np.asarray(rows.vectors[start:stop], dtype=np.float32),
                       metadatas=[flat_metadata(m) or None for m in rows.metadatas[start:stop]])  # type: ignore[misc]
        close = getattr(client, "close", None)
        if close is not None:
            close()
    return f"chroma://{folder}#{collection}"
