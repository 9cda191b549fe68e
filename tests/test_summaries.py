"""Bounded-memory collapse: shard-built summaries equal the one-store ones, and the error bound they report
holds against exact SOCM (mock encoder for the maths, the real default model marked slow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_collapse import gram_atol

from rag_diag.collapse.knn import covariance_summary, knn_collapse
from rag_diag.collapse.socm import PairStats, reference_bw2
from rag_diag.collapse.summaries import (
    MAX_RANK,
    bound_summary,
    plan_memory,
    rounding_slack,
    socm_error_bound,
    socm_error_sides,
    stream_summaries,
)
from rag_diag.tokens.extract import encode_texts

RANK = 2


def _texts(tiny_texts):
    return [f"{text} Clause {n}: {' '.join(['term'] * (n % 9))}." for n in range(6) for text in tiny_texts]


def test_shards_give_the_summaries_of_one_store(mock_encoder, tiny_texts):
    """The mock encoder is per-token deterministic (no cross-token attention), so a shard's token rows are
    the one-store rows bit for bit and the summaries agree to float64 eigen-solver rounding."""
    texts = _texts(tiny_texts)
    ids = [f"d{n}" for n in range(len(texts))]
    whole = covariance_summary(encode_texts(texts, model=mock_encoder, ids=ids), RANK)
    streamed = stream_summaries(texts, ids, mock_encoder, RANK, shard_docs=7)
    assert streamed.n_shards == -(-len(texts) // 7) and streamed.summary.means.shape == whole.means.shape
    np.testing.assert_allclose(streamed.summary.means, whole.means, atol=1e-6, rtol=0)
    # F is defined up to a rotation within the top-r eigenspace: compare FᵀF, the rank-r covariance
    rebuilt = np.einsum("nrd,nre->nde", streamed.summary.factors, streamed.summary.factors)
    expected = np.einsum("nrd,nre->nde", whole.factors, whole.factors)
    np.testing.assert_allclose(rebuilt, expected, atol=1e-5, rtol=0)  # float32 factors of entries ≤ ~10: 1e-6 relative
    np.testing.assert_allclose(streamed.summary.tail, whole.tail, atol=1e-9, rtol=1e-9)
    np.testing.assert_array_equal(streamed.summary.text_stats.n_tokens, whole.text_stats.n_tokens)


def test_reported_bound_holds_against_exact_socm(mock_encoder, tiny_texts):
    texts = _texts(tiny_texts)
    ids = [f"d{n}" for n in range(len(texts))]
    store = encode_texts(texts, model=mock_encoder, ids=ids)
    exact = knn_collapse(store, 3)
    streamed = stream_summaries(texts, ids, mock_encoder, RANK, shard_docs=10)
    approx = knn_collapse(None, 3, summary=streamed.summary)
    np.testing.assert_array_equal(approx.doc_b, exact.doc_b)  # the same neighbours: means are exact
    bound = socm_error_bound(approx.pairs, streamed.summary.tail[approx.doc_a], streamed.summary.tail[approx.doc_b])
    assert (bound > 0).any()  # rank 2 drops something here: the check below is not vacuous
    width = int(store.lengths.max())
    concentration = exact.text_stats.concentration  # tr of the normalised covariance, the bound's trace scale
    for row, (a, b) in enumerate(zip(exact.doc_a, exact.doc_b, strict=True)):
        # the bound is exact maths; each side is one Gram-route evaluation with its own rounding (width n or r)
        rounding = (gram_atol(width, store.dim, concentration[a], concentration[b])
                    + gram_atol(RANK, store.dim, concentration[a], concentration[b]))
        assert abs(exact.pairs.socm[row] - approx.pairs.socm[row]) <= bound[row] + rounding
    below, above = socm_error_sides(approx.pairs, streamed.summary.tail[approx.doc_a],
                                    streamed.summary.tail[approx.doc_b])
    assert above.sum() < bound.sum()  # the upper side is tighter than the symmetric bound here
    difference = exact.pairs.socm - approx.pairs.socm
    rounding = 2 * gram_atol(width, store.dim, concentration.max(), concentration.max())
    assert np.all(difference <= above + rounding) and np.all(-difference <= below + rounding)
    low, high = bound_summary(approx, streamed.summary, RANK)["mean_collapse_rate_interval"]
    assert low - rounding <= exact.collapse_mean.mean() <= high + rounding


def test_nothing_truncated_is_exact_up_to_the_reported_rounding(mock_encoder, tiny_texts):
    """A rank above every text's length drops nothing (τ = 0): every pair counts as exact, and what is left between
    SOCM_r and SOCM is rounding, which the reported slack (float32 summaries, r-row Gram route) and the exact
    route's own evaluation bound; the reported interval then holds the exact mean to the exact route's rounding."""
    texts = _texts(tiny_texts)
    store = encode_texts(texts, model=mock_encoder, ids=[f"d{n}" for n in range(len(texts))])
    width = int(store.lengths.max())
    full = min(width, store.dim)  # a centred n × d matrix has rank ≤ min(n − 1, d)
    summary = covariance_summary(store, full)
    exact, approx = knn_collapse(store, 3), knn_collapse(None, 3, summary=summary)
    np.testing.assert_array_equal(approx.doc_b, exact.doc_b)
    reported = bound_summary(approx, summary, full)
    assert reported["share_pairs_exact"] == 1.0 and reported["max_rounding_slack"] > 0.0
    slack = rounding_slack(approx, summary)
    concentration = exact.text_stats.concentration
    for row, (a, b) in enumerate(zip(exact.doc_a, exact.doc_b, strict=True)):
        exact_route = gram_atol(width, store.dim, concentration[a], concentration[b])
        assert abs(exact.pairs.socm[row] - approx.pairs.socm[row]) <= slack[row] + exact_route
    low, high = reported["mean_collapse_rate_interval"]
    exact_route = gram_atol(width, store.dim, concentration.max(), concentration.max())
    assert low - exact_route <= exact.collapse_mean.mean() <= high + exact_route
    assert high - low <= 2 * float(slack.max())  # no truncation: the interval is the rounding alone


def test_sides_on_a_hand_example_where_truncation_overestimates():
    """Σ1 = diag(1, 0.01), Σ2 = diag(0.04, 1), rank 1: Σ1_r = diag(1, 0), Σ2_r = diag(0, 1), so BW_r² = 2 and
    τ = (0.01, 0.04); exactly (commuting) BW² = (1 − 0.2)² + (0.1 − 1)² = 1.45. With equal means SOCM = 1.45/4
    = 0.3625 < SOCM_r = 0.5: the truncated value is too high here, by 0.1375, within below =
    (2 − (√2 − 0.3)²)/4 ≈ 0.1896; above = (0.01 + 0.04)/4 = 0.0125."""
    exact = reference_bw2(np.diag([1.0, 0.01]), np.diag([0.04, 1.0])) / 4.0
    assert exact == pytest.approx(0.3625, abs=1e-12)
    truncated = PairStats(d_mu=np.array([0.0]), d_sigma=np.array([0.5]), socm=np.array([0.5]), cos=np.array([1.0]))
    below, above = socm_error_sides(truncated, np.array([0.01]), np.array([0.04]))
    assert below[0] == pytest.approx((2.0 - (np.sqrt(2.0) - 0.3) ** 2) / 4.0, abs=1e-12)
    assert above[0] == pytest.approx(0.0125, abs=1e-15)
    assert 0.5 - below[0] <= exact <= 0.5 + above[0]
    assert socm_error_bound(truncated, np.array([0.01]), np.array([0.04]))[0] == below[0]


@pytest.mark.slow
def test_bound_holds_on_the_real_model(minilm, licences):
    doc_ids, texts, _ = licences
    store = encode_texts(texts, model=minilm, ids=doc_ids)
    exact = knn_collapse(store, 3)
    streamed = stream_summaries(texts, doc_ids, minilm, 4, shard_docs=6)
    approx = knn_collapse(None, 3, summary=streamed.summary)
    bound = socm_error_bound(approx.pairs, streamed.summary.tail[approx.doc_a], streamed.summary.tail[approx.doc_b])
    width = int(store.lengths.max())
    concentration = exact.text_stats.concentration[exact.doc_a], exact.text_stats.concentration[exact.doc_b]
    rounding = np.array([gram_atol(width, store.dim, ca, cb) + gram_atol(4, store.dim, ca, cb)
                         for ca, cb in zip(*concentration, strict=True)])
    # shards batch (and pad) the texts differently: the states differ by float32 rounding, which moves SOCM by
    # far less than this margin (measured here: the bound exceeds the error by ≥ 0.5 on every pair)
    assert np.all(np.abs(exact.pairs.socm - approx.pairs.socm) <= bound + rounding)
    # the two sides on the same states (the store's own summaries): the upper side has no slack to spare for the
    # shards' different batching, so only the two Gram-route roundings and the float32 factors remain
    whole = covariance_summary(store, 4)
    same = knn_collapse(None, 3, summary=whole)
    np.testing.assert_array_equal(same.doc_b, exact.doc_b)
    below, above = socm_error_sides(same.pairs, whole.tail[same.doc_a], whole.tail[same.doc_b])
    difference = exact.pairs.socm - same.pairs.socm
    # float32 factors: each moves by ≤ 2⁻²⁴·√tr, BW_r by ≤ 2⁻²⁴·(√tr₁ + √tr₂) = ρ, BW_r²/4 by ≤ ρ·(2·BW_r + ρ)/4
    rho = 2.0**-24 * (np.sqrt(concentration[0]) + np.sqrt(concentration[1]))
    factors = rho * (4.0 * np.sqrt(same.pairs.d_sigma) + rho) / 4.0
    assert np.all(difference <= above + rounding + factors) and np.all(-difference <= below + rounding + factors)
    np.testing.assert_array_equal(streamed.full_lengths, store.full_lengths)


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS"))


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_release_heap_returns_the_pages_of_freed_buffers():
    """Buffers under glibc's mmap threshold live in the heap; freeing nine in ten leaves their pages mapped (the
    survivors pin the heap), and ``release_heap`` gives at least half of the freed 180 MB back."""
    import ctypes

    from rag_diag.progress import release_heap

    if not hasattr(ctypes.CDLL(None), "malloc_trim"):
        pytest.skip("no glibc malloc_trim here")
    size = 100 * 1024  # below the 128 KiB mmap threshold: heap memory
    buffers = [bytearray(size) for _ in range(2000)]
    for buffer in buffers:
        buffer[::4096] = b"x" * len(buffer[::4096])  # touch every page
    kept = buffers[::10]
    del buffers
    before = _rss_bytes()
    assert release_heap()
    freed = before - _rss_bytes()
    assert freed >= 0.5 * 1800 * size, f"only {freed / 2**20:.0f} MiB given back"
    assert len(kept) == 200


def test_plan_keeps_max_rank_on_disk_unless_max_store_caps_it():
    """Summaries take MAX_RANK whatever the memory budget (their factors are on disk); --max-store caps their
    disk, r = ⌊max_store / (N·d·4)⌋ (at least 1); a store that fits half the budget stays a token store."""
    n_docs, dim, tokens = 100_000, 384, 6_700_000
    store = tokens * dim * 4
    big = plan_memory(n_docs, tokens, store, dim, budget_bytes=2 * 2**30)
    assert big.mode == "summaries" and big.rank == MAX_RANK
    assert big.summary_bytes == n_docs * MAX_RANK * dim * 4
    assert plan_memory(n_docs, tokens, store, dim, budget_bytes=2**20).rank == MAX_RANK  # RAM does not cap r
    capped = plan_memory(n_docs, tokens, store, dim, max_store_bytes=5 * n_docs * dim * 4 + 1)
    assert capped.rank == 5 and capped.summary_bytes == 5 * n_docs * dim * 4
    assert plan_memory(n_docs, tokens, store, dim, max_store_bytes=1).rank == 1
    small = plan_memory(1000, 67_000, 67_000 * dim * 4, dim)
    assert small.mode == "token-store" and small.rank is None and small.summary_bytes == 0
    assert "exact kNN collapse" in small.line()
    assert f"rank-{MAX_RANK} summaries" in big.line() and f"shards of {big.shard_docs:,} documents" in big.line()
    assert f"{n_docs * MAX_RANK * dim * 4 / 2**20:,.0f} MiB" in big.line()  # 4,688 MiB of factors


def test_streamed_factors_live_on_disk(mock_encoder, tiny_texts):
    texts = _texts(tiny_texts)
    streamed = stream_summaries(texts, [f"d{n}" for n in range(len(texts))], mock_encoder, RANK, shard_docs=7)
    assert isinstance(streamed.summary.factors, np.memmap)


def test_means_over_the_spill_size_live_on_disk_and_collapse_as_in_memory(mock_encoder, tiny_texts, monkeypatch):
    """With every array over SPILL_BYTES (set to 0 here; 147 MiB of means at 100,000 × 384 in a real pass), the
    means go to disk too, and kNN collapse on them finds the same neighbours and rates as on means in memory."""
    import rag_diag.collapse.spill as spill

    texts = _texts(tiny_texts)
    ids = [f"d{n}" for n in range(len(texts))]
    in_memory = stream_summaries(texts, ids, mock_encoder, RANK, shard_docs=7)
    monkeypatch.setattr(spill, "SPILL_BYTES", 0)
    on_disk = stream_summaries(texts, ids, mock_encoder, RANK, shard_docs=7)
    assert isinstance(on_disk.summary.means, np.memmap) and not isinstance(in_memory.summary.means, np.memmap)
    np.testing.assert_array_equal(on_disk.summary.means, in_memory.summary.means)
    want, got = knn_collapse(None, 3, summary=in_memory.summary), knn_collapse(None, 3, summary=on_disk.summary)
    np.testing.assert_array_equal(got.doc_b, want.doc_b)
    np.testing.assert_array_equal(got.pairs.socm, want.pairs.socm)


def test_the_plan_counts_the_forward_passes_the_shards_run(tmp_path):
    """Shards of 3 consecutive texts, each sorted and batched alone: the plan's count is the sum of what each
    shard's encoder pass reports, more than the unsharded count when shards end in short batches."""
    from rag_diag.models.mock import MockEncoder
    from rag_diag.tokens.estimate import batch_slices, estimate_encode, sharded_passes

    encoder = MockEncoder()
    texts = [" ".join(f"t{i}w{j}" for j in range(3 + 5 * i)) for i in range(8)]
    estimate = estimate_encode(texts, encoder)
    shard, batch = 3, 2
    ran = sum(encode_texts(texts[s : s + shard], model=encoder, cache=False, out=tmp_path / f"s{s}", batch_size=batch)
              .report.forward_passes for s in range(0, len(texts), shard))
    assert sharded_passes(estimate.lengths, shard, batch) == ran == 2 + 2 + 1  # shards of 3, 3 and 2 texts
    assert len(batch_slices(sorted(estimate.lengths, reverse=True), batch)) == 4
    dim = encoder.dim
    plan = plan_memory(8, estimate.n_tokens, estimate.store_bytes, dim, budget_bytes=1, lengths=estimate.lengths)
    assert plan.mode == "summaries" and plan.forward_passes == sharded_passes(estimate.lengths, plan.shard_docs)
    assert f"{plan.forward_passes:,} forward passes" in plan.line()
    ray = plan_memory(8, estimate.n_tokens, estimate.store_bytes, dim, summaries=True, lengths=estimate.lengths)
    assert ray.forward_passes is None and "by Ray actors" in ray.line() and "shards" not in ray.line()
