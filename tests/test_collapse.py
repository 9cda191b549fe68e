"""SOCM maths: the fast (Gram) provider against the d×d reference, and the definition's properties."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rag_diag.collapse import (
    PairStats,
    all_pairs,
    build_bank,
    fast_all_pairs,
    fast_pairs,
    pair_socm,
    prepare_text,
    reference_pair,
)

TOL = 1e-6


def low_rank_tokens(rng: np.random.Generator, n: int, d: int, rank: int, spread: float) -> np.ndarray:
    """n tokens in R^d: a random offset plus a rank-``rank`` cloud scaled by ``spread``."""
    cloud = rng.standard_normal((n, rank)) @ rng.standard_normal((rank, d)) / np.sqrt(d)
    return rng.standard_normal(d) + spread * cloud


def bank_of(*matrices: np.ndarray, dtype: torch.dtype = torch.float64):
    prepared = [prepare_text(x) for x in matrices]
    return build_bank([p.centred for p in prepared], np.stack([p.mean for p in prepared]), dtype=dtype)


def fast_pair(x1: np.ndarray, x2: np.ndarray) -> PairStats:
    return fast_pairs(bank_of(x1, x2), np.array([0]), np.array([1]))


pair_inputs = st.tuples(
    st.integers(0, 2**32 - 1),
    st.integers(1, 12),
    st.integers(1, 12),
    st.integers(2, 24),
    st.integers(1, 6),
    st.floats(0.05, 3.0),
)


@settings(max_examples=60, deadline=None)
@given(pair_inputs)
def test_fast_equals_reference_on_low_rank_inputs(case):
    seed, n1, n2, d, rank, spread = case
    rng = np.random.default_rng(seed)
    x1 = low_rank_tokens(rng, n1, d, min(rank, d), spread)
    x2 = low_rank_tokens(rng, n2, d, min(rank, d), spread)
    fast, ref = fast_pair(x1, x2), reference_pair(x1, x2)
    for field in ("d_mu", "d_sigma", "socm", "cos"):
        np.testing.assert_allclose(getattr(fast, field), getattr(ref, field), atol=TOL, rtol=0)


@settings(max_examples=40, deadline=None)
@given(pair_inputs)
def test_socm_symmetric_self_zero_and_d_mu_from_cosine(case):
    seed, n1, n2, d, rank, spread = case
    rng = np.random.default_rng(seed)
    x1 = low_rank_tokens(rng, n1, d, min(rank, d), spread)
    x2 = low_rank_tokens(rng, n2, d, min(rank, d), spread)
    bank = bank_of(x1, x2)
    stats = fast_pairs(bank, np.array([0, 1, 0, 1]), np.array([1, 0, 0, 1]))
    assert abs(stats.socm[0] - stats.socm[1]) < 1e-8
    assert np.all(np.abs(stats.socm[2:]) < TOL)
    reference = reference_pair(x1, x2)
    np.testing.assert_allclose(reference.d_mu, (1 - reference.cos) / 2, atol=1e-12)
    np.testing.assert_allclose(stats.d_mu[0], (1 - stats.cos[0]) / 2, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(pair_inputs)
def test_socm_bounded_by_half_the_concentration(case):
    """If both concentrations are ≤ ε then SOCM ≤ d_Σ ≤ ε/2."""
    seed, n1, n2, d, rank, spread = case
    rng = np.random.default_rng(seed)
    x1 = low_rank_tokens(rng, n1, d, min(rank, d), spread)
    x2 = low_rank_tokens(rng, n2, d, min(rank, d), spread)
    epsilon = max(prepare_text(x1).concentration, prepare_text(x2).concentration)
    stats = fast_pair(x1, x2)
    assert stats.socm[0] <= stats.d_sigma[0] + 1e-12
    assert stats.d_sigma[0] <= epsilon / 2 + 1e-12


def test_one_token_text_has_zero_covariance():
    """A one-token text: concentration 0 and d_Σ = tr Σ_other / 4 (BW² against a zero matrix)."""
    rng = np.random.default_rng(0)
    single = rng.standard_normal((1, 16))
    other = low_rank_tokens(rng, 7, 16, 4, 1.0)
    prepared = prepare_text(single)
    assert prepared.concentration == 0.0 and prepared.spread == 0.0
    trace_other = prepare_text(other).concentration
    for stats in (fast_pair(single, other), fast_pair(other, single), reference_pair(single, other)):
        np.testing.assert_allclose(stats.d_sigma, trace_other / 4, atol=1e-12)
    both = fast_pair(single, rng.standard_normal((1, 16)))
    assert both.d_sigma[0] == 0.0 and both.socm[0] == 0.0


def test_paper_jitter_biases_low_rank_pairs_and_default_is_exact():
    rng = np.random.default_rng(1)
    x1, x2 = low_rank_tokens(rng, 5, 64, 4, 1.0), low_rank_tokens(rng, 6, 64, 5, 1.0)
    exact, jittered, fast = reference_pair(x1, x2), reference_pair(x1, x2, paper_jitter=True), fast_pair(x1, x2)
    np.testing.assert_allclose(fast.d_sigma, exact.d_sigma, atol=TOL)
    assert abs(jittered.d_sigma[0] - exact.d_sigma[0]) > 1e-4


def test_fast_all_pairs_matches_pairwise_route():
    rng = np.random.default_rng(2)
    matrices = [low_rank_tokens(rng, int(rng.integers(1, 15)), 20, 6, 1.0) for _ in range(9)]
    bank = bank_of(*matrices)
    first, second, stats = fast_all_pairs(bank, block_rows=30)
    assert len(first) == 36 and np.all(first < second)
    pairwise = fast_pairs(bank, first, second, budget=2000)
    np.testing.assert_allclose(stats.socm, pairwise.socm, atol=1e-9)


def test_fast_equals_reference_on_real_minilm_tokens(tiny_store):
    n = len(tiny_store)
    a, b = np.triu_indices(n, k=1)
    fast = pair_socm(tiny_store, a, b)
    reference = PairStats.concat(
        [reference_pair(tiny_store.tokens(i), tiny_store.tokens(j)) for i, j in zip(a, b, strict=True)]
    )
    for field in ("d_mu", "d_sigma", "socm", "cos"):
        np.testing.assert_allclose(getattr(fast, field), getattr(reference, field), atol=TOL, rtol=0)
    swapped = pair_socm(tiny_store, b, a)
    np.testing.assert_allclose(swapped.socm, fast.socm, atol=1e-9)
    assert np.all(np.abs(pair_socm(tiny_store, a, a).socm) < TOL)


def test_float32_products_stay_close_to_float64(tiny_store):
    a, b = np.triu_indices(len(tiny_store), k=1)
    exact = pair_socm(tiny_store, a, b)
    single = pair_socm(tiny_store, a, b, dtype=torch.float32)
    np.testing.assert_allclose(single.socm, exact.socm, atol=1e-4)


def test_drop_special_changes_the_token_set(tiny_store):
    a, b = np.array([0]), np.array([3])
    kept, dropped = pair_socm(tiny_store, a, b), pair_socm(tiny_store, a, b, drop_special=True)
    expected = reference_pair(tiny_store.tokens(0, drop_special=True), tiny_store.tokens(3, drop_special=True))
    np.testing.assert_allclose(dropped.socm, expected.socm, atol=TOL)
    assert abs(kept.socm[0] - dropped.socm[0]) > 1e-6


def test_all_pairs_sample_is_seeded_and_complete(tiny_store):
    result = all_pairs(tiny_store, sample=5, seed=3)
    again = all_pairs(tiny_store, sample=5, seed=3)
    assert len(result.pairs) == 10
    np.testing.assert_array_equal(result.texts, again.texts)
    assert set(result.doc_a) | set(result.doc_b) == set(result.texts)
    expected = pair_socm(tiny_store, result.doc_a, result.doc_b)
    np.testing.assert_allclose(result.pairs.socm, expected.socm, atol=1e-9)
    concentrations = [prepare_text(tiny_store.tokens(int(i))).concentration for i in result.texts]
    np.testing.assert_allclose(result.text_stats.concentration, concentrations, rtol=1e-12)


def test_pair_socm_rejects_bad_indices(tiny_store):
    from rag_diag.errors import RagDiagError

    with pytest.raises(RagDiagError):
        pair_socm(tiny_store, np.array([0]), np.array([len(tiny_store)]))
