"""The pre-run estimate: exact counts from the tokenizer, a time calibrated on a seeded sample."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rag_diag.sampling import seeded_sample
from rag_diag.tokens.estimate import BATCH_TOKENS, batch_slices, estimate_encode, padded_tokens
from rag_diag.tokens.extract import encode_texts


def test_counts_match_the_token_store_the_pass_then_writes(mock_encoder, tiny_texts, tmp_path):
    texts = [f"{text} ({n})" for n in range(7) for text in tiny_texts]
    estimate = estimate_encode(texts, mock_encoder, batch_size=8, calibration=10, seed=3)
    store = encode_texts(texts, model=mock_encoder, batch_size=8, cache=False, out=tmp_path / "store")
    assert estimate.n_documents == len(texts) == len(store)
    assert estimate.n_tokens == int(store.offsets[-1])  # the tokens the store holds, special tokens included
    assert estimate.n_truncated == int(store.truncated.sum())
    assert estimate.forward_passes == math.ceil(len(texts) / 8) == store.report.forward_passes
    assert estimate.store_bytes == int(store.offsets[-1]) * mock_encoder.dim * 4
    assert estimate.store_bytes == np.load(store.path / "embeddings.npy", mmap_mode="r").nbytes
    assert estimate.calibration_documents == 10 and estimate.seconds > 0
    # the extrapolation: calibration time scaled by the padded sizes (sorted batches of 8)
    lengths = [len(ids) for ids in mock_encoder.tokenize(texts).input_ids]
    sample = [lengths[row] for row in seeded_sample(len(texts), 10, 3)]
    assert estimate.seconds == pytest.approx(
        estimate.calibration_seconds * padded_tokens(lengths, 8) / padded_tokens(sample, 8), rel=1e-12)
    assert "forward passes" in estimate.line() and f"{len(texts):,} documents" in estimate.line()



def test_padded_tokens_by_hand():
    # longest first 9 5 3 | 2 1: batches of 3 → 3·9 + 2·2 = 31; one batch → 5·9 = 45; singletons → the sum, 20
    assert padded_tokens([5, 1, 9, 3, 2], 3) == 31
    assert padded_tokens([5, 1, 9, 3, 2], 5) == 45
    assert padded_tokens([5, 1, 9, 3, 2], 1) == 20


def test_long_texts_batch_by_padded_tokens():
    # BATCH_TOKENS = 4096: 3000 alone, 3000 alone, then 2000 with room for ⌊4096/2000⌋ = 2 texts: (2000, 100), (50)
    assert BATCH_TOKENS == 4096
    lengths = [3000, 3000, 2000, 100, 50]
    assert batch_slices(lengths, 32) == [slice(0, 1), slice(1, 2), slice(2, 4), slice(4, 5)]
    assert padded_tokens(lengths, 32) == 3000 + 3000 + 2 * 2000 + 50
    # short texts fill the batch size: 40 texts of 100 tokens in batches of 32 and 8
    assert batch_slices([100] * 40, 32) == [slice(0, 32), slice(32, 40)]


def test_the_pass_runs_the_batches_the_estimate_counts(mock_encoder, tmp_path, monkeypatch):
    import rag_diag.tokens.estimate as estimate_module

    monkeypatch.setattr(estimate_module, "BATCH_TOKENS", 40)  # a window of mock tokens: long texts go alone
    texts = ["word " * n for n in (3, 50, 7, 60, 2, 30, 12, 5)]
    estimate = estimate_encode(texts, mock_encoder, batch_size=4, calibration=8, seed=0)
    store = encode_texts(texts, model=mock_encoder, batch_size=4, cache=False, out=tmp_path / "store")
    lengths = sorted(store.lengths.tolist(), reverse=True)
    assert estimate.forward_passes == store.report.forward_passes == len(batch_slices(lengths, 4))
    assert estimate.forward_passes > math.ceil(len(texts) / 4)  # the token cap split batches
