"""Means without a token store (windowed chunks): equal to the store's means, cached by content, no store written.

Both routes sum the same float32 states in float64 and divide by n, in possibly another order; the float64
results differ by far less than half a float32 ulp, so after rounding to float32 they are at most one ulp apart.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest

from rag_diag.models.mock import MockEncoder
from rag_diag.tokens.extract import encode_texts
from rag_diag.tokens.means import encode_means, means_path

MOCK = MockEncoder(max_seq_length=16)
TEXTS = ["a short text", " ".join(f"w{i}" for i in range(40)), "three words here", "one"]  # the second is cut


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("RAG_DIAG_CACHE", str(tmp_path / "cache"))


def store_means(texts: list[str], encoder, folder) -> np.ndarray:
    return encode_texts(texts, model=encoder, out=folder, cache=False, batch_size=2).means()


def test_means_equal_the_store_means_and_count_the_cut_texts(tmp_path):
    means, truncated = encode_means(TEXTS, MOCK, batch_size=2)
    np.testing.assert_array_max_ulp(means, store_means(TEXTS, MOCK, tmp_path / "store"), maxulp=1)
    assert truncated == MOCK.tokenize(TEXTS).n_truncated == 1
    assert not (tmp_path / "cache" / "tokens").exists()  # no token store was written


def save(path, means: np.ndarray, crc: int | None = None) -> None:
    np.savez(path, means=means, crc32=np.uint32(zlib.crc32(means.tobytes()) if crc is None else crc))


def test_the_cache_is_read_and_a_wrong_file_is_replaced():
    means, _ = encode_means(TEXTS, MOCK)
    path = means_path(TEXTS, MOCK)
    planted = np.full_like(means, 7.0)
    save(path, planted)
    np.testing.assert_array_equal(encode_means(TEXTS, MOCK)[0], planted)  # read, not encoded again
    for wrong in (lambda: save(path, planted[:2]),  # another shape
                  lambda: save(path, planted, crc=zlib.crc32(planted.tobytes()) ^ 1),  # damaged
                  lambda: save(path, planted.astype(np.float64)),  # another dtype
                  lambda: path.write_bytes(b"not an array")):
        wrong()
        np.testing.assert_array_equal(encode_means(TEXTS, MOCK)[0], means)  # encoded again
        with np.load(path) as rewritten:
            np.testing.assert_array_equal(rewritten["means"], means)


def test_the_key_follows_the_texts_and_their_order():
    assert means_path(TEXTS, MOCK) != means_path(TEXTS[::-1], MOCK)
    assert means_path(TEXTS, MOCK) != means_path([*TEXTS[:-1], "two"], MOCK)
    assert means_path(TEXTS, MOCK) != means_path(TEXTS, MockEncoder(max_seq_length=32))


@pytest.mark.slow
def test_real_model_means_equal_the_store_means(minilm, tiny_texts, tmp_path):
    long_text = " ".join(tiny_texts * 12)  # ≈ 280 words: over the 256-token window
    texts = [*tiny_texts, long_text]
    means, truncated = encode_means(texts, minilm, batch_size=2)
    np.testing.assert_array_max_ulp(means, store_means(texts, minilm, tmp_path / "store"), maxulp=1)
    assert truncated == 1
