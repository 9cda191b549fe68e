"""``rag-diag collapse``: SOCM over a corpus (all pairs of a sample, or k nearest neighbours per document)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from rag_diag.cli.app import Force, app, check_out, console, gib_bytes, recorded
from rag_diag.cli.encode import HELP_CORPUS
from rag_diag.errors import RagDiagError


@app.command("collapse")
def collapse_command(
    context: typer.Context,
    corpus: Annotated[Path, typer.Option(help=HELP_CORPUS)],
    out: Annotated[Path, typer.Option(help="Folder for pairs.parquet, docs.parquet and summary.json.")],
    model: Annotated[str, typer.Option(help="Registered model name or a local model folder.")] = "minilm",
    pairs: Annotated[str | None, typer.Option(help="'all': every pair of a seeded sample (the paper).")] = None,
    sample: Annotated[int | None, typer.Option(min=2, help="Texts in the --pairs all sample (default all).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the --pairs all sample.")] = 0,
    knn: Annotated[int | None, typer.Option(min=1, help="SOCM against the K nearest mean-pooled neighbours.")] = None,
    rank: Annotated[int | None, typer.Option(min=1, help="--knn only: a rank-R covariance summary.")] = None,
    layer: Annotated[str, typer.Option(help="'last', a hidden-state index, or 'all' (adds layers).")] = "last",
    drop_special: Annotated[bool, typer.Option(help="Drop [CLS]/[SEP]/BOS tokens (the paper keeps them).")] = False,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto.")] = "cpu",
    dtype: Annotated[str, typer.Option(help="Precision of the token products: float64 or float32.")] = "float64",
    memory_budget: Annotated[float, typer.Option(help="--knn: GiB of corpus data to hold; over it, shard-built "
                                                      "rank-r summaries (the bound is in summary.json).")] = 2.0,
    engine: Annotated[str, typer.Option(help="--knn: local, or ray (summaries built by Ray actors).")] = "local",
    ray_address: Annotated[str | None, typer.Option(help="An existing Ray cluster; default a local one.")] = None,
    force: Force = False,
) -> Any:
    """Second-order collapse (SOCM) of a corpus, from its token store (encoded once, cached)."""
    from rag_diag.collapse.run import check_mode, collapse_store
    from rag_diag.collapse.table import KIND
    from rag_diag.corpora.io import load_corpus
    from rag_diag.devices import resolve_device
    from rag_diag.tokens.extract import encode_corpus

    check_mode(pairs, knn, rank)
    if ray_address is not None and engine != "ray":
        raise RagDiagError("--ray-address needs --engine ray")
    device = resolve_device(device)
    docs = load_corpus(corpus)
    check_out(out, KIND, force)
    if knn is not None and layer == "last":
        table = _bounded(docs, model, knn, rank, memory_budget, engine, ray_address, recorded(context))
        if table is not None:
            table.write(out, force=force)
            bound = table.summary["error_bound"]
            low, high = bound.get("mean_collapse_rate_interval", [float("nan")] * 2)
            console.print(f"knn (rank-{table.summary['rank']} summaries, {engine}): {table.summary['n_docs']} docs, "
                          f"avg SOCM {table.summary['avg_socm']:.4f}, max error bound "
                          f"{bound['max_socm_error_bound']:.4f}, exact mean collapse rate in [{low:.4f}, {high:.4f}]"
                          f" → {out}")
            return table
    elif engine != "local":
        raise RagDiagError("--engine ray builds kNN summaries: use it with --knn K (and the last layer)")
    store = encode_corpus(docs, model=model, layers=layer, device=device, show_progress=True)
    table = collapse_store(
        store, knn=knn, sample=sample, seed=seed, rank=rank, profile_layers=layer == "all",
        drop_special=drop_special, device=device, dtype=dtype, command=recorded(context),
    )
    table.write(out, force=force)
    summary = table.summary
    console.print(f"{summary['mode']}: {summary['n_docs']} docs, {summary['n_pairs']} pairs, "
                  f"avg SOCM {summary['avg_socm']:.4f}, avg concentration {summary['avg_concentration']:.4f} → {out}")
    return table


def _bounded(docs: Any, model: str, knn: int, rank: int | None, budget_gib: float, engine: str,
             address: str | None, command: str) -> Any:
    """The summaries path when the token store would not fit ``budget_gib`` or Ray is asked for, else None."""
    from rag_diag.collapse.knn import check_rank
    from rag_diag.collapse.run import collapse_summaries
    from rag_diag.collapse.summaries import plan_memory
    from rag_diag.models.loading import load_encoder
    from rag_diag.tokens.estimate import estimate_encode

    budget = gib_bytes(budget_gib, "--memory-budget")
    if engine not in ("local", "ray"):
        raise RagDiagError(f"--engine must be local or ray, got {engine!r}")
    encoder = load_encoder(model)
    if rank is not None:
        check_rank(rank, encoder.dim, encoder.max_seq_length)
    estimate = estimate_encode(docs.texts, encoder)
    console.print(estimate.line())
    plan = plan_memory(len(docs), estimate.n_tokens, estimate.store_bytes, encoder.dim, budget,
                       summaries=engine == "ray", lengths=estimate.lengths)
    if plan.mode == "token-store":
        return None
    assert plan.rank is not None and plan.shard_docs is not None
    return collapse_summaries(docs.texts, docs.ids, encoder, knn, rank or plan.rank, shard_docs=plan.shard_docs,
                              corpus_sha256=docs.content_hash(), engine=engine, address=address, model=model,
                              command=command)
