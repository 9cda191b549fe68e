"""Grouped cross-validation: winner's curse exposed, groups never split, seeded determinism."""

from __future__ import annotations

import numpy as np
import pytest

from rag_diag.corpora.io import Qrels
from rag_diag.errors import RagDiagError
from rag_diag.evaluation.crossval import (
    Configuration,
    assign_folds,
    best_configuration,
    cross_validate,
    query_groups,
)

STEADY = Configuration("mean")
FLUKE = Configuration("fusion", (("weight", 0.9),))


def _winners_curse() -> tuple[dict, list[str]]:
    """STEADY scores 0.5 everywhere; FLUKE 1.0 on two lucky queries and 0.4 on the other eight.

    In-sample FLUKE wins: (2 + 8 · 0.4) / 10 = 0.52 > 0.5. With k = 5 folds of 2 queries: a fold
    holding out a lucky query trains on at most one lucky query, (1 + 7 · 0.4) / 8 = 0.475 < 0.5, so
    STEADY is chosen and scores 0.5; any other fold trains on both, (2 + 6 · 0.4) / 8 = 0.55, chooses
    FLUKE and scores 0.4 on two unlucky queries. At most two folds hold a lucky query, so the
    out-of-fold mean is at most (4 · 0.5 + 6 · 0.4) / 10 = 0.44 < 0.5 < 0.52.
    """
    fluke = np.full(10, 0.4)
    fluke[[3, 7]] = 1.0
    per_query = {STEADY: {"P@1": np.full(10, 0.5), "MRR@10": np.full(10, 0.6)},
                 FLUKE: {"P@1": fluke, "MRR@10": fluke}}
    return per_query, [f"q{i}" for i in range(10)]


def test_winners_curse_is_exposed():
    per_query, query_ids = _winners_curse()
    result = cross_validate(per_query, query_ids, np.arange(10), "P@1", k=5, seed=1)
    assert result.in_sample_best == FLUKE and result.in_sample["P@1"] == pytest.approx(0.52)
    assert result.out_of_fold_mean <= 0.44 + 1e-12
    assert result.optimism >= 0.08 - 1e-12
    for choice in result.folds:
        lucky_held_out = bool({3, 7} & set(np.flatnonzero(result.fold_of == choice.fold)))
        assert choice.chosen == (STEADY if lucky_held_out else FLUKE)
    # every query is scored by the configuration chosen without it
    for q, configuration in enumerate(result.chosen_for):
        assert result.out_of_fold["P@1"][q] == per_query[configuration]["P@1"][q]
    assert set(result.out_of_fold) == {"P@1", "MRR@10"}
    assert FLUKE.label == "fusion[weight=0.9]" and STEADY.label == "mean"


def test_groups_follow_shared_relevant_documents():
    qrels = Qrels({
        "a": {"d1": 1}, "b": {"d1": 2, "d2": 1}, "c": {"d2": 1},  # a ~ b ~ c (transitively)
        "d": {"d3": 1}, "e": {"d3": 1, "d9": 0},                  # d ~ e; d9 is not relevant
        "f": {"d9": 0}, "g": {"d4": 1}, "h": {"d5": 1}, "i": {"d6": 1}, "j": {"d7": 1},
    })
    query_ids = list("abcdefghij")
    groups = query_groups(query_ids, qrels)
    assert groups[0] == groups[1] == groups[2] and groups[3] == groups[4]
    assert len(set(groups.tolist())) == 7  # {a,b,c}, {d,e}, f, g, h, i, j
    for seed in range(5):
        folds = assign_folds(groups, k=3, seed=seed)
        for label in set(groups.tolist()):
            assert len(set(folds[groups == label].tolist())) == 1
        assert set(folds.tolist()) == {0, 1, 2}


def test_seeded_determinism():
    rng = np.random.default_rng(0)
    per_query = {Configuration("c", (("w", w),)): {"nDCG@10": rng.uniform(size=30)} for w in (0.1, 0.5, 0.9)}
    query_ids = [f"q{i}" for i in range(30)]
    groups = np.repeat(np.arange(15), 2)
    first = cross_validate(per_query, query_ids, groups, "nDCG@10", k=5, seed=3)
    second = cross_validate(per_query, query_ids, groups, "nDCG@10", k=5, seed=3)
    assert np.array_equal(first.fold_of, second.fold_of) and first.folds == second.folds
    assert np.array_equal(first.out_of_fold["nDCG@10"], second.out_of_fold["nDCG@10"])


def test_ties_prefer_first_and_errors():
    scores = {STEADY: np.ones(4), FLUKE: np.ones(4)}
    assert best_configuration(scores, np.arange(4)) == STEADY
    with pytest.raises(RagDiagError):
        assign_folds(np.array([0, 0, 1]), k=3)
    per_query, query_ids = _winners_curse()
    with pytest.raises(RagDiagError):
        cross_validate(per_query, query_ids, np.arange(10), "nDCG@10")
    with pytest.raises(RagDiagError):
        cross_validate(per_query, query_ids[:5], np.arange(5), "P@1")
    per_query[FLUKE]["P@1"] = np.where(np.arange(10) == 4, np.nan, per_query[FLUKE]["P@1"])  # NaN would win argmax
    with pytest.raises(RagDiagError, match="1 values of P@1 are NaN or infinite"):
        cross_validate(per_query, query_ids, np.arange(10), "P@1")
