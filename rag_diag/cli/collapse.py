"""``rag-diag collapse``: SOCM over a corpus (all pairs of a sample, or k nearest neighbours per document)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rag_diag.cli.app import app


@app.command("collapse")
def collapse_command(
    corpus: Annotated[Path, typer.Option(help="BEIR folder, its corpus.jsonl, or a text file (one text per line).")],
    out: Annotated[Path, typer.Option(help="Folder for pairs.parquet, docs.parquet and summary.json.")],
    model: str = typer.Option("minilm", help="Registered model name or a local model folder."),
    pairs: str = typer.Option(None, help="'all': every pair of a seeded sample (the paper's protocol)."),
    sample: int = typer.Option(None, min=2, help="Texts in the --pairs all sample (default: all texts)."),
    seed: int = typer.Option(0, help="Seed of the --pairs all sample."),
    knn: int = typer.Option(None, min=1, help="SOCM of each document against its K nearest mean-pooled neighbours."),
    rank: int = typer.Option(None, min=1, help="--knn only: use a rank-R covariance summary instead of all tokens."),
    layer: str = typer.Option("last", help="'last', a hidden-state index, or 'all' (adds layers.parquet)."),
    drop_special: bool = typer.Option(False, help="Drop [CLS]/[SEP]/BOS tokens (the paper keeps them)."),
    device: str = typer.Option("cpu", help="cpu, cuda or auto."),
    dtype: str = typer.Option("float64", help="Precision of the token products: float64 or float32."),
) -> None:
    """Second-order collapse (SOCM) of a corpus, from its token store (encoded once, cached)."""
    from rag_diag.collapse_io import check_mode, collapse_corpus

    check_mode(pairs, knn, rank)
    summary = collapse_corpus(
        corpus, out, model=model, knn=knn, sample=sample, seed=seed, rank=rank, layer=layer,
        drop_special=drop_special, device=device, dtype=dtype,
    )
    typer.echo(
        f"{summary['mode']}: {summary['n_docs']} docs, {summary['n_pairs']} pairs, "
        f"avg SOCM {summary['avg_socm']:.4f}, avg concentration {summary['avg_concentration']:.4f} → {out}"
    )
