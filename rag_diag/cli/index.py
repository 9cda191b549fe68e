"""``rag-diag index`` (one FAISS index per pooling strategy) and ``rag-diag evaluate`` (runs + metrics)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from rag_diag.cli.app import app

console = Console()


def _command_line(context: typer.Context) -> str:
    """The command with every resolved option (``rag-diag <command> --opt value …``), for manifests."""
    parts = ["rag-diag", str(context.info_name)]
    for name, value in context.params.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + flag[2:])
        elif value is not None:
            parts += [flag, str(value)]
    return shlex.join(parts)


HELP_CORPUS = "BEIR folder, its corpus.jsonl, or a one-text-per-line file."
HELP_MODEL_Q = "Query encoder; default the index's model (another one is refused)."
HELP_RERANK = "Re-rankers of the mean top-k: maxsim,w2,blend,hybrid or 'all'."
HELP_OUT_EVAL = "Folder for metrics.json, per_query.parquet, runs/, qrels.tsv."


@app.command("index")
def index_command(
    context: typer.Context,
    corpus: Annotated[Path, typer.Option(help=HELP_CORPUS)],
    out: Annotated[Path, typer.Option(help="Folder to write the index bundle to.")],
    model: Annotated[str, typer.Option(help="Registered model name or a local model folder.")] = "minilm",
    pooling: Annotated[str, typer.Option(help="Comma-separated pooling strategies, or 'all'.")] = "mean",
    index_type: Annotated[str, typer.Option(help="flat, hnsw or ivfpq.")] = "flat",
    device: Annotated[str, typer.Option(help="cpu, cuda or auto (GPU FAISS when present).")] = "cpu",
    langchain: Annotated[bool, typer.Option(help="Also export the mean index as a LangChain store.")] = True,
) -> None:
    """Encode the corpus once and build one FAISS index per pooling strategy."""
    from rag_diag.index import build_indexes
    from rag_diag.langchain_io import export_langchain

    bundle = build_indexes(corpus, model, pooling, index_type, device, out, command=_command_line(context))
    if langchain and "mean" in bundle.strategies:
        export_langchain(out, out / "langchain")
    table = Table("strategy", "dim", "metric", "index")
    for strategy in bundle.strategies:
        meta = bundle.strategy_manifest(strategy)
        table.add_row(strategy, str(meta["dim"]), meta["metric"], meta["index_type"])
    console.print(table)
    console.print(f"{bundle.manifest['n_docs']} documents, model {bundle.model['name']} → {out}")


@app.command("evaluate")
def evaluate_command(
    context: typer.Context,
    index: Annotated[Path, typer.Option(help="Index bundle folder from `rag-diag index`.")],
    queries: Annotated[Path, typer.Option(help="queries.jsonl (or a BEIR folder).")],
    qrels: Annotated[Path, typer.Option(help="qrels TSV (or a BEIR folder: qrels/test.tsv).")],
    out: Annotated[Path, typer.Option(help=HELP_OUT_EVAL)],
    k: Annotated[int, typer.Option(min=1, help="Cut-off for context precision/recall and @k metrics.")] = 10,
    model: Annotated[str | None, typer.Option(help=HELP_MODEL_Q)] = None,
    rerank: Annotated[str, typer.Option(help=HELP_RERANK)] = "",
    rerank_depth: Annotated[int, typer.Option(min=1, help="Mean-pooling candidates to re-rank.")] = 30,
    alpha: Annotated[float, typer.Option(min=0.0, max=1.0, help="Cosine weight in blend/hybrid.")] = 0.5,
    keep_special: Annotated[bool, typer.Option(help="Keep [CLS]/[SEP] tokens in MaxSim.")] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
) -> None:
    """Run the queries against every strategy (and re-ranker), and write metrics, runs and per-query rows."""
    from rag_diag.corpora.io import load_qrels, load_queries
    from rag_diag.evaluate import evaluate_bundle
    from rag_diag.rerank import RerankConfig

    loaded_queries = load_queries(queries)
    loaded_qrels = load_qrels(qrels, loaded_queries)
    config = RerankConfig(depth=rerank_depth, alpha=alpha, drop_special=not keep_special)
    result = evaluate_bundle(
        index, loaded_queries, loaded_qrels, k, rerank, out, model, config, device, command=_command_line(context)
    )
    table = Table("strategy", "P@1", "MRR@10", "nDCG@10", "R@100", "vs mean (P@1)")
    for name, values in result.metrics.items():
        test = result.significance.get(name, {}).get("P@1")
        verdict = "" if test is None else f"{test['effect_size']:+.3f} (p={test['corrected_p_value']:.3g})"
        table.add_row(
            name, f"{values['P@1']:.3f}", f"{values['MRR@10']:.3f}", f"{values['nDCG@10']:.3f}",
            f"{values['R@100']:.3f}", verdict,
        )
    console.print(table)
    console.print(f"→ {out}")
