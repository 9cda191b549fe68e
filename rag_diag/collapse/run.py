"""The collapse stage: a corpus (or token store) → its :class:`~rag_diag.collapse.table.CollapseTable`.

Two modes: ``pairs`` (the paper's protocol: all pairs of a seeded sample) and ``knn`` (every
document against its k nearest mean-pooled neighbours, giving each document a collapse rate). With
``layer="all"`` a per-layer profile is added. Nothing is written here; the caller writes the table.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from rag_diag.collapse.table import CollapseTable, docs_frame, pairs_frame
from rag_diag.errors import RagDiagError
from rag_diag.tokens.store import TokenStore

DTYPES = ("float64", "float32")


def check_mode(pairs: str | None, knn: int | None, rank: int | None) -> str:
    """``pairs`` or ``knn`` from the command-line options; anything ambiguous is a one-line error."""
    if (pairs is None) == (knn is None):
        raise RagDiagError("choose one mode: --pairs all (with --sample N --seed S) or --knn K")
    if pairs is not None and pairs != "all":
        raise RagDiagError(f"--pairs takes only 'all', got '{pairs}'")
    if rank is not None and knn is None:
        raise RagDiagError("--rank applies to --knn mode only")
    if knn is not None and knn < 1:
        raise RagDiagError(f"--knn must be at least 1, got {knn}")
    return "pairs" if pairs is not None else "knn"


def collapse_store(
    store: TokenStore,
    *,
    knn: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    rank: int | None = None,
    profile_layers: bool = False,
    drop_special: bool = False,
    device: str = "cpu",
    dtype: str = "float64",
    command: str = "",
) -> CollapseTable:
    """SOCM of a token store in kNN mode (``knn`` given) or all-pairs mode (of a ``sample``)."""
    import torch

    from rag_diag.collapse.allpairs import all_pairs
    from rag_diag.collapse.knn import knn_collapse
    from rag_diag.collapse.layers import layer_profile

    mode = check_mode("all" if knn is None else None, knn, rank)
    if rank is not None:
        from rag_diag.collapse.knn import check_rank

        check_rank(rank, store.dim, int(store.window))
    if dtype not in DTYPES:
        raise RagDiagError(f"--dtype must be float64 or float32, got '{dtype}'")
    options: dict[str, Any] = {"drop_special": drop_special, "device": device, "dtype": getattr(torch, dtype),
                               "show_progress": True}
    layer = store.layers[-1]
    if mode == "pairs":
        result = all_pairs(store, sample, seed, layer=layer, **options)
        pairs = pairs_frame(store.doc_ids, result.doc_a, result.doc_b, result.pairs)
        docs = docs_frame(store.doc_ids, result.texts, result.text_stats)
        extra: dict[str, Any] = {"sample": sample, "seed": seed}
    else:
        found = knn_collapse(store, knn, rank=rank, layer=layer, **options)  # type: ignore[arg-type]
        pairs = pairs_frame(store.doc_ids, found.doc_a, found.doc_b, found.pairs)
        docs = docs_frame(store.doc_ids, np.arange(len(store)), found.text_stats, found)
        extra = {"k": knn, "rank": rank}
    table = CollapseTable.build(store, docs, pairs, mode=mode, drop_special=drop_special, command=command,
                                dtype=dtype, device=device, **extra)
    if not profile_layers:
        return table
    rows = [row.as_dict() for row in layer_profile(store, sample, seed, **options)]
    return CollapseTable({**table.summary, "layers": rows}, table.docs, table.pairs, pl.DataFrame(rows))


def collapse_summaries(
    texts: list[str], ids: list[str], encoder: Any, k: int, rank: int, *, shard_docs: int, corpus_sha256: str,
    engine: str = "local", address: str | None = None, model: str | None = None, command: str = "",
) -> CollapseTable:
    """kNN collapse of a corpus from rank-r summaries built in shards here or by Ray actors (``engine``), in
    bounded memory; the summary records the per-pair SOCM error bound (:mod:`rag_diag.collapse.summaries`)."""
    from rag_diag.collapse.summaries import build_summaries, collapse_from_summaries

    lengths = None
    if engine == "ray":  # Ray gives summaries only: the untruncated lengths come from the tokeniser
        lengths = np.asarray(encoder.tokenize(texts).full_lengths)
    summary = build_summaries(texts, ids, encoder, rank, shard_docs=shard_docs, full_lengths=lengths, engine=engine,
                              address=address, model=model).summary
    found, bound = collapse_from_summaries(summary, k, rank)
    return CollapseTable.build(
        None, docs_frame(ids, np.arange(len(ids)), found.text_stats, found),
        pairs_frame(ids, found.doc_a, found.doc_b, found.pairs), mode="knn", drop_special=False, command=command,
        corpus_sha256=corpus_sha256, model=encoder.identity, k=k, rank=rank, engine=engine, error_bound=bound,
        neighbours=found.graph,
    )
