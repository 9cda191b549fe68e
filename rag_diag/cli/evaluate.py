"""``rag-diag evaluate``: runs of every strategy (and re-ranker), IR metrics, per-query rows."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from rag_diag.cli.app import Force, app, check_out, console, recorded

HELP_RERANK = "Re-rankers of the mean top-k: maxsim,w2,blend,hybrid or 'all'."


@app.command("evaluate")
def evaluate_command(
    context: typer.Context,
    index: Annotated[Path, typer.Option(help="Index bundle folder from `rag-diag index`.")],
    queries: Annotated[Path, typer.Option(help="queries.jsonl (or a BEIR folder).")],
    qrels: Annotated[Path, typer.Option(help="qrels TSV (or a BEIR folder: qrels/test.tsv).")],
    out: Annotated[Path, typer.Option(help="Folder for metrics.json, per_query.parquet, runs/, qrels.tsv.")],
    k: Annotated[int, typer.Option(min=1, help="Cut-off for context precision/recall and @k metrics.")] = 10,
    model: Annotated[str | None, typer.Option(help="Query encoder; default the index's (another is refused).")] = None,
    rerank: Annotated[str, typer.Option(help=HELP_RERANK)] = "",
    rerank_depth: Annotated[int, typer.Option(min=1, help="Mean-pooling candidates to re-rank.")] = 30,
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="Cosine weight in blend/hybrid.")] = 0.5,
    keep_special: Annotated[bool, typer.Option(help="Keep [CLS]/[SEP] tokens in MaxSim.")] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    lexical: Annotated[bool, typer.Option(help="Add BM25 and BM25+mean fusion (needs the index's corpus).")] = False,
    windowed: Annotated[bool, typer.Option(help="Add windowed encoding of long documents (same).")] = False,
    force: Force = False,
) -> Any:
    """Run the queries against every strategy (and re-ranker), and write metrics, runs and per-query rows."""
    from rag_diag.corpora.io import load_corpus, load_qrels, load_queries
    from rag_diag.errors import RagDiagError
    from rag_diag.evaluation.evaluate import evaluate_bundle
    from rag_diag.evaluation.result import KIND
    from rag_diag.retrieval.bundle import IndexBundle
    from rag_diag.retrieval.rerank import RerankConfig

    bundle = IndexBundle.open(index)
    if (lexical or windowed) and not bundle.manifest.get("corpus"):
        raise RagDiagError(f"{index}: the index records no corpus file; --lexical and --windowed need its texts")
    corpus = load_corpus(bundle.manifest["corpus"]) if lexical or windowed else None
    loaded_queries = load_queries(queries)
    loaded_qrels = load_qrels(qrels, loaded_queries)
    check_out(out, KIND, force)
    config = RerankConfig(depth=rerank_depth, alpha=alpha, drop_special=not keep_special)
    result = evaluate_bundle(
        bundle, loaded_queries, loaded_qrels, k=k, rerankers=rerank, model=model,
        config=config, device=device, command=recorded(context), corpus=corpus, lexical=lexical, windowed=windowed,
    ).write(out, force=force)
    table = Table("strategy", "P@1", "MRR@10", "nDCG@10", "R@100", "vs mean (P@1)")
    for name, values in result.metrics.items():
        test = result.significance.get(name, {}).get("P@1")
        verdict = "" if test is None else f"{test['effect_size']:+.3f} (p={test['corrected_p_value']:.3g})"
        table.add_row(name, f"{values['P@1']:.3f}", f"{values['MRR@10']:.3f}", f"{values['nDCG@10']:.3f}",
                      f"{values['R@100']:.3f}", verdict)
    console.print(table)
    console.print(f"→ {out}")
    return result
