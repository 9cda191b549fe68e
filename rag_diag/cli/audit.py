"""``rag-diag audit`` (audit an existing vector store) and ``rag-diag choose-pooling``."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from rag_diag.cli.app import app


def _command_line(name: str) -> str | None:
    """The command line as typed, when this process was started as ``rag-diag <name> …``."""
    return shlex.join(["rag-diag", *sys.argv[1:]]) if sys.argv[1:2] == [name] else None


@app.command("audit")
def audit_command(
    store: Annotated[Path, typer.Option(help="LangChain FAISS store folder, or a FAISS index file.")],
    out: Annotated[Path, typer.Option(help="Output folder: audit.json, documents.parquet, report.html.")],
    model: Annotated[str, typer.Option(help="The model the store was built with (checked).")] = "minilm",
    documents: Annotated[Path | None, typer.Option(help="Documents of a bare FAISS index, in index order.")] = None,
    queries: Annotated[Path | None, typer.Option(help="queries.jsonl (with --qrels); default: probes.")] = None,
    qrels: Annotated[Path | None, typer.Option(help="BEIR qrels TSV for --queries.")] = None,
    k: Annotated[int, typer.Option(help="Neighbours per document; ANN recall and metric cut-off.")] = 10,
    sample: Annotated[int, typer.Option(help="Documents sampled for the model check, ANN recall, probes.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the samples and probe edits.")] = 0,
) -> None:
    """Audit a vector store: model check, near-duplicates, collapse, hubness, ANN recall, evaluation."""
    from rag_diag.audit import audit_store

    result = audit_store(store, model, queries, qrels, documents, out, k, sample, seed, _command_line("audit"))
    summary = result.summary
    typer.echo(
        f"{summary['n_documents']} documents; model agreement {summary['model_check']['median_cos']:.4f}; "
        f"{summary['near_duplicates']['n_clusters']} near-duplicate clusters; hubness skew "
        f"{summary['hubness']['skewness']:.3f}; ANN recall@{summary['ann']['k']} {summary['ann']['recall_at_k']:.3f}; "
        f"mean pooling: {summary['verdicts']['mean_pooling']} → {out}"
    )


@app.command("choose-pooling")
def choose_pooling_command(
    corpus: Annotated[Path, typer.Option(help="BEIR folder or corpus file of the knowledge base.")],
    out: Annotated[Path, typer.Option(help="Output folder: recommendation.json, report.html.")],
    model: Annotated[str, typer.Option(help="Registered model name or a local model folder.")] = "minilm",
    queries: Annotated[Path | None, typer.Option(help="queries.jsonl (with --qrels); default: probes.")] = None,
    qrels: Annotated[Path | None, typer.Option(help="BEIR qrels TSV for --queries.")] = None,
    strategies: Annotated[str, typer.Option(help="Pooling strategies, comma-separated, or 'all'.")] = "all",
    rerank: Annotated[str, typer.Option(help="Re-rankers, comma-separated, 'all' or 'none'.")] = "all",
    k: Annotated[int, typer.Option(help="Cut-off of the extra @k metrics.")] = 10,
    probes: Annotated[int, typer.Option(help="Documents perturbed into probes when no queries are given.")] = 200,
    seed: Annotated[int, typer.Option(help="Seed of the probes.")] = 0,
) -> None:
    """Evaluate every pooling strategy and re-ranker and recommend one, with its evidence."""
    from rag_diag.choose import choose_pooling

    result = choose_pooling(corpus, queries, qrels, model, out, strategies, rerank, k, probes, seed,
                            _command_line("choose-pooling"))
    typer.echo(f"recommended: {result.recommended} — {result.reason} → {out}")
