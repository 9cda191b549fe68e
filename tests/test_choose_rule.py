"""The rule's held-out check (nested cross-validation) on per-query tables whose answer is worked out by hand,
and the wording the answer and the report give it."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.model_selection import GroupKFold

from rag_diag.diagnosis.answer import what_to_change
from rag_diag.jobs.rule import (
    FOLDS,
    Candidate,
    candidates_from,
    cross_validate_families,
    decide,
    held_out_advice,
    smallest_corrected_p,
)
from rag_diag.report.choose import candidate_kinds

METRICS = ("P@1", "MRR@10", "nDCG@10")
N_QUERIES = 40
SEED = 3


def table(values: np.ndarray) -> dict[str, np.ndarray]:
    """The same per-query values for every reported metric (P@1 1 = success)."""
    return {metric: np.asarray(values, dtype=np.float64) for metric in METRICS}


def folds_by_sklearn(n: int, seed: int) -> np.ndarray:
    """Fold of each query when every query is its own group, straight from sklearn's GroupKFold."""
    folds = np.empty(n, dtype=np.int64)
    splitter = GroupKFold(n_splits=FOLDS, shuffle=True, random_state=seed)
    for fold, (_, test) in enumerate(splitter.split(np.zeros((n, 1)), groups=np.arange(n))):
        folds[test] = fold
    return folds


def leaky_kb() -> tuple[dict[str, dict[str, np.ndarray]], list[str], np.ndarray]:
    """mean succeeds on no query; x equals mean except on the 8 queries of outer fold 0, where it succeeds.

    On all 40 queries x has 8 non-zero differences, all positive: exact sign-flip p = 2/2^8 ≈ 0.0078 < 0.05
    (one candidate, no correction) → the rule recommends x, fixing 8 queries. Held out, the rule never sees
    fold 0's queries while scoring them: without them x equals mean (no difference: mean stays), and with them
    x is picked but scored on folds where it equals mean. So following the rule fixes 0 queries and scores
    exactly mean's 0."""
    folds = folds_by_sklearn(N_QUERIES, SEED)
    assert np.bincount(folds).tolist() == [8] * FOLDS, "precondition: 5 folds of 8 singleton groups"
    per_query = {"mean": table(np.zeros(N_QUERIES)), "x": table((folds == 0).astype(float))}
    return per_query, [f"q{i}" for i in range(N_QUERIES)], np.arange(N_QUERIES)


def test_selection_on_all_queries_would_claim_what_held_out_does_not_give():
    per_query, ids, groups = leaky_kb()
    in_sample = candidates_from(cross_validate_families(per_query, ids, groups, SEED), ids, {})
    by_name = {c.name: c for c in in_sample}
    assert decide(in_sample)[0] == "x" and by_name["x"].fixes == 8 and by_name["x"].breaks == 0
    held = held_out_advice(per_query, ids, groups, {}, SEED)
    assert held.picks[0] == "mean", "fold 0's queries are the only evidence for x: without them mean stays"
    assert held.picks[1:] == ["x"] * (FOLDS - 1)
    assert held.fixes == 0 and held.breaks == 0 and held.p_vs_mean == 1.0
    assert held.score == 0.0 == held.mean_metrics["MRR@10"]
    assert held.inner_folds == [FOLDS] * FOLDS  # 32 training groups: 5 inner folds each


def test_a_candidate_better_everywhere_is_followed_in_every_fold():
    """better succeeds on 30 of 40 queries, mean on 10 of those 30: 20 fixes, 0 breaks whatever the folds; every
    training part holds ≥ 16 of the 20 positive differences (exact p ≤ 2/2^16 ≪ 0.05), so every fold picks it."""
    rng = np.random.default_rng(0)
    better = np.zeros(N_QUERIES)
    better[rng.permutation(N_QUERIES)[:30]] = 1.0
    mean = better.copy()
    mean[np.flatnonzero(better)[:20]] = 0.0
    per_query = {"mean": table(mean), "better": table(better), "same": table(mean)}
    held = held_out_advice(per_query, [f"q{i}" for i in range(N_QUERIES)], np.arange(N_QUERIES), {}, SEED)
    assert held.picks == ["better"] * FOLDS
    assert (held.fixes, held.breaks) == (20, 0)
    assert held.metrics["P@1"] == pytest.approx(30 / 40, abs=0) and held.mean_metrics["P@1"] == 10 / 40
    assert held.p_flips == pytest.approx(2 * 0.5 ** 20, rel=1e-12)  # exact McNemar, 20 fixes, 0 breaks


def test_the_deployed_configuration_is_the_family_member_best_on_the_training_queries():
    """bm25+mean@0.25 is better than @0.75 on every query: whichever fold, the rule deploys @0.25."""
    base = np.zeros(N_QUERIES)
    good, worse = np.ones(N_QUERIES), np.zeros(N_QUERIES)
    worse[::2] = 1.0
    per_query = {"mean": table(base), "bm25+mean@0.25": table(good), "bm25+mean@0.75": table(worse)}
    held = held_out_advice(per_query, [f"q{i}" for i in range(N_QUERIES)], np.arange(N_QUERIES), {}, SEED)
    assert held.picks == ["bm25+mean@0.25"] * FOLDS and held.families == ["bm25+mean"] * FOLDS
    assert held.score == 1.0 and held.fixes == N_QUERIES


def row(name: str, score: float, p_mean: float | None, n_differ: int | None, p_raw: float | None = None) -> Candidate:
    return Candidate(name=name, chosen=name, metrics={m: score for m in METRICS}, score=score, in_sample=score,
                     p_vs_mean=p_mean, p_vs_best=None, fixes=0, breaks=0, p_flips=None, bytes_per_doc=1536.0,
                     latency_ms=1.0, index_bytes=0, n_differ=n_differ, p_raw=p_mean if p_raw is None else p_raw)


def test_smallest_corrected_p_is_holm_with_the_exact_floor():
    # the highest non-mean candidate (cls) differs from mean on 5 queries: exact p ≥ 2/2^5 = 1/16. The others' raw
    # p (0.3, 1) are larger, so Holm multiplies 1/16 by K = 3 → 3/16
    table_ = [row("mean", 0.5, None, None), row("cls", 0.6, 0.3, 5), row("max", 0.4, 0.3, 9), row("sif", 0.5, 1, 0)]
    assert smallest_corrected_p(table_) == 3 / 16
    # with another candidate's raw p smaller (1e-4, first in Holm's order: ×3), cls's is second: ×2 → 2/16 = 0.125;
    # and with two smaller: ×1 → 1/16
    worse = [row("mean", 0.5, None, None), row("cls", 0.6, 0.3, 5), row("max", 0.4, 3e-4, 9, 1e-4),
             row("sif", 0.5, 1, 0)]
    assert smallest_corrected_p(worse) == 2 / 16
    both = [*worse[:3], row("sif", 0.4, 4e-4, 9, 2e-4)]
    assert smallest_corrected_p(both) == 1 / 16
    assert smallest_corrected_p([row("mean", 0.5, None, None), row("cls", 0.6, 0.01, 17)]) is None  # Monte-Carlo
    assert smallest_corrected_p([row("mean", 0.5, None, None)]) is None


def test_the_floor_is_reached_by_the_real_rule():
    """The review's case, through the real evidence: mean 0.5 everywhere; y and z 0.49 everywhere (significantly
    worse: tiny raw p); x differs on 6 queries. With one of the six negative mean stays; the floor must then allow
    what happens when all six are positive: p = 2/2^6, Holm-ranked after y and z (×1) → 1/32 < 0.05 → x."""
    ids, groups = [f"q{i}" for i in range(N_QUERIES)], np.arange(N_QUERIES)
    base = np.full(N_QUERIES, 0.5)
    x_mixed, x_up = base.copy(), base.copy()
    x_mixed[:6], x_up[:6] = [1, 1, 1, 1, 1, 0], 1.0
    runs = {"mean": table(base), "y": table(base - 0.01), "z": table(base - 0.01)}
    mixed = candidates_from(cross_validate_families({**runs, "x": table(x_mixed)}, ids, groups, SEED), ids, {})
    assert decide(mixed)[0] == "mean"
    floor = smallest_corrected_p(mixed)
    up = candidates_from(cross_validate_families({**runs, "x": table(x_up)}, ids, groups, SEED), ids, {})
    reached = {c.name: c for c in up}["x"].p_vs_mean
    assert decide(up)[0] == "x" and reached == pytest.approx(2 / 2**6, abs=1e-15) and floor <= reached


def summary_for(recommended: str, rows: list[Candidate], held: dict) -> dict:
    return {"recommended": recommended, "primary_metric": "MRR@10", "alpha": 0.05,
            "smallest_corrected_p": smallest_corrected_p(rows), "held_out": held,
            "table": [{"name": c.name, "chosen": c.chosen, "score": c.score, "p_vs_mean": c.p_vs_mean,
                       "n_differ": c.n_differ, "fixes": c.fixes, "breaks": c.breaks} for c in rows]}


HELD_MEAN = {"families": ["mean"] * 5, "score": 0.5, "mean_metrics": {"MRR@10": 0.5}, "p_vs_mean": 1.0,
             "fixes": 0, "breaks": 0}


def test_keep_mean_names_the_highest_candidate_and_says_when_no_test_could_decide():
    rows = [row("mean", 0.5, None, None), row("bm25", 1.0, 0.125, 5)]  # 1 · 2/2^5 = 0.0625 ≥ 0.05
    text = what_to_change({}, pl.DataFrame(), summary_for("mean", rows, HELD_MEAN))
    assert "no candidate beats it significantly" in text and "the highest, bm25, 1.000 at corrected p = 0.125" in text
    assert "could not go below 0.0625 (Holm over 1 candidates)" in text
    assert "following the advice scores MRR@10 0.500 vs 0.500 for mean" in text
    enough = [row("mean", 0.5, None, None), row("bm25", 0.6, 0.3, 12)]  # 2/2^12 < 0.05: the test could decide
    assert "could not go below" not in what_to_change({}, pl.DataFrame(), summary_for("mean", enough, HELD_MEAN))


def test_switch_reports_the_held_out_figures_not_the_selected_ones():
    rows = [row("mean", 0.5, None, None), row("x", 0.7, 0.008, 8)]
    held = {"families": ["mean", "x", "x", "x", "x"], "score": 0.5, "mean_metrics": {"MRR@10": 0.5},
            "p_vs_mean": 1.0, "fixes": 0, "breaks": 0}
    text = what_to_change({}, pl.DataFrame(), summary_for("x", rows, held))
    assert "chosen among 1 candidates on all queries" in text
    assert "it picked x in 4 and mean in 1 of 5 folds" in text
    assert "fixes 0 and breaks 0 queries at rank 1" in text and "held out" not in text.split("Held out")[0]


def test_candidate_kinds_counts_only_what_ran():
    names = ["mean", "cls", "rerank-w2", "rerank-windowed", "bm25", "bm25+mean", "windowed"]
    assert candidate_kinds([row(n, 0.5, None, None) for n in names]) == (
        "pooling 2, re-rankers 2, BM25 1, fusion 1, windowed 1")
    assert candidate_kinds([row("mean", 0.5, None, None)]) == "pooling 1"
