"""``rag-diag run FILE.toml``: run a declarative pipeline from ``pipelines/``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rag_diag.cli.app import app


@app.command("run")
def run_command(
    pipeline: Annotated[Path, typer.Argument(help="A pipeline file, e.g. pipelines/demo.toml.")],
) -> None:
    """Run every step of a pipeline in order, with progress; each step's outputs are written atomically."""
    from rag_diag.pipeline import run_pipeline

    run_pipeline(pipeline)
