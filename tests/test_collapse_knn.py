"""kNN mode, the rank-r covariance summary and the layer profile, on real MiniLM token stores."""

from __future__ import annotations

import numpy as np
import pytest

from rag_diag.collapse import all_pairs, pair_socm
from rag_diag.collapse_knn import covariance_summary, knn_collapse, knn_neighbours, mean_vectors
from rag_diag.collapse_layers import layer_profile
from rag_diag.errors import RagDiagError

K = 3


def brute_force_lookup(store):
    result = all_pairs(store)
    return result, {(int(a), int(b)): row for row, (a, b) in enumerate(zip(result.doc_a, result.doc_b, strict=True))}


def test_knn_equals_brute_force_restricted_to_the_neighbours(tiny_store):
    knn = knn_collapse(tiny_store, K, token_budget=40)  # tiny budget: many chunks
    brute, lookup = brute_force_lookup(tiny_store)
    rows = [lookup[(min(a, b), max(a, b))] for a, b in zip(knn.doc_a, knn.doc_b, strict=True)]
    np.testing.assert_allclose(knn.pairs.socm, brute.pairs.socm[rows], atol=1e-8)
    per_doc = brute.pairs.socm[rows].reshape(len(tiny_store), K)
    np.testing.assert_allclose(knn.collapse_mean, per_doc.mean(axis=1), atol=1e-8)
    np.testing.assert_allclose(knn.collapse_max, per_doc.max(axis=1), atol=1e-8)
    best = knn.doc_b.reshape(-1, K)[np.arange(len(tiny_store)), per_doc.argmax(axis=1)]
    np.testing.assert_array_equal(knn.top_confuser, best)
    np.testing.assert_allclose(knn.text_stats.concentration, brute.text_stats.concentration, rtol=1e-12)


def test_neighbours_are_the_top_cosines_without_self(tiny_store):
    means = mean_vectors(tiny_store)
    np.testing.assert_allclose(means, tiny_store.means(), atol=1e-6)
    neighbours = knn_neighbours(means, K)
    unit = means / np.linalg.norm(means, axis=1, keepdims=True)
    cosine = unit @ unit.T
    np.fill_diagonal(cosine, -np.inf)
    for doc, found in enumerate(neighbours):
        assert doc not in found and len(set(found)) == K
        kth = np.sort(cosine[doc])[-K]
        assert np.all(cosine[doc, found] >= kth - 1e-5)  # tolerate ties
    with pytest.raises(RagDiagError):
        knn_neighbours(means, len(means))


def test_rank_r_summary_error_is_within_the_bw_bound(tiny_store):
    """|BW − BW_r| ≤ √τ1 + √τ2 (τ = dropped covariance mass); full rank reproduces the exact value."""
    exact = knn_collapse(tiny_store, K)
    for rank in (1, 4):
        summary = covariance_summary(tiny_store, rank)
        approx = knn_collapse(tiny_store, K, rank=rank)
        np.testing.assert_array_equal(approx.doc_b, exact.doc_b)
        bw, bw_r = np.sqrt(4 * exact.pairs.d_sigma), np.sqrt(4 * approx.pairs.d_sigma)
        bound = np.sqrt(summary.tail[exact.doc_a]) + np.sqrt(summary.tail[exact.doc_b])
        assert np.all(np.abs(bw - bw_r) <= bound + 1e-6)
        np.testing.assert_allclose(approx.pairs.d_mu, exact.pairs.d_mu, atol=1e-6)
    full = knn_collapse(tiny_store, K, rank=int(tiny_store.lengths.max()))
    np.testing.assert_allclose(full.pairs.socm, exact.pairs.socm, atol=1e-6)


def test_layer_profile_covers_every_layer(minilm, tiny_texts, tmp_path):
    from rag_diag.encode import encode_texts

    store = encode_texts(tiny_texts, model=minilm, layers="all", out=tmp_path / "all")
    rows = layer_profile(store, sample=6, seed=0)
    assert [row.layer for row in rows] == store.layers == list(range(minilm.num_layers + 1))
    last = all_pairs(store, 6, 0, layer=store.layers[-1])
    assert rows[-1].avg_socm == pytest.approx(float(last.pairs.socm.mean()), abs=1e-12)
    assert all(np.isfinite([row.avg_socm, row.avg_concentration]).all() for row in rows)
    a, b = last.doc_a[:3], last.doc_b[:3]
    np.testing.assert_allclose(pair_socm(store, a, b, layer=store.layers[-1]).socm, last.pairs.socm[:3], atol=1e-9)
