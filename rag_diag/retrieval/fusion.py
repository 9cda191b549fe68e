"""Fusion of a lexical (BM25) run and a dense run with ranx, with a weight to tune in-fold.

Two methods, both computed by :func:`ranx.fuse` per query over the union of the two runs' documents:

* ``wsum`` — weighted sum after min-max normalisation of each run's scores within the query:
  fused(d) = w · ŝ_lex(d) + (1 − w) · ŝ_dense(d),  ŝ(d) = (s(d) − min s) / max(max s − min s, 1e-9),
  a document missing from a run contributing ŝ = 0 there (so a run's lowest document also adds 0,
  and a run with one document for a query adds nothing for it).
* ``rrf`` — reciprocal rank fusion (Cormack et al., 2009): fused(d) = Σ_runs 1 / (k + rank(d)), rank
  from 1 by descending score (ties in the order ranx sorts them), a missing document adding nothing.
  It has no weight; ``k`` (default 60) can be tuned instead.

A query missing from one run (or with no document there, e.g. no BM25 term match) is fused from the
other run alone, by the same formulas. The weight w is the lexical share; tune it with
:func:`rag_diag.evaluation.crossval.cross_validate` over the runs of :func:`weight_grid`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rag_diag.errors import RagDiagError
from rag_diag.retrieval.lexical import Run

if TYPE_CHECKING:
    from ranx import Run as RanxRun

FUSION_METHODS = ("wsum", "rrf")
RRF_K = 60


def _to_ranx(run: Run, query_ids: list[str], name: str) -> RanxRun:
    """A ranx Run over ``query_ids`` (an absent query gets no documents)."""
    from ranx import Run as RanxRun

    if not any(run.get(query_id) for query_id in query_ids):
        raise RagDiagError(f"the {name} run has no documents to fuse")
    return RanxRun({query_id: dict(run.get(query_id, {})) for query_id in query_ids}, name=name)


def _sorted(run: dict[str, dict[str, float]], query_ids: list[str], depth: int | None) -> Run:
    """Each query's documents by descending score, ties by document id, cut at ``depth``."""
    result: Run = {}
    for query_id in query_ids:
        ranked = sorted(run.get(query_id, {}).items(), key=lambda pair: (-pair[1], pair[0]))
        result[query_id] = {doc_id: float(score) for doc_id, score in ranked[:depth]}
    return result


def fuse_runs(
    lexical: Run,
    dense: Run,
    method: str = "wsum",
    weight: float = 0.5,
    rrf_k: int = RRF_K,
    depth: int | None = None,
) -> Run:
    """Fuse a lexical and a dense run (query id → doc id → score) with ranx.

    ``wsum``: w · minmax(lexical) + (1 − w) · minmax(dense); ``rrf``: Σ 1 / (``rrf_k`` + rank).

    Args:
        lexical: the lexical (e.g. BM25) run.
        dense: the dense run.
        method: ``"wsum"`` or ``"rrf"``.
        weight: w, the lexical share in ``wsum`` (0 … 1); ignored by ``rrf``.
        rrf_k: the k of reciprocal rank fusion.
        depth: the most documents kept per query (all when None).

    Returns:
        The fused run over the union of both runs' queries, best first.
    """
    from ranx import fuse

    if method not in FUSION_METHODS:
        raise RagDiagError(f"unknown fusion method '{method}' (choose from {', '.join(FUSION_METHODS)})")
    if not 0.0 <= weight <= 1.0:
        raise RagDiagError(f"the fusion weight must lie in [0, 1], got {weight}")
    query_ids = list(dict.fromkeys([*lexical, *dense]))
    runs = [_to_ranx(lexical, query_ids, "lexical"), _to_ranx(dense, query_ids, "dense")]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="unsafe cast")  # numba note inside ranx's normalisation
        if method == "wsum":
            fused = fuse(runs, norm="min-max", method="wsum", params={"weights": [weight, 1.0 - weight]})
        else:
            fused = fuse(runs, norm=None, method="rrf", params={"k": rrf_k})
    return _sorted(fused.to_dict(), query_ids, depth)


def weight_grid(lexical: Run, dense: Run, weights: Sequence[float], depth: int | None = None) -> dict[float, Run]:
    """One ``wsum`` fused run per lexical weight w (w = 0 is the dense ranking, w = 1 the lexical one)."""
    return {float(weight): fuse_runs(lexical, dense, "wsum", weight, depth=depth) for weight in weights}
