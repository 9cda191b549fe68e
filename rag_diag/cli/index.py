"""``rag-diag index``: one FAISS index per pooling strategy from one encoder pass."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from rag_diag.cli.app import (
    Force,
    MaxStore,
    PassBudget,
    PassEngine,
    RayAddress,
    app,
    check_out,
    console,
    pass_options,
    recorded,
)
from rag_diag.cli.encode import HELP_CORPUS


@app.command("index")
def index_command(
    context: typer.Context,
    corpus: Annotated[Path, typer.Option(help=HELP_CORPUS)],
    out: Annotated[Path, typer.Option(help="Folder to write the index bundle to.")],
    model: Annotated[str, typer.Option(help="Registered model name or a local model folder.")] = "minilm",
    pooling: Annotated[str, typer.Option(help="Comma-separated pooling strategies, or 'all'.")] = "mean",
    index_type: Annotated[str, typer.Option(help="flat, hnsw or ivfpq.")] = "flat",
    device: Annotated[str, typer.Option(help="cpu, cuda or auto (GPU FAISS when present).")] = "cpu",
    langchain: Annotated[bool, typer.Option(help="Export the mean index as a LangChain store too.")] = True,
    memory_budget: PassBudget = 2.0,
    max_store: MaxStore = None,
    engine: PassEngine = "local",
    ray_address: RayAddress = None,
    force: Force = False,
) -> Any:
    """Encode the corpus once and build one FAISS index per pooling strategy."""
    from rag_diag.corpora.io import load_corpus
    from rag_diag.retrieval.bundle import KIND, build_indexes

    options = pass_options(memory_budget, max_store, engine, ray_address)
    docs = load_corpus(corpus)
    check_out(out, KIND, force)
    bundle = build_indexes(docs, model=model, strategies=pooling, index_type=index_type, device=device,
                           command=recorded(context), encode_options=options)
    bundle = bundle.write(out, force=force, langchain=docs if langchain else None)
    table = Table("strategy", "dim", "metric", "index")
    for strategy in bundle.strategies:
        meta = bundle.strategy_manifest(strategy)
        table.add_row(strategy, str(meta["dim"]), meta["metric"], meta["index_type"])
    console.print(table)
    console.print(f"{bundle.manifest['n_docs']} documents, model {bundle.model['name']} → {out}")
    return bundle
