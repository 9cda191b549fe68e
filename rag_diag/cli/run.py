"""``rag-diag run FILE.toml``: run a declarative pipeline from ``pipelines/``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from rag_diag.cli.app import app, console


@app.command("run")
def run_command(
    pipeline: Annotated[Path, typer.Argument(help="A pipeline file, e.g. pipelines/demo.toml.")],
) -> list:
    """Run every step of a pipeline in order; each step is a rag-diag command and is printed as one."""
    from rag_diag.cli.pipeline import run_pipeline

    return run_pipeline(pipeline, echo=lambda line: console.rule(line, align="left"))
