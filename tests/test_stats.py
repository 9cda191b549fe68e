"""rag_diag.diagnosis.stats against hand-written oracles (pair counting, mid-ranks, the t form of the
Spearman test) and hand examples. The library wraps scikit-learn / scipy, so those are not oracles here."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from scipy.special import betainc

from rag_diag.diagnosis import stats

EPS64 = float(np.finfo(np.float64).eps)  # 2.2e-16


def auroc_by_pair_counting(scores, outcome) -> Fraction:
    """P(positive > negative) + ½·P(tie), exactly, by looking at every (positive, negative) pair."""
    positives = [s for s, o in zip(scores, outcome, strict=True) if o]
    negatives = [s for s, o in zip(scores, outcome, strict=True) if not o]
    half = Fraction(1, 2)
    wins = sum(Fraction(1) if p > n else half if p == n else Fraction(0) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def mid_ranks(values) -> list[float]:
    """1-based ranks, ties sharing the mean of their positions."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        stop = start
        while stop + 1 < len(order) and values[order[stop + 1]] == values[order[start]]:
            stop += 1
        for position in range(start, stop + 1):
            ranks[order[position]] = (start + stop) / 2 + 1
        start = stop + 1
    return ranks


def test_auroc_matches_pair_counting_with_ties():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, size=80).astype(float)
    outcome = rng.random(80) < 0.3
    result = stats.auroc_with_ci(scores, outcome)
    # the library's float result sums ≤ 80 trapezoids/ranks: ≤ 80·eps relative error on a value ≤ 1
    assert abs(result.auroc - float(auroc_by_pair_counting(scores.tolist(), outcome.tolist()))) <= 80 * EPS64
    assert result.ci_low <= result.auroc <= result.ci_high
    assert result.n_positive == outcome.sum() and result.n_negative == (~outcome).sum()


def test_auroc_hand_example_and_direction():
    # positives 3 and 1 vs negatives 2 and 0: pairs won 3>2, 3>0, 1>0, lost 1<2 → 3/4 (exact in binary)
    assert stats.auroc_with_ci([3, 1, 2, 0], [True, True, False, False]).auroc == 0.75
    separated = stats.auroc_with_ci(np.arange(40.0), np.arange(40) >= 20)
    assert separated.auroc == 1.0 and separated.direction == "positive"
    inverse = stats.auroc_with_ci(-np.arange(40.0), np.arange(40) >= 20)
    assert inverse.auroc == 0.0 and inverse.direction == "inverse"
    assert separated.to_dict()["direction"] == "positive"


def test_bootstrap_is_seeded_and_undefined_cases_say_why():
    rng = np.random.default_rng(0)
    scores, outcome = rng.random(60), rng.random(60) < 0.5
    assert stats.auroc_with_ci(scores, outcome) == stats.auroc_with_ci(scores, outcome)
    empty = stats.auroc_with_ci([0.1, 0.2], [False, False])
    assert empty.auroc is None and "no failures" in empty.reason and empty.direction == "none"
    full = stats.auroc_with_ci([0.1, 0.2], [True, True])
    assert full.auroc is None and "no successes" in full.reason
    single = stats.auroc_with_ci([0.1, 0.2, 0.3], [True, False, False])
    assert single.auroc == 0.0 and single.ci_low is None and "fewer than 2" in single.reason


def test_bootstrap_interval_of_chance_predictor_covers_half():
    rng = np.random.default_rng(1)
    result = stats.auroc_with_ci(rng.random(300), rng.random(300) < 0.4)
    assert result.ci_low < 0.5 < result.ci_high and result.direction == "none"


def test_cluster_bootstrap_resamples_whole_groups():
    rng = np.random.default_rng(4)
    groups = np.repeat(np.arange(30), 4)  # 30 groups of 4 rows sharing a score
    scores = np.repeat(rng.random(30), 4)
    outcome = rng.random(120) < 1 / (1 + np.exp(-8 * (scores - 0.5)))
    grouped = stats.auroc_with_ci(scores, outcome, groups=groups)
    assert grouped == stats.auroc_with_ci(scores, outcome, groups=groups)  # seeded
    plain = stats.auroc_with_ci(scores, outcome)
    assert grouped.auroc == plain.auroc  # the point estimate does not depend on the grouping
    assert grouped.ci_low <= grouped.auroc <= grouped.ci_high
    # 30 independent units, not 120: the interval is wider than the row bootstrap's
    assert grouped.ci_high - grouped.ci_low > plain.ci_high - plain.ci_low


def test_cluster_bootstrap_of_one_group_gives_no_interval():
    one_group = stats.auroc_with_ci([0.1, 0.2, 0.3, 0.4], [True, False, True, False], groups=[0, 0, 0, 0])
    assert one_group.ci_low is None and one_group.direction == "none"


def test_spearman_matches_mid_rank_pearson_and_the_t_test():
    x, y = [1.0, 2, 3, 4, 5, 6, 7], [0, 0, 1, 0, 1, 1, 1]
    rx, ry = np.array(mid_ranks(x)), np.array(mid_ranks(y))
    rho = float(np.corrcoef(rx, ry)[0, 1])
    n = len(x)
    t2 = rho**2 * (n - 2) / (1 - rho**2)
    p_value = float(betainc((n - 2) / 2, 0.5, (n - 2) / (n - 2 + t2)))  # two-sided P(|T| > t), T ~ t(n−2)
    result = stats.spearman(np.array(x), np.array(y))
    # ρ: a Pearson correlation of 7 ranks by two codes: ≤ 32·n·eps; the p-value through two special-
    # function routes (regularised incomplete beta here, the t survival function in scipy) that are each
    # accurate to ~1e-15 relative, amplified by at most |dp/dρ|·Δρ ≤ 10·Δρ for this ρ
    rho_atol = 32 * n * EPS64
    assert abs(result["rho"] - rho) <= rho_atol
    assert abs(result["p_value"] - p_value) <= 10 * rho_atol + 1e-14
    assert stats.spearman(np.array(x), np.zeros(n)) == {"rho": None, "p_value": None}
    assert stats.spearman(np.array([1.0, 2.0]), np.array([2.0, 1.0])) == {"rho": None, "p_value": None}


def test_deciles_hand_example():
    values = np.arange(100.0)
    failed = values >= 90
    rows = stats.failure_rate_by_decile(values, failed)
    assert [r["n_queries"] for r in rows] == [10] * 10
    assert [r["failure_rate"] for r in rows] == [0.0] * 9 + [1.0]
    assert rows[0]["low"] == 0 and rows[-1]["high"] == 99
    assert stats.failure_rate_by_decile(np.array([]), np.array([], dtype=bool)) == []


def test_deciles_keep_ties_together():
    values = np.array([0.0] * 15 + [1.0] * 5)
    rows = stats.failure_rate_by_decile(values, values > 0)
    assert sum(r["n_queries"] for r in rows) == 20
    assert {r["failure_rate"] for r in rows} == {0.0, 1.0}


def test_likelihood_ratio_detects_extra_information():
    rng = np.random.default_rng(2)
    base, extra = rng.normal(size=400), rng.normal(size=400)
    outcome = rng.random(400) < 1 / (1 + np.exp(-2 * extra))
    informative = stats.likelihood_ratio_test(base, extra, outcome)
    assert informative["p_value"] < 1e-6 and informative["coef_extra"] > 0
    useless = stats.likelihood_ratio_test(extra, base, outcome)
    assert useless["p_value"] > 0.01
    single = stats.likelihood_ratio_test(base, extra, np.zeros(400, bool))
    assert single["p_value"] is None and "single class" in single["reason"]


def test_likelihood_ratio_with_several_controls():
    """base (n, p): the extra variable is judged beyond all controls; one coefficient per control."""
    rng = np.random.default_rng(5)
    controls = rng.normal(size=(400, 2))
    extra = controls[:, 0] + 0.05 * rng.normal(size=400)  # nearly a copy of the first control
    outcome = rng.random(400) < 1 / (1 + np.exp(-2 * controls[:, 0]))
    result = stats.likelihood_ratio_test(controls, extra, outcome)
    assert isinstance(result["coef_base"], list) and len(result["coef_base"]) == 2
    assert result["p_value"] > 0.01  # nothing beyond the control it copies
    alone = stats.likelihood_ratio_test(controls[:, 1], extra, outcome)
    assert alone["p_value"] < 1e-6  # but informative beyond the irrelevant control
