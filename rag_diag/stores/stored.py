"""A vector store under audit, in memory: its FAISS index and, by row, document ids, texts, metadata.

Readers: a LangChain FAISS store folder (:mod:`rag_diag.stores.langchain`), or a bare FAISS index
file beside a documents file (BEIR ``corpus.jsonl`` or one text per line, in index order).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from rag_diag.corpora.io import Corpus, load_corpus
from rag_diag.errors import RagDiagError


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


def open_store(store: str | Path, documents: str | Path | None = None, *, trust_store: bool = False) -> StoredIndex:
    """Open a LangChain FAISS store folder, or a FAISS index file with its documents file (index order)."""
    from rag_diag.stores.langchain import load_langchain_store

    store = Path(store)
    if store.is_dir():
        if documents is not None:
            raise RagDiagError(f"{store}: --documents is only for a bare FAISS index file, not a store folder")
        index, doc_ids, texts, metadatas = load_langchain_store(store, trust_store=trust_store)
        return StoredIndex(store, "langchain", index, doc_ids, texts, metadatas)
    if not store.is_file():
        raise RagDiagError(f"{store}: no such store folder or FAISS index file")
    if documents is None:
        raise RagDiagError(f"{store}: a bare FAISS index needs --documents (corpus.jsonl or text lines, index order)")
    try:
        index = faiss.read_index(str(store))
    except RuntimeError:
        raise RagDiagError(f"{store}: not a readable FAISS index") from None
    corpus = load_corpus(documents)
    if len(corpus) != index.ntotal:
        raise RagDiagError(f"{store}: index holds {index.ntotal} vectors but {documents} has {len(corpus)} documents")
    metadatas = corpus.metadata or [{} for _ in corpus.ids]
    return StoredIndex(store, "faiss", index, corpus.ids, corpus.texts, metadatas)
