"""Paired significance of each strategy against a baseline, with Holm's multiple-comparison correction.

For a metric m and strategies s_1 … s_K compared with the baseline b on the same queries, the
per-query differences δ_q = m_s(q) − m_b(q) are tested with a two-sided paired Student's t-test
(t = mean(δ) / (sd(δ)/√Q)); the K p-values of one metric are Holm-corrected
(p_(i) ↦ max_{j ≤ i} min(1, (K − j + 1) p_(j))). The effect size is reported twice: the mean
difference mean(δ) (in the metric's own units) and Cohen's d_z = mean(δ) / sd(δ).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

ALPHA = 0.05


def holm(p_values: list[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values, in the input order."""
    order = np.argsort(p_values, kind="stable")
    count = len(p_values)
    adjusted = np.empty(count)
    running = 0.0
    for position, index in enumerate(order):
        running = max(running, min(1.0, (count - position) * p_values[index]))
        adjusted[index] = running
    return adjusted.tolist()


def paired_test(candidate: np.ndarray, baseline: np.ndarray) -> dict[str, float]:
    """Two-sided paired t-test of per-query scores; p = 1 when every difference is zero."""
    differences = np.asarray(candidate, dtype=np.float64) - np.asarray(baseline, dtype=np.float64)
    spread = float(differences.std(ddof=1)) if len(differences) > 1 else 0.0
    mean = float(differences.mean())
    if spread == 0.0:
        p_value = 1.0 if mean == 0.0 else 0.0
        cohens_d = 0.0 if mean == 0.0 else float(np.sign(mean) * np.inf)
    else:
        p_value = float(stats.ttest_rel(candidate, baseline).pvalue)
        cohens_d = mean / spread
    return {"p_value": p_value, "effect_size": mean, "cohens_d": cohens_d}


def compare_to_baseline(
    per_query: dict[str, dict[str, np.ndarray]], baseline: str, alpha: float = ALPHA
) -> dict[str, dict[str, dict[str, float | bool | str]]]:
    """{strategy: {metric: {p_value, corrected_p_value, effect_size, cohens_d, significant, test}}}.

    Args:
        per_query: {strategy: {metric: per-query scores}}, every array in the same query order.
        baseline: the strategy every other one is compared with (itself is not tested).
        alpha: level at which the Holm-corrected p-value counts as significant.
    """
    others = [name for name in per_query if name != baseline]
    result: dict[str, dict[str, dict[str, float | bool | str]]] = {name: {} for name in others}
    if not others:
        return result
    for metric in per_query[baseline]:
        tests = [paired_test(per_query[name][metric], per_query[baseline][metric]) for name in others]
        corrected = holm([test["p_value"] for test in tests])
        for name, test, adjusted in zip(others, tests, corrected, strict=True):
            result[name][metric] = {
                **test,
                "corrected_p_value": adjusted,
                "significant": bool(adjusted < alpha),
                "test": "paired t-test, Holm-corrected over strategies",
            }
    return result
