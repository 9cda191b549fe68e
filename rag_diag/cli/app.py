"""The Typer application every command module registers on, its console, and the command recorder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from rag_diag.cmdline import command_line

app = typer.Typer(
    name="rag-diag",
    help="RAG retrieval evaluation and diagnostics on near-duplicate knowledge bases.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(highlight=False)


Force = Annotated[bool, typer.Option(help="Replace a non-empty --out folder that rag-diag did not write.")]


def check_out(out: Path, kind: str, force: bool = False) -> None:
    """Fail before the work when ``out`` may not receive an artefact of ``kind`` (after the inputs are read)."""
    from rag_diag.atomic import check_output

    check_output(out, kind, force)


def gib_bytes(gib: float, option: str) -> int:
    """A positive ``--option`` given in GiB, in bytes; anything else is a one-line error."""
    from rag_diag.errors import RagDiagError

    if not gib > 0:
        raise RagDiagError(f"{option} must be a positive number of GiB, got {gib}")
    return int(gib * 2**30)


def recorded(context: typer.Context, positional: Sequence[str] = ()) -> str:
    """The command line of this invocation with every resolved option, for manifests."""
    return command_line(context.command_path.split()[1:], context.params, positional)
