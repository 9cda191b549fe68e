"""``rag-diag models`` and ``rag-diag encode``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from rag_diag.cli.app import app

console = Console()


@app.command("models")
def models_command() -> None:
    """List the registered models: name, kind, dimension, whether installed, licence."""
    from rag_diag.models import list_models

    table = Table("name", "kind", "dim", "installed", "licence", "description")
    for row in list_models():
        table.add_row(
            row["name"], row["kind"], str(row["dim"]), "yes" if row["installed"] else "no",
            row["licence"], row["description"],
        )
    console.print(table)
    console.print("Any local sentence-transformers / transformers folder also works as --model PATH.")


@app.command("encode")
def encode_command(
    corpus: Annotated[Path, typer.Option(help="BEIR folder, its corpus.jsonl, or a text file (one text per line).")],
    out: Annotated[Path, typer.Option(help="Folder to write the token store to.")],
    model: Annotated[str, typer.Option(help="Registered model name or a local model folder.")] = "minilm",
    layer: Annotated[str, typer.Option(help="'last', 'all', or comma-separated hidden-state indices.")] = "last",
    dtype: Annotated[str, typer.Option(help="Storage precision: float32 or float16.")] = "float32",
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    max_seq_length: Annotated[int | None, typer.Option(help="Override the model's window (tokens).")] = None,
) -> None:
    """Extract every text's token embeddings in one forward pass into a memory-mapped token store."""
    from rag_diag.corpora.io import load_corpus
    from rag_diag.encode import encode_with_report

    docs = load_corpus(corpus)
    store, report = encode_with_report(
        docs.texts, model=model, ids=docs.ids, layers=layer, dtype=dtype, batch_size=batch_size,
        device=device, max_seq_length=max_seq_length, out=out, show_progress=True,
    )
    source = "cache hit, no encoder work" if report.cache_hit else f"{report.forward_passes} forward passes"
    console.print(
        f"{report.n_texts} texts, {report.n_tokens} tokens, dim {store.dim}, layers {store.layers} "
        f"({source}) → {out}"
    )
    if report.n_truncated:
        console.print(
            f"[yellow]{report.n_truncated} of {report.n_texts} texts were longer than the "
            f"{store.manifest['max_seq_length']}-token window and were truncated[/yellow]"
        )
