"""BM25 with bm25s: version-aware tokens, version queries rank the right notice first, brute-force agreement."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from rag_diag.corpora.io import Corpus
from rag_diag.errors import RagDiagError
from rag_diag.retrieval.lexical import BM25Index, tokenize

DOCS = {
    "apache-2.0": "Licensed under the Apache License, Version 2.0; you may not use this file except in compliance.",
    "apache-1.1": "Licensed under the Apache License, Version 1.1; you may not use this file except in compliance.",
    "gpl-2.0+": "SPDX-License-Identifier: GPL-2.0-or-later",
    "gpl-3.0+": "SPDX-License-Identifier: GPL-3.0-or-later",
    "gpl-2": "This program is free software under the GNU General Public License v2.",
    "gpl-3": "This program is free software under the GNU General Public License v3.",
    "mit": "Permission is hereby granted, free of charge, to any person obtaining a copy of this software.",
}
QUERIES = {
    "q-apache2": "apache license version 2.0",
    "q-gpl3plus": "GPL-3.0-or-later",
    "q-gpl2plus": "gpl 2.0 or later",
    "q-v3": "general public license version 3",
    "q-none": "zebra",
}


@pytest.fixture(scope="module")
def index() -> BM25Index:
    return BM25Index(list(DOCS), list(DOCS.values()))


def test_tokenize_keeps_numbers_and_versions():
    assert tokenize("GPL-2.0-or-later, v3 and 2.0.") == [
        "gpl-2.0-or-later", "gpl", "2.0", "or", "later", "v3", "3", "and", "2.0"
    ]
    assert tokenize("GPL-2.0+ / Version 2") == ["gpl-2.0+", "gpl", "2.0", "version", "2"]
    assert tokenize("v2.1") == ["v2.1", "2.1"]
    assert "2.0" not in tokenize("version 2.1")


def test_bm25s_default_tokens_would_lose_the_version():
    import bm25s

    tokens = bm25s.tokenize([DOCS["apache-2.0"], DOCS["apache-1.1"]], stopwords=None, show_progress=False)
    first, second = bm25s.tokenization.convert_tokenized_to_string_list(tokens)
    assert first == second  # why lexical.tokenize exists


@pytest.mark.parametrize(
    ("query_id", "expected"),
    [("q-apache2", "apache-2.0"), ("q-gpl3plus", "gpl-3.0+"), ("q-gpl2plus", "gpl-2.0+"), ("q-v3", "gpl-3")],
)
def test_version_query_ranks_its_document_first(index, query_id, expected):
    run = index.search([query_id], [QUERIES[query_id]], depth=10)
    ranking = list(run[query_id])
    assert ranking[0] == expected
    top, second = list(run[query_id].values())[:2]
    assert top > second  # a strict win, not a tie broken by position


def _brute_force_bm25(query: str, k1: float, b: float) -> dict[str, float]:
    """Lucene BM25 from scratch (bm25s's default ``method="lucene"``, idf variant included).

    score = Σ_t idf(t) · tf / (tf + k1 (1 − b + b |d| / avgdl)),  idf(t) = ln(1 + (N − df + ½) / (df + ½)).
    """
    documents = {doc_id: Counter(tokenize(text)) for doc_id, text in DOCS.items()}
    lengths = {doc_id: sum(counts.values()) for doc_id, counts in documents.items()}
    n_docs, average = len(documents), sum(lengths.values()) / len(documents)
    scores = {}
    for doc_id, counts in documents.items():
        total = 0.0
        for token in tokenize(query):  # repeated query tokens count each time
            df = sum(1 for other in documents.values() if token in other)
            if df == 0 or token not in counts:
                continue
            idf = math.log(1 + (n_docs - df + 0.5) / (df + 0.5))
            tf = counts[token]
            total += idf * tf / (tf + k1 * (1 - b + b * lengths[doc_id] / average))
        if total > 0:
            scores[doc_id] = total
    return scores


@pytest.mark.parametrize(("k1", "b"), [(1.5, 0.75), (0.9, 0.4)])
def test_agrees_with_brute_force(k1, b):
    index = BM25Index(list(DOCS), list(DOCS.values()), k1=k1, b=b)
    queries = {**QUERIES, "q-repeat": "license license 2.0 GPL-2.0"}
    run = index.search(list(queries), list(queries.values()), depth=len(DOCS))
    for query_id, text in queries.items():
        expected = _brute_force_bm25(text, k1, b)
        assert set(run[query_id]) == set(expected)
        for doc_id, score in expected.items():
            assert run[query_id][doc_id] == pytest.approx(score, rel=1e-5)
        scores = list(run[query_id].values())
        assert scores == sorted(scores, reverse=True)
    assert run["q-none"] == {}


def test_depth_cost_and_timing(index):
    run = index.search(["q"], ["license"], depth=2)
    assert len(run["q"]) == 2
    timed, latencies = index.search_timed(list(QUERIES), list(QUERIES.values()), depth=3)
    assert timed == index.search(list(QUERIES), list(QUERIES.values()), depth=3)
    assert latencies.shape == (len(QUERIES),) and np.all(latencies > 0)
    assert index.index_bytes > 0 and index.build_seconds > 0
    assert index.search([], [], depth=3) == {}


def test_from_corpus_and_errors():
    corpus = Corpus(ids=["a", "b"], texts=["GPL v2", "MIT"])
    assert list(BM25Index.from_corpus(corpus).search(["q"], ["v2"], depth=5)["q"]) == ["a"]
    with pytest.raises(RagDiagError):
        BM25Index([], [])
    with pytest.raises(RagDiagError):
        BM25Index(["a", "a"], ["x", "y"])
    with pytest.raises(RagDiagError):
        BM25Index.from_corpus(corpus).search(["q"], ["x"], depth=0)
