"""Qdrant, local mode (``QdrantClient(path=FOLDER)``) or a server (``QdrantClient(url=URL)``), as a
:class:`~rag_diag.stores.protocol.StoreReader`, and :func:`write_qdrant`, which writes a local-mode folder.

A local-mode folder holds ``meta.json`` (the collections and their vector parameters) and
``collection/NAME/storage.sqlite``. The reader opens it (or connects to the server, with the API key in
``QDRANT_API_KEY`` when set) with ``qdrant-client`` itself, reads one collection and closes the client
(local mode locks the folder while a client holds it).

- **rows**: the points sorted by id, integer ids first (numerically), then UUID ids (as strings),
  the order Qdrant's own scroll uses; ``doc_ids`` are the ids as strings, or, with ``id_key``, the
  payload value under that key (Qdrant point ids must be integers or UUIDs, so stores built from
  documents with string ids keep them in the payload; LangChain keeps them under ``metadata``); a store
  :func:`write_qdrant` wrote is recognised (each point id is the UUID5 of its payload ``doc_id``), and so is one
  Haystack wrote (each point id the UUID5 of its payload ``id``, in Haystack's namespace).
- **texts**: from the payload: ``text_key`` when given; else LlamaIndex's ``_node_content`` JSON ``text`` when
  the point has one (its other payload keys are the node's metadata, so a metadata key ``text`` or ``document``
  stays metadata); else the first string among :data:`TEXT_KEYS` (``page_content`` for LangChain, ``text``,
  ``document``, ``content`` for Haystack).
- **metadata**: the rest of the payload, less the document id (when the ids come from the payload) and
  LlamaIndex's bookkeeping (:data:`LLAMA_INDEX_KEYS`; ``ref_doc_id``, the source document, is kept); a nested
  ``metadata`` (LangChain) or ``meta`` (Haystack) object is lifted to the top. The id is taken out before the
  lift, so a metadata key of the same name as the payload's id key is kept.
- **vectors**: the collection's dense vector (the unnamed one, or the only named one, or ``vector_name``),
  float32; distance Cosine → ``cosine``, Dot → ``dot``, Euclid → ``l2`` (Manhattan is refused).
- **search**: the collection's own ``query_points`` at its settings (HNSW on a server; exact in local mode).
- **layout** (:class:`QdrantLayout`): the point ids, payloads and vector name, which :func:`write_qdrant` keeps
  when it writes another pooling of the collection (``audit --export``).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
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

KIND = "qdrant"
PIN = "qdrant-client==1.20.0"
TEXT_KEYS = ("page_content", "text", "document", "content")
"""Payload keys tried, in order, for a point's text (LangChain, LlamaIndex/common, Chroma-like, Haystack)."""
LLAMA_INDEX_KEYS = ("_node_content", "_node_type", "document_id", "doc_id")
"""Payload keys LlamaIndex adds beside a node's metadata: the node as JSON, its type, and two copies of
``ref_doc_id``."""
NESTED_METADATA = ("metadata", "meta")
"""Payload keys of a nested metadata object, lifted to the top: LangChain's and Haystack's."""
DISTANCES: dict[str, Distance] = {"Cosine": "cosine", "Dot": "dot", "Euclid": "l2"}


@dataclass(frozen=True)
class QdrantLayout:
    """A collection's own records, by row: point ids and payloads as stored; the dense vector's name (None: the
    unnamed vector); and the ``?…`` options the collection was read with, so a copy reads the same way."""

    point_ids: list[int | str]
    payloads: list[dict[str, Any]]
    vector_name: str | None
    options: dict[str, str]


def is_qdrant_folder(path: Path) -> bool:
    """A Qdrant local-mode folder: ``meta.json`` beside a ``collection/`` folder."""
    return (path / "meta.json").is_file() and (path / "collection").is_dir()


def _id_key(point_id: int | str) -> tuple[int, int, str]:
    return (0, point_id, "") if isinstance(point_id, int) else (1, 0, str(point_id))


class QdrantReader(RowsInMemory):
    """One collection of a Qdrant local-mode folder, rows sorted by point id."""

    kind = KIND

    def __init__(
        self, path: str | Path, collection: str | None = None, *, vector_name: str | None = None,
        text_key: str | None = None, id_key: str | None = None, url: str | None = None,
    ) -> None:
        self.path = Path(path)
        if url is None and not is_qdrant_folder(self.path):
            raise RagDiagError(f"{self.path}: not a Qdrant local-mode folder (needs meta.json and collection/)")
        try:
            from qdrant_client import QdrantClient
        except ImportError:
            raise missing_library("qdrant-client", PIN, "Qdrant store") from None
        try:
            if url is None:
                atomic.protect_input(self.path)
                self._client: Any = QdrantClient(path=str(self.path))
            else:
                self._client = QdrantClient(url=url, api_key=os.environ.get("QDRANT_API_KEY") or None, timeout=30,
                                            check_compatibility=False)
        except RuntimeError as exc:  # the folder lock, held by another client
            raise RagDiagError(f"{self.path}: cannot open the Qdrant folder ({first_line(exc)})") from None
        except Exception as exc:  # a corrupt meta.json or storage can fail in any way
            raise RagDiagError(f"{self.path}: unreadable Qdrant folder ({first_line(exc)})") from None
        try:
            self._read(collection, vector_name, text_key, id_key)
        except RagDiagError:
            self.close()
            raise
        except Exception as exc:  # a server that cannot be reached, or answers with an error
            self.close()
            raise RagDiagError(f"{self.path}: cannot read the Qdrant store ({first_line(exc)})") from None
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------------------------------ reading

    def _read(self, collection: str | None, vector_name: str | None, text_key: str | None,
              id_key: str | None) -> None:
        names = sorted(c.name for c in self._client.get_collections().collections)
        collection = choose_collection(self.path, "Qdrant", names, collection, "qdrant+path://FOLDER#COLLECTION")
        self.collection: str | None = collection
        params = self._client.get_collection(collection).config.params.vectors
        if params is None or (isinstance(params, dict) and not params):
            raise RagDiagError(f"{self.path}#{collection}: the collection has no dense vectors")
        if isinstance(params, dict):
            if vector_name is None:
                if len(params) != 1:
                    raise RagDiagError(f"{self.path}#{collection}: named vectors {', '.join(sorted(params))}; choose "
                                       "one with qdrant+path://FOLDER#COLLECTION?vector=NAME")
                vector_name = next(iter(params))
            if vector_name not in params:
                raise RagDiagError(f"{self.path}#{collection}: no vector named '{vector_name}' "
                                   f"(found: {', '.join(sorted(params))})")
            vector_params = params[vector_name]
        else:
            if vector_name not in (None, ""):
                raise RagDiagError(f"{self.path}#{collection}: the collection has one unnamed vector, "
                                   f"not '{vector_name}'")
            vector_name, vector_params = None, params
        if getattr(vector_params, "multivector_config", None) is not None:
            raise RagDiagError(f"{self.path}#{collection}: multivectors (late interaction) cannot be audited")
        distance = str(getattr(vector_params.distance, "value", vector_params.distance))
        if distance not in DISTANCES:
            raise RagDiagError(f"{self.path}#{collection}: distance {distance} is not supported "
                               f"(supported: {', '.join(DISTANCES)})")
        self.distance: Distance = DISTANCES[distance]
        self.dim: int = int(vector_params.size)
        self._vector_name = vector_name
        points = []
        offset = None
        while True:
            records, offset = self._client.scroll(collection, limit=BATCH_SIZE, offset=offset, with_payload=True,
                                                  with_vectors=False)
            points.extend(records)
            if offset is None:
                break
        if not points:
            raise RagDiagError(f"{self.path}#{collection}: the collection is empty")
        points.sort(key=lambda point: _id_key(point.id))
        self._point_ids = [point.id for point in points]
        self._ids, from_key = _doc_ids(points, id_key, f"{self.path}#{collection}")
        self._texts, self._metadatas = [], []
        for point in points:
            text, metadata = _text_and_metadata(point.payload or {}, text_key, from_key)
            if text is None:
                keys = ", ".join(sorted(point.payload or {})) or "none"
                wanted = f"'{text_key}'" if text_key else ", ".join(TEXT_KEYS)
                raise RagDiagError(f"{self.path}#{collection}: point {point.id} has no text in its payload (looked for "
                                   f"{wanted}; payload keys: {keys}); name the key with ?text=KEY")
            self._texts.append(text)
            self._metadatas.append(metadata)
        options = {"vector": vector_name, "text": text_key, "id": id_key}
        self._layout = QdrantLayout(list(self._point_ids), [point.payload or {} for point in points], vector_name,
                                    {key: value for key, value in options.items() if value})

    # ----------------------------------------------------------------------------------- the protocol

    def vectors(self, batch_size: int = BATCH_SIZE) -> Iterator[np.ndarray]:
        with_vectors: bool | list[str] = True if self._vector_name is None else [self._vector_name]
        for start in range(0, len(self._point_ids), batch_size):
            chunk = self._point_ids[start : start + batch_size]
            records = self._client.retrieve(self.collection, ids=chunk, with_payload=False, with_vectors=with_vectors)
            found: dict[Any, Any] = {}
            for record in records:
                vector = record.vector
                if isinstance(vector, dict):
                    vector = vector.get(self._vector_name or "")
                found[record.id] = vector
            rows = []
            for point_id in chunk:
                vector = found.get(point_id)
                if not isinstance(vector, list) or (vector and isinstance(vector[0], list)):
                    raise RagDiagError(f"{self.path}#{self.collection}: point {point_id} has no dense vector"
                                       + (f" '{self._vector_name}'" if self._vector_name else ""))
                rows.append(vector)
            yield np.asarray(rows, dtype=np.float32)

    def faiss_index(self) -> None:
        return None

    def search(self, queries: np.ndarray, k: int) -> np.ndarray:
        """The collection's own ``query_points`` for each query (rows of this reader, −1 padded)."""
        row_of = {point_id: row for row, point_id in enumerate(self._point_ids)}
        found = []
        for query in np.asarray(queries, dtype=np.float32):
            answer = self._client.query_points(self.collection, query=query.tolist(), using=self._vector_name,
                                               limit=k, with_payload=False, with_vectors=False)
            found.append([point.id for point in answer.points])
        return rows_of(found, row_of, k)

    def close(self) -> None:
        client = getattr(self, "_client", None)
        if client is not None:
            client.close()
            self._client = None


def _text_and_metadata(
    payload: dict[str, Any], text_key: str | None, id_key: str | None = None,
) -> tuple[str | None, dict[str, Any]]:
    """A point's text and metadata from its payload (see the module docstring); ``id_key``: the payload key the
    document id was read from (taken out of the top level when there, else out of the lifted metadata)."""
    rest = dict(payload)
    id_in_nested = id_key is not None and id_key not in rest
    if id_key is not None:
        rest.pop(id_key, None)
    text = None if text_key else _node_text(rest.get("_node_content"))
    if text is not None or "_node_content" in rest:
        for key in LLAMA_INDEX_KEYS:
            rest.pop(key, None)
        if rest.get("ref_doc_id") == "None":  # LlamaIndex's placeholder for a node without a source document
            del rest["ref_doc_id"]
    if text is None:
        for key in (text_key,) if text_key else TEXT_KEYS:
            if isinstance(rest.get(key), str):
                text = rest.pop(key)
                break
    for key in NESTED_METADATA:
        nested = rest.get(key)
        if isinstance(nested, dict):
            del rest[key]
            rest = {**rest, **nested}
    if id_in_nested:
        rest.pop(str(id_key), None)
    return text, rest


def _node_text(node_content: Any) -> str | None:
    """The ``text`` of LlamaIndex's ``_node_content`` JSON, when it holds a non-empty one."""
    if not isinstance(node_content, str):
        return None
    try:
        node = json.loads(node_content)
    except ValueError:
        return None
    text = node.get("text") if isinstance(node, dict) else None
    return text if isinstance(text, str) and text else None


def _doc_ids(points: list[Any], id_key: str | None, where: str) -> tuple[list[str], str | None]:
    """The points' document ids and the payload key they came from (None: the point ids).

    With ``id_key``: the payload (or LangChain ``metadata``) value under it, which must be present and unique.
    Without: the payload value a writer derived every point id from (:data:`DERIVED_IDS`: a store
    :func:`write_qdrant` or Haystack wrote), else the point ids as strings."""
    if id_key is None:
        for key, derive in DERIVED_IDS:
            written = [(point.payload or {}).get(key) for point in points]
            if all(isinstance(doc_id, str) and _same_uuid(point.id, derive(doc_id))
                   for point, doc_id in zip(points, written, strict=True)):
                return [str(doc_id) for doc_id in written], key
        return [str(point.id) for point in points], None
    ids = []
    for point in points:
        payload = point.payload or {}
        nested = payload.get("metadata")
        value = payload.get(id_key, nested.get(id_key) if isinstance(nested, dict) else None)
        if value is None:
            raise RagDiagError(f"{where}: point {point.id} has no '{id_key}' in its payload (?id={id_key})")
        ids.append(str(value))
    if len(set(ids)) != len(ids):
        raise RagDiagError(f"{where}: the payload key '{id_key}' is not unique across points (?id={id_key})")
    return ids, id_key


def _same_uuid(point: int | str, derived: str) -> bool:
    """Whether a point id is the UUID ``derived`` (Qdrant returns UUIDs in canonical form, writers may not)."""
    try:
        return isinstance(point, str) and uuid.UUID(point) == uuid.UUID(derived)
    except ValueError:
        return False


QDRANT_DISTANCES = {"cosine": "Cosine", "dot": "Dot", "l2": "Euclid"}
ID_KEY = "doc_id"
"""Payload key :func:`write_qdrant` keeps each document's own id under (open with ``?id=doc_id``)."""


def point_id(doc_id: str) -> str:
    """A stable UUID point id for a document id (UUID5 in the URL namespace of ``rag-diag:<doc id>``)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"rag-diag:{doc_id}"))


HAYSTACK_NAMESPACE = uuid.UUID("3896d314-1e95-4a3a-b45a-945f9f0b541d")
"""The namespace of the UUID5 point ids Haystack's Qdrant document store derives from its document ids."""


def haystack_point_id(doc_id: str) -> str:
    """The point id Haystack's Qdrant document store gives the document ``doc_id`` (its payload ``id``)."""
    return str(uuid.uuid5(HAYSTACK_NAMESPACE, doc_id))


DERIVED_IDS = ((ID_KEY, point_id), ("id", haystack_point_id))
"""Payload keys a writer derives each point id from, with the derivation: rag-diag's, then Haystack's."""


def write_qdrant(folder: str | Path, rows: StoreRows, *, collection: str) -> str:
    """A Qdrant local-mode folder holding one collection of ``rows``, written atomically; returns its URI.

    Points get UUID5 ids derived from the document ids; the payload holds ``page_content`` (the text),
    ``metadata`` (the metadata) and :data:`ID_KEY` (the document id), which the reader takes as the
    document id because each point id is derived from it. Rows read from a Qdrant collection
    (``rows.layout`` a :class:`QdrantLayout`) keep that collection's point ids, payloads and vector name instead,
    and the URI carries the options it was read with.
    """
    try:
        from qdrant_client import QdrantClient, models
    except ImportError:
        raise missing_library("qdrant-client", PIN, "Qdrant store") from None
    layout = rows.layout if isinstance(rows.layout, QdrantLayout) else None
    if layout is None:
        ids: list[int | str] = [point_id(doc_id) for doc_id in rows.ids]
        payloads = [{"page_content": text, "metadata": dict(metadata), ID_KEY: doc_id}
                    for doc_id, text, metadata in zip(rows.ids, rows.texts, rows.metadatas, strict=True)]
    elif len(layout.point_ids) != len(rows.ids):
        raise RagDiagError(f"the Qdrant layout has {len(layout.point_ids)} points for {len(rows.ids)} rows")
    else:
        ids, payloads = layout.point_ids, layout.payloads
    name = None if layout is None else layout.vector_name
    with atomic.atomic_dir(folder, kind="qdrant-store") as tmp:
        client = QdrantClient(path=str(tmp))
        try:
            params = models.VectorParams(size=int(rows.vectors.shape[1]),
                                         distance=models.Distance(QDRANT_DISTANCES[rows.distance]))
            client.create_collection(collection, vectors_config=params if name is None else {name: params})
            for start in range(0, len(rows.ids), BATCH_SIZE):
                stop = min(start + BATCH_SIZE, len(rows.ids))
                vectors = np.asarray(rows.vectors[start:stop], dtype=np.float32)
                client.upsert(collection, points=[
                    models.PointStruct(id=pid, vector=vector.tolist() if name is None else {name: vector.tolist()},
                                       payload=payload)
                    for pid, payload, vector in zip(ids[start:stop], payloads[start:stop], vectors, strict=True)
                ])
        finally:
            client.close()
    query = "&".join(f"{key}={value}" for key, value in ({} if layout is None else layout.options).items())
    return f"qdrant+path://{folder}{'?' + query if query else ''}#{collection}"
