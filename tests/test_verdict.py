"""Expected verdicts on knowledge bases built to produce them.

Each fixture is an in-memory evaluation (per-query rows of ``mean``) and a kNN-style collapse table
whose numbers are chosen so that the rule in :mod:`rag_diag.diagnosis.verdict` must give one label
for one stated reason. The reasoning is worked out by hand above each fixture; the tests then check
the label, the reason (which piece of evidence fired) and the evidence's numbers against that work.

The rule (verdict.py):

- ``adequate``   ⇔ failure rate ≤ 0.10;
- ``unsuitable`` ⇔ failure rate ≥ 0.30 and collapse implicated;
- ``at risk``    otherwise;

collapse implicated ⇔ (binomial p of the high-SOCM failure share against its cosine-matched null
< 0.05) or (collapse-rate AUROC direction "positive" and the likelihood-ratio test beyond cos_nn,
concentration and length has p < 0.05 with a positive coefficient).

Conventions of every fixture: query ``qNN`` has one relevant document ``rNN``; a failing query ranks
its confuser ``cNN`` first and ``rNN`` second; a pair ``(a, b, cos, socm)`` gets d_μ = (1 − cos)/2 and
d_Σ = socm / (1 − d_μ) (so SOCM = (1 − d_μ)·d_Σ holds); a document's collapse rate is the mean SOCM of
the pairs it is in, its ``cos_nn`` the largest cosine among them; every document has concentration 1
and 20 tokens, so the controls of the likelihood-ratio test are constant.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from rag_diag.collapse.table import CollapseTable
from rag_diag.corpora.io import Qrels
from rag_diag.diagnosis.diagnose import diagnose
from rag_diag.diagnosis.verdict import (
    FAILURE_RATE_ADEQUATE,
    FAILURE_RATE_UNSUITABLE,
    HIGH_SOCM_QUANTILE,
    SIGNIFICANCE_LEVEL,
    judge,
)
from rag_diag.errors import RagDiagError
from rag_diag.evaluation.result import PER_QUERY_SCHEMA, EvalResult

MODEL = {"name": "minilm", "weights_sha256": "a" * 64}
CORPUS_SHA = "c" * 64
N_QUERIES = 40

Pair = tuple[str, str, float, float]  # (doc_a, doc_b, cos, socm)


def r(i: int) -> str:
    return f"r{i:02d}"


def c(i: int) -> str:
    return f"c{i:02d}"


def evaluation(n_queries: int, failing: range, model=MODEL, corpus_sha256: str = CORPUS_SHA) -> EvalResult:
    """Per-query rows of ``mean``: query i succeeds (r_i at rank 1) unless i ∈ failing (c_i, then r_i)."""
    rows = []
    for i in range(n_queries):
        failed = i in failing
        rows.append({
            "query_id": f"q{i:02d}", "strategy": "mean", "first_relevant_rank": 2 if failed else 1,
            "first_relevant_id": r(i), "relevant_score": 0.8, "top_doc": c(i) if failed else r(i),
            "top_score": 0.9 if failed else 0.8, "confuser": c(i) if failed else None,
            "confuser_score": 0.9 if failed else None, "n_relevant": 1,
        })
    manifest = {"metrics": {"mean": {"P@1": 1 - len(failing) / n_queries}}, "significance": {}, "k": 10,
                "model": model, "corpus_sha256": corpus_sha256, "n_queries": n_queries, "command": "test"}
    qrels = Qrels({f"q{i:02d}": {r(i): 1} for i in range(n_queries)})
    return EvalResult(manifest, pl.DataFrame(rows, schema=PER_QUERY_SCHEMA), {}, qrels)


def collapse_table(pairs: list[Pair], model=MODEL, corpus_sha256: str = CORPUS_SHA) -> CollapseTable:
    """pairs.parquet / docs.parquet columns of a kNN collapse run, from hand-chosen (cos, socm) pairs."""
    d_mu = [(1 - cos) / 2 for _, _, cos, _ in pairs]
    pair_frame = pl.DataFrame({
        "doc_a": [a for a, _, _, _ in pairs], "doc_b": [b for _, b, _, _ in pairs], "d_mu": d_mu,
        "d_sigma": [socm / (1 - m) for (_, _, _, socm), m in zip(pairs, d_mu, strict=True)],
        "socm": [socm for *_, socm in pairs], "cos": [cos for _, _, cos, _ in pairs],
    })
    member: dict[str, list[tuple[float, str]]] = {}
    for a, b, _, socm in pairs:
        member.setdefault(a, []).append((socm, b))
        member.setdefault(b, []).append((socm, a))
    ids = sorted(member)
    docs = pl.DataFrame({
        "doc_id": ids, "n_tokens": [20] * len(ids), "concentration": [1.0] * len(ids), "trace": [1.0] * len(ids),
        "collapse_mean": [float(np.mean([s for s, _ in member[d]])) for d in ids],
        "collapse_max": [max(s for s, _ in member[d]) for d in ids],
        "top_confuser": [max(member[d])[1] for d in ids],
    })
    summary = {"model": model, "mode": "knn", "k": 2, "n_docs": len(ids), "n_pairs": len(pairs),
               "corpus_sha256": corpus_sha256, "token_store": None, "command": "test"}
    return CollapseTable(summary=summary, docs=docs, pairs=pair_frame)


def binomial_tail(hits: int, n: int, p0: float) -> float:
    """P(X ≥ hits), X ~ Binomial(n, p0), summed by hand (the oracle for scipy's binomtest)."""
    from math import comb

    return sum(comb(n, x) * p0**x * (1 - p0) ** (n - x) for x in range(hits, n + 1))


# --------------------------------------------------------------------------------------------------- adequate
#
# 40 queries, q00–q03 fail: failure rate 4/40 = 0.10 = FAILURE_RATE_ADEQUATE, so "adequate" whatever the
# collapse evidence says — and the evidence here does implicate collapse, to show the rate alone decides:
# the 4 failing relevant documents have collapse rate 0.5 (their one pair, with their confuser), the 36
# others 0.05 (pairs (r04, r05), (r06, r07), … at SOCM 0.05): perfect separation, AUROC 1, every
# bootstrap resample with both classes also 1, CI [1, 1] → "positive"; with constant controls the
# logistic fit on the rate alone gains ~26 log-likelihood units (LR p ≪ 0.05, coefficient > 0).


def adequate_kb() -> tuple[EvalResult, CollapseTable]:
    failing = range(4)
    pairs: list[Pair] = [(r(i), c(i), 0.9, 0.5) for i in failing]
    pairs += [(r(j), r(j + 1), 0.9, 0.05) for j in range(4, N_QUERIES, 2)]
    return evaluation(N_QUERIES, failing), collapse_table(pairs)


def test_adequate_at_the_failure_rate_threshold_despite_collapse_evidence():
    summary = diagnose(*adequate_kb()).summary
    assert summary["n_failures"] == 4 and summary["failure_rate"] == FAILURE_RATE_ADEQUATE
    assert summary["collapse"]["auroc"]["auroc"] == 1.0 and summary["collapse"]["auroc"]["direction"] == "positive"
    assert summary["verdict"]["collapse_implicated"] is True
    assert summary["verdict"]["label"] == "adequate"
    assert "rare enough" in summary["verdict"]["summary"]


# --------------------------------------------------------------------------------------------------- unsuitable
#
# 40 queries, q00–q11 fail: rate 12/40 = 0.30 = FAILURE_RATE_UNSUITABLE (the boundary is inclusive).
# Pairs, all at cosine 0.9: the 12 failure pairs (r_i, c_i) with SOCM 0.5, and 14 pairs (r12, r13),
# (r14, r15), … (r38, r39) with SOCM 0.05 — 26 pairs.
# - high-SOCM threshold = 0.75-quantile of the 26 SOCMs: position 0.75·25 = 18.75 in the sorted list
#   (14 × 0.05 at positions 0–13, 12 × 0.5 at 14–25) → 0.5; so exactly the 12 failure pairs are high.
# - one cosine value → one cosine bin → cosine-matched null share = 12/26; all 12 failures are high:
#   p = P(X ≥ 12 | Binomial(12, 12/26)) = (12/26)^12 ≈ 9.2e-5 < 0.05 → collapse implicated.
# - collapse rates: failing relevant documents 0.5, the others 0.05 → AUROC 1, CI [1, 1], "positive".


UNSUITABLE_FAILING = range(12)


def unsuitable_pairs() -> list[Pair]:
    pairs: list[Pair] = [(r(i), c(i), 0.9, 0.5) for i in UNSUITABLE_FAILING]
    return pairs + [(r(j), r(j + 1), 0.9, 0.05) for j in range(12, N_QUERIES, 2)]


def unsuitable_kb() -> tuple[EvalResult, CollapseTable]:
    return evaluation(N_QUERIES, UNSUITABLE_FAILING), collapse_table(unsuitable_pairs())


def test_unsuitable_when_failing_pairs_collapse_beyond_their_cosine_matched_null():
    diagnosis = diagnose(*unsuitable_kb())
    summary = diagnosis.summary
    assert summary["n_failures"] == 12 and summary["failure_rate"] == FAILURE_RATE_UNSUITABLE
    assert summary["high_socm_threshold"]["value"] == 0.5
    null = summary["high_socm_null"]
    assert (null["n"], null["n_high"]) == (12, 12)
    # the null share is a mean of equal bin rates (≤ 1 ulp of rounding); the tail is a 12-term sum
    assert null["null_share"] == pytest.approx(12 / 26, rel=1e-12)
    # scipy's exact binomial tail vs (12/26)^12 summed by hand: both ~1e-16 relative rounding
    assert null["p_value"] == pytest.approx(binomial_tail(12, 12, 12 / 26), rel=1e-9)
    assert null["p_value"] < SIGNIFICANCE_LEVEL
    assert diagnosis.failures["high_socm"].all()
    auroc = summary["collapse"]["auroc"]
    assert (auroc["auroc"], auroc["ci_low"], auroc["ci_high"], auroc["direction"]) == (1.0, 1.0, 1.0, "positive")
    assert summary["verdict"]["collapse_implicated"] is True
    assert summary["verdict"]["label"] == "unsuitable"
    assert "second-order" in summary["verdict"]["summary"]


def test_unsuitable_needs_the_failure_rate_too():
    """Same collapse evidence, one failure fewer (11/40 = 0.275 < 0.30): at risk, not unsuitable."""
    summary = diagnose(evaluation(N_QUERIES, range(11)), collapse_table(unsuitable_pairs())).summary
    assert summary["failure_rate"] == 11 / 40 and summary["high_socm_null"]["p_value"] < SIGNIFICANCE_LEVEL
    assert summary["verdict"]["label"] == "at risk"


# --------------------------------------------------------------------------------------------------- at risk
#
# 40 queries, q00–q15 fail: rate 16/40 = 0.40 ≥ 0.30, so only the missing collapse evidence keeps mean
# pooling from "unsuitable". Every failure pair is a near-duplicate (cosine 0.99) with SOCM 0.5 — all 16
# failures are high-SOCM — but so is every near-duplicate pair of the corpus: SOCM carries (1 − d_μ)
# and near-identical pairs score high whatever the cause.
# - cosine 0.99, SOCM 0.5: (r_i, c_i) for i < 16 and (r16, r17), (r18, r19), … (r38, r39): 16 + 12 = 28;
# - cosine 0.90, SOCM 0.05: (r_k, r_{k+20}) for k < 20 and (c00, c01), … (c14, c15): 20 + 8 = 28.
# - threshold: 56 SOCMs, position 0.75·55 = 41.25, sorted 28 × 0.05 then 28 × 0.5 → 0.5: the 28
#   near-duplicate pairs are the high ones. A naive null (share of high pairs overall, 1/2) would give
#   p = 0.5^16 ≈ 1.5e-5 and implicate collapse.
# - cosine bins: quantiles at positions 0, 5.5, …, 55 of 28 × 0.90 then 28 × 0.99; position 27.5 falls
#   between them (0.945), so the unique edges are [0.90, 0.945, 0.99]: the 0.90 pairs form bin 0, the 0.99
#   pairs bin 1 (the top edge is folded into the last bin). The failures sit in bin 1, where 28 of 28
#   pairs are high: null share 1 (clipped to 1 − 1e-12), p = P(X ≥ 16 | Binomial(16, ≈1)) ≈ 1.
# - collapse rates: every relevant document is in one 0.99 pair and one 0.90 pair → 0.275 for all;
#   AUROC 0.5 with every resample 0.5 → CI [0.5, 0.5], direction "none"; the rate is constant, so the
#   likelihood-ratio statistic is 0 and p = 1. Nothing implicates collapse → "at risk".


def at_risk_kb() -> tuple[EvalResult, CollapseTable]:
    failing = range(16)
    pairs: list[Pair] = [(r(i), c(i), 0.99, 0.5) for i in failing]
    pairs += [(r(j), r(j + 1), 0.99, 0.5) for j in range(16, N_QUERIES, 2)]
    pairs += [(r(k), r(k + 20), 0.90, 0.05) for k in range(20)]
    pairs += [(c(i), c(i + 1), 0.90, 0.05) for i in range(0, 16, 2)]
    return evaluation(N_QUERIES, failing), collapse_table(pairs)


def test_at_risk_when_failures_are_frequent_but_collapse_is_no_more_than_their_cosine_explains():
    summary = diagnose(*at_risk_kb()).summary
    assert summary["n_failures"] == 16 and summary["failure_rate"] == 0.4
    null = summary["high_socm_null"]
    assert (null["n"], null["n_high"]) == (16, 16)  # every failure is high-SOCM …
    # … and so is every pair at their cosine: the null share is 1, clipped to 1 − 1e-12 by the library
    assert null["null_share"] == pytest.approx(1.0, abs=1e-11)
    assert null["p_value"] > 0.99  # P(X ≥ 16 | n = 16, p0 = 1 − 1e-12) = (1 − 1e-12)^16 ≈ 1 − 1.6e-11
    assert binomial_tail(16, 16, 0.5) < SIGNIFICANCE_LEVEL  # what an unmatched null would have said
    auroc = summary["collapse"]["auroc"]
    assert (auroc["auroc"], auroc["direction"]) == (0.5, "none")
    assert summary["beyond_controls"]["collapse_adds_information"] is False
    assert summary["verdict"]["collapse_implicated"] is False
    assert summary["verdict"]["label"] == "at risk"
    assert "not explained by second-order collapse" in summary["verdict"]["summary"]


# --------------------------------------------------------------------------------------------------- inverse
#
# 40 queries, q00–q15 fail (rate 0.40). The failing relevant documents coincide with their confusers in
# both moments: (r_i, c_i) at cosine 0.99 with SOCM 0.02; the succeeding ones have pairs (r16, r17), …,
# (r38, r39) at cosine 0.90 with SOCM 0.5 (12 pairs; 28 in all).
# - threshold: position 0.75·27 = 20.25 in 16 × 0.02 then 12 × 0.5 → 0.5: no failure pair is high,
#   n_high = 0, binomial p = P(X ≥ 0) = 1.
# - collapse rates: failing 0.02 < succeeding 0.5 for every pair of queries → AUROC 0, every resample 0,
#   CI [0, 0] → direction "inverse"; the AUROC route needs "positive", so collapse is not implicated.
# - label "at risk", and the summary says the failures go with *low* collapse.


def inverse_kb() -> tuple[EvalResult, CollapseTable]:
    failing = range(16)
    pairs: list[Pair] = [(r(i), c(i), 0.99, 0.02) for i in failing]
    pairs += [(r(j), r(j + 1), 0.90, 0.5) for j in range(16, N_QUERIES, 2)]
    return evaluation(N_QUERIES, failing), collapse_table(pairs)


def test_inverse_association_is_named_as_such():
    summary = diagnose(*inverse_kb()).summary
    auroc = summary["collapse"]["auroc"]
    assert summary["collapse"]["auroc"]["direction"] == "inverse"
    assert (auroc["auroc"], auroc["ci_low"], auroc["ci_high"]) == (0.0, 0.0, 0.0)
    assert summary["high_socm_null"]["n_high"] == 0 and summary["high_socm_null"]["p_value"] == 1.0
    verdict = summary["verdict"]
    assert verdict["collapse_implicated"] is False and verdict["label"] == "at risk"
    assert "go with low collapse" in verdict["summary"]
    assert any("inverse association" in line for line in verdict["evidence"])


# ---------------------------------------------------------------------------------------------- the rule's constants


def test_thresholds_are_the_documented_ones():
    assert (FAILURE_RATE_ADEQUATE, FAILURE_RATE_UNSUITABLE, HIGH_SOCM_QUANTILE, SIGNIFICANCE_LEVEL) == (
        0.10, 0.30, 0.75, 0.05)
    assert judge(0.10, True) == "adequate" and judge(0.30, True) == "unsuitable"
    assert judge(0.30, False) == "at risk" and judge(0.2999, True) == "at risk"


# --------------------------------------------------------------------------------------------------- refusals


def test_different_corpora_are_refused():
    other = collapse_table(unsuitable_pairs(), corpus_sha256="d" * 64)
    with pytest.raises(RagDiagError, match="different corpora"):
        diagnose(evaluation(N_QUERIES, UNSUITABLE_FAILING), other)


def test_different_models_are_refused():
    other = collapse_table(unsuitable_pairs(), model={"name": "minilm", "weights_sha256": "b" * 64})
    with pytest.raises(RagDiagError, match="same model"):
        diagnose(evaluation(N_QUERIES, UNSUITABLE_FAILING), other)
    renamed = collapse_table(unsuitable_pairs(), model={"name": "mpnet"})
    with pytest.raises(RagDiagError, match="same model"):
        diagnose(evaluation(N_QUERIES, UNSUITABLE_FAILING, model={"name": "minilm"}), renamed)


def test_same_inputs_are_accepted():
    """The refusals above are about the differing field, not about the fixture."""
    assert diagnose(evaluation(N_QUERIES, UNSUITABLE_FAILING), collapse_table(unsuitable_pairs())).summary


def test_a_missing_collapse_index_leaves_the_row_out_of_its_auroc():
    """Rows without a collapse index are dropped from that AUROC, not scored as index 0 (which, on the failing
    rows here, would make it 0.0)."""
    from sklearn.metrics import roc_auc_score

    from rag_diag.diagnosis.verdict import corpus_statistics

    failed = [True, True, False, False, True, False, False, True]
    index = [None, None, 0.2, 0.4, 0.9, 0.1, 0.3, 0.7]
    queries = pl.DataFrame({
        "failed": failed, "relevant_id": [f"d{i}" for i in range(8)], "relevant_collapse_index": index,
        "relevant_collapse_mean": np.linspace(0.1, 0.8, 8), "relevant_cos_nn": np.linspace(0.9, 0.2, 8),
        "relevant_concentration": np.full(8, 1.0),
    }, schema_overrides={"relevant_collapse_index": pl.Float64})
    summary = corpus_statistics(queries, {})
    kept = [i for i, value in enumerate(index) if value is not None]
    assert summary["n_used"] == 8 and summary["collapse_index"]["n_used"] == len(kept)
    expected = roc_auc_score([failed[i] for i in kept], [index[i] for i in kept])
    assert summary["collapse_index"]["auroc"]["auroc"] == pytest.approx(expected, abs=1e-12)  # same ranks: exact
