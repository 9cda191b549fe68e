"""``rag-diag store build``: build a LangChain FAISS store as a LangChain user would (to audit it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rag_diag.cli.app import app, check_out, console

store_app = typer.Typer(help="Vector stores: build one the way their users do.", no_args_is_help=True)
app.add_typer(store_app, name="store")


@store_app.command("build")
def build_command(
    corpus: Annotated[Path, typer.Option(help="BEIR folder or corpus file.")],
    out: Annotated[Path, typer.Option(help="Store folder (index.faiss + index.pkl).")],
    model: Annotated[str, typer.Option(help="Registered model name or a local model folder.")] = "minilm",
) -> Path:
    """HuggingFaceEmbeddings (normalised) + LangChain FAISS with inner product, saved with save_local."""
    from rag_diag.corpora.io import load_corpus
    from rag_diag.stores.langchain import KIND, build_langchain_store

    docs = load_corpus(corpus)
    check_out(out, KIND)
    folder = build_langchain_store(docs, model, out)
    console.print(f"LangChain FAISS store → {folder}")
    return folder
