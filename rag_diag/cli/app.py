"""The Typer application that every command module registers on."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="rag-diag",
    help="RAG retrieval evaluation and diagnostics on near-duplicate knowledge bases.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
