"""Write back (``audit --export``): another pooling's vectors of an audited store, as a new store of its kind.

The vectors come from the audit's one encoder pass (its token store), pooled with the chosen strategy, so a
user switches pooling without embedding the corpus a second time:

    v_i = p(X_i)                 (p: the chosen pooling of text i's token matrix X_i)
    v_i ← v_i / ‖v_i‖            for a pooling compared by cosine (then inner product and L2 rank as cosine)

and are written, with the store's ids, texts, metadata and distance, by the writer of the store's kind into
a new folder (or, for a Postgres server, a new collection of the same database). Where the store's own records
hold more than that (a Qdrant point's id, payload layout and vector name; a LlamaIndex node's relationships and
excluded metadata keys), the writer keeps them as they were, so the application that reads the store reads the
export the same way. The audited store is never written to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rag_diag.errors import RagDiagError
from rag_diag.pooling import fit_stats, get_strategy, pool_store
from rag_diag.stores.protocol import Distance, StoreRows
from rag_diag.tokens.store import TokenStore

ARTEFACT_KINDS = {"langchain": "langchain-store", "faiss": "faiss-store", "chroma": "chroma-store",
                  "qdrant": "qdrant-store", "pgvector": "pgvector-store", "llamaindex": "llamaindex-store"}
"""The store kinds that can be written, and the artefact kind of each written folder (``atomic``)."""
EXPORTABLE = tuple(ARTEFACT_KINDS)


def is_server(destination: str) -> bool:
    """A Postgres server URL (written into, as a new collection), not a folder."""
    return destination.startswith(("postgresql://", "postgres://"))


STORE_METRIC = {"l2": "l2", "ip": "dot"}
"""The store distance a pooling compared by other than cosine needs (``mean+std``: l2; ``sketch``: dot)."""


def pooled_rows(
    tokens: TokenStore, pooling: str, *, texts: list[str], metadatas: list[dict], distance: Distance,
    layout: Any = None,
) -> StoreRows:
    """The rows to write: the token store's texts pooled with ``pooling`` (normalised as the docstring says), with
    the audited store's ``layout`` (:meth:`~rag_diag.stores.protocol.StoreReader.layout`) for its writer to keep."""
    strategy = get_strategy(pooling)
    if strategy.metric != "cosine" and STORE_METRIC[strategy.metric] != distance:
        raise RagDiagError(f"pooling '{pooling}' is compared by {STORE_METRIC[strategy.metric]}, which a "
                           f"{distance} store does not rank by; export a cosine pooling (mean, cls, max, sif, last)")
    vectors = pool_store(pooling, tokens, fit_stats(pooling, tokens))
    if strategy.metric == "cosine":
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return StoreRows(ids=list(tokens.doc_ids), texts=list(texts), metadatas=[dict(m) for m in metadatas],
                     vectors=np.ascontiguousarray(vectors, dtype=np.float32), distance=distance, layout=layout)


def write_bare_faiss(folder: str | Path, rows: StoreRows) -> str:
    """A bare FAISS store: ``FOLDER/index.faiss`` (exact ``IndexFlat``) beside ``FOLDER/corpus.jsonl``; the
    folder is its ``--store`` form."""
    import faiss

    from rag_diag import atomic
    from rag_diag.corpora.io import Corpus
    from rag_diag.corpora.writers import write_corpus_jsonl

    metric = faiss.METRIC_L2 if rows.distance == "l2" else faiss.METRIC_INNER_PRODUCT
    index = faiss.IndexFlat(int(rows.vectors.shape[1]), metric)
    index.add(rows.vectors)
    with atomic.atomic_dir(folder, kind="faiss-store") as tmp:
        faiss.write_index(index, str(tmp / "index.faiss"))
        write_corpus_jsonl(tmp / "corpus.jsonl", Corpus(ids=rows.ids, texts=rows.texts, metadata=rows.metadatas))
    return str(folder)


def write_store(kind: str, destination: str, rows: StoreRows, *, collection: str, flavour: str = "simple") -> str:
    """Write ``rows`` as a new store of ``kind`` at ``destination`` (a folder; a ``postgresql://`` URL for a
    Postgres server); returns the ``--store`` form that opens it. ``flavour``: LlamaIndex's vector store
    (``simple`` or ``faiss``)."""
    if kind not in EXPORTABLE:
        raise RagDiagError(f"cannot export to a {kind} store (exportable: {', '.join(EXPORTABLE)})")
    if kind == "langchain":
        from rag_diag.stores.langchain import write_langchain

        return write_langchain(destination, rows)
    if kind == "faiss":
        return write_bare_faiss(destination, rows)
    if kind == "chroma":
        from rag_diag.stores.chroma import write_chroma

        return write_chroma(destination, rows, collection=collection)
    if kind == "qdrant":
        from rag_diag.stores.qdrant import write_qdrant

        return write_qdrant(destination, rows, collection=collection)
    if kind == "llamaindex":
        from rag_diag.stores.llamaindex import write_llamaindex

        return write_llamaindex(Path(destination), rows, flavour=flavour)
    from rag_diag.stores.pgvector import build_folder_store, write_pgvector

    if is_server(destination):
        write_pgvector(destination, rows, collection=collection)
        return f"{destination}#{collection}"
    return build_folder_store(Path(destination), rows, collection=collection)
