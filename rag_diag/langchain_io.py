"""LangChain ``FAISS`` vector stores in and out: ``index.faiss`` + ``index.pkl`` (docstore, id map).

- :func:`export_langchain` writes a bundle's mean index as a store that
  ``FAISS.load_local(folder, embeddings, allow_dangerous_deserialization=True)`` opens;
- :func:`load_langchain_store` reads any such store back as (index, doc ids, texts, metadatas);
- :func:`import_langchain` turns a store into an index bundle ``rag-diag evaluate`` accepts;
- :func:`build_langchain_store` builds a store the way a LangChain user would (HuggingFaceEmbeddings
  over the local model folder, normalised embeddings, cosine as inner product).

The ``.pkl`` is a pickle: only load stores you made or trust.
"""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path
from typing import Any

import faiss

from rag_diag import atomic
from rag_diag.corpora.io import Corpus, load_corpus
from rag_diag.errors import RagDiagError
from rag_diag.index import BUNDLE_FORMAT, IndexBundle, library_versions
from rag_diag.models import load_encoder


def _bundle_corpus(bundle: IndexBundle) -> Corpus:
    """The corpus the bundle was built from, checked against the recorded content hash."""
    corpus = load_corpus(bundle.manifest["corpus"])
    if corpus.content_hash() != bundle.manifest["corpus_sha256"]:
        raise RagDiagError(f"{bundle.manifest['corpus']}: corpus changed since index {bundle.path} was built")
    return corpus


def _save_store(index: faiss.Index, corpus: Corpus, out_dir: str | Path) -> Path:
    """Write ``index.faiss`` + ``index.pkl`` (InMemoryDocstore keyed by document id) atomically."""
    from langchain_community.docstore.in_memory import InMemoryDocstore
    from langchain_core.documents import Document

    documents = {
        doc_id: Document(id=doc_id, page_content=text, metadata={"id": doc_id})
        for doc_id, text in zip(corpus.ids, corpus.texts, strict=True)
    }
    out_dir = Path(out_dir)
    with atomic.atomic_dir(out_dir) as tmp:
        faiss.write_index(index, str(tmp / "index.faiss"))
        payload = (InMemoryDocstore(documents), dict(enumerate(corpus.ids)))
        (tmp / "index.pkl").write_bytes(pickle.dumps(payload))
    return out_dir


def export_langchain(bundle_dir: str | Path, out_dir: str | Path) -> Path:
    """Export the bundle's ``mean`` index as a LangChain FAISS store in ``out_dir``.

    The vectors are L2-normalised means, so a store opened with embeddings that normalise
    (``encode_kwargs={"normalize_embeddings": True}``) returns the same neighbours by inner product.
    """
    bundle = IndexBundle.open(bundle_dir)
    if "mean" not in bundle.strategies:
        raise RagDiagError(f"{bundle.path}: no 'mean' index to export (build it with --pooling mean)")
    corpus = _bundle_corpus(bundle)
    if bundle.doc_ids != corpus.ids:
        raise RagDiagError(f"{bundle.path}: document order differs from the corpus; rebuild the index")
    return _save_store(bundle.index("mean"), corpus, out_dir)


def load_langchain_store(path: str | Path) -> tuple[faiss.Index, list[str], list[str], list[dict[str, Any]]]:
    """Read a LangChain FAISS store: (index, doc ids by row, texts by row, metadatas by row)."""
    path = Path(path)
    if not (path / "index.faiss").is_file() or not (path / "index.pkl").is_file():
        raise RagDiagError(f"{path}: not a LangChain FAISS store (needs index.faiss and index.pkl)")
    try:
        index = faiss.read_index(str(path / "index.faiss"))
        docstore, index_to_docstore_id = pickle.loads((path / "index.pkl").read_bytes())
    except (RuntimeError, pickle.UnpicklingError, ValueError, EOFError) as exc:
        raise RagDiagError(f"{path}: corrupt LangChain store ({exc})") from None
    if len(index_to_docstore_id) != index.ntotal:
        raise RagDiagError(f"{path}: {index.ntotal} vectors but {len(index_to_docstore_id)} docstore ids")
    doc_ids = [str(index_to_docstore_id[row]) for row in range(index.ntotal)]
    documents = [docstore.search(doc_id) for doc_id in doc_ids]
    missing = [doc_id for doc_id, doc in zip(doc_ids, documents, strict=True) if isinstance(doc, str)]
    if missing:
        raise RagDiagError(f"{path}: docstore lacks {len(missing)} ids, e.g. '{missing[0]}'")
    return index, doc_ids, [doc.page_content for doc in documents], [dict(doc.metadata) for doc in documents]


def import_langchain(store_dir: str | Path, out: str | Path, model: str = "minilm") -> IndexBundle:
    """Turn a LangChain FAISS store into a one-strategy (``mean``) index bundle.

    The store's texts become the bundle's ``corpus.jsonl``; there is no token store, so an imported
    bundle can be evaluated but not re-ranked. ``model`` names the encoder the store was built with
    (its identity is recorded, so evaluating with another model is refused).
    """
    index, doc_ids, texts, _ = load_langchain_store(store_dir)
    encoder = load_encoder(model)
    if index.d != encoder.dim:
        raise RagDiagError(f"{store_dir}: store has dimension {index.d}, model '{model}' has {encoder.dim}")
    corpus = Corpus(ids=doc_ids, texts=texts)
    metric = "cosine" if index.metric_type == faiss.METRIC_INNER_PRODUCT else "l2"
    out = Path(out)
    common = {
        "format": BUNDLE_FORMAT,
        "model": encoder.identity,
        "corpus": str((out / "corpus.jsonl").resolve()),
        "corpus_sha256": corpus.content_hash(),
        "versions": library_versions(),
        "command": f"import_langchain({store_dir})",
        "source": str(Path(store_dir).resolve()),
    }
    with atomic.atomic_dir(out) as tmp:
        lines = [
            json.dumps({"_id": doc_id, "title": "", "text": text}, ensure_ascii=False)
            for doc_id, text in zip(doc_ids, texts, strict=True)
        ]
        atomic.write_text(tmp / "corpus.jsonl", "\n".join(lines) + "\n")
        (tmp / "mean").mkdir()
        shutil.copyfile(Path(store_dir) / "index.faiss", tmp / "mean" / "index.faiss")
        atomic.write_json(tmp / "mean" / "doc_ids.json", doc_ids)
        strategy = {"strategy": "mean", "dim": index.d, "metric": metric, "n_docs": index.ntotal}
        atomic.write_json(
            tmp / "mean" / "manifest.json", {**common, **strategy, "index_type": "flat", "index_params": {}}
        )
        atomic.write_json(
            tmp / "manifest.json",
            {**common, "strategies": ["mean"], "token_store": None, "dim": index.d, "index_type": "imported",
             "n_docs": index.ntotal},
        )
    return IndexBundle.open(out)


def build_langchain_store(corpus: Corpus | str | Path, model_name: str, out_dir: str | Path) -> Path:
    """Build a LangChain FAISS store as a LangChain user would, and save it to ``out_dir``.

    HuggingFaceEmbeddings over the model's local folder, ``normalize_embeddings=True``, and the
    MAX_INNER_PRODUCT distance strategy: scores are cosines.
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
        metadatas=[{"id": doc_id} for doc_id in docs.ids],
        ids=docs.ids,
        distance_strategy=DistanceStrategy.MAX_INNER_PRODUCT,
    )
    out_dir = Path(out_dir)
    with atomic.atomic_dir(out_dir) as tmp:
        store.save_local(str(tmp))
    return out_dir
