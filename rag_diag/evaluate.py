"""Query evaluation of an index bundle: runs per strategy and re-ranker, IR metrics, per-query table.

Every strategy of the bundle (and every requested re-ranker of the ``mean`` top-k) yields a run of
the top ``max(100, k)`` documents per judged query. Metrics are computed by ranx (P@k, R@k, MRR@10,
nDCG@10, MAP, hit@10) and by ragas' ID-based context precision / recall at k; significance against
``mean`` is in :mod:`rag_diag.significance`.

Ties: FAISS and re-rankers order candidates; trec_eval would re-order tied scores by document id.
Runs are therefore written with *monotone-adjusted* float32 scores s'_1 = s_1,
s'_r = min(s_r, the float32 just below s'_{r−1}) — trec_eval compares scores in float32 — written
exactly, so ranx, trec_eval and the per-query table all see the same order.
Scores of documents below the re-rank depth keep their first-stage (mean cosine) value.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from rag_diag import atomic
from rag_diag.corpora.io import Qrels, Queries
from rag_diag.encode import TokenStore, encode_texts
from rag_diag.errors import RagDiagError
from rag_diag.index import IndexBundle, check_encoder, search
from rag_diag.models import load_encoder
from rag_diag.pooling import get_strategy, index_vectors, pool_store
from rag_diag.rerank import RerankConfig, parse_rerankers, rerank_scores
from rag_diag.significance import compare_to_baseline

RUN_DEPTH = 100
BASELINE = "mean"
RANX_METRICS = {
    "P@1": "precision@1",
    "P@5": "precision@5",
    "P@10": "precision@10",
    "R@10": "recall@10",
    "R@100": "recall@100",
    "MRR@10": "mrr@10",
    "nDCG@10": "ndcg@10",
    "MAP": "map",
    "hit@10": "hit_rate@10",
}


@dataclass(frozen=True)
class Ranking:
    """One query's ranked documents (best first) and their scores (higher is better)."""

    doc_ids: list[str]
    scores: np.ndarray


Run = dict[str, Ranking]


@dataclass
class EvalResult:
    """What :func:`evaluate_bundle` wrote: metrics, significance, the per-query table and the runs."""

    path: Path
    metrics: dict[str, dict[str, float]]
    significance: dict[str, Any]
    per_query: pl.DataFrame
    runs: dict[str, Run]


def monotone_scores(scores: np.ndarray) -> np.ndarray:
    """s'_1 = s_1, s'_r = min(s_r, nextafter(s'_{r−1}, −∞)) in float32: strictly decreasing in float32.

    Equal to float32(s) wherever s already decreases by more than one float32 step.
    """
    adjusted = np.asarray(scores, dtype=np.float32).copy()
    below = np.float32(-np.inf)
    for rank in range(1, len(adjusted)):
        adjusted[rank] = min(adjusted[rank], np.nextafter(adjusted[rank - 1], below))
    return adjusted.astype(np.float64)


def write_trec(path: Path, run: Run, tag: str) -> None:
    """``qid Q0 docid rank score tag`` lines, scores monotone-adjusted and written exactly (repr)."""
    lines = [
        f"{query_id} Q0 {doc_id} {rank} {score!r} {tag}"
        for query_id, ranking in run.items()
        for rank, (doc_id, score) in enumerate(
            zip(ranking.doc_ids, monotone_scores(ranking.scores).tolist(), strict=True), start=1
        )
    ]
    atomic.write_text(path, "\n".join(lines) + "\n")


def write_qrels(path: Path, qrels: Qrels) -> None:
    """BEIR qrels TSV with header ``query-id corpus-id score``."""
    rows = [f"{q}\t{d}\t{s}" for q, docs in qrels.judgements.items() for d, s in docs.items()]
    atomic.write_text(path, "query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")


def _ranx_run(run: Run, name: str) -> Any:
    from ranx import Run as RanxRun

    return RanxRun(
        {
            query_id: dict(zip(ranking.doc_ids, monotone_scores(ranking.scores).tolist(), strict=True))
            for query_id, ranking in run.items()
        },
        name=name,
    )


def metric_names(k: int) -> dict[str, str]:
    """Our metric names → ranx names: the fixed set plus P@k, R@k, nDCG@k for another ``k``."""
    names = dict(RANX_METRICS)
    names.update({f"P@{k}": f"precision@{k}", f"R@{k}": f"recall@{k}", f"nDCG@{k}": f"ndcg@{k}"})
    return names


def ranx_per_query(qrels: Qrels, run: Run, name: str, k: int) -> dict[str, np.ndarray]:
    """Per-query values of every metric (query order = ``run``'s), computed by ranx."""
    from ranx import Qrels as RanxQrels
    from ranx import evaluate

    names = metric_names(k)
    judged = {query_id: qrels.judgements[query_id] for query_id in run}
    values = evaluate(RanxQrels(judged), _ranx_run(run, name), list(names.values()), return_mean=False)
    query_order = sorted(judged)  # ranx reports queries in sorted-id order
    position = {query_id: i for i, query_id in enumerate(query_order)}
    order = np.array([position[query_id] for query_id in run])
    return {ours: np.asarray(values[theirs])[order] for ours, theirs in names.items()}


def ragas_context_scores(qrels: Qrels, run: Run, k: int) -> dict[str, float]:
    """ragas ID-based context precision and recall of the top-k, averaged over queries."""
    import warnings

    from ragas import EvaluationDataset, evaluate
    from ragas.metrics import IDBasedContextPrecision, IDBasedContextRecall

    samples = [
        {
            "retrieved_context_ids": ranking.doc_ids[:k],
            "reference_context_ids": sorted(qrels.relevant(query_id)),
        }
        for query_id, ranking in run.items()
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = evaluate(
            EvaluationDataset.from_list(samples),
            metrics=[IDBasedContextPrecision(), IDBasedContextRecall()],
            show_progress=False,
        )
    frame = result.to_pandas()  # type: ignore[union-attr]
    return {
        "context_precision": float(frame["id_based_context_precision"].mean()),
        "context_recall": float(frame["id_based_context_recall"].mean()),
    }


def retrieve(bundle: IndexBundle, strategy: str, query_store: TokenStore, depth: int, device: str) -> Run:
    """Top-``depth`` documents of every query in ``query_store`` under one pooling strategy."""
    spec = get_strategy(strategy)
    meta = bundle.strategy_manifest(strategy)
    vectors = index_vectors(pool_store(strategy, query_store, bundle.stats(strategy)), spec.metric)
    scores, rows = search(bundle.index(strategy), vectors, depth, meta["metric"], device)
    doc_ids = bundle.doc_ids
    return {
        query_id: Ranking([doc_ids[r] for r in row if r >= 0], score[row >= 0].astype(np.float64))
        for query_id, score, row in zip(query_store.doc_ids, scores, rows, strict=True)
    }


def rerank(
    name: str, first_stage: Run, query_store: TokenStore, doc_store: TokenStore, config: RerankConfig
) -> Run:
    """Re-score the top ``config.depth`` of ``first_stage`` with reranker ``name``; the tail keeps its order.

    MaxSim-based scorers use token matrices without special tokens when ``config.drop_special``;
    second-order scorers always use all tokens (as the SOCM definition does).
    """
    from rag_diag.progress import progress_bar

    drop = config.drop_special and name in ("maxsim", "hybrid")
    row_of = {doc_id: row for row, doc_id in enumerate(doc_store.doc_ids)}
    run: Run = {}
    with progress_bar(f"re-ranking ({name})", len(first_stage), enabled=len(first_stage) > 200) as advance:
        for query_index, (query_id, ranking) in enumerate(first_stage.items()):
            head_ids = ranking.doc_ids[: config.depth]
            documents = [doc_store.tokens(row_of[doc_id], drop_special=drop) for doc_id in head_ids]
            query = query_store.tokens(query_index, drop_special=drop)
            scores = rerank_scores(name, query, documents, ranking.scores[: len(head_ids)], config.alpha)
            order = np.argsort(-scores, kind="stable")
            run[query_id] = Ranking(
                [head_ids[i] for i in order] + ranking.doc_ids[config.depth :],
                np.concatenate([scores[order], ranking.scores[config.depth :]]),
            )
            advance(1)
    return run


def per_query_rows(strategy: str, run: Run, qrels: Qrels) -> list[dict[str, Any]]:
    """First relevant rank, top document and the confuser (best non-relevant above the first relevant)."""
    rows = []
    for query_id, ranking in run.items():
        relevant = qrels.relevant(query_id)
        hit = next((rank for rank, doc_id in enumerate(ranking.doc_ids) if doc_id in relevant), None)
        has_confuser = hit != 0 and len(ranking.doc_ids) > 0
        rows.append(
            {
                "query_id": query_id,
                "strategy": strategy,
                "first_relevant_rank": None if hit is None else hit + 1,
                "first_relevant_id": None if hit is None else ranking.doc_ids[hit],
                "relevant_score": None if hit is None else float(ranking.scores[hit]),
                "top_doc": ranking.doc_ids[0] if ranking.doc_ids else None,
                "top_score": float(ranking.scores[0]) if ranking.doc_ids else None,
                "confuser": ranking.doc_ids[0] if has_confuser else None,
                "confuser_score": float(ranking.scores[0]) if has_confuser else None,
                "n_relevant": len(relevant),
            }
        )
    return rows


PER_QUERY_SCHEMA = {
    "query_id": pl.String,
    "strategy": pl.String,
    "first_relevant_rank": pl.Int64,
    "first_relevant_id": pl.String,
    "relevant_score": pl.Float64,
    "top_doc": pl.String,
    "top_score": pl.Float64,
    "confuser": pl.String,
    "confuser_score": pl.Float64,
    "n_relevant": pl.Int64,
}


def judged_subset(queries: Queries, qrels: Qrels) -> tuple[Queries, Qrels]:
    """Only queries with at least one relevant document are evaluated (as trec_eval does)."""
    keep = [i for i, query_id in enumerate(queries.ids) if qrels.relevant(query_id)]
    if not keep:
        raise RagDiagError("no query has a relevant document in the qrels: nothing to evaluate")
    ids = [queries.ids[i] for i in keep]
    subset = Queries(ids=ids, texts=[queries.texts[i] for i in keep], source=queries.source)
    return subset, Qrels({query_id: qrels.judgements[query_id] for query_id in ids}, source=qrels.source)


def check_qrels_documents(bundle: IndexBundle, qrels: Qrels) -> None:
    """Every judged document must be in the index."""
    known = set(bundle.doc_ids)
    for query_id, docs in qrels.judgements.items():
        unknown = [doc_id for doc_id in docs if doc_id not in known]
        if unknown:
            raise RagDiagError(
                f"qrels for query '{query_id}' name document '{unknown[0]}' that is not in the index"
            )


def collect_runs(
    bundle: IndexBundle,
    query_store: TokenStore,
    rerankers: list[str],
    depth: int,
    config: RerankConfig,
    device: str = "cpu",
) -> dict[str, Run]:
    """One run per pooling strategy, then ``rerank-<name>`` runs over the ``mean`` run."""
    runs = {name: retrieve(bundle, name, query_store, depth, device) for name in bundle.strategies}
    if rerankers:
        if BASELINE not in runs:
            raise RagDiagError(f"{bundle.path}: re-ranking needs a 'mean' index (build it with --pooling)")
        doc_store = bundle.token_store()
        for name in rerankers:
            runs[f"rerank-{name}"] = rerank(name, runs[BASELINE], query_store, doc_store, config)
    return runs


def score_runs(runs: dict[str, Run], qrels: Qrels, k: int) -> tuple[dict, dict, pl.DataFrame]:
    """(mean metrics, significance vs mean, per-query table) for a set of runs on the same queries."""
    per_query = {name: ranx_per_query(qrels, run, name, k) for name, run in runs.items()}
    metrics = {
        name: {
            **{metric: float(values.mean()) for metric, values in per_query[name].items()},
            **ragas_context_scores(qrels, run, k),
        }
        for name, run in runs.items()
    }
    significance = compare_to_baseline(per_query, BASELINE) if BASELINE in runs else {}
    rows = [row for name, run in runs.items() for row in per_query_rows(name, run, qrels)]
    return metrics, significance, pl.DataFrame(rows, schema=PER_QUERY_SCHEMA)


def encode_queries(bundle: IndexBundle, queries: Queries, model: str | None, device: str) -> TokenStore:
    """Encode the queries with the bundle's model (``model`` must be that model, else refused)."""
    encoder = load_encoder(model or bundle.model["name"], device)
    check_encoder(bundle, encoder)
    return encode_texts(queries.texts, model=encoder, ids=queries.ids)


def evaluate_bundle(
    bundle_dir: str | Path,
    queries: Queries,
    qrels: Qrels,
    k: int = 10,
    rerankers: str | list[str] | None = None,
    out: str | Path = "eval",
    model: str | None = None,
    config: RerankConfig | None = None,
    device: str = "cpu",
    command: str = "",
) -> EvalResult:
    """Evaluate every strategy of a bundle (and re-rankers of its mean run) and write the results.

    Writes ``metrics.json``, ``per_query.parquet``, ``runs/<strategy>.trec`` and ``qrels.tsv`` into
    ``out`` (replaced atomically).

    Args:
        bundle_dir: an index bundle from :func:`rag_diag.index.build_indexes`.
        queries: the queries; only those with a relevant document in ``qrels`` are evaluated.
        qrels: relevance judgements; every judged document must be in the index.
        k: cut-off for the context precision / recall and the extra @k metrics.
        rerankers: re-rankers of the mean top-``config.depth`` (maxsim, w2, blend, hybrid).
        model: the encoder for the queries; default the bundle's; another model is refused.
        config: re-ranking depth, blend weight, special-token handling.
    """
    if k < 1:
        raise RagDiagError(f"--k must be at least 1, got {k}")
    bundle = IndexBundle.open(bundle_dir)
    names = parse_rerankers(rerankers)
    config = config or RerankConfig()
    queries, qrels = judged_subset(queries, qrels)
    check_qrels_documents(bundle, qrels)
    query_store = encode_queries(bundle, queries, model, device)
    runs = collect_runs(bundle, query_store, names, max(RUN_DEPTH, k), config, device)
    metrics, significance, table = score_runs(runs, qrels, k)
    out = Path(out)
    summary = {
        "metrics": metrics,
        "significance": significance,
        "k": k,
        "model": bundle.model,
        "index": str(bundle.path.resolve()),
        "corpus": bundle.manifest.get("corpus"),
        "token_store": None if bundle.token_store_path is None else str(bundle.token_store_path.resolve()),
        "rerank": {"depth": config.depth, "alpha": config.alpha, "drop_special": config.drop_special},
        "n_queries": len(queries),
        "command": command or " ".join(sys.argv),
    }
    with atomic.atomic_dir(out) as tmp:
        (tmp / "runs").mkdir()
        for name, run in runs.items():
            write_trec(tmp / "runs" / f"{name}.trec", run, name)
        write_qrels(tmp / "qrels.tsv", qrels)
        atomic.write_parquet(tmp / "per_query.parquet", table)
        atomic.write_json(tmp / "metrics.json", summary)
    return EvalResult(path=out, metrics=metrics, significance=significance, per_query=table, runs=runs)
