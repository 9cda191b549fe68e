"""``rag-diag store build``: build a vector store the way its users do (to audit it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rag_diag.cli.app import app, check_out, console
from rag_diag.errors import RagDiagError

KINDS = ("langchain", "faiss", "chroma", "qdrant", "pgvector", "llamaindex")
"""Store kinds ``store build`` writes (every one the audit reads)."""
COLLECTION = "rag-diag"

store_app = typer.Typer(help="Vector stores: build one the way their users do.", no_args_is_help=True)
app.add_typer(store_app, name="store")


@store_app.command("build")
def build_command(
    corpus: Annotated[Path, typer.Option(help="BEIR folder or corpus file.")],
    out: Annotated[Path, typer.Option(help="Store folder.")],
    model: Annotated[str, typer.Option(help="Registered model name or a local model folder.")] = "minilm",
    store_kind: Annotated[str, typer.Option(help=f"One of {', '.join(KINDS)}.")] = "langchain",
) -> str:
    """Build a store of the corpus's mean-pooled, L2-normalised vectors, in cosine space.

    ``langchain``: HuggingFaceEmbeddings (normalised) + LangChain FAISS with inner product, saved with
    save_local, as a LangChain user builds one. The others hold the model's normalised mean vectors (what
    sentence-transformers ``encode(normalize_embeddings=True)`` gives), written with each store's own client:
    ``faiss`` (index.faiss + corpus.jsonl), ``chroma`` (persistent folder), ``qdrant`` (local-mode folder),
    ``pgvector`` (a Postgres data folder, LangChain PGVector layout) and ``llamaindex`` (persisted storage).
    Prints the ``--store`` form that audits it; a folder is found by what it holds.
    """
    from rag_diag.corpora.io import load_corpus
    from rag_diag.stores.export import ARTEFACT_KINDS

    if store_kind not in KINDS:
        raise RagDiagError(f"unknown --store-kind {store_kind!r} (use {', '.join(KINDS)})")
    docs = load_corpus(corpus)
    check_out(out, ARTEFACT_KINDS[store_kind])
    if store_kind == "langchain":
        from rag_diag.stores.langchain import build_langchain_store

        written = str(build_langchain_store(docs, model, out))
    else:
        from rag_diag.stores.export import pooled_rows, write_store
        from rag_diag.tokens.extract import encode_corpus

        tokens = encode_corpus(docs, model=model, show_progress=True)
        metadatas = docs.metadata or [{} for _ in docs.ids]
        rows = pooled_rows(tokens, "mean", texts=docs.texts, metadatas=metadatas, distance="cosine")
        written = write_store(store_kind, str(out), rows, collection=COLLECTION)
    console.print(f"{store_kind} store → {written}")
    return written
