"""Re-rank scorers against independent references: MaxSim by loops, W₂²/4 by d×d scipy sqrtm."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.linalg import sqrtm

from rag_diag.errors import RagDiagError
from rag_diag.rerank import maxsim, parse_rerankers, rerank_scores, second_order


def reference_w2(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(d_μ, d_Σ) with d×d covariances and matrix square roots in float64 (science.md §2)."""
    x = x / np.linalg.norm(x.mean(0))
    y = y / np.linalg.norm(y.mean(0))
    mu_x, mu_y = x.mean(0), y.mean(0)
    cov_x = (x - mu_x).T @ (x - mu_x) / len(x)
    cov_y = (y - mu_y).T @ (y - mu_y) / len(y)
    root = sqrtm(cov_x)
    cross = np.real(sqrtm(root @ cov_y @ root))
    bw2 = np.trace(cov_x) + np.trace(cov_y) - 2 * np.trace(cross)
    return float(np.sum((mu_x - mu_y) ** 2) / 4), float(bw2 / 4)


def _texts(seed: int, lengths: list[int], d: int = 24) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, d)) + 2.0 for n in lengths]


def test_second_order_matches_sqrtm_reference():
    """d > n keeps the covariances low-rank (the usual case); ragged documents exercise the padding."""
    query, *documents = _texts(0, [7, 5, 11, 3, 16])
    d_mu, d_sigma = second_order(query, documents)
    for k, document in enumerate(documents):
        expected_mu, expected_sigma = reference_w2(query, document)
        assert d_mu[k] == pytest.approx(expected_mu, abs=1e-9)
        assert d_sigma[k] == pytest.approx(expected_sigma, abs=1e-6)


@pytest.mark.slow
def test_second_order_on_real_tokens(tiny_store):
    query = tiny_store.tokens(0).astype(np.float64)
    documents = [tiny_store.tokens(i).astype(np.float64) for i in range(1, len(tiny_store))]
    d_mu, d_sigma = second_order(query, documents)
    for k, document in enumerate(documents):
        expected_mu, expected_sigma = reference_w2(query, document)
        assert d_mu[k] == pytest.approx(expected_mu, abs=1e-9)
        assert d_sigma[k] == pytest.approx(expected_sigma, abs=1e-5)


def test_second_order_is_zero_for_identical_texts():
    (text,) = _texts(1, [9])
    d_mu, d_sigma = second_order(text, [text, text * 3.0])  # the ‖μ‖ normalisation removes the scale
    np.testing.assert_allclose(d_mu, 0.0, atol=1e-12)
    np.testing.assert_allclose(d_sigma, 0.0, atol=1e-6)


def test_maxsim_matches_loops():
    query, *documents = _texts(2, [4, 6, 2, 9])
    expected = []
    for document in documents:
        total = 0.0
        for q in query:
            total += max(float(q @ t) / (np.linalg.norm(q) * np.linalg.norm(t)) for t in document)
        expected.append(total)
    np.testing.assert_allclose(maxsim(query, documents), expected, rtol=1e-5)


def test_blends_combine_cosine_and_token_scores():
    query, *documents = _texts(3, [5, 6, 7])
    cosines = np.array([0.9, 0.8])
    d_mu, d_sigma = second_order(query, documents)
    np.testing.assert_allclose(rerank_scores("w2", query, documents, cosines), -(d_mu + d_sigma))
    np.testing.assert_allclose(
        rerank_scores("blend", query, documents, cosines, alpha=0.3), 0.3 * cosines - 0.7 * (d_mu + d_sigma)
    )
    normalised = maxsim(query, documents) / len(query)
    np.testing.assert_allclose(rerank_scores("maxsim", query, documents, cosines), normalised)
    np.testing.assert_allclose(
        rerank_scores("hybrid", query, documents, cosines, alpha=0.6), 0.6 * cosines + 0.4 * normalised
    )


def test_parse_rerankers():
    assert parse_rerankers(None) == []
    assert parse_rerankers("maxsim, w2") == ["maxsim", "w2"]
    assert parse_rerankers("all") == ["maxsim", "w2", "blend", "hybrid"]
    with pytest.raises(RagDiagError, match="unknown reranker"):
        parse_rerankers("colbert")
