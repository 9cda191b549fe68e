"""Re-rank scorers against independent references: MaxSim by loops, W₂²/4 by d×d scipy sqrtm.

The second-order oracle and its error bounds are those of ``test_collapse`` (no library code in them).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_collapse import EPS64, gram_atol, mean_atol, oracle_pair, sqrtm_oracle_atol, svd_oracle_atol

from rag_diag.errors import RagDiagError
from rag_diag.retrieval.rerank import maxsim, parse_rerankers, rerank_scores, second_order

EPS32 = float(np.finfo(np.float32).eps)  # 1.2e-7


def _texts(seed: int, lengths: list[int], d: int = 24) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, d)) + 2.0 for n in lengths]


def check_second_order(query: np.ndarray, documents: list[np.ndarray], method: str = "sqrtm") -> None:
    d_mu, d_sigma = second_order(query, documents)
    width = max(len(m) for m in (query, *documents))
    dim = query.shape[1]
    for k, document in enumerate(documents):
        oracle = oracle_pair(query, document, method=method)
        # one Gram-route evaluation + the oracle's own error (test_collapse derives both)
        own = (sqrtm_oracle_atol(dim, oracle.trace_a, oracle.trace_b) if method == "sqrtm"
               else svd_oracle_atol(width, dim, oracle.trace_a, oracle.trace_b))
        atol = gram_atol(width, dim, oracle.trace_a, oracle.trace_b) + own
        assert abs(d_mu[k] - oracle.d_mu) <= 2 * mean_atol(width, dim, oracle.trace_a + oracle.trace_b)
        assert abs(d_sigma[k] - oracle.d_sigma) <= atol


def test_second_order_matches_sqrtm_reference():
    """d > n keeps the covariances low-rank (the usual case); ragged documents exercise the padding."""
    query, *documents = _texts(0, [7, 5, 11, 3, 16])
    check_second_order(query, documents)


@pytest.mark.slow
def test_second_order_on_real_tokens(tiny_store):
    query = tiny_store.tokens(0).astype(np.float64)
    documents = [tiny_store.tokens(i).astype(np.float64) for i in range(1, len(tiny_store))]
    check_second_order(query, documents, method="svd")
    check_second_order(query, documents[:1], method="sqrtm")  # d×d sqrtm at d = 384: seconds a pair


def test_second_order_is_zero_for_identical_texts():
    (text,) = _texts(1, [9])
    d_mu, d_sigma = second_order(text, [text, text * 3.0])  # the ‖μ‖ normalisation removes the scale
    trace = oracle_pair(text, text).trace_a
    # identical (or rescaled: relative rounding eps per entry) unit means: cos = 1 up to the means' rounding
    np.testing.assert_allclose(d_mu, 0.0, rtol=0, atol=2 * mean_atol(9, 24, 2 * trace))
    # ‖A Aᵀ‖_* = ‖A‖²_F exactly, so d_Σ = 0 up to one Gram-route evaluation (and 3x's rescaling, ≤ 4 eps·tr)
    np.testing.assert_allclose(d_sigma, 0.0, rtol=0, atol=gram_atol(9, 24, trace, trace) + 4 * EPS64 * trace)


def test_maxsim_matches_loops():
    query, *documents = _texts(2, [4, 6, 2, 9])
    expected = []
    for document in documents:
        total = 0.0
        for q in query:
            total += max(float(q @ t) / (np.linalg.norm(q) * np.linalg.norm(t)) for t in document)
        expected.append(total)
    # maxsim works in float32: inputs rounded (eps32/2 each), normalised (≈ 3 eps32) and a d-term dot
    # product (≤ d·eps32), for each of the n_q summed cosines (|cos| ≤ 1)
    d = query.shape[1]
    np.testing.assert_allclose(maxsim(query, documents), expected, rtol=0, atol=len(query) * (d + 8) * EPS32)


def test_maxsim_ignores_padding_of_short_documents():
    """A one-token document batched with longer ones: zero padding must not become a best match."""
    query, long_doc, short_doc = _texts(5, [3, 8, 1])
    together = maxsim(query, [long_doc, short_doc])
    alone = maxsim(query, [short_doc])
    d = query.shape[1]
    np.testing.assert_allclose(together[1], alone[0], rtol=0, atol=len(query) * (d + 8) * EPS32)


def test_blends_combine_cosine_and_token_scores():
    query, *documents = _texts(3, [5, 6, 7])
    cosines = np.array([0.9, 0.8])
    d_mu, d_sigma = second_order(query, documents)
    distance = d_mu + d_sigma
    normalised = maxsim(query, documents) / len(query)
    # the same deterministic kernels on the same inputs, combined by ≤ 3 float64 operations:
    # each result is within 4 ulps (4·eps relative to the summed magnitudes)
    def close(actual, expected, *terms):
        scale = sum(np.abs(t) for t in terms)
        assert np.all(np.abs(actual - expected) <= 4 * EPS64 * scale)

    close(rerank_scores("w2", query, documents, cosines), -distance, distance)
    close(rerank_scores("blend", query, documents, cosines, alpha=0.3), 0.3 * cosines - 0.7 * distance,
          cosines, distance)
    close(rerank_scores("maxsim", query, documents, cosines), normalised, normalised)
    close(rerank_scores("hybrid", query, documents, cosines, alpha=0.6), 0.6 * cosines + 0.4 * normalised,
          cosines, normalised)


def test_parse_rerankers():
    assert parse_rerankers(None) == []
    assert parse_rerankers("maxsim, w2") == ["maxsim", "w2"]
    assert parse_rerankers("all") == ["maxsim", "w2", "blend", "hybrid"]
    with pytest.raises(RagDiagError, match="unknown reranker"):
        parse_rerankers("colbert")
