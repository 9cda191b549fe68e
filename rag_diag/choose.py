"""Choose a pooling strategy (or re-ranker) for a knowledge base, with the evidence.

Every pooling strategy is indexed from one encoder pass (:func:`rag_diag.index.build_indexes`) and
evaluated with every re-ranker of the mean top-k (:func:`rag_diag.evaluate.evaluate_bundle`). Each
candidate gets its metrics, its Holm-corrected paired t-test against ``mean`` (from evaluate) and
against the best candidate (computed here the same way), and its cost:

- ``bytes_per_doc``: what must be held at query time per document — the index file size / N, plus for
  a re-ranker the token store (embeddings) / N, since re-ranking reads every candidate's tokens;
- ``latency_ms``: measured wall time per query of pooling the (already encoded) query and searching the
  index, plus re-scoring for a re-ranker (median of LATENCY_REPEATS runs; the shared encoder pass is
  excluded because every candidate pays it equally). Latency is reported, not used by the rule: timings
  vary between runs and the recommendation must not.

Decision rule (:func:`decide`), on PRIMARY_METRIC:

1. a candidate *beats mean* when its metric is higher than mean's and its corrected p-value against
   mean is below ALPHA;
2. if no candidate beats mean, recommend ``mean`` — the default costs least and nothing is shown to
   retrieve better;
3. otherwise recommend the cheapest candidate (bytes_per_doc, then higher score, then name) that beats
   mean and is not significantly worse than the best candidate (corrected p-value against the best
   ≥ ALPHA, or it is the best); if none qualifies, the highest-scoring candidate that beats mean.

Without queries and qrels, probe queries come from :func:`rag_diag.corpora.perturb.perturb_corpus`
over a seeded sample of documents: each variant (one meaning-bearing edit) is added to the knowledge
base and its targeted query must retrieve it above its source — a near-duplicate test.
"""

from __future__ import annotations

import shlex
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rag_diag import atomic
from rag_diag.corpora.io import Corpus, Qrels, Queries, load_corpus, load_qrels, load_queries
from rag_diag.corpora.perturb import perturb_corpus
from rag_diag.errors import RagDiagError
from rag_diag.significance import ALPHA, compare_to_baseline

PRIMARY_METRIC = "MRR@10"
"""The metric the rule decides on: rank of the first relevant document, the RAG-relevant quantity."""

REPORTED_METRICS = ("P@1", "MRR@10", "nDCG@10")
BASELINE = "mean"
LATENCY_REPEATS = 3
DEFAULT_PROBES = 200
RULE = (
    f"On {PRIMARY_METRIC}: a candidate beats mean when it scores higher with Holm-corrected paired t-test "
    f"p < {ALPHA} against mean. If none beats mean, recommend mean. Otherwise recommend the cheapest candidate "
    "(bytes per document at query time, then higher score) that beats mean and is not significantly "
    f"worse than the best candidate (corrected p ≥ {ALPHA} against it); if none, the best that beats mean."
)


@dataclass(frozen=True)
class Candidate:
    """One row of the comparison: metrics, significance against mean and against the best, cost."""

    name: str
    metrics: dict[str, float]
    p_vs_mean: float | None
    p_vs_best: float | None
    bytes_per_doc: float
    dim: int | None
    latency_ms: float
    index_bytes: int

    @property
    def score(self) -> float:
        return self.metrics[PRIMARY_METRIC]


@dataclass
class Recommendation:
    """The recommended candidate, why, the rule, and every candidate's evidence."""

    recommended: str
    reason: str
    rule: str
    candidates: list[Candidate]
    out: Path | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "recommended": self.recommended, "reason": self.reason, "rule": self.rule,
            "primary_metric": PRIMARY_METRIC, "alpha": ALPHA, "table": [asdict(c) for c in self.candidates],
        }


# ---------------------------------------------------------------------------------------------- the rule


def _beats_mean(candidate: Candidate, mean: Candidate) -> bool:
    return (candidate.name != BASELINE and candidate.p_vs_mean is not None and candidate.p_vs_mean < ALPHA
            and candidate.score > mean.score)


def _cost(candidate: Candidate) -> tuple[float, float, str]:
    return candidate.bytes_per_doc, -candidate.score, candidate.name


def decide(candidates: list[Candidate]) -> tuple[str, str]:
    """(recommended name, reason) by the rule in the module docstring; ``mean`` must be a candidate."""
    by_name = {c.name: c for c in candidates}
    if BASELINE not in by_name:
        raise RagDiagError("choose-pooling needs the 'mean' strategy as the baseline")
    mean = by_name[BASELINE]
    winners = [c for c in candidates if _beats_mean(c, mean)]
    if not winners:
        return BASELINE, (f"no candidate beats mean significantly on {PRIMARY_METRIC} "
                          f"(mean {mean.score:.4f}); mean is the cheapest default")
    best = max(candidates, key=lambda c: (c.score, c.name == BASELINE))
    tied_with_best = [c for c in winners if c.name == best.name or c.p_vs_best is None or c.p_vs_best >= ALPHA]
    if tied_with_best:
        chosen = min(tied_with_best, key=_cost)
        return chosen.name, (
            f"{chosen.name} beats mean on {PRIMARY_METRIC} ({chosen.score:.4f} vs {mean.score:.4f}, corrected "
            f"p = {chosen.p_vs_mean:.3g}) and is the cheapest such candidate not significantly worse than the best "
            f"({best.name}, {best.score:.4f}): {chosen.bytes_per_doc:,.0f} bytes/doc, {chosen.latency_ms:.2f} ms/query"
        )
    chosen = max(winners, key=lambda c: c.score)
    return chosen.name, (
        f"{chosen.name} scores highest among the candidates that beat mean on {PRIMARY_METRIC} "
        f"({chosen.score:.4f} vs {mean.score:.4f}, corrected p = {chosen.p_vs_mean:.3g})"
    )


# ---------------------------------------------------------------------------------------------- evidence


def probe_set(corpus: Corpus, sample: int, seed: int) -> tuple[Corpus, Queries, Qrels]:
    """The corpus plus perturbed variants of a seeded sample of documents, targeted queries and qrels."""
    rows = np.arange(len(corpus))
    if sample < len(corpus):
        rows = np.sort(np.random.default_rng(seed).choice(len(corpus), size=sample, replace=False))
    subset = Corpus(ids=[corpus.ids[r] for r in rows], texts=[corpus.texts[r] for r in rows])
    perturbed = perturb_corpus(subset, seed=seed)
    if not perturbed.edits:
        raise RagDiagError("no document has a word the perturbation generator can edit: give --queries and --qrels")
    existing = set(corpus.texts)
    variants = [(e.variant_id, t) for e, t in zip(perturbed.edits, perturbed.docs.texts[len(subset):], strict=True)
                if t not in existing]
    keep = {variant_id for variant_id, _ in variants}
    metadata = corpus.metadata or [{} for _ in corpus.ids]
    docs = Corpus(
        ids=corpus.ids + [v for v, _ in variants], texts=corpus.texts + [t for _, t in variants],
        source=corpus.source, metadata=metadata + [{} for _ in variants],
    )
    pairs = [(q, t) for q, t, e in zip(perturbed.queries.ids, perturbed.queries.texts, perturbed.edits, strict=True)
             if e.variant_id in keep]
    queries = Queries(ids=[q for q, _ in pairs], texts=[t for _, t in pairs])
    return docs, queries, Qrels({q: perturbed.qrels.judgements[q] for q, _ in pairs})


def _median_ms(action: Any, n_queries: int) -> float:
    """Median over LATENCY_REPEATS runs of ``action()`` wall time, per query, in milliseconds."""
    times = []
    for _ in range(LATENCY_REPEATS):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times) / max(n_queries, 1)


def measure_costs(bundle: Any, query_store: Any, rerankers: list[str]) -> dict[str, dict[str, float]]:
    """bytes_per_doc, dim, index_bytes and latency_ms per strategy and ``rerank-<name>`` (module docstring)."""
    from rag_diag.evaluate import RUN_DEPTH, retrieve
    from rag_diag.evaluate import rerank as rerank_run
    from rag_diag.rerank import RerankConfig

    n_docs, n_queries = len(bundle.doc_ids), len(query_store)
    costs: dict[str, dict[str, float]] = {}
    for name in bundle.strategies:
        size = (bundle.path / name / "index.faiss").stat().st_size
        latency = _median_ms(lambda name=name: retrieve(bundle, name, query_store, RUN_DEPTH, "cpu"), n_queries)
        costs[name] = {"index_bytes": size, "bytes_per_doc": size / n_docs,
                       "dim": bundle.strategy_manifest(name)["dim"], "latency_ms": latency}
    if rerankers:
        doc_store = bundle.token_store()
        token_bytes = (doc_store.path / "embeddings.npy").stat().st_size
        first_stage = retrieve(bundle, BASELINE, query_store, RUN_DEPTH, "cpu")
        config = RerankConfig()
        for name in rerankers:
            extra = _median_ms(lambda name=name: rerank_run(name, first_stage, query_store, doc_store, config),
                               n_queries)
            base = costs[BASELINE]
            costs[f"rerank-{name}"] = {
                "index_bytes": base["index_bytes"], "bytes_per_doc": base["bytes_per_doc"] + token_bytes / n_docs,
                "dim": base["dim"], "latency_ms": base["latency_ms"] + extra,
            }
    return costs


def candidates_from(
    metrics_json: dict[str, Any], per_query: dict[str, dict[str, np.ndarray]], costs: dict[str, dict[str, float]]
) -> list[Candidate]:
    """Comparison rows: metrics and p vs mean from metrics.json, p vs the best from ``per_query``, costs."""
    metrics = metrics_json["metrics"]
    best = max(metrics, key=lambda name: (metrics[name][PRIMARY_METRIC], name == BASELINE))
    versus_best = compare_to_baseline({n: {PRIMARY_METRIC: v[PRIMARY_METRIC]} for n, v in per_query.items()}, best)
    rows = []
    for name, values in metrics.items():
        to_mean = (metrics_json.get("significance") or {}).get(name, {}).get(PRIMARY_METRIC)
        to_best = versus_best.get(name, {}).get(PRIMARY_METRIC)
        cost = costs[name]
        rows.append(Candidate(
            name=name, metrics={m: float(values[m]) for m in REPORTED_METRICS},
            p_vs_mean=None if to_mean is None else float(to_mean["corrected_p_value"]),
            p_vs_best=None if to_best is None else float(to_best["corrected_p_value"]),
            bytes_per_doc=float(cost["bytes_per_doc"]), dim=int(cost["dim"]), latency_ms=float(cost["latency_ms"]),
            index_bytes=int(cost["index_bytes"]),
        ))
    return rows


# ---------------------------------------------------------------------------------------------- API


def _inputs(
    corpus: Corpus | str | Path, queries: Queries | str | Path | None, qrels: Qrels | str | Path | None
) -> tuple[Corpus, Queries | None, Qrels | None]:
    docs = corpus if isinstance(corpus, Corpus) else load_corpus(corpus)
    if (queries is None) != (qrels is None):
        raise RagDiagError("give both --queries and --qrels, or neither (then probe queries are generated)")
    if queries is None:
        return docs, None, None
    loaded = queries if isinstance(queries, Queries) else load_queries(queries)
    judged = qrels if isinstance(qrels, Qrels) else load_qrels(qrels, loaded, docs)  # type: ignore[arg-type]
    return docs, loaded, judged


def _command(corpus: Any, queries: Any, qrels: Any, model: str, strategies: list[str], rerankers: list[str],
             out: Path) -> str:
    parts = ["rag-diag", "choose-pooling", "--corpus", str(corpus)]
    for flag, value in (("--queries", queries), ("--qrels", qrels)):
        if isinstance(value, str | Path):
            parts += [flag, str(value)]
    parts += ["--model", model, "--strategies", ",".join(strategies), "--rerank", ",".join(rerankers) or "none"]
    return shlex.join([*parts, "--out", str(out)])


def _names(strategies: str | list[str] | None, rerankers: str | list[str] | None) -> tuple[list[str], list[str]]:
    from rag_diag.pooling import parse_strategies
    from rag_diag.rerank import parse_rerankers

    names = parse_strategies(strategies or "all")
    if BASELINE not in names:
        names = [BASELINE, *names]
    reranks = parse_rerankers("all" if rerankers is None else None if rerankers == "none" else rerankers)
    return names, reranks


def choose_pooling(
    corpus: Corpus | str | Path,
    queries: Queries | str | Path | None = None,
    qrels: Qrels | str | Path | None = None,
    model: str = "minilm",
    out: str | Path = "choose",
    strategies: str | list[str] | None = None,
    rerankers: str | list[str] | None = None,
    k: int = 10,
    probes: int = DEFAULT_PROBES,
    seed: int = 0,
    command: str | None = None,
) -> Recommendation:
    """Evaluate every strategy and re-ranker on the knowledge base and recommend one (module docstring).

    Writes ``index/`` (one bundle, one encoder pass), ``eval/`` (metrics.json, per_query.parquet, runs),
    ``recommendation.json``, ``report.html``, ``summary.md`` and ``strategies.parquet`` into ``out``
    (and ``kb/``, the knowledge base with probe variants, when no queries are given).

    Args:
        corpus: a BEIR folder / corpus file, or a :class:`Corpus`.
        queries, qrels: the knowledge base's queries and judgements; without them probes are generated.
        model: registry name or local model folder.
        strategies: pooling strategies (names, comma-separated, or None = all); ``mean`` is always added.
        rerankers: re-rankers of the mean top-k (None = all, "none" or [] = none).
        k: cut-off of the extra @k metrics.
        probes: documents perturbed into probe variants when no queries are given.
        seed: seed of the probe sample and edits.
    """
    import json

    from rag_diag.evaluate import encode_queries, evaluate_bundle, judged_subset, ranx_per_query
    from rag_diag.index import build_indexes

    out = Path(out)
    names, reranks = _names(strategies, rerankers)
    command = command or _command(corpus, queries, qrels, model, names, reranks, out)
    docs, loaded_queries, loaded_qrels = _inputs(corpus, queries, qrels)
    probe_mode = loaded_queries is None
    out.mkdir(parents=True, exist_ok=True)
    if probe_mode:
        from rag_diag.corpora.io import write_beir

        docs, loaded_queries, loaded_qrels = probe_set(docs, probes, seed)
        with atomic.atomic_dir(out / "kb") as tmp:
            write_beir(tmp, docs, loaded_queries, loaded_qrels)
        docs = load_corpus(out / "kb")
    bundle = build_indexes(docs, model, names, out=out / "index", command=command)
    result = evaluate_bundle(bundle.path, loaded_queries, loaded_qrels, k=k, rerankers=reranks,  # type: ignore[arg-type]
                             out=out / "eval", model=model, command=command)
    metrics_json = json.loads((result.path / "metrics.json").read_text(encoding="utf-8"))
    judged_queries, judged_qrels = judged_subset(loaded_queries, loaded_qrels)  # type: ignore[arg-type]
    per_query = {name: ranx_per_query(judged_qrels, run, name, k) for name, run in result.runs.items()}
    costs = measure_costs(bundle, encode_queries(bundle, judged_queries, model, "cpu"), reranks)
    candidates = candidates_from(metrics_json, per_query, costs)
    recommended, reason = decide(candidates)
    recommendation = Recommendation(recommended, reason, RULE, candidates, out)
    summary = {
        **recommendation.to_dict(), "queries": "probes" if probe_mode else "given",
        "n_queries": metrics_json["n_queries"], "n_documents": len(docs), "model": metrics_json["model"],
        "metrics_json": str((result.path / "metrics.json").resolve()), "command": command,
    }
    from rag_diag.report import render_report

    render_report(out, choose_report(recommendation, summary))
    atomic.write_json(out / "recommendation.json", summary)
    return recommendation


# ---------------------------------------------------------------------------------------------- report


def choose_report(recommendation: Recommendation, summary: dict[str, Any]) -> Any:
    """ReportData: the recommendation as headline, the strategy table with costs, the rule."""
    import polars as pl

    from rag_diag.report import Headline, ReportData, Section, StrategyRow

    by_name = {c.name: c for c in recommendation.candidates}
    chosen, mean = by_name[recommendation.recommended], by_name[BASELINE]
    rows = [
        StrategyRow(
            strategy=c.name, p_at_1=c.metrics["P@1"], mrr_at_10=c.metrics["MRR@10"], ndcg_at_10=c.metrics["nDCG@10"],
            delta_vs_mean=c.score - mean.score, p_value=c.p_vs_mean,
            significant=None if c.p_vs_mean is None else c.p_vs_mean < ALPHA,
            index_bytes=c.index_bytes, latency_ms=c.latency_ms,
        )
        for c in recommendation.candidates
    ]
    table = pl.DataFrame([
        {"strategy": c.name, **{m: c.metrics[m] for m in REPORTED_METRICS}, "p_vs_mean": c.p_vs_mean,
         "p_vs_best": c.p_vs_best, "dim": c.dim, "bytes_per_doc": c.bytes_per_doc, "index_bytes": c.index_bytes,
         "latency_ms": c.latency_ms}
        for c in recommendation.candidates
    ])
    queries = "probe" if summary["queries"] == "probes" else "given"
    return ReportData(
        title="rag-diag: choice of pooling",
        headline=[
            Headline("recommended", recommendation.recommended, f"{PRIMARY_METRIC} {chosen.score:.3f}"),
            Headline(f"{PRIMARY_METRIC} gain over mean", f"{chosen.score - mean.score:+.3f}",
                     f"mean {mean.score:.3f}"),
            Headline("queries", f"{summary['n_queries']:,}",
                     f"{queries} queries, {summary['n_documents']:,} documents"),
            Headline("candidates", str(len(recommendation.candidates)), "pooling strategies and re-rankers"),
        ],
        strategies=rows, delta_metric=PRIMARY_METRIC,
        sections=[
            Section("Recommendation", f"{recommendation.reason}.\n\nRule: {recommendation.rule}"),
            Section.from_frame("Evidence and cost", table, (
                "p-values are Holm-corrected paired t-tests on per-query " + PRIMARY_METRIC + "; bytes_per_doc "
                "is what query time needs per document (index, plus the token store for re-rankers); latency "
                "is per query, excluding the shared encoder pass.")),
        ],
        commands=[summary["command"]],
        tables={"strategies": table},
    )
