"""choose-pooling's decision rule, the evidence it reads, and the held-out check of the rule itself.

Runs that differ only in a parameter form one *family* (``bm25+mean@0.25`` … → ``bm25+mean``). Within each
family the parameter is chosen on the training folds and scored on the held-out fold
(:mod:`rag_diag.evaluation.crossval`), so every family's score is out-of-fold *for its parameter*.

Decision rule (:func:`decide`), on PRIMARY_METRIC, out-of-fold:

1. a candidate *beats mean* when its out-of-fold score is higher than mean's and the sign-flip permutation
   test of their per-query differences (:func:`rag_diag.evaluation.significance.paired_test`: exact up to 16
   non-zero differences, else 20,000 seeded random flips), Holm-corrected over candidates, gives p < ALPHA;
2. if none beats mean, recommend ``mean`` — nothing is shown to retrieve better;
3. otherwise the cheapest candidate (bytes per document at query time, then score, then name) that
   beats mean and is not significantly worse than the best candidate; if none, the best that beats mean.

The rule picks the family on every query, so the recommended family's score, fixes and breaks are selected
on the queries they are reported on (the winner's curse, one level above the parameter). :func:`held_out_advice`
measures what following the rule gives by nested cross-validation: for each outer fold F_i it reruns the
whole rule — inner cross-validation, tests, costs — on the queries outside F_i, deploys the recommended
family's best configuration on those queries, and scores it on F_i:

    r_i = rule(Q ∖ F_i),   c_i = argmax_{c ∈ r_i} mean_{q ∉ F_i} m_c(q),   advice(q) = m_{c_i}(q) for q ∈ F_i

advice is compared with mean on every query by one sign-flip test (one hypothesis: no correction) and by
fixes / breaks at P@1 with an exact McNemar test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rag_diag.errors import RagDiagError
from rag_diag.evaluation.counterfactual import counterfactuals, success_from_metric
from rag_diag.evaluation.crossval import Configuration, CrossValResult, assign_folds, cross_validate
from rag_diag.evaluation.significance import ALPHA, EXACT_LIMIT, N_FLIPS, compare_to_baseline, holm, paired_test

PRIMARY_METRIC = "MRR@10"
"""The metric the rule decides on: rank of the first relevant document, the RAG-relevant quantity."""

REPORTED_METRICS = ("P@1", "MRR@10", "nDCG@10")
BASELINE = "mean"
FOLDS = 5
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
    """One family of runs: in-sample and out-of-fold scores, tests against mean and the best, flips, cost.

    ``n_differ`` counts the queries whose out-of-fold score differs from mean's: the sign-flip test's n, which
    bounds the smallest p it can give (2 / 2^n when exact); ``p_raw`` is that test's p before Holm's correction."""

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
    n_differ: int | None = None
    p_raw: float | None = None


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


def smallest_corrected_p(candidates: list[Candidate]) -> float | None:
    """The smallest Holm-corrected p the highest-scoring non-mean candidate could have had: its raw p set to the exact
    test's floor 2 / 2^n (n its differing queries, n ≤ 16) and Holm applied with the other candidates' raw p-values
    as they are (Holm multiplies by K only the smallest p); None above 16 (Monte-Carlo) or without candidates."""
    others = [c for c in candidates if c.name != BASELINE]
    if not others:
        return None
    top = max(others, key=lambda c: c.score)
    if top.n_differ is None or top.n_differ > EXACT_LIMIT:
        return None
    floor = 1.0 if top.n_differ < 2 else 2.0 ** (1 - top.n_differ)
    raw = [floor if c is top else (1.0 if c.p_raw is None else c.p_raw) for c in others]
    return float(holm(raw)[others.index(top)])


# ---------------------------------------------------------------------------------------------- evidence


def family(run_name: str) -> str:
    """The family of a run: its name without the ``@parameter`` suffix."""
    return run_name.split("@", 1)[0]


def ordered_runs(per_query: dict[str, Any]) -> list[str]:
    """Run names, mean first, then by name: the order that breaks ties (first listed wins)."""
    return sorted(per_query, key=lambda name: (name != BASELINE, name))


def _configs(names: list[str]) -> dict[str, Configuration]:
    return {name: Configuration(family(name), (("run", name),)) for name in names}


def cross_validate_families(per_query: dict[str, dict[str, np.ndarray]], query_ids: list[str], groups: np.ndarray,
                            seed: int, k: int = FOLDS) -> dict[str, CrossValResult]:
    """Per family: its parameter chosen on the training folds, scored on the held-out fold (k folds)."""
    ordered = ordered_runs(per_query)
    configs = _configs(ordered)
    return {fam: cross_validate({configs[n]: per_query[n] for n in ordered if family(n) == fam}, query_ids, groups,
                                PRIMARY_METRIC, k=k, seed=seed)
            for fam in dict.fromkeys(family(name) for name in ordered)}


def cross_validate_selection(per_query: dict[str, dict[str, np.ndarray]], query_ids: list[str], groups: np.ndarray,
                             seed: int) -> CrossValResult:
    """A plain best-score pick over every configuration at once, out-of-fold: the winner's curse it shows."""
    ordered = ordered_runs(per_query)
    configs = _configs(ordered)
    return cross_validate({configs[n]: per_query[n] for n in ordered}, query_ids, groups, PRIMARY_METRIC, k=FOLDS,
                          seed=seed)


def _most_chosen(result: CrossValResult) -> str:
    labels = [dict(c.parameters)["run"] for c in result.chosen_for]
    return str(max(sorted(set(labels)), key=labels.count))


NO_COST = {"index_bytes": 0, "latency_ms": 0.0, "bytes_per_doc": 0.0, "dim": None}


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
        cost = costs.get(fam, NO_COST)
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
            n_differ=None if test_mean is None else int(test_mean["n_nonzero"]),
            p_raw=None if test_mean is None else float(test_mean["p_value"]),
        ))
    return rows


# ---------------------------------------------------------------------------------------------- held out


@dataclass(frozen=True)
class HeldOutAdvice:
    """Following the rule, held out (nested cross-validation, module docstring): per outer fold the configuration
    the rule deployed, the mean metrics of advice(q) and of mean over all queries, and advice against mean."""

    picks: list[str]
    inner_folds: list[int]
    metrics: dict[str, float]
    mean_metrics: dict[str, float]
    p_vs_mean: float
    fixes: int
    breaks: int
    p_flips: float

    @property
    def score(self) -> float:
        return self.metrics[PRIMARY_METRIC]

    @property
    def families(self) -> list[str]:
        """The family the rule recommended in each outer fold."""
        return [family(pick) for pick in self.picks]


def _rule_on(rows: np.ndarray, per_query: dict[str, dict[str, np.ndarray]], query_ids: list[str],
             groups: np.ndarray, costs: dict[str, dict[str, Any]], seed: int) -> tuple[str, int]:
    """The configuration the whole rule deploys when it sees only the queries ``rows``, and its inner k."""
    sub = {name: {m: np.asarray(v)[rows] for m, v in values.items()} for name, values in per_query.items()}
    sub_ids = [query_ids[int(i)] for i in rows]
    k = min(FOLDS, len(np.unique(groups[rows])))
    recommended, _ = decide(candidates_from(cross_validate_families(sub, sub_ids, groups[rows], seed, k), sub_ids,
                                            costs))
    members = [name for name in ordered_runs(per_query) if family(name) == recommended]
    return max(members, key=lambda name: float(np.mean(sub[name][PRIMARY_METRIC]))), k  # ties: first listed


def held_out_advice(per_query: dict[str, dict[str, np.ndarray]], query_ids: list[str], groups: np.ndarray,
                    costs: dict[str, dict[str, Any]], seed: int) -> HeldOutAdvice:
    """advice(q) for every query by nested cross-validation, and its comparison with mean (module docstring)."""
    folds = assign_folds(groups, FOLDS, seed)
    advice = {m: np.empty(len(query_ids), dtype=np.float64) for m in REPORTED_METRICS}
    picks, inner = [], []
    for fold in range(FOLDS):
        pick, k = _rule_on(np.flatnonzero(folds != fold), per_query, query_ids, groups, costs, seed)
        test = np.flatnonzero(folds == fold)
        for metric in REPORTED_METRICS:
            advice[metric][test] = np.asarray(per_query[pick][metric], dtype=np.float64)[test]
        picks.append(pick)
        inner.append(k)
    mean = {m: np.asarray(per_query[BASELINE][m], dtype=np.float64) for m in REPORTED_METRICS}
    versus = paired_test(advice[PRIMARY_METRIC], mean[PRIMARY_METRIC])
    flip = counterfactuals(success_from_metric({BASELINE: mean, "advice": advice}), BASELINE, query_ids)[0]
    return HeldOutAdvice(
        picks=picks, inner_folds=inner, metrics={m: float(v.mean()) for m, v in advice.items()},
        mean_metrics={m: float(v.mean()) for m, v in mean.items()}, p_vs_mean=float(versus["p_value"]),
        fixes=flip.fixes, breaks=flip.breaks, p_flips=flip.p_value,
    )
