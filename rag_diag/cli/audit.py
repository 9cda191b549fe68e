"""``rag-diag audit``: audit an existing vector store."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from rag_diag.cli.app import Force, app, check_out, console, gib_bytes, judged_queries, recorded
from rag_diag.defaults import DEFAULT_K, DEFAULT_SAMPLE


@app.command("audit")
def audit_command(
    context: typer.Context,
    store: Annotated[str, typer.Option(help="Store folder (LangChain FAISS, Chroma, Qdrant local, LlamaIndex, "
                                            "Postgres data folder), FAISS index file, or URI (README: stores).")],
    out: Annotated[Path, typer.Option(help="Output folder: audit.json, documents.parquet, report.html.")],
    model: Annotated[str, typer.Option(help="The model the store was built with (checked).")] = "minilm",
    pooling: Annotated[str, typer.Option(help="The pooling the store was built with: mean, cls, max, last "
                                              "(checked; a refusal names the one that matches).")] = "mean",
    documents: Annotated[Path | None, typer.Option(help="Documents of a bare FAISS index, in index order.")] = None,
    queries: Annotated[Path | None, typer.Option(help="queries.jsonl (with --qrels); default: probes.")] = None,
    qrels: Annotated[Path | None, typer.Option(help="BEIR qrels TSV for --queries.")] = None,
    k: Annotated[int, typer.Option(min=1, help="Neighbours per document; ANN recall and metric cut-off.")] = DEFAULT_K,
    sample: Annotated[int, typer.Option(min=1, help="Documents sampled for the checks, probes and --estimate.")] = (
        DEFAULT_SAMPLE),
    seed: Annotated[int, typer.Option(help="Seed of the samples and probe edits.")] = 0,
    collection: Annotated[str | None, typer.Option(
        help="Collection of a Qdrant, Chroma or pgvector store, or a LlamaIndex index id.")] = None,
    trust_store: Annotated[bool, typer.Option(help="Unpickle index.pkl unrestricted (own stores only).")] = False,
    export: Annotated[str | None, typer.Option(help="Write --export-pooling's vectors as a new store of the same "
                                                    "kind here (a folder; a postgresql:// URL for a server).")] = None,
    export_pooling: Annotated[str | None, typer.Option(help="The pooling to export (e.g. the one choose-pooling "
                                                            "recommends).")] = None,
    export_collection: Annotated[str | None, typer.Option(help="Collection name of the export (default: "
                                                               "rag-diag-POOLING).")] = None,
    memory_budget: Annotated[float, typer.Option(help="GiB of corpus data the audit may hold; over it the pass "
                                                      "keeps shard-built rank-r summaries.")] = 2.0,
    max_store: Annotated[float | None, typer.Option(help="Largest token store (GiB) the audit may write; it "
                                                  "also caps the summaries' factors on disk (their rank).")] = None,
    engine: Annotated[str, typer.Option(help="local, or ray: rank-r summaries built by Ray actors.")] = "local",
    ray_address: Annotated[str | None, typer.Option(help="An existing Ray cluster (host:port or ray://…); "
                                                         "default: a local Ray instance.")] = None,
    estimate: Annotated[bool, typer.Option("--estimate", help="Estimate corpus-level figures from the --sample "
                                           "documents (95% intervals) instead of encoding every document.")] = False,
    force: Force = False,
) -> Any:
    """Audit a vector store: model check, near-duplicates, collapse, hubness, ANN recall, evaluation."""
    from rag_diag.errors import RagDiagError
    from rag_diag.jobs.audit import KIND, audit_store, write_audit
    from rag_diag.jobs.audit import export_pooling as export_vectors
    from rag_diag.jobs.corpus_pass import Engine
    from rag_diag.pooling import get_strategy
    from rag_diag.stores.export import ARTEFACT_KINDS, is_server
    from rag_diag.stores.stored import opened_store

    if (export is None) != (export_pooling is None):
        raise RagDiagError("give --export and --export-pooling together")
    if export is not None and not is_server(export):
        here, there = out.resolve(), Path(export).resolve()
        if here == there or here.is_relative_to(there) or there.is_relative_to(here):
            raise RagDiagError(f"--export {export} and --out {out} overlap: the store and the audit need two folders")
    if export_pooling is not None:
        get_strategy(export_pooling)
    loaded_queries, loaded_qrels = judged_queries(queries, qrels)
    with opened_store(store, documents, trust_store=trust_store, collection=collection) as stored:
        check_out(out, KIND, force)
        if export is not None and not is_server(export):
            check_out(Path(export), ARTEFACT_KINDS.get(stored.kind, "store"), force)
        result = audit_store(stored, model=model, pooling=pooling, queries=loaded_queries, qrels=loaded_qrels, k=k,
                             sample=sample, seed=seed, command=recorded(context),
                             memory_budget=gib_bytes(memory_budget, "--memory-budget"),
                             max_store=None if max_store is None else gib_bytes(max_store, "--max-store"),
                             estimate_only=estimate, engine=Engine(engine, ray_address),
                             on_estimate=lambda estimate: console.print(estimate.line()),
                             on_plan=lambda plan: console.print(plan.line()))
    if export is not None and export_pooling is not None:
        name = export_collection or f"rag-diag-{export_pooling}"
        written = export_vectors(result, stored, export, export_pooling, name)
        console.print(f"{export_pooling} vectors of {len(stored.doc_ids)} documents → {written}")
    write_audit(result, out, force=force)
    summary = result.summary
    console.print(
        f"{summary['n_documents']} documents; model agreement ({summary['pooling']}) "
        f"{summary['model_check']['median_cos']:.4f}; {summary['exact_duplicates']['n_to_delete']} exact duplicate "
        f"chunks to delete; {summary['near_duplicates']['n_clusters']} near-duplicate clusters; hubness skew "
        f"{summary['hubness']['skewness']:.3f}; ANN recall@{summary['ann']['k']} {summary['ann']['recall_at_k']:.3f} "
        f"({summary['ann']['index_type']}); mean pooling: {summary['verdicts']['mean_pooling']} → {out}"
    )
    return result


