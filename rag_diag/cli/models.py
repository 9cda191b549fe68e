"""``rag-diag models``: the registered models and pooling strategies."""

from __future__ import annotations

from rich.table import Table

from rag_diag.cli.app import app, console


@app.command("models")
def models_command() -> None:
    """List the registered models (name, kind, dimension, whether installed, licence) and the pooling strategies
    ``--pooling`` takes (name, output dimension, index metric, whether it needs corpus statistics)."""
    from rag_diag.models.registry import list_models
    from rag_diag.pooling import list_strategies

    table = Table("name", "kind", "dim", "installed", "licence", "description")
    for row in list_models():
        table.add_row(
            row["name"], row["kind"], str(row["dim"]), "yes" if row["installed"] else "no",
            row["licence"], row["description"],
        )
    console.print(table)
    console.print("Any local sentence-transformers / transformers folder also works as --model PATH.")
    strategies = Table("pooling", "dim", "metric", "corpus statistics", "description", title="--pooling strategies")
    for row in list_strategies():
        strategies.add_row(str(row["name"]), str(row["dim"]), str(row["metric"]),
                           "yes" if row["corpus_stats"] else "no", str(row["description"]))
    console.print(strategies)
