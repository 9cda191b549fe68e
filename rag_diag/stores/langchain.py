"""LangChain ``FAISS`` vector stores in and out: ``index.faiss`` + ``index.pkl`` (docstore, id map).

- :func:`save_langchain_store` writes a FAISS index and its corpus as a store that
  ``FAISS.load_local(folder, embeddings, allow_dangerous_deserialization=True)`` opens;
- :func:`load_langchain_store` reads any such store back as (index, doc ids, texts, metadatas);
- :func:`build_langchain_store` builds a store the way a LangChain user would (HuggingFaceEmbeddings
  over the local model folder, normalised embeddings, cosine as inner product);
- :func:`write_langchain` writes given vectors as such a store (an exact ``IndexFlat``), for ``--export``.

The ``.pkl`` is a pickle: only load stores you made or trust.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from rag_diag import atomic
from rag_diag.corpora.io import Corpus, load_corpus
from rag_diag.errors import RagDiagError, first_line
from rag_diag.mapped import read_index
from rag_diag.models.loading import load_encoder
from rag_diag.stores.protocol import StoreRows
from rag_diag.stores.safe_pickle import RefusedGlobal, safe_loads

KIND = "langchain-store"


def save_langchain_store(index: faiss.Index, corpus: Corpus, out_dir: str | Path) -> Path:
    """Write ``index.faiss`` + ``index.pkl`` (InMemoryDocstore keyed by document id) atomically; a document's
    metadata is the corpus's (``{"id": doc_id}`` when the corpus has none)."""
    from langchain_community.docstore.in_memory import InMemoryDocstore
    from langchain_core.documents import Document

    metadatas = corpus.metadata or [{"id": doc_id} for doc_id in corpus.ids]
    documents = {
        doc_id: Document(id=doc_id, page_content=text, metadata=dict(metadata))
        for doc_id, text, metadata in zip(corpus.ids, corpus.texts, metadatas, strict=True)
    }
    out_dir = Path(out_dir)
    with atomic.atomic_dir(out_dir, kind=KIND) as tmp:
        faiss.write_index(index, str(tmp / "index.faiss"))
        payload = (InMemoryDocstore(documents), dict(enumerate(corpus.ids)))
        (tmp / "index.pkl").write_bytes(pickle.dumps(payload))
    return out_dir


def load_langchain_store(
    path: str | Path, trust_store: bool = False
) -> tuple[faiss.Index, list[str], list[str], list[dict[str, Any]]]:
    """Read a LangChain FAISS store: (index, doc ids by row, texts by row, metadatas by row).

    ``index.pkl`` is a pickle, which can run any code while it loads. By default it is read through
    :mod:`rag_diag.stores.safe_pickle`'s allow-list (the docstore and document classes a
    ``FAISS.save_local`` store holds, plus inert builtin types), so a store from anywhere is safe to
    inspect; a refused global raises :class:`RagDiagError` naming it. ``trust_store=True`` (the CLI's
    ``--trust-store``, only for a store you made yourself) unpickles without restriction, for stores
    whose metadata holds other types.
    """

    path = Path(path)
    if not (path / "index.faiss").is_file() or not (path / "index.pkl").is_file():
        raise RagDiagError(f"{path}: not a LangChain FAISS store (needs index.faiss and index.pkl)")
    atomic.protect_input(path)
    try:
        index = read_index(path / "index.faiss")
    except (RuntimeError, ValueError) as exc:
        raise RagDiagError(f"{path}: corrupt LangChain store ({first_line(exc)})") from None
    data = (path / "index.pkl").read_bytes()
    try:
        payload = pickle.loads(data) if trust_store else safe_loads(data)
    except RefusedGlobal as exc:
        raise RagDiagError(
            f"{path / 'index.pkl'}: refused to unpickle '{exc.qualified}' (not part of a LangChain FAISS store); "
            "only if you made this store yourself, pass --trust-store"
        ) from None
    except Exception as exc:  # a corrupt pickle can fail in any way; none of them is a rag-diag bug
        raise RagDiagError(f"{path}: corrupt LangChain store ({first_line(exc)})") from None
    if not isinstance(payload, tuple | list) or len(payload) != 2 or not isinstance(payload[1], dict):
        raise RagDiagError(f"{path}: index.pkl is not a (docstore, index_to_docstore_id) pair")
    docstore, index_to_docstore_id = payload
    if len(index_to_docstore_id) != index.ntotal:
        raise RagDiagError(f"{path}: {index.ntotal} vectors but {len(index_to_docstore_id)} docstore ids")
    if any(row not in index_to_docstore_id for row in range(index.ntotal)):
        raise RagDiagError(f"{path}: the docstore id map does not cover rows 0..{index.ntotal - 1}")
    doc_ids = [str(index_to_docstore_id[row]) for row in range(index.ntotal)]
    try:
        documents = [docstore.search(doc_id) for doc_id in doc_ids]
    except Exception as exc:  # a docstore from a pickle may be any object
        raise RagDiagError(f"{path}: unreadable docstore ({first_line(exc)})") from None
    missing = [doc_id for doc_id, doc in zip(doc_ids, documents, strict=True) if isinstance(doc, str)]
    if missing:
        raise RagDiagError(f"{path}: docstore lacks {len(missing)} ids, e.g. '{missing[0]}'")
    for doc_id, doc in zip(doc_ids, documents, strict=True):
        text, metadata = getattr(doc, "page_content", None), getattr(doc, "metadata", None)
        if not isinstance(text, str) or not isinstance(metadata, dict):
            raise RagDiagError(f"{path}: docstore entry '{doc_id}' is not a document with a text and metadata")
    return index, doc_ids, [doc.page_content for doc in documents], [dict(doc.metadata) for doc in documents]


def build_langchain_store(corpus: Corpus | str | Path, model_name: str, out_dir: str | Path) -> Path:
    """Build a LangChain FAISS store as a LangChain user would, and save it to ``out_dir``.

    HuggingFaceEmbeddings over the model's local folder, ``normalize_embeddings=True``, and the
    MAX_INNER_PRODUCT distance strategy: scores are cosines. A document's metadata is the corpus's (its
    ``label`` included) with ``id`` set to the document id.
    """
    from langchain_community.vectorstores import FAISS
    from langchain_community.vectorstores.utils import DistanceStrategy
    from langchain_huggingface import HuggingFaceEmbeddings

    docs = corpus if isinstance(corpus, Corpus) else load_corpus(corpus)
    folder = load_encoder(model_name).identity["source"]
    embeddings = HuggingFaceEmbeddings(
        model_name=folder, model_kwargs={"device": "cpu"}, encode_kwargs={"normalize_embeddings": True},
        show_progress=True,
    )
    store = FAISS.from_texts(
        docs.texts,
        embeddings,
        metadatas=[{**metadata, "id": doc_id}
                   for doc_id, metadata in zip(docs.ids, docs.metadata or [{} for _ in docs.ids], strict=True)],
        ids=docs.ids,
        distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT,
    )
    out_dir = Path(out_dir)
    with atomic.atomic_dir(out_dir, kind=KIND) as tmp:
        store.save_local(str(tmp))
    return out_dir


def write_langchain(folder: str | Path, rows: StoreRows, *, collection: str | None = None) -> str:
    """A LangChain FAISS store of ``rows`` (exact ``IndexFlat``: inner product for cosine and dot, L2 for l2),
    written atomically; returns its folder. ``collection`` is ignored (a FAISS folder holds one)."""
    metric = faiss.METRIC_L2 if rows.distance == "l2" else faiss.METRIC_INNER_PRODUCT
    index = faiss.IndexFlat(int(rows.vectors.shape[1]), metric)
    index.add(np.ascontiguousarray(rows.vectors, dtype=np.float32))
    corpus = Corpus(ids=list(rows.ids), texts=list(rows.texts), source="", metadata=[dict(m) for m in rows.metadatas])
    return str(save_langchain_store(index, corpus, folder))
