"""Fusion of a lexical (BM25) run and a dense run, with a weight to tune in-fold.

Two methods, per query over the union of the two runs' documents:

* ``wsum`` — weighted sum after min-max normalisation of each run's scores within the query:
  fused(d) = w · ŝ_lex(d) + (1 − w) · ŝ_dense(d),  ŝ(d) = (s(d) − min s) / (max s − min s),
  a document missing from a run contributing ŝ = 0 there (so a run's lowest document also adds 0,
  and a run whose documents all score the same adds nothing for that query).
* ``rrf`` — reciprocal rank fusion (Cormack et al., 2009): fused(d) = Σ_runs 1 / (k + rank(d)), rank
  from 1 by descending score (ties by document id), a missing document adding nothing.
  It has no weight; ``k`` (default 60) can be tuned instead.

A query missing from one run (or with no document there, e.g. no BM25 term match) is fused from the
other run alone, by the same formulas. The weight w is the lexical share; tune it with
:func:`rag_diag.evaluation.crossval.cross_validate` over one fused run per weight.

These are the definitions of ranx's ``fuse(norm="min-max", method="wsum")`` and ``fuse(method="rrf")``
(the tests check against it). They are computed here because ranx builds numba typed dictionaries, whose
methods compile anew in every process: 20–25 s of an audit's wall time, measured on kb-scale.
"""

from __future__ import annotations

from rag_diag.errors import RagDiagError
from rag_diag.retrieval.lexical import Run

FUSION_METHODS = ("wsum", "rrf")
RRF_K = 60


def _min_max(scores: dict[str, float]) -> dict[str, float]:
    """ŝ(d) = (s(d) − min s) / (max s − min s) within one query; all zero when the scores are equal."""
    if not scores:
        return {}
    low, high = min(scores.values()), max(scores.values())
    span = high - low
    return {doc_id: (score - low) / span if span > 0 else 0.0 for doc_id, score in scores.items()}


def _reciprocal_ranks(scores: dict[str, float], rrf_k: int) -> dict[str, float]:
    """1 / (k + rank) with rank from 1 by descending score, ties by document id."""
    ranked = sorted(scores.items(), key=lambda pair: (-pair[1], pair[0]))
    return {doc_id: 1.0 / (rrf_k + rank) for rank, (doc_id, _) in enumerate(ranked, start=1)}


def _fuse_query(lexical: dict[str, float], dense: dict[str, float], method: str, weight: float,
                rrf_k: int) -> dict[str, float]:
    if method == "wsum":
        parts = [(weight, _min_max(lexical)), (1.0 - weight, _min_max(dense))]
    else:
        parts = [(1.0, _reciprocal_ranks(lexical, rrf_k)), (1.0, _reciprocal_ranks(dense, rrf_k))]
    fused: dict[str, float] = {}
    for share, values in parts:
        for doc_id, value in values.items():
            fused[doc_id] = fused.get(doc_id, 0.0) + share * value
    return fused


def fuse_runs(
    lexical: Run,
    dense: Run,
    method: str = "wsum",
    weight: float = 0.5,
    rrf_k: int = RRF_K,
    depth: int | None = None,
) -> Run:
    """Fuse a lexical and a dense run (query id → doc id → score).

    ``wsum``: w · minmax(lexical) + (1 − w) · minmax(dense); ``rrf``: Σ 1 / (``rrf_k`` + rank).

    Args:
        lexical: the lexical (e.g. BM25) run.
        dense: the dense run.
        method: ``"wsum"`` or ``"rrf"``.
        weight: w, the lexical share in ``wsum`` (0 … 1); ignored by ``rrf``.
        rrf_k: the k of reciprocal rank fusion.
        depth: the most documents kept per query (all when None).

    Returns:
        The fused run over the union of both runs' queries, best first (ties by document id).
    """
    if method not in FUSION_METHODS:
        raise RagDiagError(f"unknown fusion method '{method}' (choose from {', '.join(FUSION_METHODS)})")
    if not 0.0 <= weight <= 1.0:
        raise RagDiagError(f"the fusion weight must lie in [0, 1], got {weight}")
    for name, run in (("lexical", lexical), ("dense", dense)):
        if not any(run.values()):
            raise RagDiagError(f"the {name} run has no documents to fuse")
    result: Run = {}
    for query_id in dict.fromkeys([*lexical, *dense]):
        fused = _fuse_query(lexical.get(query_id, {}), dense.get(query_id, {}), method, weight, rrf_k)
        ranked = sorted(fused.items(), key=lambda pair: (-pair[1], pair[0]))
        result[query_id] = dict(ranked[:depth])
    return result
