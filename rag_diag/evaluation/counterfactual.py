"""Counterfactual flips: which queries a candidate fixes or breaks relative to a baseline, with McNemar's test.

On the same queries, each system either succeeds or fails on each query (e.g. P@1 = 1). Against a
baseline b, a candidate c has

    fixes  F = #{q : ¬b(q) ∧ c(q)}      (baseline failed, candidate succeeds)
    breaks B = #{q : b(q) ∧ ¬c(q)}      (baseline succeeded, candidate fails)
    net      = F − B                    (= Q · (success rate of c − success rate of b))

Only the discordant queries carry information about a difference. The exact McNemar test is the
two-sided binomial test of F successes in F + B trials with probability ½
(p = Σ_{k : P(k) ≤ P(F)} C(F+B, k) / 2^(F+B), :func:`scipy.stats.binomtest`); with no discordant
query p = 1. The p-values of the candidates are Holm-corrected together
(:func:`rag_diag.evaluation.significance.holm`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
import polars as pl
from scipy import stats

from rag_diag.evaluation.significance import holm


@dataclass(frozen=True)
class FlipRow:
    """One candidate against the baseline: fixes, breaks, net, McNemar p-values and the flipped queries."""

    candidate: str
    baseline: str
    n_queries: int
    fixes: int
    breaks: int
    both_succeed: int
    both_fail: int
    p_value: float
    corrected_p_value: float
    fixed_queries: tuple[str, ...]
    broken_queries: tuple[str, ...]

    @property
    def net(self) -> int:
        """Fixes − breaks."""
        return self.fixes - self.breaks


FLIP_SCHEMA: dict[str, pl.DataType] = {
    "candidate": pl.String(),
    "baseline": pl.String(),
    "n_queries": pl.Int64(),
    "fixes": pl.Int64(),
    "breaks": pl.Int64(),
    "net": pl.Int64(),
    "both_succeed": pl.Int64(),
    "both_fail": pl.Int64(),
    "p_value": pl.Float64(),
    "corrected_p_value": pl.Float64(),
    "fixed_queries": pl.List(pl.String),
    "broken_queries": pl.List(pl.String),
}


def mcnemar_exact(fixes: int, breaks: int) -> float:
    """Exact two-sided McNemar p: binomial test of ``fixes`` in ``fixes + breaks`` trials at ½; 1 if none."""
    discordant = fixes + breaks
    if discordant == 0:
        return 1.0
    return float(stats.binomtest(fixes, discordant, 0.5, alternative="two-sided").pvalue)


def success_from_metric(
    per_query: Mapping[str, Mapping[str, np.ndarray]], metric: str = "P@1", threshold: float = 1.0
) -> dict[str, np.ndarray]:
    """Per-query success of every system: ``metric(q) ≥ threshold`` (default P@1 = 1).

    Args:
        per_query: {system: {metric: per-query values}}, e.g. from ``ranx_per_query``.
        metric: the metric that defines success.
        threshold: the smallest value that counts as a success.
    """
    return {name: np.asarray(values[metric]) >= threshold for name, values in per_query.items()}


def flip_masks(candidate: np.ndarray, baseline: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fixed, broken) boolean masks: ¬b ∧ c and b ∧ ¬c."""
    cand = np.asarray(candidate, dtype=bool)
    base = np.asarray(baseline, dtype=bool)
    if cand.shape != base.shape:
        raise ValueError(f"success arrays differ in shape: {cand.shape} vs {base.shape}")
    return ~base & cand, base & ~cand


def _row(name: str, baseline: str, success: Mapping[str, np.ndarray], query_ids: Sequence[str]) -> FlipRow:
    base = np.asarray(success[baseline], dtype=bool)
    cand = np.asarray(success[name], dtype=bool)
    if len(query_ids) != len(base):
        raise ValueError(f"{len(query_ids)} query ids for {len(base)} per-query values")
    fixed, broken = flip_masks(cand, base)
    fixes, breaks = int(fixed.sum()), int(broken.sum())
    return FlipRow(
        candidate=name,
        baseline=baseline,
        n_queries=len(base),
        fixes=fixes,
        breaks=breaks,
        both_succeed=int((base & cand).sum()),
        both_fail=int((~base & ~cand).sum()),
        p_value=mcnemar_exact(fixes, breaks),
        corrected_p_value=1.0,
        fixed_queries=tuple(query_ids[int(i)] for i in np.flatnonzero(fixed)),
        broken_queries=tuple(query_ids[int(i)] for i in np.flatnonzero(broken)),
    )


def counterfactuals(success: Mapping[str, np.ndarray], baseline: str, query_ids: Sequence[str]) -> list[FlipRow]:
    """One :class:`FlipRow` per candidate (every system but ``baseline``), Holm-corrected over candidates.

    Args:
        success: {system: per-query success booleans}, all in the order of ``query_ids``.
        baseline: the system the others are compared with.
        query_ids: the queries, naming the fixed and broken ones.
    """
    if baseline not in success:
        raise KeyError(f"baseline '{baseline}' is not among the systems {sorted(success)}")
    rows = [_row(name, baseline, success, query_ids) for name in success if name != baseline]
    corrected = holm([row.p_value for row in rows])
    return [replace(row, corrected_p_value=adjusted) for row, adjusted in zip(rows, corrected, strict=True)]


def counterfactual_frame(rows: Sequence[FlipRow]) -> pl.DataFrame:
    """The rows as a polars DataFrame (columns of :data:`FLIP_SCHEMA`, flipped queries as lists)."""
    records = [
        {
            "candidate": row.candidate,
            "baseline": row.baseline,
            "n_queries": row.n_queries,
            "fixes": row.fixes,
            "breaks": row.breaks,
            "net": row.net,
            "both_succeed": row.both_succeed,
            "both_fail": row.both_fail,
            "p_value": row.p_value,
            "corrected_p_value": row.corrected_p_value,
            "fixed_queries": list(row.fixed_queries),
            "broken_queries": list(row.broken_queries),
        }
        for row in rows
    ]
    return pl.DataFrame(records, schema=FLIP_SCHEMA)
