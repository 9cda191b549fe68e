"""The pre-run estimate: exact counts from the tokenizer, a time calibrated on a seeded sample."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rag_diag.sampling import seeded_sample
from rag_diag.tokens.estimate import estimate_encode, padded_tokens
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
    # sorted 1 2 3 | 5 9: batches of 3 → 3·3 + 2·9 = 27; one batch → 5·9 = 45; singletons → the sum, 20
    assert padded_tokens([5, 1, 9, 3, 2], 3) == 27
    assert padded_tokens([5, 1, 9, 3, 2], 5) == 45
    assert padded_tokens([5, 1, 9, 3, 2], 1) == 20
