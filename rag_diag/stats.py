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
    def ci_excludes_half(self) -> bool:
        """True when the whole confidence interval lies above 0.5 (a better-than-chance predictor)."""
        return self.ci_low is not None and self.ci_low > 0.5

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ci_excludes_half": self.ci_excludes_half}


def _mann_whitney_auc(positive: np.ndarray, negative: np.ndarray, axis: int = -1) -> np.ndarray:
    """AUC = (R₊ − n₊(n₊+1)/2) / (n₊ n₋), R₊ = sum of the positives' mid-ranks in the pooled sample."""
    pooled = np.concatenate([positive, negative], axis=axis)
    ranks = sps.rankdata(pooled, axis=axis)
    n_pos = positive.shape[axis]
    n_neg = negative.shape[axis]
    rank_sum = np.take(ranks, np.arange(n_pos), axis=axis).sum(axis=axis)
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def auroc_with_ci(
    scores: np.ndarray,
    outcome: np.ndarray,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
    confidence: float = 0.95,
) -> AurocResult:
    """AUROC of ``scores`` for ``outcome`` (bool) with a stratified percentile-bootstrap CI.

    Positives and negatives are resampled separately (scipy's independent-sample bootstrap), so every
    resample keeps both classes and the class balance of the data.
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
    """Does ``extra`` predict ``outcome`` beyond ``base``? Logistic regression + likelihood-ratio test.

    Fits logit P(outcome) = β₀ + β₁·z(base) + β₂·z(extra) and the reduced model without ``extra``
    (z = standardised), then LR = 2(ℓ_full − ℓ_reduced) ~ χ²₁ under H₀: β₂ = 0.

    Returns:
        ``coef_extra`` / ``coef_base`` (log-odds per standard deviation), ``lr_statistic``, ``p_value``
        — all ``None`` with a ``reason`` when the outcome has a single class.
    """
    outcome = np.asarray(outcome, dtype=bool)
    empty = {"coef_base": None, "coef_extra": None, "lr_statistic": None, "p_value": None, "n": len(outcome)}
    if outcome.all() or not outcome.any():
        return {**empty, "reason": "the outcome has a single class: no regression"}
    base_z = _standardise(np.asarray(base, dtype=np.float64))
    extra_z = _standardise(np.asarray(extra, dtype=np.float64))
    ll_full, coef = _log_likelihood(np.column_stack([base_z, extra_z]), outcome)
    ll_reduced, _ = _log_likelihood(base_z[:, None], outcome)
    statistic = max(0.0, 2.0 * (ll_full - ll_reduced))
    return {
        "coef_base": float(coef[0]),
        "coef_extra": float(coef[1]),
        "lr_statistic": statistic,
        "p_value": float(sps.chi2.sf(statistic, df=1)),
        "n": len(outcome),
        "reason": None,
    }
