"""``rag-diag store build``: build a vector store the way its users do (to audit it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rag_diag.cli.app import app, check_out, console
from rag_diag.errors import RagDiagError

KINDS = {"langchain": "langchain-store", "chroma": "chroma-store"}
"""Store kinds ``store build`` writes, and the artefact kind of each folder."""

store_app = typer.Typer(help="Vector stores: build one the way their users do.", no_args_is_help=True)
app.add_typer(store_app, name="store")


@store_app.command("build")
def build_command(
    corpus: Annotated[Path, typer.Option(help="BEIR folder or corpus file.")],
    out: Annotated[Path, typer.Option(help="Store folder.")],
    model: Annotated[str, typer.Option(help="Registered model name or a local model folder.")] = "minilm",
    store_kind: Annotated[str, typer.Option(help="langchain (FAISS folder) or chroma.")] = "langchain",
) -> Path:
    """Build a store of mean-pooled, L2-normalised vectors of the corpus.

    ``langchain``: HuggingFaceEmbeddings (normalised) + LangChain FAISS with inner product, saved with
    save_local. ``chroma``: a persistent Chroma collection in cosine space holding the model's normalised
    mean vectors (what sentence-transformers ``encode(normalize_embeddings=True)`` gives).
    """
    from rag_diag.corpora.io import load_corpus

    if store_kind not in KINDS:
        raise RagDiagError(f"unknown --store-kind {store_kind!r} (use {', '.join(KINDS)})")
    docs = load_corpus(corpus)
    check_out(out, KINDS[store_kind])
    if store_kind == "langchain":
        from rag_diag.stores.langchain import build_langchain_store

        folder = build_langchain_store(docs, model, out)
    else:
        import numpy as np

        from rag_diag.stores.chroma import build_chroma_store
        from rag_diag.tokens.extract import encode_corpus

        means = encode_corpus(docs, model=model, show_progress=True).means().astype(np.float64)
        unit = means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
        folder = build_chroma_store(docs, unit, out)
    console.print(f"{store_kind} store → {folder}")
    return folder
