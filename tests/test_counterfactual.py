"""Counterfactual fixes / breaks and the exact McNemar test on hand examples."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from rag_diag.evaluation.counterfactual import (
    FLIP_SCHEMA,
    counterfactual_frame,
    counterfactuals,
    flip_masks,
    mcnemar_exact,
    success_from_metric,
)

QUERIES = ["q0", "q1", "q2", "q3", "q4", "q5"]


def test_mcnemar_hand_values():
    # 6 fixes, 0 breaks: P(X = 6) + P(X = 0) = 2 / 2^6.
    assert mcnemar_exact(6, 0) == pytest.approx(2 / 64)
    # 8 vs 1 of 9: 2 · (C(9,0) + C(9,1)) / 2^9 = 2 · 10 / 512.
    assert mcnemar_exact(8, 1) == pytest.approx(20 / 512)
    # 2 vs 1 of 3: every outcome is at most as likely as P(2) = 3/8 → p = 1.
    assert mcnemar_exact(2, 1) == pytest.approx(1.0)
    assert mcnemar_exact(0, 0) == 1.0


def test_fixes_breaks_net_on_hand_example():
    baseline = np.array([True, False, False, True, False, True])
    better = np.array([True, True, True, False, False, True])  # fixes q1, q2; breaks q3
    same = baseline.copy()
    rows = counterfactuals({"mean": baseline, "better": better, "same": same}, "mean", QUERIES)
    assert [row.candidate for row in rows] == ["better", "same"]
    first = rows[0]
    assert (first.fixes, first.breaks, first.net) == (2, 1, 1)
    assert (first.both_succeed, first.both_fail, first.n_queries) == (2, 1, 6)
    assert first.fixed_queries == ("q1", "q2") and first.broken_queries == ("q3",)
    assert first.p_value == pytest.approx(1.0) and first.corrected_p_value == pytest.approx(1.0)
    assert rows[1].fixes == rows[1].breaks == 0 and rows[1].p_value == 1.0


def test_holm_over_candidates_and_frame():
    baseline = np.zeros(6, dtype=bool)
    rows = counterfactuals({"mean": baseline, "all": np.ones(6, dtype=bool), "one": np.eye(6, dtype=bool)[0]},
                           "mean", QUERIES)
    assert rows[0].p_value == pytest.approx(2 / 64) and rows[0].corrected_p_value == pytest.approx(4 / 64)
    assert rows[1].p_value == 1.0 and rows[1].corrected_p_value == 1.0
    frame = counterfactual_frame(rows)
    assert frame.schema == pl.Schema(FLIP_SCHEMA)
    assert frame["net"].to_list() == [6, 1] and frame["fixed_queries"].to_list()[1] == ["q0"]


def test_success_from_metric_and_errors():
    per_query = {"mean": {"P@1": np.array([1.0, 0.0])}, "x": {"P@1": np.array([0.0, 1.0])}}
    success = success_from_metric(per_query)
    assert success["mean"].tolist() == [True, False] and success["x"].tolist() == [False, True]
    with pytest.raises(ValueError):
        flip_masks(np.ones(2), np.ones(3))
    with pytest.raises(KeyError):
        counterfactuals(success, "missing", ["a", "b"])
    with pytest.raises(ValueError):
        counterfactuals(success, "mean", ["a"])
