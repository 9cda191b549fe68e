"""``rag-diag audit``: audit an existing vector store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from rag_diag.cli.app import Force, app, check_out, console, recorded
from rag_diag.defaults import DEFAULT_K, DEFAULT_SAMPLE


@app.command("audit")
def audit_command(
    context: typer.Context,
    store: Annotated[str, typer.Option(help="Store folder (LangChain FAISS, Chroma, Qdrant local), FAISS index "
                                            "file, or URI qdrant+path://DIR#COLLECTION, chroma://DIR#COLLECTION.")],
    out: Annotated[Path, typer.Option(help="Output folder: audit.json, documents.parquet, report.html.")],
    model: Annotated[str, typer.Option(help="The model the store was built with (checked).")] = "minilm",
    documents: Annotated[Path | None, typer.Option(help="Documents of a bare FAISS index, in index order.")] = None,
    queries: Annotated[Path | None, typer.Option(help="queries.jsonl (with --qrels); default: probes.")] = None,
    qrels: Annotated[Path | None, typer.Option(help="BEIR qrels TSV for --queries.")] = None,
    k: Annotated[int, typer.Option(min=1, help="Neighbours per document; ANN recall and metric cut-off.")] = DEFAULT_K,
    sample: Annotated[int, typer.Option(min=1, help="Documents sampled for the checks and probes.")] = DEFAULT_SAMPLE,
    seed: Annotated[int, typer.Option(help="Seed of the samples and probe edits.")] = 0,
    collection: Annotated[str | None, typer.Option(help="Collection of a Qdrant or Chroma store.")] = None,
    trust_store: Annotated[bool, typer.Option(help="Unpickle index.pkl unrestricted (own stores only).")] = False,
    force: Force = False,
) -> Any:
    """Audit a vector store: model check, near-duplicates, collapse, hubness, ANN recall, evaluation."""
    from rag_diag.corpora.io import load_qrels, load_queries
    from rag_diag.jobs.audit import KIND, audit_store, write_audit
    from rag_diag.stores.stored import open_store

    loaded_queries = None if queries is None else load_queries(queries)
    loaded_qrels = None if qrels is None or loaded_queries is None else load_qrels(qrels, loaded_queries)
    stored = open_store(store, documents, trust_store=trust_store, collection=collection)
    check_out(out, KIND, force)
    result = audit_store(stored, model=model, queries=loaded_queries, qrels=loaded_qrels, k=k, sample=sample,
                         seed=seed, command=recorded(context))
    write_audit(result, out, force=force)
    summary = result.summary
    console.print(
        f"{summary['n_documents']} documents; model agreement {summary['model_check']['median_cos']:.4f}; "
        f"{summary['near_duplicates']['n_clusters']} near-duplicate clusters; hubness skew "
        f"{summary['hubness']['skewness']:.3f}; ANN recall@{summary['ann']['k']} {summary['ann']['recall_at_k']:.3f}; "
        f"mean pooling: {summary['verdicts']['mean_pooling']} → {out}"
    )
    return result
