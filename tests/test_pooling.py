"""Each pooling vector equals an independent float64 numpy computation from the same stored tokens;
the second-moment sketch is checked by calling ``pool_sketch`` itself, against a hand-written
construction from ``sketch_projections`` and against its unbiasedness and variance bound.

Mock-store tests are fast; the same checks on real MiniLM tokens are marked slow.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from rag_diag.errors import RagDiagError
from rag_diag.pooling import (
    DEFAULT_STRATEGIES,
    REGISTRY,
    base_stats,
    fit_stats,
    index_vectors,
    list_strategies,
    parse_strategies,
    pool_sketch,
    pool_store,
    sketch_projections,
)

EPS64 = float(np.finfo(np.float64).eps)  # 2.2e-16
EPS32 = float(np.finfo(np.float32).eps)  # 1.2e-7


def _tokens(store, index: int) -> np.ndarray:
    start, stop = store.offsets[index], store.offsets[index + 1]
    return np.asarray(store.embeddings[0, start:stop], dtype=np.float64)


def _unit(tokens: np.ndarray) -> np.ndarray:
    return tokens / np.linalg.norm(tokens.sum(axis=0) / len(tokens))


def reference(name: str, tokens: np.ndarray) -> np.ndarray:
    """Independent formulas for the corpus-statistics-free strategies."""
    n, d = tokens.shape
    if name == "mean":
        return tokens.sum(axis=0) / n
    if name == "cls":
        return tokens[0]
    if name == "last":
        return tokens[n - 1]
    if name == "max":
        return np.array([max(tokens[:, j]) for j in range(d)])
    if name == "power":
        return np.concatenate([tokens.sum(axis=0) / n, np.amax(tokens, axis=0), np.amin(tokens, axis=0)])
    unit = _unit(tokens)
    mu = unit.sum(axis=0) / n
    if name == "mean+std":
        covariance = (unit - mu).T @ (unit - mu) / n
        return np.concatenate([mu, np.sqrt(np.diag(covariance))])
    if name == "sketch":  # φ_i = (1/√D) Σ_ab R_ia S_ib M2_ab, via the explicit second moment
        second_moment = unit.T @ unit / n
        r, s = sketch_projections(d)
        return np.concatenate([mu, np.einsum("ia,ib,ab->i", r, s, second_moment) / np.sqrt(d)])
    raise AssertionError(name)


def reference_atol(name: str, tokens: np.ndarray) -> np.ndarray | float:
    """Float64 error bounds of two summation orders of the same formula (Higham: an m-term sum of
    terms bounded by t is off by ≤ m·eps·t), per strategy.

    - cls / last / max / min select stored values: exact (0);
    - mean: n terms of size ≤ max|x| → n·eps·max|x| per coordinate (twice: library and reference);
    - mean+std on x̂ = x/‖μ‖: the variance (n squared deviations ≤ 4·max|x̂|²) is off by
      ≤ 4n·eps·max|x̂|² per route, and √ turns an error δ into ≤ √δ where σ ≈ 0, so σ is off by
      ≤ √(8n·eps)·max|x̂| < 3·√(n·eps)·max|x̂|;
    - sketch: φ_i sums d² (reference) or n·d (library) products of size ≤ max‖x̂_j‖₁²/n.
    """
    n, d = tokens.shape
    if name in ("cls", "last", "max"):
        return 0.0
    scale = float(np.abs(tokens).max())
    if name in ("mean", "power"):
        return 2 * n * EPS64 * scale
    unit = _unit(tokens)
    unit_scale = float(np.abs(unit).max())
    mean_part = 2 * (n + 4) * EPS64 * unit_scale
    if name == "mean+std":
        return np.concatenate([np.full(d, mean_part), np.full(d, 3 * np.sqrt(n * EPS64) * unit_scale + mean_part)])
    if name == "sketch":
        l1 = float((np.abs(unit).sum(axis=1) ** 2).max())
        return np.concatenate([np.full(d, mean_part), np.full(d, 2 * (d * d + n * d) * EPS64 * l1 / np.sqrt(d))])
    raise AssertionError(name)


def assert_within(actual: np.ndarray, expected: np.ndarray, atol) -> None:
    """|actual − expected| ≤ atol elementwise (atol may be an array: one bound per coordinate)."""
    excess = np.abs(np.asarray(actual) - np.asarray(expected)) - atol
    where = np.unravel_index(excess.argmax(), excess.shape)
    assert np.all(excess <= 0), f"exceeds its bound by up to {excess.max():.3g} at {where}"


def check_pooling(store, name: str) -> None:
    pooled = pool_store(name, store)
    assert pooled.shape == (len(store), REGISTRY[name].dim(store.dim))
    for index in range(len(store)):
        tokens = _tokens(store, index)
        assert_within(pooled[index], reference(name, tokens), reference_atol(name, tokens))


@pytest.mark.parametrize("name", [name for name in DEFAULT_STRATEGIES if name != "sif"])
def test_pooling_matches_numpy(mock_store, name):
    check_pooling(mock_store, name)


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in DEFAULT_STRATEGIES if name != "sif"])
def test_pooling_matches_numpy_on_real_tokens(tiny_store, name):
    check_pooling(tiny_store, name)


def check_sif(store) -> None:
    counts = Counter(int(t) for t in np.asarray(store.token_ids))
    total = sum(counts.values())
    raw = []
    for index in range(len(store)):
        start, stop = store.offsets[index], store.offsets[index + 1]
        ids = np.asarray(store.token_ids[start:stop])
        weights = np.array([1e-3 / (1e-3 + counts[int(t)] / total) for t in ids])
        raw.append((weights[:, None] * _tokens(store, index)).sum(axis=0) / len(ids))
    raw = np.array(raw)
    eigenvalues, eigenvectors = np.linalg.eigh(raw.T @ raw)
    order = np.sort(eigenvalues)
    component = eigenvectors[:, np.argmax(eigenvalues)]
    expected = raw - np.outer(raw @ component, component)
    stats = fit_stats("sif", store)
    # The top singular direction (library: SVD of raw; here: eigh of rawᵀraw) is determined up to an
    # angle ≲ N·d·eps·‖raw‖²/gap (Davis–Kahan, gap = λ1 − λ2 of rawᵀraw); removing it moves a row v
    # by ≤ 2·angle·‖v‖. Plus the weighted means themselves (n-term sums): n·eps·max|x|.
    scale = float(np.linalg.norm(raw, 2)) ** 2
    angle = len(raw) * raw.shape[1] * EPS64 * scale / (order[-1] - order[-2])
    n, top = int(store.lengths.max()), float(np.abs(np.asarray(store.embeddings[0], dtype=np.float64)).max())
    atol = 2 * angle * np.linalg.norm(raw, axis=1, keepdims=True) + 4 * n * EPS64 * top
    assert_within(pool_store("sif", store, stats), expected, atol)


def test_sif_matches_numpy(mock_store):
    check_sif(mock_store)


@pytest.mark.slow
def test_sif_matches_numpy_on_real_tokens(tiny_store):
    check_sif(tiny_store)


def test_sif_needs_corpus_stats(mock_store):
    with pytest.raises(RagDiagError, match="corpus statistics"):
        pool_store("sif", mock_store)


def test_mean_std_distance_is_diagonal_w2(mock_store):
    """‖[μ1;σ1] − [μ2;σ2]‖² = ‖μ1 − μ2‖² + Σ_j (σ1j − σ2j)², the W₂² of diagonal Gaussians."""
    pooled = pool_store("mean+std", mock_store)
    x, y = _unit(_tokens(mock_store, 0)), _unit(_tokens(mock_store, 1))
    w2 = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.sum((x.std(0) - y.std(0)) ** 2)
    # each of the 2d coordinates differs by ≤ its reference_atol (two texts); squared-distance error
    # ≤ 2·Σ|v1 − v2|·δ + Σδ²
    delta = reference_atol("mean+std", _tokens(mock_store, 0)) + reference_atol("mean+std", _tokens(mock_store, 1))
    atol = float(2 * np.sum(np.abs(pooled[0] - pooled[1]) * delta) + np.sum(delta**2))
    assert abs(np.sum((pooled[0] - pooled[1]) ** 2) - w2) <= atol


# ---------------------------------------------------------------------------------------------- the sketch


def sketch_inputs(seed: int, d: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Two token clouds around a shared direction (‖μ‖ ≈ 3, per-coordinate noise 0.3)."""
    rng = np.random.default_rng(seed)
    x, y = 0.3 * rng.normal(size=(12, d)), 0.3 * rng.normal(size=(9, d))
    x[:, 0] += 3.0
    y[:, 0] += 3.0
    return x, y


def second_moment(tokens: np.ndarray) -> np.ndarray:
    """M₂(X̂) = (1/n) Σ x̂_j x̂_jᵀ of the ‖μ‖-normalised tokens (pool_sketch normalises first)."""
    unit = tokens / np.linalg.norm(tokens.mean(axis=0))
    return unit.T @ unit / len(unit)


def test_pool_sketch_equals_the_construction_from_its_projections():
    """[μ̂ ; φ], φ_i = (1/√D) r_iᵀ M₂ s_i with (R, S) = sketch_projections(d, seed): built by hand."""
    x, _ = sketch_inputs(0)
    d = x.shape[1]
    for seed in (0, 3):
        r, s = sketch_projections(d, seed=seed)
        assert set(np.unique(r)) == {-1.0, 1.0} and set(np.unique(s)) == {-1.0, 1.0} and not np.array_equal(r, s)
        pooled = pool_sketch(x, np.zeros(len(x), dtype=np.int64), {"sketch_r": r, "sketch_s": s})
        unit = x / np.linalg.norm(x.mean(axis=0))
        features = np.array([r[i] @ second_moment(x) @ s[i] for i in range(d)]) / np.sqrt(d)
        expected = np.concatenate([unit.mean(axis=0), features])
        # d² products per feature (here) vs n·d (library), each of size ≤ max‖x̂_j‖₁²/n
        l1 = float((np.abs(unit).sum(axis=1) ** 2).max())
        np.testing.assert_allclose(pooled, expected, rtol=0, atol=2 * (d * d + len(x) * d) * EPS64 * l1 / np.sqrt(d))
    assert np.array_equal(base_stats(d)["sketch_r"], sketch_projections(d)[0])  # the index's default seed


def test_sketch_inner_product_estimates_the_second_moment_inner_product():
    """E⟨φ(X), φ(Y)⟩ = ⟨M₂(X̂), M₂(Ŷ)⟩_F, and Var ≤ 9·‖M₂(X̂)‖²_F·‖M₂(Ŷ)‖²_F / D.

    Per feature Z = (rᵀM_X s)(rᵀM_Y s) with independent Rademacher r, s: over r,
    E[(rᵀu)²(rᵀv)²] ≤ ‖u‖²‖v‖² + 2(uᵀv)² ≤ 3‖u‖²‖v‖², and over s, E[(sᵀPs)(sᵀQs)] ≤ 3·trP·trQ for PSD
    P = M_X², Q = M_Y²; so E[Z²] ≤ 9‖M_X‖²_F‖M_Y‖²_F. The D features are independent rows of (R, S).
    """
    x, y = sketch_inputs(1)
    d = x.shape[1]
    exact = float(np.sum(second_moment(x) * second_moment(y)))
    sigma = 3.0 * np.linalg.norm(second_moment(x)) * np.linalg.norm(second_moment(y)) / np.sqrt(d)
    ids_x, ids_y = np.zeros(len(x), dtype=np.int64), np.zeros(len(y), dtype=np.int64)
    def estimate(r: np.ndarray, s: np.ndarray) -> float:
        stats = {"sketch_r": r, "sketch_s": s}
        return float(pool_sketch(x, ids_x, stats)[d:] @ pool_sketch(y, ids_y, stats)[d:])

    # the projections the index uses (base_stats): one draw, within 6σ with probability ≥ 1 − 1/36
    assert abs(estimate(base_stats(d)["sketch_r"], base_stats(d)["sketch_s"]) - exact) <= 6 * sigma
    # unbiasedness: the mean over S seeds has σ/√S; within 6σ/√S with probability ≥ 1 − 1/36 (Chebyshev)
    estimates = np.array([estimate(*sketch_projections(d, seed=seed)) for seed in range(400)])
    assert abs(estimates.mean() - exact) <= 6 * sigma / np.sqrt(len(estimates))
    # the variance bound is not vacuous: σ is small next to the value, and the spread respects it
    assert sigma < 0.5 * exact and estimates.std() <= sigma


def test_full_sketch_vector_inner_product_adds_the_means(mock_store):
    """⟨[μ̂1; φ1], [μ̂2; φ2]⟩ = μ̂1·μ̂2 + ⟨φ1, φ2⟩ (the "ip" metric of the registry)."""
    pooled = pool_store("sketch", mock_store)
    d = mock_store.dim
    mu = pool_store("mean", mock_store)
    unit_means = mu / np.linalg.norm(mu, axis=1, keepdims=True)
    for index in range(len(mock_store)):
        tokens = _tokens(mock_store, index)
        # mean of x/‖μ‖ (library) vs μ/‖μ‖: n-term sums of values ≤ max|x̂|, plus the norm (d terms)
        scale = float(np.abs(_unit(tokens)).max())
        atol = 2 * (len(tokens) + d + 4) * EPS64 * scale
        assert_within(pooled[index, :d], unit_means[index], atol)
    assert REGISTRY["sketch"].metric == "ip"


# ---------------------------------------------------------------------------------------------- registry


def test_index_vectors_normalises_only_cosine():
    vectors = np.array([[3.0, 4.0], [0.0, 0.0]])
    # 0.6 and 0.8 rounded to float32: ≤ eps32/2 relative each
    np.testing.assert_allclose(index_vectors(vectors, "cosine"), [[0.6, 0.8], [0.0, 0.0]], rtol=EPS32, atol=0)
    np.testing.assert_array_equal(index_vectors(vectors, "l2"), vectors.astype(np.float32))
    assert index_vectors(vectors, "ip").dtype == np.float32


def test_registry_rows_and_parsing():
    rows = {row["name"]: row for row in list_strategies()}
    assert set(rows) == set(DEFAULT_STRATEGIES)
    assert rows["mean+std"]["metric"] == "l2" and rows["mean+std"]["dim"] == "2d"
    assert rows["sif"]["corpus_stats"] is True
    assert parse_strategies("mean, cls,mean") == ["mean", "cls"]
    assert parse_strategies("all") == list(DEFAULT_STRATEGIES)
    with pytest.raises(RagDiagError, match="unknown pooling"):
        parse_strategies("mean,median")
    with pytest.raises(RagDiagError, match="no pooling strategy"):
        parse_strategies(" , ")
