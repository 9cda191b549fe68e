"""Windowed encoding: only documents cut by the window are chunked; chunk vectors are their own passes."""

from __future__ import annotations

import numpy as np

from rag_diag.corpora.io import Corpus, Queries
from rag_diag.models.mock import MockEncoder
from rag_diag.retrieval.windowed import WindowedIndex, chunk_words, fits_window
from rag_diag.tokens.extract import encode_texts

ENCODER = MockEncoder(max_seq_length=32)  # 32-token window → 16-word chunks, 4 words of overlap
WORDS = [f"w{i}" for i in range(80)]
CORPUS = Corpus(
    ids=["fits-long", "cut", "short"],
    texts=[" ".join(WORDS[:20]), " ".join(WORDS[20:80]), "a short text"],  # 22, 62 and 5 tokens
)


def unit(matrix: np.ndarray) -> np.ndarray:
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def stored_vectors(index: WindowedIndex) -> np.ndarray:
    return index.index.reconstruct_n(0, index.index.ntotal)


def test_chunk_words_by_hand():
    assert chunk_words("a b c", 4, 1) == ["a b c"]
    assert chunk_words("a b c d e f g", 4, 1) == ["a b c d", "d e f g"]  # no chunk of overlap words only


def test_only_texts_cut_by_the_window_are_chunked(tmp_path):
    np.testing.assert_array_equal(fits_window(CORPUS.texts, ENCODER), [True, False, True])
    whole = encode_texts(CORPUS.texts, model=ENCODER, ids=CORPUS.ids, out=tmp_path / "whole", cache=False)
    np.testing.assert_array_equal(fits_window(CORPUS.texts, ENCODER, whole), [True, False, True])
    index = WindowedIndex.build(CORPUS, ENCODER, whole)
    chunks = chunk_words(CORPUS.texts[1], 16, 4)
    assert len(chunks) == 5
    # the two texts that fit keep their whole-text vector; the cut one gets one vector per chunk, its own pass
    np.testing.assert_array_equal(index.chunk_doc, [0, 2, 1, 1, 1, 1, 1])
    expected = np.concatenate([
        unit(whole.means()[[0, 2]]),
        unit(encode_texts(chunks, model=ENCODER, out=tmp_path / "chunks", cache=False).means()),
    ])
    np.testing.assert_allclose(stored_vectors(index), expected, atol=1e-6)
    # without the corpus' token store the same vectors come from fresh passes (in corpus order)
    fresh = WindowedIndex.build(CORPUS, ENCODER)
    np.testing.assert_array_equal(fresh.chunk_doc, [0, 1, 1, 1, 1, 1, 2])
    np.testing.assert_allclose(stored_vectors(fresh), expected[[0, 2, 3, 4, 5, 6, 1]], atol=1e-6)


def test_a_query_matching_the_tail_finds_the_cut_document(tmp_path):
    tail = chunk_words(CORPUS.texts[1], 16, 4)[-1]
    index = WindowedIndex.build(CORPUS, ENCODER)
    queries = Queries(ids=["q"], texts=[tail])
    query_store = encode_texts(queries.texts, model=ENCODER, ids=queries.ids, out=tmp_path / "q", cache=False)
    run = index.search(queries, query_store, depth=3)
    best = next(iter(run["q"].items()))
    assert best[0] == "cut"
    np.testing.assert_allclose(best[1], 1.0, atol=1e-5)
