"""kNN mode, the rank-r covariance summary and the layer profile (mock stores; real MiniLM marked slow).

The oracles and error bounds are those of ``test_collapse`` (no library code in the oracles).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_collapse import (
    EPS32,
    EPS64,
    array_store,
    assert_pair_close,
    closed_form_atol,
    diagonal_closed_form,
    diagonal_text,
    gram_atol,
    oracle_concentration,
    oracle_pair,
    svd_oracle_atol,
)

from rag_diag.collapse.allpairs import all_pairs
from rag_diag.collapse.knn import _length_chunks, check_rank, covariance_summary, knn_collapse, neighbour_graph
from rag_diag.collapse.layers import layer_profile
from rag_diag.collapse.socm import pair_socm
from rag_diag.errors import RagDiagError

K = 3


def brute_force_lookup(store):
    result = all_pairs(store)
    return result, {(int(a), int(b)): row for row, (a, b) in enumerate(zip(result.doc_a, result.doc_b, strict=True))}


def traces(store, layer=None) -> np.ndarray:
    return np.array([oracle_concentration(store.tokens(i, layer)) for i in range(len(store))])


def check_knn_equals_brute_force(store):
    knn = knn_collapse(store, K, token_budget=40)  # tiny budget: many chunks
    brute, lookup = brute_force_lookup(store)
    rows = [lookup[(min(a, b), max(a, b))] for a, b in zip(knn.doc_a, knn.doc_b, strict=True)]
    width, dim, tr = int(store.lengths.max()), store.dim, traces(store)
    # two Gram-route evaluations (fast_pairs, fast_all_pairs) of the same pairs: ≤ 2·gram_atol each
    atol = np.array([2 * gram_atol(width, dim, tr[a], tr[b]) for a, b in zip(knn.doc_a, knn.doc_b, strict=True)])
    assert np.all(np.abs(knn.pairs.socm - brute.pairs.socm[rows]) <= atol)
    per_doc = brute.pairs.socm[rows].reshape(len(store), K)
    per_doc_atol = atol.reshape(len(store), K)
    assert np.all(np.abs(knn.collapse_mean - per_doc.mean(axis=1)) <= per_doc_atol.max(axis=1))
    assert np.all(np.abs(knn.collapse_max - per_doc.max(axis=1)) <= per_doc_atol.max(axis=1))
    # the top confuser is the argmax, unless two neighbours tie within the rounding bound
    position = np.argmax(knn.doc_b.reshape(-1, K) == knn.top_confuser[:, None], axis=1)
    assert np.all(knn.doc_b.reshape(-1, K)[np.arange(len(store)), position] == knn.top_confuser)
    chosen = per_doc[np.arange(len(store)), position]
    assert np.all(chosen >= per_doc.max(axis=1) - 2 * per_doc_atol.max(axis=1))
    # concentrations: the same per-text code on both routes (identical bits)
    np.testing.assert_array_equal(knn.text_stats.concentration, brute.text_stats.concentration)
    return knn


def test_knn_equals_brute_force_restricted_to_the_neighbours(mock_store):
    check_knn_equals_brute_force(mock_store)


@pytest.mark.slow
def test_knn_equals_brute_force_on_real_tokens(tiny_store):
    check_knn_equals_brute_force(tiny_store)


def test_knn_pairs_match_the_diagonal_closed_form(tmp_path):
    rng = np.random.default_rng(4)
    texts = [diagonal_text(rng, int(rng.choice([1, 2, 4, 8])), 6) for _ in range(10)]
    store = array_store(tmp_path / "store", texts)
    knn = knn_collapse(store, K)
    width = max(len(t) for t in texts)
    for row, (i, j) in enumerate(zip(knn.doc_a, knn.doc_b, strict=True)):
        closed = diagonal_closed_form(texts[i], texts[j])
        atol = gram_atol(width, 6, closed.trace_a, closed.trace_b) + closed_form_atol(6, closed)
        assert_pair_close(knn.pairs, row, closed, atol)


def test_neighbours_are_the_top_cosines_without_self(mock_store):
    means = mock_store.means(chunk_rows=7)  # chunks that cut through texts
    per_text = np.stack([mock_store.tokens(i).astype(np.float64).mean(axis=0) for i in range(len(mock_store))])
    # both accumulate in float64; the only difference is the final float32 rounding (≤ 2⁻²⁴ relative).
    np.testing.assert_allclose(means, per_text, rtol=2**-23, atol=0)
    neighbours = neighbour_graph(means, K, exact_limit=len(means)).neighbours
    unit = means / np.linalg.norm(means, axis=1, keepdims=True)
    cosine = unit @ unit.T
    np.fill_diagonal(cosine, -np.inf)
    # FAISS and numpy both take float32 dot products of unit vectors: each off by ≤ (d + 2)·eps32
    tie = 2 * (mock_store.dim + 2) * EPS32
    for doc, found in enumerate(neighbours):
        assert doc not in found and len(set(found)) == K
        kth = np.sort(cosine[doc])[-K]
        assert np.all(cosine[doc, found] >= kth - tie)
    with pytest.raises(RagDiagError, match=rf"--knn must be between 1 and {len(means) - 1} "):
        neighbour_graph(means, len(means))
    with pytest.raises(RagDiagError, match=r"needs at least 2 texts \(the corpus has 1\)"):
        neighbour_graph(means[:1], 1)
    with pytest.raises(RagDiagError, match=r"--rank must be between 1 and 16 .* got 17"):
        check_rank(17, 16, 32)
    check_rank(16, 16, 32)


def check_rank_r_bound(store):
    """|BW − BW_r| ≤ √τ1 + √τ2 (τ = dropped covariance mass); full rank reproduces the exact value."""
    exact = knn_collapse(store, K)
    width, dim, tr = int(store.lengths.max()), store.dim, traces(store)
    route = np.array([gram_atol(width, dim, tr[a], tr[b]) for a, b in zip(exact.doc_a, exact.doc_b, strict=True)])
    # factors and means are stored as float32: BW(FᵀF, F̃ᵀF̃) ≤ ‖F − F̃‖_F ≤ eps32·√tr per text (BW is a
    # min over rotations of ‖F1 − U F2‖_F), and each BW² evaluation is off by ≤ 4·route, i.e. BW by ≤ √(4·route)
    stored = EPS32 * (np.sqrt(tr[exact.doc_a]) + np.sqrt(tr[exact.doc_b]))
    for rank in (1, 4):
        summary = covariance_summary(store, rank)
        approx = knn_collapse(store, K, rank=rank)
        np.testing.assert_array_equal(approx.doc_b, exact.doc_b)
        bw, bw_r = np.sqrt(4 * exact.pairs.d_sigma), np.sqrt(4 * approx.pairs.d_sigma)
        bound = np.sqrt(summary.tail[exact.doc_a]) + np.sqrt(summary.tail[exact.doc_b])
        assert np.all(np.abs(bw - bw_r) <= bound + stored + 2 * np.sqrt(4 * route))
        # unit means rounded to float32: cos, hence d_μ, off by ≤ (d + 4)·eps32
        np.testing.assert_allclose(approx.pairs.d_mu, exact.pairs.d_mu, rtol=0, atol=(dim + 4) * EPS32)
    full = knn_collapse(store, K, rank=min(int(store.lengths.max()), store.dim))  # rank ≤ min(n − 1, d)
    # full rank: only the float32 storage remains; BW² = BW² ± (2·BW + stored)·stored, d_Σ a quarter of it
    bw = np.sqrt(4 * exact.pairs.d_sigma)
    atol = (2 * bw + stored) * stored / 4 + 2 * route + (dim + 4) * EPS32 * exact.pairs.d_sigma
    assert np.all(np.abs(full.pairs.socm - exact.pairs.socm) <= atol)


def test_rank_r_summary_error_is_within_the_bw_bound(mock_store):
    check_rank_r_bound(mock_store)


@pytest.mark.slow
def test_rank_r_summary_on_real_tokens(tiny_store):
    check_rank_r_bound(tiny_store)


def check_layer_profile(store, sample, seed):
    rows = layer_profile(store, sample=sample, seed=seed)
    assert [row.layer for row in rows] == store.layers
    assert all(np.isfinite([row.avg_socm, row.avg_concentration]).all() for row in rows)
    width, dim = int(store.lengths.max()), store.dim
    for row in rows:
        result = all_pairs(store, sample, seed, layer=row.layer)
        oracles = [oracle_pair(store.tokens(int(a), row.layer), store.tokens(int(b), row.layer), method="svd")
                   for a, b in zip(result.doc_a, result.doc_b, strict=True)]
        # a mean of values each within (route + oracle) bound of its oracle is within the mean bound
        atol = np.mean([gram_atol(width, dim, o.trace_a, o.trace_b) + svd_oracle_atol(width, dim, o.trace_a, o.trace_b)
                        for o in oracles])
        assert abs(row.avg_socm - np.mean([o.socm for o in oracles])) <= atol
        assert abs(row.avg_d_mu - np.mean([o.d_mu for o in oracles])) <= atol
        assert abs(row.avg_d_sigma - np.mean([o.d_sigma for o in oracles])) <= atol
        concentrations = [oracle_concentration(store.tokens(int(i), row.layer)) for i in result.texts]
        # n·d-term sums of squares by two codes: ≤ 2·n·d·eps relative
        assert row.avg_concentration == pytest.approx(np.mean(concentrations), rel=2 * width * dim * EPS64)
    # the same pairs by the other route: two evaluations, ≤ 2·gram_atol apart (was atol=1e-9: flaky)
    last = all_pairs(store, sample, seed, layer=store.layers[-1])
    a, b = last.doc_a[:3], last.doc_b[:3]
    again = pair_socm(store, a, b, layer=store.layers[-1])
    for row, (i, j) in enumerate(zip(a, b, strict=True)):
        tr1 = oracle_concentration(store.tokens(int(i), store.layers[-1]))
        tr2 = oracle_concentration(store.tokens(int(j), store.layers[-1]))
        assert abs(again.socm[row] - last.pairs.socm[row]) <= 2 * gram_atol(width, dim, tr1, tr2)
    return rows


def test_layer_profile_covers_every_layer(tiny_texts, tmp_path):
    from rag_diag.models.mock import MockEncoder
    from rag_diag.tokens.extract import encode_texts

    encoder = MockEncoder()
    store = encode_texts(tiny_texts, model=encoder, layers="all", out=tmp_path / "all", cache=False)
    assert store.layers == list(range(encoder.num_layers + 1))
    rows = check_layer_profile(store, sample=6, seed=0)
    # the mock adds 0.1·layer·(position vector): layers differ, so their averages must too
    assert len({round(row.avg_concentration, 6) for row in rows}) == len(rows)


@pytest.mark.slow
def test_layer_profile_covers_every_layer_of_minilm(minilm, tiny_texts, tmp_path):
    from rag_diag.tokens.extract import encode_texts

    store = encode_texts(tiny_texts, model=minilm, layers="all", out=tmp_path / "all")
    assert store.layers == list(range(minilm.num_layers + 1))
    check_layer_profile(store, sample=6, seed=0)


def test_hnsw_graph_beyond_the_exact_limit_reports_its_recall():
    """Beyond ``exact_limit`` the graph comes from HNSW; its reported recall@k equals an independent count
    on the same seeded sample (exact cosines in float64, ties within 1e-5 counted as hits)."""
    from rag_diag.collapse.knn import RECALL_QUERIES, neighbour_graph
    from rag_diag.sampling import seeded_sample

    rng = np.random.default_rng(5)
    centres = rng.standard_normal((40, 16))
    means = centres[rng.integers(0, 40, 3000)] + 0.3 * rng.standard_normal((3000, 16))
    k = 5
    graph = neighbour_graph(means, k, exact_limit=1000, seed=0)
    assert graph.index_type == "IndexHNSWFlat" and graph.n_recall_queries == RECALL_QUERIES
    neighbours = graph.neighbours
    assert neighbours.shape == (3000, k) and (neighbours >= 0).all()
    assert not (neighbours == np.arange(3000)[:, None]).any()  # never itself
    unit = means / np.linalg.norm(means, axis=1, keepdims=True)
    hits = 0
    for row in seeded_sample(3000, RECALL_QUERIES, 0):
        cosines = unit @ unit[row]
        cosines[row] = -np.inf
        kth = np.sort(cosines)[-k]
        hits += int(np.count_nonzero(cosines[neighbours[row]] >= kth - 1e-5))
    assert graph.recall == pytest.approx(hits / (RECALL_QUERIES * k), abs=1e-12)
    assert 0.5 < graph.recall <= 1.0
    exact = neighbour_graph(means, k, exact_limit=3000)
    assert exact.index_type == "IndexFlatIP" and exact.recall == 1.0 and exact.n_recall_queries == 0


def test_a_mutual_pair_is_computed_once_at_its_first_row():
    from rag_diag.collapse.knn import _first_of_pair

    # rows: 0→1, 0→2, 1→0 (mutual with row 0), 1→2, 2→1 (mutual with row 3), 2→0 (mutual with row 1)
    doc_a, doc_b = np.array([0, 0, 1, 1, 2, 2]), np.array([1, 2, 0, 2, 1, 0])
    np.testing.assert_array_equal(_first_of_pair(doc_a, doc_b, 3), [0, 1, 0, 3, 3, 1])


def test_exact_search_is_index_flat_ip_without_its_copy():
    """``ExactSearch`` runs the kernel ``IndexFlatIP.search`` runs: the same ids and scores, bit for bit."""
    import faiss

    from rag_diag.collapse.knn import ExactSearch

    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((500, 24)).astype(np.float32)
    flat = faiss.IndexFlatIP(24)
    flat.add(vectors)
    want_scores, want_ids = flat.search(vectors[:40], 7)
    scores, ids = ExactSearch(vectors).search(vectors[:40], 7)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(scores, want_scores)


def test_unit_means_are_used_as_they_are_and_others_normalised_on_a_copy():
    from rag_diag.collapse.knn import _unit

    rng = np.random.default_rng(4)
    raw = rng.standard_normal((50, 8)).astype(np.float32)
    before = raw.copy()
    unit = _unit(raw)
    assert unit is not raw
    np.testing.assert_array_equal(raw, before)  # the caller's array is never written
    # normalize_L2 in float32: each norm is 1 within a few ulps of a d-term sum
    np.testing.assert_allclose(np.linalg.norm(unit.astype(np.float64), axis=1), 1.0, rtol=0, atol=(8 + 4) * EPS32)
    assert _unit(unit) is unit


def test_covariance_summary_does_not_depend_on_its_chunking(mock_store):
    """One document per chunk (pages released after each) or all at once: the same means and statistics; the
    kept eigenvalue mass differs only by the two eigh solves' rounding, ≤ r·w·eps·tr each (backward stable on
    a w×w Gram matrix of norm ≤ tr, padding adding exact zeros)."""
    rank = 2
    whole = covariance_summary(mock_store, rank, chunk_bytes=2**40)
    single = covariance_summary(mock_store, rank, chunk_bytes=1)
    np.testing.assert_array_equal(single.means, whole.means)
    for name in ("n_tokens", "trace", "concentration"):
        np.testing.assert_array_equal(getattr(single.text_stats, name), getattr(whole.text_stats, name))
    width = int(mock_store.lengths.max())
    tr = whole.traces + whole.tail
    atol = 2 * rank * width * EPS64 * tr
    assert np.all(np.abs(single.traces - whole.traces) <= atol)
    assert np.all(np.abs(single.tail - whole.tail) <= atol)


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(1, 300), min_size=1, max_size=80), chunk_docs=st.integers(1, 40),
       chunk_bytes=st.integers(1, 2**24))
def test_length_chunks_partition_the_documents_within_budget(lengths, chunk_docs, chunk_bytes):
    """Every document in exactly one chunk, chunks in order of length, each within ``chunk_docs`` and, unless it
    is a single document, within ``chunk_bytes`` of padded float64 tokens, Gram and eigenvectors."""
    lengths = np.asarray(lengths, dtype=np.int64)
    dim = 16
    chunks = _length_chunks(lengths, dim, chunk_docs, chunk_bytes)
    np.testing.assert_array_equal(np.sort(np.concatenate(chunks)), np.arange(len(lengths)))
    ordered = np.concatenate([lengths[chunk] for chunk in chunks])
    assert np.all(np.diff(ordered) >= 0)
    for chunk in chunks:
        width = int(lengths[chunk].max())
        assert len(chunk) <= chunk_docs
        assert len(chunk) == 1 or 8 * len(chunk) * width * (dim + 2 * width) <= chunk_bytes
