"""The evaluation's token store kept out of a sharded pass equals the store a second encode would make, sits in
the cache under the same key, and is never published half-filled (mock encoder; the real model marked slow)."""

from __future__ import annotations

import numpy as np
import pytest
from test_encode import forward_atol

from rag_diag.collapse.summaries import stream_summaries
from rag_diag.corpora.io import hash_texts
from rag_diag.errors import RagDiagError
from rag_diag.tokens.cache import cache_key, entry_path
from rag_diag.tokens.extract import encode_texts, parse_layers
from rag_diag.tokens.subset import kept_store

FILES = ("offsets", "token_ids", "special_mask", "full_lengths")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty token cache, so the writer runs (the session's cache may hold these stores already)."""
    monkeypatch.setenv("RAG_DIAG_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _corpus(tiny_texts):
    texts = [f"{text} Section {n}: {' '.join(['word'] * (3 * n % 11))}." for n in range(5) for text in tiny_texts]
    return [f"d{n}" for n in range(len(texts))], texts


def _keep(encoder, ids, texts, rows, shard_docs):
    layers = parse_layers("last", encoder.num_layers)
    with kept_store(encoder, ids, texts, rows, layers) as (writer, kept):
        assert writer is not None
        stream_summaries(texts, ids, encoder, 2, shard_docs=shard_docs, keep=writer.take)
    return kept[0]


def test_kept_rows_are_the_store_of_a_second_encode(cache, mock_encoder, tiny_texts):
    """Rows in the first, middle and last shards (shards of 4): the mock encoder is per-token deterministic, so the
    kept store is the subset's own store bit for bit; a later encode of the subset is a cache hit."""
    ids, texts = _corpus(tiny_texts)
    rows = np.array([0, 3, 4, 9, len(texts) - 1])
    kept = _keep(mock_encoder, ids, texts, rows, shard_docs=4)
    again = encode_texts([texts[r] for r in rows], model=mock_encoder, ids=[ids[r] for r in rows])
    assert again.report is not None and again.report.cache_hit and again.path == kept.path
    fresh = encode_texts([texts[r] for r in rows], model=mock_encoder, ids=[ids[r] for r in rows], cache=False,
                         out=cache.parent / "fresh")
    assert kept.doc_ids == fresh.doc_ids == [ids[r] for r in rows]
    np.testing.assert_array_equal(np.asarray(kept.embeddings), np.asarray(fresh.embeddings))
    for name in FILES:
        np.testing.assert_array_equal(np.asarray(getattr(kept, name)), np.asarray(getattr(fresh, name)))
    assert kept.manifest["key"] == fresh.manifest["key"]
    assert kept.manifest["n_truncated"] == fresh.manifest["n_truncated"]


def test_a_cached_subset_is_not_written_again(cache, mock_encoder, tiny_texts):
    ids, texts = _corpus(tiny_texts)
    first = _keep(mock_encoder, ids, texts, np.array([1, 2, 7]), shard_docs=5)
    layers = parse_layers("last", mock_encoder.num_layers)
    with kept_store(mock_encoder, ids, texts, np.array([1, 2, 7]), layers) as (writer, kept):
        assert writer is None
    assert kept[0].path == first.path
    np.testing.assert_array_equal(np.asarray(kept[0].embeddings), np.asarray(first.embeddings))


def test_an_interrupted_or_incomplete_pass_publishes_nothing(cache, mock_encoder, tiny_texts):
    ids, texts = _corpus(tiny_texts)
    layers = parse_layers("last", mock_encoder.num_layers)
    rows = np.array([2, 6])
    with pytest.raises(KeyboardInterrupt), kept_store(mock_encoder, ids, texts, rows, layers):
        raise KeyboardInterrupt
    with pytest.raises(RagDiagError, match="skipped 1 of the 2 kept texts"), \
            kept_store(mock_encoder, ids, texts, rows, layers) as (writer, _):
        assert writer is not None
        shard = encode_texts(texts[:4], model=mock_encoder, ids=ids[:4])
        writer.take(shard, 0)  # row 6 is in no shard given
    subset = [ids[r] for r in rows], [texts[r] for r in rows]
    subset_key = cache_key(mock_encoder, layers, "float32", hash_texts(*subset))
    assert not entry_path(subset_key).exists()
    with pytest.raises(RagDiagError, match="other tokens than its tokenisation"), \
            kept_store(mock_encoder, ids, texts, rows, layers) as (writer, _):
        assert writer is not None
        writer.take(encode_texts(texts[1:5], model=mock_encoder, ids=ids[1:5]), 0)  # off by one row
    assert not entry_path(subset_key).exists()
    assert not [path for path in entry_path(subset_key).parent.iterdir() if path.name.startswith(f".{subset_key}")]


@pytest.mark.slow
def test_kept_rows_match_a_second_encode_on_the_real_model(cache, minilm, licences):
    """all-MiniLM-L6-v2 in shards of 5: each kept text was batched with other texts than in a second encode of the
    subset, so its states differ by float32 round-off only (the estimate of ``test_encode.forward_atol``)."""
    doc_ids, texts, _ = licences
    rows = np.array([0, 4, 5, 9, len(texts) - 1])
    kept = _keep(minilm, doc_ids, texts, rows, shard_docs=5)
    fresh = encode_texts([texts[r] for r in rows], model=minilm, ids=[doc_ids[r] for r in rows], cache=False,
                         out=cache.parent / "fresh")
    for name in FILES:
        np.testing.assert_array_equal(np.asarray(getattr(kept, name)), np.asarray(getattr(fresh, name)))
    states = np.asarray(kept.embeddings)
    np.testing.assert_allclose(states, np.asarray(fresh.embeddings), atol=forward_atol(states), rtol=0)
