"""Command-line interface: thin Typer commands over the public API.

``main`` turns a :class:`~rag_diag.errors.RagDiagError` into ``error: <message>`` on stderr and exit
status 2, so user mistakes never end in a traceback.
"""

from __future__ import annotations

import sys

import click

from rag_diag.cli import audit, collapse, corpora, diagnose, encode, index, run  # noqa: F401  (register commands)
from rag_diag.cli.app import app
from rag_diag.errors import RagDiagError


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the exit status (0 ok, 2 user error)."""
    try:
        result = app(args=argv, standalone_mode=False, prog_name="rag-diag")
    except RagDiagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except click.exceptions.Exit as exc:
        return int(exc.exit_code or 0)
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        print("error: aborted", file=sys.stderr)
        return 130
    return int(result) if isinstance(result, int) else 0


def entry_point() -> None:
    """Console-script entry point."""
    sys.exit(main())


__all__ = ["app", "main", "entry_point"]
