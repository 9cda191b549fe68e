"""``rag-diag choose-pooling``: evaluate every pooling strategy and re-ranker and recommend one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from rag_diag.cli.app import Force, app, check_out, console, judged_queries, recorded
from rag_diag.defaults import DEFAULT_PROBES


@app.command("choose-pooling")
def choose_pooling_command(
    context: typer.Context,
    corpus: Annotated[Path, typer.Option(help="BEIR folder or corpus file of the knowledge base.")],
    out: Annotated[Path, typer.Option(help="Output folder: recommendation.json, report.html.")],
    model: Annotated[str, typer.Option(help="Registered model name or a local model folder.")] = "minilm",
    queries: Annotated[Path | None, typer.Option(help="queries.jsonl (with --qrels); default: probes.")] = None,
    qrels: Annotated[Path | None, typer.Option(help="BEIR qrels TSV for --queries.")] = None,
    strategies: Annotated[str, typer.Option(help="Pooling strategies, comma-separated, or 'all'.")] = "all",
    rerank: Annotated[str, typer.Option(help="Re-rankers, comma-separated, 'all' or 'none'.")] = "all",
    k: Annotated[int, typer.Option(min=1, help="Cut-off of the extra @k metrics.")] = 10,
    probes: Annotated[int, typer.Option(min=1, help="Documents made into probes.")] = DEFAULT_PROBES,
    seed: Annotated[int, typer.Option(help="Seed of the probes and folds.")] = 0,
    force: Force = False,
) -> Any:
    """Evaluate every pooling strategy and re-ranker and recommend one, with its evidence."""
    from rag_diag.corpora.io import load_corpus
    from rag_diag.jobs.choose import KIND, choose_pooling, write_choice

    docs = load_corpus(corpus)
    loaded_queries, loaded_qrels = judged_queries(queries, qrels, docs)
    check_out(out, KIND, force)
    choice = choose_pooling(docs, queries=loaded_queries, qrels=loaded_qrels, model=model, strategies=strategies,
                            rerankers=rerank, k=k, probes=probes, seed=seed, command=recorded(context))
    write_choice(choice, out, force=force)
    console.print(f"recommended: {choice.recommendation.recommended} — {choice.recommendation.reason} → {out}")
    return choice
