"""``rag-diag encode``: one forward pass per text into a memory-mapped token store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from rag_diag.cli.app import MaxStore, PassBudget, PassEngine, RayAddress, app, check_out, console, pass_options

HELP_CORPUS = "BEIR folder, its corpus.jsonl, or a text file (one text per line)."


@app.command("encode")
def encode_command(
    corpus: Annotated[Path, typer.Option(help=HELP_CORPUS)],
    out: Annotated[Path, typer.Option(help="Folder to write the token store to.")],
    model: Annotated[str, typer.Option(help="Registered model name or a local model folder.")] = "minilm",
    layer: Annotated[str, typer.Option(help="'last', 'all', or comma-separated hidden-state indices.")] = "last",
    dtype: Annotated[str, typer.Option(help="Storage precision: float32 or float16.")] = "float32",
    batch_size: Annotated[int, typer.Option(min=1)] = 32,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    max_seq_length: Annotated[int | None, typer.Option(min=1, help="Override the model's window (tokens).")] = None,
    memory_budget: PassBudget = 2.0,
    max_store: MaxStore = None,
    engine: PassEngine = "local",
    ray_address: RayAddress = None,
) -> Any:
    """Extract every text's token embeddings in one forward pass into a memory-mapped token store."""
    from rag_diag.corpora.io import load_corpus
    from rag_diag.tokens.extract import encode_corpus

    options = pass_options(memory_budget, max_store, engine, ray_address)
    docs = load_corpus(corpus)
    check_out(out, "token-store")
    store = encode_corpus(
        docs, model=model, layers=layer, dtype=dtype, batch_size=batch_size, device=device,
        max_seq_length=max_seq_length, out=out, show_progress=True, **options,
    )
    report = store.report
    assert report is not None
    source = "cache hit, no encoder work" if report.cache_hit else f"{report.forward_passes} forward passes"
    size = store.embeddings.nbytes / 2**30
    console.print(f"{report.n_texts} texts, {report.n_tokens} tokens, dim {store.dim}, layers {store.layers}, "
                  f"{size:.2f} GiB of token states ({source}, engine {engine}) → {out}")
    if report.n_truncated:
        console.print(f"[yellow]{report.n_truncated} of {report.n_texts} texts were longer than the "
                      f"{store.manifest['max_seq_length']}-token window and were truncated[/yellow]")
    return store
