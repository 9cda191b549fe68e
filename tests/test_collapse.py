"""SOCM maths: the fast (Gram) provider and the d×d reference against oracles written here.

Two oracles share no code with :mod:`rag_diag.collapse.socm` (not even ``prepare_text``):

- :func:`oracle_pair` follows science.md §1–2 literally in float64: μ, the ‖μ‖ normalisation, the
  1/n covariance, d_μ = ‖μ1 − μ2‖²/4, BW² with ``scipy.linalg.sqrtm`` (or, where a tight check is
  wanted, the nuclear norm by ``scipy.linalg.svdvals``), d_Σ = BW²/4, SOCM = (1 − d_μ)·d_Σ;
- :func:`diagonal_closed_form`: texts built from Hadamard columns have exactly diagonal covariances,
  which commute, so BW² = Σ_i (√a_i − √b_i)² with no matrix function at all.

Every tolerance comes from an error bound (see :func:`gram_atol`, :func:`svd_oracle_atol`,
:func:`sqrtm_oracle_atol`): float64 eps ≈ 2.2e-16, float32 eps ≈ 1.2e-7, and the square roots of
(near-)null eigenvalues, each worth up to √(c·eps)·scale, never a bare 1e-9.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import hadamard, sqrtm, svdvals

from rag_diag.collapse.allpairs import all_pairs, fast_all_pairs
from rag_diag.collapse.socm import (
    PairStats,
    build_bank,
    fast_pairs,
    load_bank,
    pair_groups,
    pair_socm,
    prepare_text,
    reference_pair,
)
from rag_diag.errors import RagDiagError
from rag_diag.tokens.store import TokenStore

EPS64 = float(np.finfo(np.float64).eps)  # 2.2e-16
EPS32 = float(np.finfo(np.float32).eps)  # 1.2e-7
FIELDS = ("d_mu", "d_sigma", "socm", "cos")

# ---------------------------------------------------------------------------------------------- oracles


@dataclass(frozen=True)
class Oracle:
    """One pair by the definition: the four statistics plus the normalised traces (for tolerances)."""

    d_mu: float
    d_sigma: float
    socm: float
    cos: float
    trace_a: float
    trace_b: float


def oracle_moments(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unit mean, normalised centred rows (X − μ)/(‖μ‖·√n), normalised 1/n covariance), float64."""
    x = np.array(tokens, dtype=np.float64)
    n = x.shape[0]
    mu = x.sum(axis=0) / n
    norm = math.sqrt(float(mu @ mu))
    unit = x / norm
    unit_mean = mu / norm
    deviations = unit - unit_mean
    covariance = deviations.T @ deviations / n
    return unit_mean, deviations / math.sqrt(n), covariance


def oracle_concentration(tokens: np.ndarray) -> float:
    """S(X)/‖μ(X)‖² on the raw states = tr of the normalised covariance."""
    return float(np.trace(oracle_moments(tokens)[2]))


def oracle_pair(x1: np.ndarray, x2: np.ndarray, method: str = "sqrtm") -> Oracle:
    """science.md §2 in float64: ``sqrtm`` takes the two d×d square roots; ``svd`` takes the cross term as
    the nuclear norm ‖A Bᵀ‖_* by ``svdvals`` (no squaring, so no √-amplified rounding)."""
    mu1, rows1, cov1 = oracle_moments(x1)
    mu2, rows2, cov2 = oracle_moments(x2)
    trace1, trace2 = float(np.trace(cov1)), float(np.trace(cov2))
    if method == "sqrtm":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # singular input: sqrtm may warn; its error is bounded below
            root = np.real(sqrtm(cov1))
            cross = float(np.real(np.trace(sqrtm(root @ cov2 @ root))))
    else:  # tr((Σ1^½ Σ2 Σ1^½)^½) = ‖A Bᵀ‖_* with Σ1 = AᵀA, Σ2 = BᵀB (science.md §2)
        cross = float(svdvals(rows1 @ rows2.T).sum()) if min(len(rows1), len(rows2)) else 0.0
    bw2 = trace1 + trace2 - 2.0 * cross
    d_mu = float(((mu1 - mu2) ** 2).sum()) / 4.0
    d_sigma = bw2 / 4.0
    return Oracle(d_mu, d_sigma, (1.0 - d_mu) * d_sigma, float(mu1 @ mu2), trace1, trace2)


# ---------------------------------------------------------------------------------------------- error bounds


def gram_atol(width: int, dim: int, trace_a: float, trace_b: float) -> float:
    """Bound on the error of d_Σ (and of SOCM, d_μ, cos) from ONE evaluation by the fast Gram route.

    C = A Bᵀ is at most ``width``×``width`` (the longest text, padding included); with
    s = √(trA·trB) ≥ ‖A‖_F‖B‖_F ≥ ‖C‖₂:
    - rounding of the d-term products moves each singular value by ≤ ‖ΔC‖₂ ≤ d·eps·s (Weyl);
    - ``eigvalsh`` of the Gram CCᵀ is backward stable: each eigenvalue moves by ≤ width·eps·s²; a
      (near-)zero one (centring makes rank ≤ n − 1; padding adds exact zeros) becomes, after √,
      up to √(width·eps)·s ≈ 1.5e-8·√width·s — and there are at most ``width`` of them;
    - d_Σ = (trA + trB − 2‖C‖_*)/4 halves the nuclear-norm error; the traces (≤ width·d terms) add
      ≤ width·d·eps·(trA + trB); d_μ and cos (a d-term dot product of unit means) add :func:`mean_atol`.
    Two routes compared with each other need the sum of their bounds.
    """
    s = math.sqrt(max(trace_a * trace_b, 0.0))
    nuclear = width * (math.sqrt(width * EPS64) + dim * EPS64) * s
    return 0.5 * nuclear + width * dim * EPS64 * (trace_a + trace_b) + mean_atol(width, dim, trace_a + trace_b)


def mean_atol(width: int, dim: int, traces: float) -> float:
    """Error of cos and d_μ: a d-term dot product of unit vectors (≤ (d + 4)·eps) plus the mean itself,
    an n-term sum whose error relative to ‖μ‖ is ≤ n·eps·max‖x_j‖/‖μ‖ ≤ n·eps·(1 + √(n·tr)) (since
    max‖x_j − μ‖² ≤ n·S(X) = n·tr·‖μ‖²), twice (two texts), twice again (cos is bilinear)."""
    return (dim + 4) * EPS64 + 4 * width * EPS64 * (1 + math.sqrt(width * max(traces, 0.0)))


def svd_oracle_atol(width: int, dim: int, trace_a: float, trace_b: float) -> float:
    """The svd oracle's own error: svdvals is backward stable on C itself (no squaring, so no √):
    each singular value is off by ≤ (width + d)·eps·s."""
    s = math.sqrt(max(trace_a * trace_b, 0.0))
    return (0.5 * width * (width + dim) * EPS64 * s + width * dim * EPS64 * (trace_a + trace_b)
            + mean_atol(width, dim, trace_a + trace_b))


def sqrtm_oracle_atol(dim: int, trace_a: float, trace_b: float) -> float:
    """The sqrtm oracle's own error (also bounds the library's d×d eigh reference).

    A d×d PSD matrix S is square-rooted with backward error ≤ d·eps·‖S‖; each of its (up to d)
    near-null eigenvalues (rank ≤ n − 1 < d in the usual case) then contributes ≤ √(d·eps·‖S‖) to
    tr S^½. The inner matrix Σ1^½Σ2Σ1^½ carries the solver error plus the square of Σ1^½'s error,
    ≤ 2·d·eps·trA·trB per null direction; d_Σ halves the cross-term error.
    """
    s = math.sqrt(max(trace_a * trace_b, 0.0))
    return 0.5 * dim * math.sqrt(2 * dim * EPS64) * s + dim * dim * EPS64 * (trace_a + trace_b) + (dim + 4) * EPS64


def assert_pair_close(stats: PairStats, index: int, oracle: Oracle, atol: float) -> None:
    for field in FIELDS:
        got, want = float(getattr(stats, field)[index]), getattr(oracle, field)
        gap = abs(got - want)
        assert gap <= atol, f"{field}: {got!r} vs oracle {want!r} (|Δ| = {gap:.3g} > {atol:.3g})"


# ---------------------------------------------------------------------------------------------- inputs


def low_rank_tokens(rng: np.random.Generator, n: int, d: int, rank: int, spread: float) -> np.ndarray:
    """n tokens in R^d: a random offset plus a rank-``rank`` cloud scaled by ``spread``."""
    cloud = rng.standard_normal((n, rank)) @ rng.standard_normal((rank, d)) / np.sqrt(d)
    return rng.standard_normal(d) + spread * cloud


def bank_of(*matrices: np.ndarray, dtype: torch.dtype = torch.float64):
    prepared = [prepare_text(x) for x in matrices]
    return build_bank([p.centred for p in prepared], np.stack([p.mean for p in prepared]), dtype=dtype)


def fast_pair(x1: np.ndarray, x2: np.ndarray) -> PairStats:
    return fast_pairs(bank_of(x1, x2), np.array([0]), np.array([1]))


class ArrayEncoder:
    """An :class:`~rag_diag.models.protocol.Encoder` whose "texts" ``"t0"``, ``"t1"``, … have the given
    token matrices (float32-exact), so arbitrary test matrices go through the real token-store path."""

    kind = "test"
    num_layers = 0

    def __init__(self, matrices: list[np.ndarray]):
        self.matrices = [np.asarray(m, dtype=np.float64) for m in matrices]
        for matrix in self.matrices:
            assert np.array_equal(matrix.astype(np.float32).astype(np.float64), matrix), "inputs must be float32-exact"
        self.dim = self.matrices[0].shape[1]
        self.max_seq_length = max(len(m) for m in self.matrices)
        self.name = "array"
        self.identity = {"name": "array", "matrices": [m.tobytes().hex()[:64] for m in self.matrices]}

    @property
    def device(self) -> str:
        return "cpu"

    def tokenize(self, texts):
        from rag_diag.models.protocol import Tokenized

        rows = [[1000 * int(text[1:]) + j for j in range(len(self.matrices[int(text[1:])]))] for text in texts]
        return Tokenized(rows, [[0] * len(row) for row in rows], 0, [len(row) for row in rows])

    def hidden_states(self, batch, layers):
        out = np.zeros((len(layers), len(batch), max(len(row) for row in batch), self.dim), dtype=np.float32)
        for b, row in enumerate(batch):
            matrix = self.matrices[row[0] // 1000]
            out[:, b, : len(row)] = matrix
        return out


def array_store(folder, matrices: list[np.ndarray]) -> TokenStore:
    """A one-layer token store (through ``encode_texts``) holding exactly ``matrices``."""
    from rag_diag.tokens.extract import encode_texts

    encoder = ArrayEncoder(matrices)
    store = encode_texts([f"t{i}" for i in range(len(matrices))], model=encoder, out=folder, cache=False)
    for i, matrix in enumerate(matrices):
        assert np.array_equal(store.tokens(i).astype(np.float64), matrix)
    return store


pair_inputs = st.tuples(
    st.integers(0, 2**32 - 1),
    st.integers(1, 12),
    st.integers(1, 12),
    st.integers(2, 24),
    st.integers(1, 6),
    st.floats(0.05, 3.0),
)


def draw_pair(case) -> tuple[np.ndarray, np.ndarray]:
    seed, n1, n2, d, rank, spread = case
    rng = np.random.default_rng(seed)
    return low_rank_tokens(rng, n1, d, min(rank, d), spread), low_rank_tokens(rng, n2, d, min(rank, d), spread)


# -- texts with diagonal (commuting) normalised covariances, exact in float32

DYADIC_SCALES = np.array([0.0, 0.125, 0.25, 0.375, 0.5, 0.75, 1.0, 1.5])


def diagonal_text(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    """n ∈ {1, 2, 4, 8} tokens: a dyadic mean plus s_k·(Hadamard column k) on k distinct coordinates.

    Hadamard columns 1…n−1 are ±1, sum to 0 and are mutually orthogonal, so the centred tokens have
    covariance exactly diag(s_k²) on the chosen coordinates (1/n · Σ (±s)² = s²), 0 elsewhere.
    """
    mean = rng.integers(-8, 9, size=d) / 8.0
    mean[rng.integers(d)] = 2.0  # ‖μ‖ ≥ 2: far from the 1e-12 guard
    x = np.tile(mean, (n, 1))
    if n > 1:
        columns = hadamard(n)
        count = min(n - 1, d)
        for k, coordinate in enumerate(rng.choice(d, size=count, replace=False), start=1):
            x[:, coordinate] += rng.choice(DYADIC_SCALES) * columns[:, k]
    return x


def diagonal_closed_form(x1: np.ndarray, x2: np.ndarray) -> Oracle:
    """Closed form for commuting diagonal covariances, with its own normalisation.

    With Σ1 = diag(a), Σ2 = diag(b): Σ1^½ Σ2 Σ1^½ = diag(a·b), so BW² = Σ_i (√a_i − √b_i)²;
    for a Hadamard text a_i = s_i²/‖μ‖², i.e. √a_i = |s_i|/‖μ‖ (the half-range of coordinate i).
    """
    def unit_mean_and_root_diag(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean = x.mean(axis=0)
        norm = np.linalg.norm(mean)
        half_range = (x.max(axis=0) - x.min(axis=0)) / 2.0  # |s_i| exactly (±s around the mean)
        return mean / norm, half_range / norm

    mu1, root_a = unit_mean_and_root_diag(x1)
    mu2, root_b = unit_mean_and_root_diag(x2)
    d_mu = float(((mu1 - mu2) ** 2).sum()) / 4.0
    d_sigma = float(((root_a - root_b) ** 2).sum()) / 4.0
    return Oracle(d_mu, d_sigma, (1.0 - d_mu) * d_sigma, float(mu1 @ mu2),
                  float((root_a**2).sum()), float((root_b**2).sum()))


def closed_form_atol(dim: int, closed: Oracle) -> float:
    """The closed form's own error: a few float64 operations per coordinate → ≤ 8·d·eps·(1 + traces)."""
    return 8 * dim * EPS64 * (1 + closed.trace_a + closed.trace_b)


diagonal_inputs = st.tuples(st.integers(0, 2**32 - 1), st.integers(2, 12), st.integers(2, 6))


# ---------------------------------------------------------------------------------------------- properties


def test_diagonal_texts_really_have_diagonal_covariance():
    """The construction the closed form relies on, checked by the oracle's own covariance."""
    rng = np.random.default_rng(0)
    for n in (2, 4, 8):
        x = diagonal_text(rng, n, 9)
        _, _, covariance = oracle_moments(x)
        off_diagonal = covariance - np.diag(np.diag(covariance))
        # entries: n products of normalised deviations ≤ 1.5/‖μ‖ ≤ 0.75 (‖μ‖ ≥ 2), so rounding ≤ n·eps
        assert np.abs(off_diagonal).max() <= 8 * n * EPS64
        closed = diagonal_closed_form(x, x)
        assert abs(closed.trace_a - np.trace(covariance)) <= 8 * n * 9 * EPS64


@settings(max_examples=60, deadline=None)
@given(pair_inputs)
def test_fast_pairs_match_the_sqrtm_oracle_on_low_rank_inputs(case):
    x1, x2 = draw_pair(case)
    oracle = oracle_pair(x1, x2)
    width, dim = max(len(x1), len(x2)), x1.shape[1]
    traces = (oracle.trace_a, oracle.trace_b)
    atol = gram_atol(width, dim, *traces) + sqrtm_oracle_atol(dim, *traces)
    assert_pair_close(fast_pair(x1, x2), 0, oracle, atol)


@settings(max_examples=60, deadline=None)
@given(pair_inputs)
def test_fast_pairs_match_the_svd_oracle_tightly(case):
    """The svd oracle has no √-amplified error, so this is the Gram route's own bound (~1e-8·scale)."""
    x1, x2 = draw_pair(case)
    oracle = oracle_pair(x1, x2, method="svd")
    width, dim = max(len(x1), len(x2)), x1.shape[1]
    atol = gram_atol(width, dim, oracle.trace_a, oracle.trace_b) + svd_oracle_atol(
        width, dim, oracle.trace_a, oracle.trace_b
    )
    assert_pair_close(fast_pair(x1, x2), 0, oracle, atol)


@settings(max_examples=40, deadline=None)
@given(pair_inputs)
def test_reference_provider_matches_the_sqrtm_oracle(case):
    """The library's d×d eigh route (no jitter) against scipy's Schur sqrtm: both within the d×d bound."""
    x1, x2 = draw_pair(case)
    oracle = oracle_pair(x1, x2)
    atol = 2 * sqrtm_oracle_atol(x1.shape[1], oracle.trace_a, oracle.trace_b)
    assert_pair_close(reference_pair(x1, x2), 0, oracle, atol)


@settings(max_examples=80, deadline=None)
@given(diagonal_inputs)
def test_fast_pairs_match_the_diagonal_closed_form(case):
    seed, d, count = case
    rng = np.random.default_rng(seed)
    texts = [diagonal_text(rng, int(rng.choice([1, 2, 4, 8])), d) for _ in range(count)]
    a, b = np.triu_indices(count, k=1)
    stats = fast_pairs(bank_of(*texts), a, b)
    width = max(len(t) for t in texts)
    for row, (i, j) in enumerate(zip(a, b, strict=True)):
        closed = diagonal_closed_form(texts[i], texts[j])
        atol = gram_atol(width, d, closed.trace_a, closed.trace_b) + closed_form_atol(d, closed)
        assert_pair_close(stats, row, closed, atol)


@settings(max_examples=40, deadline=None)
@given(diagonal_inputs)
def test_all_pairs_on_a_store_match_the_diagonal_closed_form(tmp_path_factory, case):
    seed, d, count = case
    rng = np.random.default_rng(seed)
    texts = [diagonal_text(rng, int(rng.choice([1, 2, 4, 8])), d) for _ in range(count)]
    store = array_store(tmp_path_factory.mktemp("diagonal") / "store", texts)
    result = all_pairs(store)
    assert len(result.pairs) == count * (count - 1) // 2
    width = max(len(t) for t in texts)
    for row, (i, j) in enumerate(zip(result.doc_a, result.doc_b, strict=True)):
        closed = diagonal_closed_form(texts[i], texts[j])
        atol = gram_atol(width, d, closed.trace_a, closed.trace_b) + closed_form_atol(d, closed)
        assert_pair_close(result.pairs, row, closed, atol)
    concentrations = [diagonal_closed_form(t, t).trace_a for t in texts]
    # concentration = S/‖μ‖²: sums of n·d squares (library) vs d squares of half-ranges (closed form)
    np.testing.assert_allclose(result.text_stats.concentration, concentrations, rtol=0,
                               atol=16 * width * d * EPS64 * (1 + max(concentrations)))


@settings(max_examples=40, deadline=None)
@given(pair_inputs)
def test_socm_symmetric_self_zero_and_d_mu_from_the_means(case):
    x1, x2 = draw_pair(case)
    oracle = oracle_pair(x1, x2, method="svd")
    stats = fast_pairs(bank_of(x1, x2), np.array([0, 1, 0, 1]), np.array([1, 0, 0, 1]))
    width, dim = max(len(x1), len(x2)), x1.shape[1]
    # (0,1) vs (1,0): with equal lengths the route squares C or Cᵀ, two evaluations of one quantity
    assert abs(stats.socm[0] - stats.socm[1]) <= 2 * gram_atol(width, dim, oracle.trace_a, oracle.trace_b)
    # self pairs: ‖A Aᵀ‖_* = ‖A‖²_F exactly, so d_Σ = 0 up to one evaluation's error
    assert abs(stats.socm[2]) <= gram_atol(width, dim, oracle.trace_a, oracle.trace_a)
    assert abs(stats.socm[3]) <= gram_atol(width, dim, oracle.trace_b, oracle.trace_b)
    # d_μ = ‖μ1 − μ2‖²/4 (oracle, from the means) = (1 − cos)/2 (library): two evaluations of the means
    assert abs(stats.d_mu[0] - oracle.d_mu) <= 2 * mean_atol(width, dim, oracle.trace_a + oracle.trace_b)


@settings(max_examples=60, deadline=None)
@given(pair_inputs)
def test_socm_bounded_by_half_the_concentration(case):
    """If both concentrations are ≤ ε then SOCM ≤ d_Σ ≤ ε/2 (BW² ≤ tr Σ1 + tr Σ2)."""
    x1, x2 = draw_pair(case)
    epsilon = max(oracle_concentration(x1), oracle_concentration(x2))
    stats = fast_pair(x1, x2)
    # (1 − d_μ) ≤ 1 exactly and rounding is monotone: fl((1 − d_μ)·d_Σ) ≤ d_Σ with no slack
    assert stats.socm[0] <= stats.d_sigma[0]
    # the library drops nothing but rounding: ‖C‖_* ≥ 0 after clamping; the two trace sums
    # (library and oracle, ≤ n·d terms each) differ by ≤ 2·n·d·eps·ε
    n, dim = max(len(x1), len(x2)), x1.shape[1]
    assert stats.d_sigma[0] <= epsilon / 2 + 2 * n * dim * EPS64 * epsilon


def test_one_token_text_has_zero_covariance():
    """A one-token text: concentration 0 and d_Σ = tr Σ_other / 4 (BW² against a zero matrix)."""
    rng = np.random.default_rng(0)
    single = rng.standard_normal((1, 16))
    other = low_rank_tokens(rng, 7, 16, 4, 1.0)
    prepared = prepare_text(single)
    assert prepared.concentration == 0.0 and prepared.spread == 0.0  # x − mean(x) is exactly 0
    trace_other = oracle_concentration(other)
    # A = 0 exactly, so ‖C‖_* = 0 exactly; only the trace sums differ (7·16 terms each, two routes)
    atol = 2 * 7 * 16 * EPS64 * trace_other
    for stats in (fast_pair(single, other), fast_pair(other, single)):
        np.testing.assert_allclose(stats.d_sigma, trace_other / 4, rtol=0, atol=atol)
    np.testing.assert_allclose(
        reference_pair(single, other).d_sigma, trace_other / 4, rtol=0, atol=sqrtm_oracle_atol(16, 0.0, trace_other)
    )
    both = fast_pair(single, rng.standard_normal((1, 16)))
    assert both.d_sigma[0] == 0.0 and both.socm[0] == 0.0


@pytest.mark.parametrize(("n", "d"), [(2, 16), (30, 384), (100, 384)])
def test_reference_provider_is_never_negative_on_identical_texts(n, d):
    """Σ1 = Σ2: the square roots of the null eigenvalues left d_Σ at about −1e-8 before the clamp; BW² ≥ 0."""
    x = np.random.default_rng(n).standard_normal((n, d)) + 1.0
    pair = reference_pair(x, x)
    trace = float(prepare_text(x).spread)
    assert 0.0 <= pair.d_sigma[0] <= sqrtm_oracle_atol(d, trace, trace) and 0.0 <= pair.socm[0] <= pair.d_sigma[0]


def test_paper_jitter_biases_low_rank_pairs_and_default_is_exact():
    rng = np.random.default_rng(1)
    x1, x2 = low_rank_tokens(rng, 5, 64, 4, 1.0), low_rank_tokens(rng, 6, 64, 5, 1.0)
    oracle = oracle_pair(x1, x2, method="svd")
    exact, jittered, fast = reference_pair(x1, x2), reference_pair(x1, x2, paper_jitter=True), fast_pair(x1, x2)
    np.testing.assert_allclose(fast.d_sigma, oracle.d_sigma, rtol=0,
                               atol=gram_atol(6, 64, oracle.trace_a, oracle.trace_b)
                               + svd_oracle_atol(6, 64, oracle.trace_a, oracle.trace_b))
    np.testing.assert_allclose(exact.d_sigma, oracle.d_sigma, rtol=0,
                               atol=2 * sqrtm_oracle_atol(64, oracle.trace_a, oracle.trace_b))
    # The jitter adds √1e-9 ≈ 3.2e-5 to tr((Σ1^½Σ2Σ1^½)^½) for each of the ≥ 64 − 4 null directions of
    # the inner matrix, so d_Σ = (… − 2·cross)/4 drops by ≈ 60·3.2e-5/2 ≈ 9e-4; ask for a ninth of it.
    assert exact.d_sigma[0] - jittered.d_sigma[0] > 1e-4


def test_fast_all_pairs_matches_the_pairwise_route_and_the_oracle():
    rng = np.random.default_rng(2)
    matrices = [low_rank_tokens(rng, int(rng.integers(1, 15)), 20, 6, 1.0) for _ in range(9)]
    bank = bank_of(*matrices)
    first, second, stats = fast_all_pairs(bank, block_rows=30)
    assert len(first) == 36 and np.all(first < second)
    pairwise = fast_pairs(bank, first, second, budget=2000)
    width = max(len(m) for m in matrices)
    for row, (i, j) in enumerate(zip(first, second, strict=True)):
        oracle = oracle_pair(matrices[i], matrices[j], method="svd")
        route = gram_atol(width, 20, oracle.trace_a, oracle.trace_b)
        assert abs(stats.socm[row] - pairwise.socm[row]) <= 2 * route  # two evaluations of one value
        assert_pair_close(stats, row, oracle, route + svd_oracle_atol(width, 20, oracle.trace_a, oracle.trace_b))


# ---------------------------------------------------------------------------------------------- token stores


def check_store_pairs(store: TokenStore, a, b, stats: PairStats, drop_special: bool = False, method: str = "svd"):
    """Every pair of ``stats`` against the oracle on the store's tokens."""
    width = int(store.lengths.max())
    for row, (i, j) in enumerate(zip(a, b, strict=True)):
        x1, x2 = store.tokens(int(i), drop_special=drop_special), store.tokens(int(j), drop_special=drop_special)
        oracle = oracle_pair(x1, x2, method=method)
        own = (svd_oracle_atol(width, store.dim, oracle.trace_a, oracle.trace_b) if method == "svd"
               else sqrtm_oracle_atol(store.dim, oracle.trace_a, oracle.trace_b))
        assert_pair_close(stats, row, oracle, gram_atol(width, store.dim, oracle.trace_a, oracle.trace_b) + own)


def test_pair_socm_matches_the_oracles_on_a_mock_store(mock_store):
    a, b = np.triu_indices(len(mock_store), k=1)
    stats = pair_socm(mock_store, a, b)
    check_store_pairs(mock_store, a, b, stats, method="svd")
    check_store_pairs(mock_store, a, b, stats, method="sqrtm")
    swapped = pair_socm(mock_store, b, a)
    check_store_pairs(mock_store, b, a, swapped, method="svd")
    width = int(mock_store.lengths.max())
    traces = [oracle_concentration(mock_store.tokens(i)) for i in range(len(mock_store))]
    diagonal = pair_socm(mock_store, a, a)
    for row, i in enumerate(a):
        assert abs(diagonal.socm[row]) <= gram_atol(width, mock_store.dim, traces[i], traces[i])


def test_pair_groups_on_a_hand_example():
    lengths = np.array([5, 3, 4, 10])
    # (0,1) 8 rows; (0,2) adds 4 → 12; (1,2) adds 0 → 12; (2,3) adds 10 → 22 > 12: new group of 14 rows
    groups = pair_groups(lengths, np.array([0, 0, 1, 2]), np.array([1, 2, 2, 3]), budget=12)
    assert [g.tolist() for g in groups] == [[0, 1, 2], [3]]
    # a pair over the budget alone is a group of its own, never split or dropped
    assert [g.tolist() for g in pair_groups(lengths, np.array([3, 0]), np.array([2, 1]), budget=6)] == [[0], [1]]
    assert pair_groups(lengths, np.zeros(0, np.int64), np.zeros(0, np.int64), budget=6) == []


@given(st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), max_size=40), st.integers(1, 60))
@settings(max_examples=60, deadline=None)
def test_pair_groups_partition_in_order_within_the_budget(pairs, budget):
    lengths = np.arange(1, 11)
    a = np.array([p[0] for p in pairs], dtype=np.int64)
    b = np.array([p[1] for p in pairs], dtype=np.int64)
    groups = pair_groups(lengths, a, b, budget)
    assert np.concatenate(groups or [np.zeros(0, np.int64)]).tolist() == list(range(len(pairs)))
    for group in groups:
        held = int(lengths[np.unique(np.concatenate([a[group], b[group]]))].sum())
        assert held <= budget or len(group) == 1


def test_pair_socm_in_small_groups_equals_one_group(mock_store):
    """A token budget of one pair's rows gives the same statistics as one load of every text."""
    a, b = np.triu_indices(len(mock_store), k=1)
    rng = np.random.default_rng(3)
    order = rng.permutation(len(a))
    a, b = a[order], b[order]
    whole = pair_socm(mock_store, a, b, token_budget=10**9)
    grouped = pair_socm(mock_store, a, b, token_budget=2 * int(mock_store.lengths.max()))
    width = int(mock_store.lengths.max())
    traces = [oracle_concentration(mock_store.tokens(i)) for i in range(len(mock_store))]
    for row, (i, j) in enumerate(zip(a, b, strict=True)):
        atol = 2 * gram_atol(width, mock_store.dim, traces[i], traces[j])  # each value within gram_atol of exact
        for field in FIELDS:
            assert abs(getattr(grouped, field)[row] - getattr(whole, field)[row]) <= atol
    check_store_pairs(mock_store, a, b, grouped, method="svd")


def test_sampled_text_stats_equal_the_banks(mock_store):
    from rag_diag.jobs.sampled import text_stats

    rows = np.array([5, 0, 7, 2])
    _, expected = load_bank(mock_store, rows)
    got = text_stats(mock_store, rows)
    assert got.n_tokens.tolist() == expected.n_tokens.tolist()
    assert np.array_equal(got.trace, expected.trace) and np.array_equal(got.concentration, expected.concentration)


def test_drop_special_changes_the_token_set(mock_store):
    a, b = np.array([0, 1]), np.array([3, 7])
    kept, dropped = pair_socm(mock_store, a, b), pair_socm(mock_store, a, b, drop_special=True)
    check_store_pairs(mock_store, a, b, dropped, drop_special=True)
    check_store_pairs(mock_store, a, b, kept, drop_special=False)
    width = int(mock_store.lengths.max())
    for row, (i, j) in enumerate(zip(a, b, strict=True)):
        oracle = oracle_pair(mock_store.tokens(int(i)), mock_store.tokens(int(j)), method="svd")
        # the change must exceed what two evaluations' rounding could explain
        assert abs(kept.socm[row] - dropped.socm[row]) > 10 * gram_atol(width, mock_store.dim, oracle.trace_a,
                                                                         oracle.trace_b)


def test_all_pairs_sample_is_seeded_and_complete(mock_store):
    result = all_pairs(mock_store, sample=5, seed=3)
    again = all_pairs(mock_store, sample=5, seed=3)
    assert len(result.pairs) == 10
    np.testing.assert_array_equal(result.texts, again.texts)
    assert set(result.doc_a) | set(result.doc_b) == set(result.texts)
    assert np.all(result.doc_a < result.doc_b)
    check_store_pairs(mock_store, result.doc_a, result.doc_b, result.pairs)
    # the other route on the same pairs: two evaluations, each within gram_atol of the exact value
    expected = pair_socm(mock_store, result.doc_a, result.doc_b)
    width = int(mock_store.lengths.max())
    for row, (i, j) in enumerate(zip(result.doc_a, result.doc_b, strict=True)):
        tr1 = oracle_concentration(mock_store.tokens(int(i)))
        tr2 = oracle_concentration(mock_store.tokens(int(j)))
        assert abs(result.pairs.socm[row] - expected.socm[row]) <= 2 * gram_atol(width, mock_store.dim, tr1, tr2)
    concentrations = [oracle_concentration(mock_store.tokens(int(i))) for i in result.texts]
    # n·d-term sums of squares by two codes: ≤ 2·n·d·eps relative
    np.testing.assert_allclose(result.text_stats.concentration, concentrations, rtol=2 * width * mock_store.dim * EPS64)


def test_thread_count_changes_only_rounding(mock_store):
    """torch at 1 and 2 threads."""
    previous = torch.get_num_threads()
    try:
        runs = {}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            runs[threads] = all_pairs(mock_store)
    finally:
        torch.set_num_threads(previous)
    one, two = runs[1], runs[2]
    np.testing.assert_array_equal(one.doc_a, two.doc_a)
    width = int(mock_store.lengths.max())
    for row, (i, j) in enumerate(zip(one.doc_a, one.doc_b, strict=True)):
        tr1 = oracle_concentration(mock_store.tokens(int(i)))
        tr2 = oracle_concentration(mock_store.tokens(int(j)))
        assert abs(one.pairs.socm[row] - two.pairs.socm[row]) <= 2 * gram_atol(width, mock_store.dim, tr1, tr2)


def test_pair_socm_rejects_bad_indices(mock_store):
    with pytest.raises(RagDiagError):
        pair_socm(mock_store, np.array([0]), np.array([len(mock_store)]))
    with pytest.raises(RagDiagError):
        pair_socm(mock_store, np.array([-1]), np.array([0]))
    with pytest.raises(RagDiagError, match="differ in shape"):
        pair_socm(mock_store, np.array([0, 1]), np.array([1]))


# ---------------------------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_fast_equals_the_oracles_on_real_minilm_tokens(tiny_store):
    n = len(tiny_store)
    a, b = np.triu_indices(n, k=1)
    fast = pair_socm(tiny_store, a, b)
    check_store_pairs(tiny_store, a, b, fast, method="svd")
    check_store_pairs(tiny_store, a[:1], b[:1], fast.take(np.arange(1)), method="sqrtm")  # seconds a pair at d = 384
    # the library's d×d reference route against the exact (svd) value, within the d×d bound
    width, dim = int(tiny_store.lengths.max()), tiny_store.dim
    for i, j in zip(a[::4], b[::4], strict=True):  # ~0.3 s a pair
        x1, x2 = tiny_store.tokens(int(i)), tiny_store.tokens(int(j))
        oracle = oracle_pair(x1, x2, method="svd")
        atol = sqrtm_oracle_atol(dim, oracle.trace_a, oracle.trace_b) + svd_oracle_atol(
            width, dim, oracle.trace_a, oracle.trace_b
        )
        assert_pair_close(reference_pair(x1, x2), 0, oracle, atol)


@pytest.mark.slow
def test_float32_products_stay_close_to_float64(tiny_store):
    a, b = np.triu_indices(len(tiny_store), k=1)
    exact = pair_socm(tiny_store, a, b)
    single = pair_socm(tiny_store, a, b, dtype=torch.float32)
    width, dim = int(tiny_store.lengths.max()), tiny_store.dim
    for row, (i, j) in enumerate(zip(a, b, strict=True)):
        tr1, tr2 = oracle_concentration(tiny_store.tokens(int(i))), oracle_concentration(tiny_store.tokens(int(j)))
        # float32 rows (relative eps32 each) and d-term float32 products: ‖ΔC‖₂ ≤ (d + 2)·eps32·s moves each
        # of ≤ width singular values by that much (Weyl; the Gram is still squared in float64); d_Σ halves it
        atol = 0.5 * width * (dim + 2) * EPS32 * math.sqrt(tr1 * tr2) + 2 * gram_atol(width, dim, tr1, tr2)
        assert abs(single.socm[row] - exact.socm[row]) <= atol


@pytest.mark.slow
def test_drop_special_on_real_tokens(tiny_store):
    a, b = np.array([0]), np.array([3])
    kept, dropped = pair_socm(tiny_store, a, b), pair_socm(tiny_store, a, b, drop_special=True)
    check_store_pairs(tiny_store, a, b, dropped, drop_special=True)
    assert abs(kept.socm[0] - dropped.socm[0]) > 1e-3  # [CLS]/[SEP] carry real mass in MiniLM


@pytest.mark.slow
def test_all_pairs_on_real_tokens_is_seeded_and_matches_pair_socm(tiny_store):
    """Formerly flaky at atol=1e-9 (differences 1.6–1.9e-9): two Gram routes differ by up to 2·gram_atol."""
    result = all_pairs(tiny_store, sample=5, seed=3)
    np.testing.assert_array_equal(result.texts, all_pairs(tiny_store, sample=5, seed=3).texts)
    check_store_pairs(tiny_store, result.doc_a, result.doc_b, result.pairs)
    expected = pair_socm(tiny_store, result.doc_a, result.doc_b)
    width = int(tiny_store.lengths.max())
    for row, (i, j) in enumerate(zip(result.doc_a, result.doc_b, strict=True)):
        tr1 = oracle_concentration(tiny_store.tokens(int(i)))
        tr2 = oracle_concentration(tiny_store.tokens(int(j)))
        assert abs(result.pairs.socm[row] - expected.socm[row]) <= 2 * gram_atol(width, tiny_store.dim, tr1, tr2)
