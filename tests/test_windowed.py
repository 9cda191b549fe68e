"""Windowed encoding: only documents cut by the window are chunked; chunk vectors are their own passes."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from rag_diag.corpora.io import Corpus, Queries
from rag_diag.models.mock import MockEncoder
from rag_diag.retrieval.windowed import WindowedIndex, chunk_words, fit_to_window, fits_window
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
    np.testing.assert_array_equal(fits_window(CORPUS.texts, ENCODER, whole.lengths), [True, False, True])
    index = WindowedIndex.build(CORPUS, ENCODER, whole)
    chunks = chunk_words(CORPUS.texts[1], 16, 4)
    assert len(chunks) == 5
    # the two texts that fit keep their whole-text vector; the cut one gets one vector per chunk, its own pass
    np.testing.assert_array_equal(index.chunk_doc, [0, 2, 1, 1, 1, 1, 1])
    expected = np.concatenate([
        unit(whole.means()[[0, 2]]),
        unit(encode_texts(chunks, model=ENCODER, out=tmp_path / "chunks", cache=False).means()),
    ])
    np.testing.assert_allclose(stored_vectors(index), expected, atol=1e-6, rtol=0)
    # without the corpus' token store the same vectors come from fresh passes (in corpus order)
    fresh = WindowedIndex.build(CORPUS, ENCODER)
    np.testing.assert_array_equal(fresh.chunk_doc, [0, 1, 1, 1, 1, 1, 2])
    np.testing.assert_allclose(stored_vectors(fresh), expected[[0, 2, 3, 4, 5, 6, 1]], atol=1e-6, rtol=0)


def test_a_query_matching_the_tail_finds_the_cut_document(tmp_path):
    tail = chunk_words(CORPUS.texts[1], 16, 4)[-1]
    index = WindowedIndex.build(CORPUS, ENCODER)
    queries = Queries(ids=["q"], texts=[tail])
    query_store = encode_texts(queries.texts, model=ENCODER, ids=queries.ids, out=tmp_path / "q", cache=False)
    run = index.search(queries, query_store, depth=3)
    best = next(iter(run["q"].items()))
    assert best[0] == "cut"
    np.testing.assert_allclose(best[1], 1.0, atol=1e-5, rtol=0)


def dense(words: list[str]) -> str:
    """Each word made of three mock pieces (``x-y-z``), so a chunk of W/2 words overflows a W-token window."""
    return " ".join(f"{word}-a-b" for word in words)


def word_runs(chunks: list[str], words: list[str]) -> list[range]:
    """The run of ``words`` (distinct) that each chunk is, failing if a chunk is not one contiguous run."""
    runs = []
    for chunk in chunks:
        first = words.index(chunk.split()[0])
        run = range(first, first + len(chunk.split()))
        assert chunk.split() == words[run.start : run.stop]
        runs.append(run)
    return runs


def test_chunks_dense_in_tokens_are_cut_again_until_they_fit(tmp_path):
    words = [f"d{i}" for i in range(20)]
    corpus = Corpus(ids=["dense", "dense-short"], texts=[dense(words), dense(words[:12])])  # 62 and 38 tokens
    index = WindowedIndex.build(corpus, ENCODER)
    # 16-word chunks are 50 tokens: each is cut into 8-word chunks (2 words of overlap), 26 tokens; the short
    # text, one 16-word chunk before, is cut too (6-word chunks: 20 tokens)
    chunks = [piece for parts in fit_to_window(chunk_words(corpus.texts[0], 16, 4), ENCODER) for piece in parts]
    runs = word_runs(chunks, dense(words).split())
    assert [(run.start, run.stop) for run in runs] == [(0, 8), (6, 14), (12, 16), (12, 20)]
    short = fit_to_window([corpus.texts[1]], ENCODER)[0]
    assert [(run.start, run.stop) for run in word_runs(short, dense(words[:12]).split())] == [(0, 6), (5, 11), (10, 12)]
    assert max(ENCODER.tokenize(chunks + short).full_lengths) <= ENCODER.max_seq_length
    assert index.n_chunks_truncated == 0
    np.testing.assert_array_equal(index.chunk_doc, [0] * len(chunks) + [1] * len(short))
    expected = unit(encode_texts(chunks + short, model=ENCODER, out=tmp_path / "chunks", cache=False).means())
    np.testing.assert_allclose(stored_vectors(index), expected, atol=1e-6, rtol=0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=12), min_size=1, max_size=60))
def test_fitted_chunks_fit_and_cover_every_word_in_order(pieces_per_word):
    """Whatever the tokens per word: every chunk fits the window unless it is one word, every chunk is a run of
    the text's words, and together they hold every word. (Not in order of start: the halves of two overlapping
    chunks interleave, which the best-chunk score does not see.)"""
    words = [f"w{i}" + "-p" * (n - 1) for i, n in enumerate(pieces_per_word)]
    chunks = fit_to_window([" ".join(words)], ENCODER)[0]
    lengths = ENCODER.tokenize(chunks).full_lengths
    assert all(n <= ENCODER.max_seq_length or len(chunk.split()) == 1 for chunk, n in zip(chunks, lengths, strict=True))
    assert set().union(*word_runs(chunks, words)) == set(range(len(words)))


def test_windowed_rerank_reorders_the_head_by_best_chunk_and_keeps_the_tail(tmp_path):
    """rerank-windowed: the head's scores are max over each document's chunk cosines, computed here in float64 from
    the chunks' own passes; the head is sorted by them, the tail keeps the first stage's order and scores."""
    from rag_diag.evaluation.candidates import windowed_rerank_run
    from rag_diag.evaluation.result import Ranking

    whole = encode_texts(CORPUS.texts, model=ENCODER, ids=CORPUS.ids, out=tmp_path / "whole", cache=False)
    index = WindowedIndex.build(CORPUS, ENCODER, whole)
    tail = chunk_words(CORPUS.texts[1], 16, 4)[-1]  # matches the cut document's last chunk, beyond the window
    query_store = encode_texts([tail, "a short text"], model=ENCODER, ids=["q-tail", "q-short"],
                               out=tmp_path / "q", cache=False)
    first = {"q-tail": Ranking(["short", "fits-long", "cut"], np.array([0.9, 0.8, 0.1])),
             "q-short": Ranking(["cut", "short", "fits-long"], np.array([0.7, 0.6, 0.5]))}
    run = windowed_rerank_run(index, first, query_store, depth=2)
    chunks = encode_texts(chunk_words(CORPUS.texts[1], 16, 4), model=ENCODER, out=tmp_path / "c", cache=False)
    vectors = {"fits-long": unit(whole.means()[[0]].astype(np.float64)),
               "short": unit(whole.means()[[2]].astype(np.float64)),
               "cut": unit(chunks.means().astype(np.float64))}
    for query_id, query in zip(["q-tail", "q-short"], unit(query_store.means().astype(np.float64)), strict=True):
        head = first[query_id].doc_ids[:2]
        want = {doc: float((vectors[doc] @ query).max()) for doc in head}
        got = dict(zip(run[query_id].doc_ids[:2], run[query_id].scores[:2], strict=True))
        assert sorted(got) == sorted(head)  # only the head is re-scored: "cut" stays third for q-tail
        assert list(got) == sorted(head, key=lambda doc: -want[doc])
        for doc in head:  # float32 dot products of unit vectors: ≤ d·eps32 apart from float64
            assert abs(got[doc] - want[doc]) <= ENCODER.dim * np.finfo(np.float32).eps
        assert run[query_id].doc_ids[2:] == first[query_id].doc_ids[2:]
        np.testing.assert_array_equal(run[query_id].scores[2:], first[query_id].scores[2:])
    assert run["q-short"].doc_ids[0] == "short"  # the exact text outranks the cut document's chunks


def test_a_store_holding_more_documents_in_another_order_serves_those_that_fit(tmp_path):
    """Building over some documents with a token store of more (in another order): the ones that fit take the
    store's means, the cut ones are chunked and encoded. The store here holds other words under the id "short",
    so its vector shows where it came from."""
    whole = encode_texts(["other words here", CORPUS.texts[0], CORPUS.texts[1]], model=ENCODER,
                         ids=["short", "fits-long", "cut"], out=tmp_path / "whole", cache=False)
    subset = Corpus(ids=["short", "cut"], texts=[CORPUS.texts[2], CORPUS.texts[1]])
    served = WindowedIndex.build(subset, ENCODER, whole)
    fresh = WindowedIndex.build(subset, ENCODER)
    np.testing.assert_array_equal(served.chunk_doc, [0, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(fresh.chunk_doc, served.chunk_doc)
    bound = (ENCODER.dim + 4) * np.finfo(np.float32).eps  # two float32 normalisations of one vector
    np.testing.assert_allclose(stored_vectors(served)[1:], stored_vectors(fresh)[1:], atol=bound, rtol=0)
    np.testing.assert_allclose(stored_vectors(served)[0], unit(whole.means()[[0]].astype(np.float64))[0], atol=bound,
                               rtol=0)
    assert np.abs(stored_vectors(served)[0] - stored_vectors(fresh)[0]).max() > 0.1


def test_search_returns_depth_documents_when_long_documents_fill_the_first_chunks(tmp_path):
    """Four long documents of 8 chunks each and two short ones: a first list of 4·depth = 8 chunks can name a single
    document (the query is one of them); the search widens it until it holds ``depth`` (here every) document, each
    at its best chunk."""
    long_texts = [" ".join(f"l{d}w{i % 16}" for i in range(100)) for d in range(4)]  # 16 words over and over
    corpus = Corpus(ids=["l0", "l1", "l2", "l3", "s0", "s1"], texts=[*long_texts, "short one", "short two"])
    index = WindowedIndex.build(corpus, ENCODER)
    assert np.bincount(index.chunk_doc).tolist()[:4] == [8] * 4  # 100 words: chunks of 16 starting every 12
    queries = Queries(ids=["q"], texts=[" ".join(f"l0w{i}" for i in range(16))])  # every chunk of l0 matches it
    query_store = encode_texts(queries.texts, model=ENCODER, ids=queries.ids, out=tmp_path / "q", cache=False)
    run = index.search(queries, query_store, depth=2)["q"]
    assert len(run) == 2
    run = index.search(queries, query_store, depth=6)["q"]
    assert sorted(run) == sorted(corpus.ids)
    vectors, query = stored_vectors(index), unit(query_store.means())[0]
    for position, doc_id in enumerate(corpus.ids):  # every score is the document's best chunk
        best = float((vectors[index.chunk_doc == position] @ query).max())
        np.testing.assert_allclose(run[doc_id], best, rtol=0, atol=(vectors.shape[1] + 2) * 2**-23)
