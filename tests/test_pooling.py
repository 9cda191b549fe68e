"""Each pooling vector equals an independent float64 numpy computation from the same stored tokens."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from rag_diag.errors import RagDiagError
from rag_diag.pooling import (
    DEFAULT_STRATEGIES,
    REGISTRY,
    fit_stats,
    index_vectors,
    list_strategies,
    parse_strategies,
    pool_store,
    sketch_projections,
)


def _tokens(store, index: int) -> np.ndarray:
    start, stop = store.offsets[index], store.offsets[index + 1]
    return np.asarray(store.embeddings[0, start:stop], dtype=np.float64)


def _unit(tokens: np.ndarray) -> np.ndarray:
    return tokens / np.linalg.norm(tokens.mean(axis=0))


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


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in DEFAULT_STRATEGIES if name != "sif"])
def test_pooling_matches_numpy(tiny_store, name):
    pooled = pool_store(name, tiny_store)
    assert pooled.shape == (len(tiny_store), REGISTRY[name].dim(tiny_store.dim))
    for index in range(len(tiny_store)):
        expected = reference(name, _tokens(tiny_store, index))
        np.testing.assert_allclose(pooled[index], expected, rtol=1e-9, atol=1e-9)


@pytest.mark.slow
def test_sif_matches_numpy(tiny_store):
    counts = Counter(int(t) for t in np.asarray(tiny_store.token_ids))
    total = sum(counts.values())
    raw = []
    for index in range(len(tiny_store)):
        start, stop = tiny_store.offsets[index], tiny_store.offsets[index + 1]
        ids = np.asarray(tiny_store.token_ids[start:stop])
        weights = np.array([1e-3 / (1e-3 + counts[int(t)] / total) for t in ids])
        raw.append((weights[:, None] * _tokens(tiny_store, index)).sum(axis=0) / len(ids))
    raw = np.array(raw)
    eigenvalues, eigenvectors = np.linalg.eigh(raw.T @ raw)
    component = eigenvectors[:, np.argmax(eigenvalues)]
    expected = raw - np.outer(raw @ component, component)
    stats = fit_stats("sif", tiny_store)
    np.testing.assert_allclose(pool_store("sif", tiny_store, stats), expected, rtol=1e-7, atol=1e-9)


@pytest.mark.slow
def test_sif_needs_corpus_stats(tiny_store):
    with pytest.raises(RagDiagError, match="corpus statistics"):
        pool_store("sif", tiny_store)


@pytest.mark.slow
def test_mean_std_distance_is_diagonal_w2(tiny_store):
    """‖[μ1;σ1] − [μ2;σ2]‖² = ‖μ1 − μ2‖² + Σ_j (σ1j − σ2j)², the W₂² of diagonal Gaussians."""
    pooled = pool_store("mean+std", tiny_store)
    x, y = _unit(_tokens(tiny_store, 0)), _unit(_tokens(tiny_store, 1))
    w2 = np.sum((x.mean(0) - y.mean(0)) ** 2) + np.sum((x.std(0) - y.std(0)) ** 2)
    assert np.sum((pooled[0] - pooled[1]) ** 2) == pytest.approx(w2, rel=1e-9)


def test_sketch_estimates_second_moment_inner_product():
    """E⟨φ(X), φ(Y)⟩ = ⟨M₂(X), M₂(Y)⟩_F: the sketch error shrinks around the exact value (seeded)."""
    rng = np.random.default_rng(1)
    d = 256
    x, y = rng.normal(size=(12, d)) / np.sqrt(d), rng.normal(size=(9, d)) / np.sqrt(d)
    x[:, 0] += 1.0
    y[:, 0] += 1.0
    exact = np.sum((x.T @ x / len(x)) * (y.T @ y / len(y)))
    r, s = sketch_projections(d, seed=3)
    phi = [((m @ r.T) * (m @ s.T)).mean(0) / np.sqrt(d) for m in (x, y)]
    assert float(phi[0] @ phi[1]) == pytest.approx(exact, rel=0.25)


def test_index_vectors_normalises_only_cosine():
    vectors = np.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(index_vectors(vectors, "cosine"), [[0.6, 0.8], [0.0, 0.0]], atol=1e-7)
    np.testing.assert_allclose(index_vectors(vectors, "l2"), vectors)


def test_registry_rows_and_parsing():
    rows = {row["name"]: row for row in list_strategies()}
    assert set(rows) == set(DEFAULT_STRATEGIES)
    assert rows["mean+std"]["metric"] == "l2" and rows["mean+std"]["dim"] == "2d"
    assert rows["sif"]["corpus_stats"] is True
    assert parse_strategies("mean, cls,mean") == ["mean", "cls"]
    assert parse_strategies("all") == list(DEFAULT_STRATEGIES)
    with pytest.raises(RagDiagError, match="unknown pooling"):
        parse_strategies("mean,median")
