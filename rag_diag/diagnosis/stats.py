"""Statistics for diagnosis: AUROC with a bootstrap CI, Spearman, deciles, a likelihood-ratio test.

Everything here is a thin, typed wrapper over scipy / scikit-learn that also handles the degenerate
cases a knowledge base produces (no failures at all, every query failing, constant predictors) by
returning ``None`` fields with a reason instead of raising or emitting NaN-laden warnings.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as sps
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score

N_BOOTSTRAP = 1000
"""Bootstrap resamples for confidence intervals (percentile method; 1,000 gives a stable 95% CI)."""

BOOTSTRAP_SEED = 0
"""Fixed seed so that a re-run on the same inputs reports the same interval."""

NEARLY_UNPENALISED_C = 1e3
"""Inverse ridge strength of the logistic fit on standardised predictors: weak enough to act as an
unpenalised maximum-likelihood fit, strong enough to keep coefficients finite under complete separation
(a tiny constructed knowledge base separates perfectly)."""


@dataclass(frozen=True)
class AurocResult:
    """AUROC of a score as a predictor of a binary outcome, with a bootstrap confidence interval.

    AUROC = P(score of a random positive > score of a random negative) + ½·P(tie) (Mann–Whitney U / n₊n₋).
    ``auroc`` is ``None`` when one class is empty; ``reason`` then says why.
    """

    auroc: float | None
    ci_low: float | None
    ci_high: float | None
    n_positive: int
    n_negative: int
    n_resamples: int
    seed: int
    reason: str | None = None

    @property
    def direction(self) -> str:
        """``positive`` when the whole CI lies above 0.5 (higher score, more failures), ``inverse`` when it
        lies below (higher score, fewer failures), ``none`` when it covers 0.5 or is missing."""
        if self.ci_low is not None and self.ci_low > 0.5:
            return "positive"
        if self.ci_high is not None and self.ci_high < 0.5:
            return "inverse"
        return "none"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "direction": self.direction}


def _mann_whitney_auc(positive: np.ndarray, negative: np.ndarray, axis: int = -1) -> np.ndarray:
    """AUC = (R₊ − n₊(n₊+1)/2) / (n₊ n₋), R₊ = sum of the positives' mid-ranks in the pooled sample."""
    pooled = np.concatenate([positive, negative], axis=axis)
    ranks = sps.rankdata(pooled, axis=axis)
    n_pos = positive.shape[axis]
    n_neg = negative.shape[axis]
    rank_sum = np.take(ranks, np.arange(n_pos), axis=axis).sum(axis=axis)
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def _cluster_bootstrap(
    scores: np.ndarray, outcome: np.ndarray, groups: np.ndarray, n_resamples: int, seed: int, confidence: float
) -> tuple[float | None, float | None]:
    """Percentile CI of the AUROC when whole groups are resampled with replacement.

    Rows sharing a group (queries with the same relevant document share its collapse rate) are not
    independent, so the group is the resampling unit. Resamples with a single class are skipped.
    """
    _, codes = np.unique(groups, return_inverse=True)
    if min(len(np.unique(codes[outcome])), len(np.unique(codes[~outcome]))) < 2:
        return None, None  # a class confined to one group: resampling groups cannot vary it
    members = [np.flatnonzero(codes == g) for g in range(codes.max() + 1)]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_resamples):
        rows = np.concatenate([members[g] for g in rng.integers(0, len(members), len(members))])
        chosen = outcome[rows]
        if chosen.all() or not chosen.any():
            continue
        values.append(float(_mann_whitney_auc(scores[rows][chosen], scores[rows][~chosen])))
    if len(values) < n_resamples // 2:
        return None, None
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return float(low), float(high)


def auroc_with_ci(
    scores: np.ndarray,
    outcome: np.ndarray,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = 0.95,
    groups: np.ndarray | None = None,
) -> AurocResult:
    """AUROC of ``scores`` for ``outcome`` (bool) with a percentile-bootstrap CI.

    Without ``groups``, positives and negatives are resampled separately (scipy's independent-sample
    bootstrap), so every resample keeps both classes. With ``groups``, whole groups are resampled
    (:func:`_cluster_bootstrap`), for rows that are not independent.
    """
    scores = np.asarray(scores, dtype=np.float64)
    outcome = np.asarray(outcome, dtype=bool)
    positive, negative = scores[outcome], scores[~outcome]
    base: dict[str, Any] = {"n_positive": len(positive), "n_negative": len(negative)}
    base.update(n_resamples=n_resamples, seed=seed)
    if len(positive) == 0 or len(negative) == 0:
        empty = "no failures" if len(positive) == 0 else "no successes"
        return AurocResult(None, None, None, **base, reason=f"{empty}: AUROC is undefined")
    point = float(roc_auc_score(outcome, scores))
    if len(positive) < 2 or len(negative) < 2:
        return AurocResult(point, None, None, **base, reason="fewer than 2 per class: no bootstrap interval")
    if groups is not None:
        low, high = _cluster_bootstrap(scores, outcome, np.asarray(groups), n_resamples, seed, confidence)
        reason = None if low is not None else "too few groups with both classes: no bootstrap interval"
        return AurocResult(point, low, high, **base, reason=reason)
    result = sps.bootstrap(
        (positive, negative),
        _mann_whitney_auc,
        n_resamples=n_resamples,
        vectorized=True,
        method="percentile",
        confidence_level=confidence,
        rng=np.random.default_rng(seed),
    )
    interval = result.confidence_interval
    return AurocResult(point, float(interval.low), float(interval.high), **base)


def spearman(x: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    """Spearman ρ (Pearson correlation of ranks, mid-ranks for ties) and its two-sided p-value.

    ``None`` values when either variable is constant (ρ undefined).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return {"rho": None, "p_value": None}
    result = sps.spearmanr(x, y)
    return {"rho": float(result.statistic), "p_value": float(result.pvalue)}


def decile_bins(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Assign each value to a decile 0…9 of its own distribution; returns (bin per value, 11 edges).

    Edges are the 0, 10, …, 100th percentiles (linear interpolation); a value equal to an inner edge
    goes to the upper bin, so tied values always share a bin and some bins may be empty.
    """
    values = np.asarray(values, dtype=np.float64)
    edges = np.quantile(values, np.linspace(0.0, 1.0, 11))
    return np.searchsorted(edges[1:-1], values, side="right"), edges


def failure_rate_by_decile(values: np.ndarray, failed: np.ndarray) -> list[dict[str, float | int]]:
    """Failure rate per decile of ``values`` (non-empty deciles only, numbered 1…10)."""
    failed = np.asarray(failed, dtype=bool)
    if len(failed) == 0:
        return []
    bins, edges = decile_bins(values)
    rows: list[dict[str, float | int]] = []
    for index in range(10):
        members = bins == index
        count = int(members.sum())
        if count == 0:
            continue
        n_failed = int(failed[members].sum())
        rows.append(
            {
                "decile": index + 1,
                "low": float(edges[index]),
                "high": float(edges[index + 1]),
                "n_queries": count,
                "n_failures": n_failed,
                "failure_rate": n_failed / count,
            }
        )
    return rows


def _standardise(column: np.ndarray) -> np.ndarray:
    spread = column.std()
    return (column - column.mean()) / (spread if spread > 0 else 1.0)


def _log_likelihood(features: np.ndarray, outcome: np.ndarray) -> tuple[float, np.ndarray]:
    model = LogisticRegression(C=NEARLY_UNPENALISED_C, max_iter=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model.fit(features, outcome)
    probability = model.predict_proba(features)[:, 1]
    return -float(log_loss(outcome, probability, normalize=False, labels=[False, True])), model.coef_[0]


def likelihood_ratio_test(base: np.ndarray, extra: np.ndarray, outcome: np.ndarray) -> dict[str, Any]:
    """Does ``extra`` predict ``outcome`` beyond the controls ``base``? Logistic regression + LR test.

    Fits logit P(outcome) = β₀ + Σ_c β_c·z(base_c) + β_x·z(extra) and the reduced model without
    ``extra`` (z = standardised; ``base`` is one control (n,) or several (n, p)), then
    LR = 2(ℓ_full − ℓ_reduced) ~ χ²₁ under H₀: β_x = 0.

    Returns:
        ``coef_extra`` / ``coef_base`` (log-odds per standard deviation; coef_base lists one per
        control), ``lr_statistic``, ``p_value`` — ``None`` with a ``reason`` for a single-class outcome.
    """
    outcome = np.asarray(outcome, dtype=bool)
    empty = {"coef_base": None, "coef_extra": None, "lr_statistic": None, "p_value": None, "n": len(outcome)}
    if outcome.all() or not outcome.any():
        return {**empty, "reason": "the outcome has a single class: no regression"}
    controls = np.asarray(base, dtype=np.float64)
    controls = controls[:, None] if controls.ndim == 1 else controls
    base_z = np.column_stack([_standardise(column) for column in controls.T])
    extra_z = _standardise(np.asarray(extra, dtype=np.float64))
    ll_full, coef = _log_likelihood(np.column_stack([base_z, extra_z]), outcome)
    ll_reduced, _ = _log_likelihood(base_z, outcome)
    statistic = max(0.0, 2.0 * (ll_full - ll_reduced))
    return {
        "coef_base": float(coef[0]) if controls.shape[1] == 1 else [float(c) for c in coef[:-1]],
        "coef_extra": float(coef[-1]),
        "lr_statistic": statistic,
        "p_value": float(sps.chi2.sf(statistic, df=1)),
        "n": len(outcome),
        "reason": None,
    }
