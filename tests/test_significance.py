"""Sign-flip permutation test and Holm correction against hand-worked examples and scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from rag_diag.evaluation.significance import (
    compare_to_baseline,
    exact_sign_flip_p,
    holm,
    monte_carlo_sign_flip_p,
    paired_test,
    sign_flip_sums,
)


def test_holm_hand_worked():
    # Ascending: 0.005 (#3), 0.01 (#0), 0.03 (#2), 0.04 (#1); K = 4, multipliers 4, 3, 2, 1:
    #   4·0.005 = 0.02, 3·0.01 = 0.03, 2·0.03 = 0.06, 1·0.04 = 0.04
    # running maximum: 0.02, 0.03, 0.06, max(0.06, 0.04) = 0.06
    # back in input order: #0 → 0.03, #1 → 0.06, #2 → 0.06, #3 → 0.02
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_caps_at_one_and_handles_empty():
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm([]) == []


def test_single_query_makes_no_claim():
    test = paired_test(np.array([1.0]), np.array([0.0]))
    assert test["p_value"] == 1.0 and test["n_queries"] == 1 and test["mean_difference"] == 1.0
    assert np.isnan(test["cohens_d"])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_missing_score_is_refused_not_called_significant(bad):
    # with a NaN δ no pattern reaches |T| = NaN, so counting would give p = 0
    with pytest.raises(ValueError, match="1 per-query differences are NaN or infinite"):
        paired_test(np.array([1.0, bad, 0.0]), np.zeros(3))


def test_two_queries_both_gaining_exact_half():
    # δ = (1, 1): T = 2; patterns ++, +-, -+, -- give 2, 0, 0, -2 → |T(ε)| ≥ 2 twice out of 4.
    test = paired_test(np.array([1.0, 1.0]), np.array([0.0, 0.0]))
    assert test["p_value"] == 0.5 and test["test"] == "exact sign-flip permutation"
    assert test["cohens_d"] == np.inf  # zero spread, non-zero mean


def test_six_positive_differences_exact_two_over_64():
    test = paired_test(np.array([0.9, 1.0, 0.7, 1.0, 0.8, 0.6]), np.array([0.4, 0.5, 0.2, 0.1, 0.3, 0.5]))
    assert test["p_value"] == pytest.approx(2 / 64, abs=1e-15)


def test_zeros_are_dropped_and_ties_counted():
    # δ = (1, 1, 1, 0, 0, 0): three non-zero equal gains → 2 / 2^3.
    test = paired_test(np.array([1, 1, 1, 0, 1, 0.0]), np.array([0, 0, 0, 0, 1, 0.0]))
    assert test["p_value"] == 0.25 and test["n_nonzero"] == 3 and test["mean_difference"] == 0.5
    # one changed query among many: no claim
    assert paired_test(np.array([1, 0, 0, 0.0]), np.zeros(4))["p_value"] == 1.0
    everything_equal = paired_test(np.ones(5), np.ones(5))
    assert everything_equal["p_value"] == 1.0 and everything_equal["cohens_d"] == 0.0


def test_hand_worked_mixed_signs():
    # δ = (0.5, 0.25, −0.25, 0.25): T = 0.75. With +0.5 the three ±0.25 must sum to ≥ 0.25 (4 of 8
    # patterns: +++ gives 1.25, two-plus-one-minus gives 0.75 three ways); with −0.5 symmetrically 4 → 8/16.
    assert exact_sign_flip_p(np.array([0.5, 0.25, -0.25, 0.25])) == 0.5
    # δ = (1, 1, −1): every pattern has |T(ε)| ≥ 1 → p = 1.
    assert exact_sign_flip_p(np.array([1.0, 1.0, -1.0])) == 1.0
    assert sorted(sign_flip_sums(np.array([2.0, 1.0]))) == [-3.0, -1.0, 1.0, 3.0]


def test_agrees_with_scipy_permutation_test():
    rng = np.random.default_rng(7)
    candidate, baseline = rng.uniform(size=11), rng.uniform(size=11)
    ours = paired_test(candidate, baseline)["p_value"]

    def mean_difference(x: np.ndarray, y: np.ndarray, axis: int) -> np.ndarray:
        return np.mean(x - y, axis=axis)

    theirs = stats.permutation_test(
        (candidate, baseline), mean_difference, permutation_type="samples", n_resamples=np.inf
    ).pvalue
    assert ours == pytest.approx(theirs, abs=1e-12)


def test_monte_carlo_never_zero_seeded_and_close_to_exact():
    all_gaining = paired_test(np.ones(30), np.zeros(30), n_flips=10_000)
    assert all_gaining["p_value"] == pytest.approx(1 / 10_001)  # B = 0 (exact p = 2^-29)
    assert all_gaining["test"].startswith("Monte-Carlo")
    differences = np.random.default_rng(3).normal(0.3, 1.0, size=17)
    first = monte_carlo_sign_flip_p(differences, n_flips=20_000, seed=5)
    assert first == monte_carlo_sign_flip_p(differences, n_flips=20_000, seed=5)
    exact = exact_sign_flip_p(differences)
    assert abs(first - exact) < 4 * np.sqrt(exact * (1 - exact) / 20_000) + 1 / 20_001
    with pytest.raises(ValueError):
        monte_carlo_sign_flip_p(differences, n_flips=100)


def test_compare_to_baseline_keys_and_holm():
    per_query = {
        "mean": {"P@1": np.zeros(6)},
        "better": {"P@1": np.ones(6)},
        "same": {"P@1": np.zeros(6)},
    }
    result = compare_to_baseline(per_query, "mean")
    assert set(result) == {"better", "same"}
    better = result["better"]["P@1"]
    assert {"p_value", "corrected_p_value", "effect_size", "cohens_d", "significant", "test"} <= set(better)
    assert better["p_value"] == pytest.approx(2 / 64)
    assert better["corrected_p_value"] == pytest.approx(min(1.0, 2 * 2 / 64))  # smallest of K = 2
    assert better["significant"] is False  # 0.0625 ≥ 0.05 after Holm
    assert result["same"]["P@1"]["corrected_p_value"] == 1.0
    assert "Holm" in str(better["test"]) and better["effect_size"] == 1.0
    assert compare_to_baseline({"mean": {"P@1": np.zeros(3)}}, "mean") == {}
