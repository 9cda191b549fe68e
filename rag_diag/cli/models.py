"""``rag-diag models``: the registered models."""

from __future__ import annotations

from rich.table import Table

from rag_diag.cli.app import app, console


@app.command("models")
def models_command() -> None:
    """List the registered models: name, kind, dimension, whether installed, licence."""
    from rag_diag.models.registry import list_models

    table = Table("name", "kind", "dim", "installed", "licence", "description")
    for row in list_models():
        table.add_row(
            row["name"], row["kind"], str(row["dim"]), "yes" if row["installed"] else "no",
            row["licence"], row["description"],
        )
    console.print(table)
    console.print("Any local sentence-transformers / transformers folder also works as --model PATH.")
