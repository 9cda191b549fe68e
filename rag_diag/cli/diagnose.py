"""``rag-diag diagnose``: link retrieval failures to second-order collapse and judge mean pooling."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from rag_diag.cli.app import app

console = Console()


@app.command("diagnose")
def diagnose_command(
    eval_dir: Annotated[Path, typer.Option("--eval", help="Evaluation folder (rag-diag evaluate).")],
    collapse_dir: Annotated[Path, typer.Option("--collapse", help="Collapse folder of the same corpus.")],
    out: Annotated[Path, typer.Option(help="Output folder: failures.parquet, diagnosis.json, report.html.")],
    strategy: Annotated[str, typer.Option(help="Strategy whose failures are diagnosed.")] = "mean",
    corpus: Annotated[Path | None, typer.Option(help="BEIR folder (default: metrics.json's).")] = None,
    report: Annotated[bool, typer.Option(help="Also write report.html and summary.md.")] = True,
) -> None:
    """Per failed query: the confuser and the pair's SOCM; corpus level: does collapse predict failure?"""
    from rag_diag.diagnose import diagnose

    command = shlex.join(["rag-diag", *sys.argv[1:]]) if sys.argv[1:2] == ["diagnose"] else None
    result = diagnose(eval_dir, collapse_dir, out, strategy, corpus=corpus, report=report, command=command)
    summary = result.summary
    verdict = result.verdict
    console.print(
        f"{summary['n_failures']} of {summary['n_queries']} queries failed ({strategy}); "
        f"{summary['n_failures_high_socm']} with a high-SOCM (relevant, confuser) pair"
    )
    console.print(f"[bold]mean pooling: {verdict.label}[/bold] — {verdict.summary}")
    for line in verdict.evidence:
        console.print(f"  • {line}", highlight=False)
    console.print(f"→ {out}")
