"""The pre-run estimate: exact counts from the tokenizer, a time calibrated on a seeded sample."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rag_diag.tokens.estimate import estimate_encode
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
    # the extrapolation: calibration time scaled by the token ratio, so doubling the corpus doubles it
    assert estimate.seconds == pytest.approx(estimate.calibration_seconds * estimate.n_tokens / _sample_tokens(
        texts, mock_encoder, 10, 3), rel=1e-12)
    assert "forward passes" in estimate.line() and f"{len(texts):,} documents" in estimate.line()


def _sample_tokens(texts, encoder, calibration, seed):
    from rag_diag.sampling import seeded_sample

    lengths = [len(ids) for ids in encoder.tokenize(texts).input_ids]
    return sum(lengths[row] for row in seeded_sample(len(texts), calibration, seed))

