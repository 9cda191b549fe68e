"""The Typer application every command module registers on, its console, and the command recorder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

from rag_diag.cmdline import command_line

if TYPE_CHECKING:
    from rag_diag.corpora.io import Corpus

app = typer.Typer(
    name="rag-diag",
    help="RAG retrieval evaluation and diagnostics on near-duplicate knowledge bases.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
console = Console(highlight=False)


Force = Annotated[bool, typer.Option(help="Replace a non-empty --out folder that rag-diag did not write.")]
PassBudget = Annotated[float, typer.Option("--memory-budget", help="GiB of the token store held in memory while "
                                                                   "it is written and read (a quarter: the write "
                                                                   "window).")]
MaxStore = Annotated[float | None, typer.Option(help="Refuse, before encoding, a token store over this many GiB.")]
PassEngine = Annotated[str, typer.Option("--engine", help="local, or ray: the forward passes run on Ray actors.")]
RayAddress = Annotated[str | None, typer.Option(help="An existing Ray cluster (host:port or ray://…); "
                                                     "default: a local Ray instance.")]


def check_out(out: Path, kind: str, force: bool = False) -> None:
    """Fail before the work when ``out`` may not receive an artefact of ``kind`` (after the inputs are read)."""
    from rag_diag.atomic import check_output

    check_output(out, kind, force)


def gib_bytes(gib: float, option: str) -> int:
    """A positive ``--option`` given in GiB, at most :data:`MAX_GIB`, in bytes; anything else is a one-line error
    (an infinite size would overflow every byte count it meets)."""
    from rag_diag.errors import RagDiagError

    if not 0 < gib <= MAX_GIB:
        raise RagDiagError(f"{option} must be a positive number of GiB up to {MAX_GIB:,} (1 PiB), got {gib}")
    return int(gib * 2**30)


MAX_GIB = 2**20
"""The largest size option accepted, in GiB."""


def judged_queries(queries: Path | None, qrels: Path | None, corpus: Corpus | None = None) -> tuple[Any, Any]:
    """The ``--queries`` and ``--qrels`` files, loaded (qrels checked against the queries and ``corpus``), or
    (None, None) for probe queries; one without the other is a one-line error, not a silent switch to probes."""
    from rag_diag.corpora.io import load_qrels, load_queries
    from rag_diag.errors import RagDiagError

    if (queries is None) != (qrels is None):
        given, missing = ("--queries", "--qrels") if qrels is None else ("--qrels", "--queries")
        raise RagDiagError(f"{given} needs {missing} (give both, or neither for probe queries)")
    if queries is None or qrels is None:
        return None, None
    loaded = load_queries(queries)
    return loaded, load_qrels(qrels, loaded, corpus)


def recorded(context: typer.Context, positional: Sequence[str] = ()) -> str:
    """The command line of this invocation with every resolved option, for manifests."""
    return command_line(context.command_path.split()[1:], context.params, positional)


def pass_options(memory_budget: float, max_store: float | None, engine: str, ray_address: str | None) -> dict:
    """``encode_texts`` options from ``--memory-budget``, ``--max-store``, ``--engine`` and ``--ray-address``."""
    from rag_diag.errors import RagDiagError
    from rag_diag.tokens.ray_pass import RayOptions

    if engine not in ("local", "ray"):
        raise RagDiagError(f"--engine must be local or ray, got {engine!r}")
    if ray_address is not None and engine != "ray":
        raise RagDiagError("--ray-address needs --engine ray")
    return {"memory_budget": gib_bytes(memory_budget, "--memory-budget"),
            "max_store": None if max_store is None else gib_bytes(max_store, "--max-store"),
            "ray": RayOptions(address=ray_address) if engine == "ray" else None}
