"""Lexical + dense fusion against hand-computed fused rankings and against ranx.fuse."""

from __future__ import annotations

import pytest

from rag_diag.errors import RagDiagError
from rag_diag.retrieval.fusion import fuse_runs

LEXICAL = {"q1": {"a": 10.0, "b": 6.0, "c": 2.0}}
DENSE = {"q1": {"b": 0.9, "d": 0.8, "a": 0.5}, "q2": {"x": 2.0, "y": 1.0}}


def test_wsum_hand_computed():
    # min-max, q1: lexical a 1, b (6−2)/8 = 0.5, c 0; dense b 1, d (0.8−0.5)/0.4 = 0.75, a 0.
    # w = 0.3: a 0.3, b 0.15 + 0.7 = 0.85, c 0, d 0.7 · 0.75 = 0.525 → b, d, a, c.
    fused = fuse_runs(LEXICAL, DENSE, "wsum", weight=0.3)
    assert list(fused["q1"]) == ["b", "d", "a", "c"]
    assert fused["q1"] == pytest.approx({"b": 0.85, "d": 0.525, "a": 0.3, "c": 0.0})
    # q2 has no lexical documents: x 0.7 · 1, y 0.7 · 0.
    assert fused["q2"] == pytest.approx({"x": 0.7, "y": 0.0})
    # w = 0.8: a 0.8, b 0.4 + 0.2 = 0.6, d 0.2 · 0.75 = 0.15, c 0 → a, b, d, c.
    heavy = fuse_runs(LEXICAL, DENSE, "wsum", weight=0.8)
    assert list(heavy["q1"]) == ["a", "b", "d", "c"]
    assert heavy["q1"] == pytest.approx({"a": 0.8, "b": 0.6, "d": 0.15, "c": 0.0})


def test_rrf_hand_computed():
    # ranks: lexical a 1, b 2, c 3; dense b 1, d 2, a 3.
    # b 1/62 + 1/61 > a 1/61 + 1/63 > d 1/62 > c 1/63.
    fused = fuse_runs(LEXICAL, DENSE, "rrf", rrf_k=60)
    assert list(fused["q1"]) == ["b", "a", "d", "c"]
    assert fused["q1"] == pytest.approx({"b": 1 / 62 + 1 / 61, "a": 1 / 61 + 1 / 63, "d": 1 / 62, "c": 1 / 63})
    assert fused["q2"] == pytest.approx({"x": 1 / 61, "y": 1 / 62})


def test_weight_endpoints_and_depth():
    assert list(fuse_runs(LEXICAL, DENSE, "wsum", 0.0, depth=2)["q1"]) == ["b", "d"]  # the dense order
    assert list(fuse_runs(LEXICAL, DENSE, "wsum", 1.0, depth=2)["q1"]) == ["a", "b"]  # the lexical order


def test_errors():
    with pytest.raises(RagDiagError):
        fuse_runs(LEXICAL, DENSE, "combmnz")
    with pytest.raises(RagDiagError):
        fuse_runs(LEXICAL, DENSE, weight=1.5)
    with pytest.raises(RagDiagError):
        fuse_runs({"q1": {}}, DENSE)


@pytest.mark.filterwarnings("ignore:unsafe cast")
@pytest.mark.parametrize("method", ["wsum", "rrf"])
def test_fusion_equals_ranx_fuse(method):
    """Random runs without ties: the fused scores equal ranx.fuse's (an independent implementation)."""
    import numpy as np
    from ranx import Run as RanxRun
    from ranx import fuse

    rng = np.random.default_rng(7)
    docs = [f"d{i}" for i in range(40)]
    queries = [f"q{i}" for i in range(12)]

    def random_run() -> dict[str, dict[str, float]]:
        return {q: {d: float(rng.random()) for d in rng.choice(docs, int(rng.integers(2, 25)), replace=False)}
                for q in queries}

    lexical, dense = random_run(), random_run()
    ours = fuse_runs(lexical, dense, method, weight=0.35)
    runs = [RanxRun(lexical, name="lexical"), RanxRun(dense, name="dense")]
    if method == "wsum":
        theirs = fuse(runs, norm="min-max", method="wsum", params={"weights": [0.35, 0.65]}).to_dict()
    else:
        theirs = fuse(runs, norm=None, method="rrf", params={"k": 60}).to_dict()
    for query_id in queries:
        assert ours[query_id] == pytest.approx(theirs[query_id], abs=1e-12)
        assert list(ours[query_id]) == sorted(theirs[query_id], key=lambda d: (-theirs[query_id][d], d))
