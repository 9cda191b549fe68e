"""Choose a retrieval strategy for a knowledge base, held out: pooling, re-rankers, BM25, fusion, windows.

One encoder pass indexes every pooling strategy (:func:`rag_diag.retrieval.bundle.build_indexes`); the
evaluation adds every re-ranker of the mean top-k (blend weights α ∈ ALPHAS), BM25, BM25 fused with
mean pooling (lexical weights in :data:`rag_diag.evaluation.candidates.FUSION_WEIGHTS`) and windowed
encoding. Runs that differ only in a parameter form one *family* (``bm25+mean@0.25`` … →
``bm25+mean``).

Selection and tuning are cross-validated over queries (:mod:`rag_diag.evaluation.crossval`, k folds,
queries sharing a relevant document kept together): within each family the parameter is chosen on the
training folds and scored on the held-out fold, so every family's score is **out-of-fold**; the same
is done for the whole selection (all configurations at once), whose out-of-fold score is what
following this tool's advice is expected to give, next to the in-sample best that it would overstate.

Decision rule (:func:`decide`), on PRIMARY_METRIC, out-of-fold:

1. a candidate *beats mean* when its out-of-fold score is higher than mean's and the sign-flip permutation
   test of their per-query differences (:func:`rag_diag.evaluation.significance.paired_test`: exact up to 16
   non-zero differences, else 20,000 seeded random flips), Holm-corrected over candidates, gives p < ALPHA;
2. if none beats mean, recommend ``mean`` — nothing is shown to retrieve better;
3. otherwise the cheapest candidate (bytes per document at query time, then score, then name) that
   beats mean and is not significantly worse than the best candidate; if none, the best that beats mean.

Each candidate also gets its counterfactual against mean (queries fixed / broken at P@1, exact McNemar
test, Holm-corrected over candidates), out-of-fold. Costs: ``bytes_per_doc`` (index / N, plus the token store
for re-rankers, plus both indexes for fusion) and ``latency_ms`` per query (median of LATENCY_REPEATS, shared
encoder pass excluded, on the first LATENCY_QUERIES queries; reported, not used by the rule: timings vary and the
recommendation must not).

Without queries and qrels, distractor probes (:mod:`rag_diag.corpora.probes`) are used.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from rag_diag import atomic
from rag_diag.corpora.io import Corpus, Qrels, Queries
from rag_diag.corpora.probes import distractor_probes
from rag_diag.defaults import DEFAULT_PROBES
from rag_diag.errors import RagDiagError
from rag_diag.evaluation.counterfactual import counterfactuals, success_from_metric
from rag_diag.evaluation.crossval import Configuration, CrossValResult, cross_validate, query_groups
from rag_diag.evaluation.result import EvalResult
from rag_diag.evaluation.significance import ALPHA, EXACT_LIMIT, N_FLIPS, compare_to_baseline
from rag_diag.models.protocol import Encoder
from rag_diag.retrieval.bundle import IndexBundle

PRIMARY_METRIC = "MRR@10"
"""The metric the rule decides on: rank of the first relevant document, the RAG-relevant quantity."""

REPORTED_METRICS = ("P@1", "MRR@10", "nDCG@10")
BASELINE = "mean"
LATENCY_REPEATS = 3
LATENCY_QUERIES = 50
"""Queries timed per candidate (the first ones): per-query latency needs no more, and re-rankers are slow."""
FOLDS = 5
ALPHAS = (0.25, 0.75)
"""Blend weights tried besides the default 0.5 for the ``blend`` and ``hybrid`` re-rankers."""
KIND = "choose-pooling"
RULE = (
    f"On out-of-fold {PRIMARY_METRIC} ({FOLDS}-fold cross-validation over queries grouped by relevant document; "
    f"parameters tuned in-fold): a candidate beats mean when it scores higher with Holm-corrected sign-flip "
    f"permutation p < {ALPHA} (exact up to {EXACT_LIMIT} non-zero differences, else {N_FLIPS:,} seeded flips). "
    f"If none beats mean, recommend mean. Otherwise recommend the cheapest candidate (bytes per "
    f"document at query time, then higher score) that beats mean and is not significantly worse than the best "
    f"(corrected p ≥ {ALPHA} against it); if none, the best that beats mean."
)


@dataclass(frozen=True)
class Candidate:
    """One family of runs: in-sample and out-of-fold scores, tests against mean and the best, flips, cost."""

    name: str
    chosen: str
    metrics: dict[str, float]
    score: float
    in_sample: float
    p_vs_mean: float | None
    p_vs_best: float | None
    fixes: int
    breaks: int
    p_flips: float | None
    bytes_per_doc: float
    latency_ms: float
    index_bytes: int
    dim: int | None = None


@dataclass
class Recommendation:
    """The recommended candidate, why, the rule, every candidate's evidence and the selection's honesty check."""

    recommended: str
    reason: str
    rule: str
    candidates: list[Candidate]
    selection: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {
            "recommended": self.recommended, "reason": self.reason, "rule": self.rule,
            "primary_metric": PRIMARY_METRIC, "alpha": ALPHA, "selection": self.selection,
            "table": [asdict(c) for c in self.candidates],
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
        return BASELINE, (f"no candidate beats mean significantly on out-of-fold {PRIMARY_METRIC} "
                          f"(mean {mean.score:.4f}); mean is the cheapest default")
    best = max(candidates, key=lambda c: (c.score, c.name == BASELINE))
    tied_with_best = [c for c in winners if c.name == best.name or c.p_vs_best is None or c.p_vs_best >= ALPHA]
    chosen = min(tied_with_best, key=_cost) if tied_with_best else max(winners, key=lambda c: c.score)
    setting = "" if chosen.chosen == chosen.name else f" ({chosen.chosen})"
    why = ("is the cheapest such candidate not significantly worse than the best" if tied_with_best else
           "is the best of them: every candidate that beats mean is significantly worse than the best")
    return chosen.name, (
        f"{chosen.name}{setting} beats mean on out-of-fold {PRIMARY_METRIC} ({chosen.score:.4f} vs "
        f"{mean.score:.4f}, corrected p = {chosen.p_vs_mean:.3g}; fixes {chosen.fixes}, breaks {chosen.breaks} "
        f"queries at rank 1) and {why} ({best.name}, {best.score:.4f}): {chosen.bytes_per_doc:,.0f} bytes/doc, "
        f"{chosen.latency_ms:.2f} ms/query"
    )


# ---------------------------------------------------------------------------------------------- evidence


def family(run_name: str) -> str:
    """The family of a run: its name without the ``@parameter`` suffix."""
    return run_name.split("@", 1)[0]


def _median_ms(action: Any, n_queries: int) -> float:
    """Median over LATENCY_REPEATS runs of ``action()`` wall time, per query, in milliseconds."""
    times = []
    for _ in range(LATENCY_REPEATS):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return 1000.0 * statistics.median(times) / max(n_queries, 1)


def measure_costs(bundle: IndexBundle, query_store: Any, rerankers: list[str],
                  extra: dict[str, dict[str, float]]) -> dict[str, dict[str, Any]]:
    """bytes_per_doc, index_bytes and latency_ms per family (module docstring)."""
    from rag_diag.evaluation.evaluate import RUN_DEPTH, retrieve
    from rag_diag.evaluation.evaluate import rerank as rerank_run
    from rag_diag.retrieval.rerank import RerankConfig

    n_docs, n_queries = len(bundle.doc_ids), len(query_store)
    costs: dict[str, dict[str, Any]] = {}
    for name in bundle.strategies:
        size = int(faiss.serialize_index(bundle.index(name)).nbytes)
        latency = _median_ms(lambda name=name: retrieve(bundle, name, query_store, RUN_DEPTH, "cpu"), n_queries)
        costs[name] = {"index_bytes": size, "latency_ms": latency, "dim": bundle.strategy_manifest(name)["dim"]}
    base = costs[BASELINE]
    if rerankers:
        doc_store = bundle.token_store()
        first_stage = retrieve(bundle, BASELINE, query_store, RUN_DEPTH, "cpu")
        for name in rerankers:
            extra_ms = _median_ms(lambda name=name: rerank_run(name, first_stage, query_store, doc_store,
                                                              RerankConfig()), n_queries)
            costs[f"rerank-{name}"] = {"index_bytes": base["index_bytes"] + int(doc_store.embeddings.nbytes),
                                       "latency_ms": base["latency_ms"] + extra_ms, "dim": base["dim"]}
    for name, nbytes in extra.get("index_bytes", {}).items():
        fused = name.startswith("bm25+")
        costs[family(name)] = {
            "index_bytes": nbytes + (base["index_bytes"] if fused else 0),
            "latency_ms": extra["latency_ms"][name] + (base["latency_ms"] if fused else 0.0), "dim": None,
        }
    for cost in costs.values():
        cost["bytes_per_doc"] = cost["index_bytes"] / n_docs
    return costs


def cross_validate_families(per_query: dict[str, dict[str, np.ndarray]], query_ids: list[str], groups: np.ndarray,
                            seed: int) -> tuple[dict[str, CrossValResult], CrossValResult]:
    """Per family: parameters tuned in-fold; and the whole selection over every configuration (mean listed first)."""
    configs = {name: Configuration(family(name), (("run", name),)) for name in per_query}
    ordered = sorted(per_query, key=lambda name: (name != BASELINE, name))
    by_family: dict[str, CrossValResult] = {}
    for fam in dict.fromkeys(family(name) for name in ordered):
        members = {configs[n]: per_query[n] for n in ordered if family(n) == fam}
        by_family[fam] = cross_validate(members, query_ids, groups, PRIMARY_METRIC, k=FOLDS, seed=seed)
    overall = cross_validate({configs[n]: per_query[n] for n in ordered}, query_ids, groups, PRIMARY_METRIC,
                             k=FOLDS, seed=seed)
    return by_family, overall


def _most_chosen(result: CrossValResult) -> str:
    labels = [dict(c.parameters)["run"] for c in result.chosen_for]
    return str(max(sorted(set(labels)), key=labels.count))


def candidates_from(by_family: dict[str, CrossValResult], query_ids: list[str],
                    costs: dict[str, dict[str, Any]]) -> list[Candidate]:
    """One row per family from its out-of-fold scores: tests vs mean and vs the best, flips, costs."""
    oof = {fam: {PRIMARY_METRIC: r.out_of_fold[PRIMARY_METRIC]} for fam, r in by_family.items()}
    best = max(by_family, key=lambda fam: (by_family[fam].out_of_fold_mean, fam == BASELINE))
    to_mean, to_best = compare_to_baseline(oof, BASELINE), compare_to_baseline(oof, best)
    success = success_from_metric({fam: r.out_of_fold for fam, r in by_family.items()})
    flips = {row.candidate: row for row in counterfactuals(success, BASELINE, query_ids)}
    rows = []
    for fam, result in by_family.items():
        test_mean = to_mean.get(fam, {}).get(PRIMARY_METRIC)
        test_best = to_best.get(fam, {}).get(PRIMARY_METRIC)
        flip = flips.get(fam)
        cost = costs.get(fam, {"index_bytes": 0, "latency_ms": 0.0, "bytes_per_doc": 0.0, "dim": None})
        rows.append(Candidate(
            name=fam, chosen=_most_chosen(result),
            metrics={m: float(result.out_of_fold[m].mean()) for m in REPORTED_METRICS},
            score=result.out_of_fold_mean, in_sample=result.in_sample[PRIMARY_METRIC],
            p_vs_mean=None if test_mean is None else float(test_mean["corrected_p_value"]),
            p_vs_best=None if test_best is None else float(test_best["corrected_p_value"]),
            fixes=0 if flip is None else flip.fixes, breaks=0 if flip is None else flip.breaks,
            p_flips=None if flip is None else flip.corrected_p_value,
            bytes_per_doc=float(cost["bytes_per_doc"]), latency_ms=float(cost["latency_ms"]),
            index_bytes=int(cost["index_bytes"]), dim=None if cost.get("dim") is None else int(cost["dim"]),
        ))
    return rows


# ---------------------------------------------------------------------------------------------- API


def _names(strategies: str | list[str] | None, rerankers: str | list[str] | None) -> tuple[list[str], list[str]]:
    from rag_diag.pooling import parse_strategies
    from rag_diag.retrieval.rerank import parse_rerankers

    names = parse_strategies("all" if strategies is None else strategies)  # "" is an error, as for index
    if BASELINE not in names:
        names = [BASELINE, *names]
    reranks = parse_rerankers("all" if rerankers is None else None if rerankers == "none" else rerankers)
    return names, reranks


@dataclass
class Choice:
    """A choose-pooling run in memory: the recommendation, its summary, the bundle and the evaluation."""

    recommendation: Recommendation
    summary: dict[str, Any]
    bundle: IndexBundle
    evaluation: EvalResult


def choose_pooling(
    corpus: Corpus,
    *,
    queries: Queries | None = None,
    qrels: Qrels | None = None,
    model: str | Encoder = "minilm",
    strategies: str | list[str] | None = None,
    rerankers: str | list[str] | None = None,
    k: int = 10,
    probes: int = DEFAULT_PROBES,
    seed: int = 0,
    lexical: bool = True,
    windowed: bool = True,
    command: str = "",
) -> Choice:
    """Evaluate every candidate on the knowledge base and recommend one, held out (module docstring).

    Args:
        corpus: the knowledge base.
        queries, qrels: its queries and judgements; without them distractor probes are generated.
        model: registry name or local model folder.
        strategies: pooling strategies (names, comma-separated, or None = all); ``mean`` is always added.
        rerankers: re-rankers of the mean top-k (None = all, "none" or [] = none).
        k: cut-off of the extra @k metrics.
        probes: documents perturbed into probe variants when no queries are given.
        seed: seed of the probe sample and edits, and of the folds.
        lexical, windowed: add BM25 (and its fusions with mean) and windowed encoding.
    """
    from rag_diag.evaluation.evaluate import encode_queries, evaluate_bundle, judged_subset
    from rag_diag.retrieval.bundle import build_indexes
    from rag_diag.retrieval.rerank import RerankConfig

    names, reranks = _names(strategies, rerankers)
    if (queries is None) != (qrels is None):
        raise RagDiagError("give both --queries and --qrels, or neither (then probe queries are generated)")
    probe_mode = queries is None or qrels is None
    if queries is None or qrels is None:
        corpus, queries, qrels = distractor_probes(corpus, probes, seed)
    bundle = build_indexes(corpus, model=model, strategies=names, command=command)
    evaluation = evaluate_bundle(bundle, queries, qrels, k=k, rerankers=reranks, model=model, command=command,
                                 config=RerankConfig(extra_alphas=ALPHAS), corpus=corpus, lexical=lexical,
                                 windowed=windowed)
    judged_queries, _ = judged_subset(queries, qrels)
    if len(judged_queries) < FOLDS:
        raise RagDiagError(f"{len(judged_queries)} judged queries: cross-validation needs at least {FOLDS}")
    query_ids = list(judged_queries.ids)
    if any(list(run) != query_ids for run in evaluation.runs.values()):
        raise RagDiagError("internal: a run does not list the judged queries in order")
    per_query = evaluation.scores  # per-query metrics of every run, in that same order
    by_family, overall = cross_validate_families(per_query, query_ids, query_groups(query_ids, qrels), seed)
    timed = Queries(ids=judged_queries.ids[:LATENCY_QUERIES], texts=judged_queries.texts[:LATENCY_QUERIES])
    costs = measure_costs(bundle, encode_queries(bundle, timed, model, "cpu"), reranks,
                          evaluation.manifest.get("extra_costs") or {})
    candidates = candidates_from(by_family, query_ids, costs)
    recommended, reason = decide(candidates)
    selection = {
        "folds": FOLDS, "seed": seed, "in_sample_best": dict(overall.in_sample_best.parameters)["run"],
        "in_sample_score": overall.in_sample[PRIMARY_METRIC], "out_of_fold_score": overall.out_of_fold_mean,
        "optimism": overall.optimism, "per_fold": [dict(f.chosen.parameters)["run"] for f in overall.folds],
    }
    recommendation = Recommendation(recommended, reason, RULE, candidates, selection)
    summary = {
        **recommendation.to_dict(), "queries": "probes" if probe_mode else "given",
        "n_queries": evaluation.manifest["n_queries"], "n_documents": len(corpus),
        "model": evaluation.manifest["model"], "corpus_sha256": corpus.content_hash(), "command": command,
    }
    return Choice(recommendation, summary, bundle, evaluation)


def write_choice(choice: Choice, out: str | Path, *, force: bool = False) -> Path:
    """Write ``index/``, ``eval/``, ``recommendation.json`` and the report into one atomically replaced folder."""
    from rag_diag.report import render_report
    from rag_diag.report.choose import choose_report

    with atomic.atomic_dir(out, kind=KIND, force=force) as tmp:
        choice.bundle.write(tmp / "index")
        choice.evaluation.write(tmp / "eval")
        render_report(tmp, choose_report(choice.recommendation, choice.summary))
        atomic.write_json(tmp / "recommendation.json", choice.summary)
    return Path(out)
