"""``rag-diag diagnose``: link retrieval failures to second-order collapse and judge mean pooling."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from rag_diag.cli.app import Force, app, check_out, console, recorded


def print_verdict(diagnosis: Any) -> None:
    """The verdict and its evidence on the console."""
    summary, verdict = diagnosis.summary, diagnosis.summary["verdict"]
    console.print(f"{summary['n_failures']} of {summary['n_queries']} queries failed ({diagnosis.strategy})")
    console.print(f"[bold]mean pooling: {verdict['label']}[/bold] — {verdict['summary']}")
    for line in verdict["evidence"]:
        console.print(f"  • {line}")


@app.command("diagnose")
def diagnose_command(
    context: typer.Context,
    eval_dir: Annotated[Path, typer.Option("--eval", help="Evaluation folder (rag-diag evaluate).")],
    collapse_dir: Annotated[Path, typer.Option("--collapse", help="kNN collapse folder of the same corpus.")],
    out: Annotated[Path, typer.Option(help="Output folder: failures.parquet, diagnosis.json, report.html.")],
    strategy: Annotated[str, typer.Option(help="Strategy whose failures are diagnosed.")] = "mean",
    corpus: Annotated[Path | None, typer.Option(help="BEIR folder for texts (default: the evaluation's).")] = None,
    report: Annotated[bool, typer.Option(help="Also write report.html and summary.md.")] = True,
    force: Force = False,
) -> Any:
    """Per failed query: the confuser and the pair's SOCM; corpus level: does collapse predict failure?"""
    from rag_diag import atomic
    from rag_diag.collapse.table import CollapseTable
    from rag_diag.corpora.io import load_corpus, load_queries
    from rag_diag.diagnosis.diagnose import KIND, diagnose
    from rag_diag.errors import RagDiagError
    from rag_diag.evaluation.result import EvalResult
    from rag_diag.report import render_report
    from rag_diag.report.views import diagnosis_report

    evaluation, collapse = EvalResult.open(eval_dir), CollapseTable.open(collapse_dir)
    if corpus is not None and not corpus.exists():
        raise RagDiagError(f"{corpus}: no such corpus (--corpus)")
    source = corpus or evaluation.manifest.get("corpus")
    folder = Path(source).parent if source and Path(source).is_file() else Path(source) if source else None
    docs = load_corpus(folder) if folder is not None and folder.exists() else None
    expected = evaluation.manifest.get("corpus_sha256")
    if docs is not None and expected and docs.content_hash() != expected:
        raise RagDiagError(f"{folder}: not the corpus the evaluation ran on (corpus hash {docs.content_hash()[:12]} "
                           f"≠ {str(expected)[:12]}): its texts would be quoted for other documents")
    queries = load_queries(folder) if folder is not None and (folder / "queries.jsonl").is_file() else None
    check_out(out, KIND, force)
    diagnosis = diagnose(evaluation, collapse, strategy=strategy, corpus=docs, queries=queries,
                         command=recorded(context))
    with atomic.atomic_dir(out, kind=KIND, force=force) as tmp:
        diagnosis.write_files(tmp)
        if report:
            render_report(tmp, diagnosis_report(diagnosis))
    print_verdict(diagnosis)
    console.print(f"→ {out}")
    return diagnosis
