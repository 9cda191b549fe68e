"""rag_diag.stats against scikit-learn / scipy and hand examples."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from rag_diag import stats


def test_auroc_matches_sklearn_with_ties():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 5, size=80).astype(float)
    outcome = rng.random(80) < 0.3
    result = stats.auroc_with_ci(scores, outcome)
    assert result.auroc == pytest.approx(roc_auc_score(outcome, scores))
    assert result.ci_low <= result.auroc <= result.ci_high
    assert result.n_positive == outcome.sum()


def test_auroc_hand_example_and_separation():
    # positives 3 and 1 vs negatives 2 and 0: pairs won 3>2, 3>0, 1>0, lost 1<2 → 3/4
    assert stats.auroc_with_ci([3, 1, 2, 0], [True, True, False, False]).auroc == 0.75
    separated = stats.auroc_with_ci(np.arange(40.0), np.arange(40) >= 20)
    assert separated.auroc == 1.0 and separated.ci_excludes_half


def test_bootstrap_is_seeded_and_undefined_cases_say_why():
    rng = np.random.default_rng(0)
    scores, outcome = rng.random(60), rng.random(60) < 0.5
    assert stats.auroc_with_ci(scores, outcome) == stats.auroc_with_ci(scores, outcome)
    empty = stats.auroc_with_ci([0.1, 0.2], [False, False])
    assert empty.auroc is None and "no failures" in empty.reason and not empty.ci_excludes_half


def test_bootstrap_interval_of_chance_predictor_covers_half():
    rng = np.random.default_rng(1)
    result = stats.auroc_with_ci(rng.random(300), rng.random(300) < 0.4)
    assert result.ci_low < 0.5 < result.ci_high


def test_spearman_matches_scipy_and_constant_is_none():
    x, y = np.array([1.0, 2, 3, 4, 5]), np.array([0, 0, 1, 0, 1])
    expected = spearmanr(x, y)
    result = stats.spearman(x, y)
    assert result["rho"] == pytest.approx(expected.statistic)
    assert result["p_value"] == pytest.approx(expected.pvalue)
    assert stats.spearman(x, np.zeros(5)) == {"rho": None, "p_value": None}


def test_deciles_hand_example():
    values = np.arange(100.0)
    failed = values >= 90
    rows = stats.failure_rate_by_decile(values, failed)
    assert [r["n_queries"] for r in rows] == [10] * 10
    assert [r["failure_rate"] for r in rows] == [0.0] * 9 + [1.0]
    assert rows[0]["low"] == 0 and rows[-1]["high"] == 99


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
    assert stats.likelihood_ratio_test(base, extra, np.zeros(400, bool))["p_value"] is None
