"""BM25 retrieval with bm25s, tokenised so that numbers and version strings stay meaningful.

Scoring is bm25s's default ``method="lucene"`` (Kamphuis et al., ECIR 2020) for a query token list
t_1 … t_m (a repeated token counts once per occurrence; tokens unseen in the corpus are ignored)::

    score(q, d) = Σ_i idf(t_i) · tf(t_i, d) / (tf(t_i, d) + k1 · (1 − b + b · |d| / avgdl))
    idf(t)      = ln(1 + (N − df(t) + 0.5) / (df(t) + 0.5))

with N documents, df(t) documents containing t, |d| the token count of d and avgdl its mean. Since
idf > 0, a document scores > 0 exactly when it shares a token with the query; only those are returned.

Tokenisation (:func:`tokenize`), lower-cased, no stop words, no stemming, single characters kept:

* a token is a run of word characters joined by ``.``, ``-``, ``/`` or ``+`` (``\\w+([.-/+]\\w+)*\\+?``),
  so ``2.0``, ``v3``, ``gpl-2.0-or-later`` and ``gpl-2.0+`` stay whole and ``2.0`` ≠ ``2.1``
  (a sentence-final ``.`` is not part of a token);
* a token joined by ``-``, ``/`` or ``+`` also yields its pieces (``gpl-2.0-or-later`` → ``gpl``,
  ``2.0``, ``or``, ``later``), so "GPL 2.0" matches it, while the whole token rewards the exact form;
* ``v`` followed by a version (``v3``, ``v2.1``) also yields the bare version (``3``, ``2.1``).

bm25s's own default pattern ``\\b\\w\\w+\\b`` would drop ``2``, split ``2.0`` into two dropped digits and
so make "Apache License 2.0" and "Apache License 1.1" indistinguishable.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Sequence

import numpy as np

from rag_diag.corpora.io import Corpus
from rag_diag.errors import RagDiagError

Run = dict[str, dict[str, float]]
"""query id → document id → score (higher is better), documents best first."""

TOKEN = re.compile(r"\w+(?:[./+-]\w+)*\+?")
SEPARATORS = re.compile(r"[/+-]")
VERSION = re.compile(r"v(\d+(?:\.\d+)*)")
K1 = 1.5
B = 0.75


def _expansions(word: str) -> list[str]:
    """The word, its ``-``/``/``/``+`` pieces and bare versions of ``v<version>`` forms, without repeats."""
    forms = [word, *(piece for piece in SEPARATORS.split(word) if piece)]
    forms += [match.group(1) for form in forms if (match := VERSION.fullmatch(form))]
    return list(dict.fromkeys(forms))


def tokenize(text: str) -> list[str]:
    """Lower-cased BM25 tokens of ``text`` that keep numbers and versions (see the module docstring)."""
    return [form for match in TOKEN.finditer(text.lower()) for form in _expansions(match.group())]


class BM25Index:
    """A bm25s index of a corpus: ``search`` returns a run, ``index_bytes`` and per-query latency measure cost."""

    def __init__(self, doc_ids: Sequence[str], texts: Sequence[str], k1: float = K1, b: float = B) -> None:
        """Tokenise and index the documents (``doc_ids[i]`` names ``texts[i]``).

        Args:
            doc_ids: unique document ids.
            texts: the document texts.
            k1: term-frequency saturation k1.
            b: length normalisation b.
        """
        import bm25s

        if not doc_ids:
            raise RagDiagError("cannot index an empty corpus")
        if len(doc_ids) != len(texts):
            raise RagDiagError(f"{len(doc_ids)} document ids for {len(texts)} texts")
        if len(set(doc_ids)) != len(doc_ids):
            raise RagDiagError("document ids must be unique")
        self.doc_ids = list(doc_ids)
        self.k1, self.b = k1, b
        start = time.perf_counter()
        # scipy builds the sparse score matrix from the (doc, token) pairs in C; bm25s's numpy default sorts them
        # through int64 copies (build peak 0.20 GiB against 0.15 on 100,000 kb-scale texts, same scores:
        # benchmarks/bench_step_memory.py)
        self.retriever = bm25s.BM25(k1=k1, b=b, method="lucene", csc_backend="scipy")
        # bm25s is given token ids, not token strings: a list of fresh strings per document held every token of
        # the corpus as its own object (+0.7 GiB on 100,000 kb-scale documents); ids drawn from one vocabulary
        # share their int objects, a pointer per token
        vocabulary: dict[str, int] = {}
        ids = [[vocabulary.setdefault(token, len(vocabulary)) for token in tokenize(text)] for text in texts]
        self.retriever.index((ids, vocabulary), show_progress=False)
        self.build_seconds = time.perf_counter() - start

    @classmethod
    def from_corpus(cls, corpus: Corpus, k1: float = K1, b: float = B) -> BM25Index:
        """Index a :class:`~rag_diag.corpora.io.Corpus` (its title-joined texts)."""
        return cls(corpus.ids, corpus.texts, k1=k1, b=b)

    @property
    def index_bytes(self) -> int:
        """Bytes of the index: the sparse score matrix (data, indices, indptr) plus the vocabulary as JSON."""
        arrays = sum(self.retriever.scores[name].nbytes for name in ("data", "indices", "indptr"))
        return int(arrays) + len(json.dumps(self.retriever.vocab_dict, ensure_ascii=False).encode("utf-8"))

    def _ranking(self, indices: np.ndarray, scores: np.ndarray) -> dict[str, float]:
        """Documents with score > 0, best first, ties by corpus position."""
        keep = [(float(score), int(index)) for index, score in zip(indices, scores, strict=True) if score > 0]
        keep.sort(key=lambda pair: (-pair[0], pair[1]))
        return {self.doc_ids[index]: score for score, index in keep}

    def search(self, query_ids: Sequence[str], texts: Sequence[str], depth: int = 100) -> Run:
        """Top-``depth`` documents (score > 0) of every query, all queries in one bm25s call.

        Args:
            query_ids: the query ids (keys of the run).
            texts: the query texts.
            depth: the most documents kept per query.
        """
        if len(query_ids) != len(texts):
            raise RagDiagError(f"{len(query_ids)} query ids for {len(texts)} texts")
        if depth < 1:
            raise RagDiagError(f"depth must be at least 1, got {depth}")
        if not query_ids:
            return {}
        tokens = [tokenize(text) for text in texts]
        k = min(depth, len(self.doc_ids))
        indices, scores = self.retriever.retrieve(tokens, k=k, show_progress=False)
        return {query_id: self._ranking(indices[i], scores[i]) for i, query_id in enumerate(query_ids)}

    def search_timed(self, query_ids: Sequence[str], texts: Sequence[str], depth: int = 100) -> tuple[Run, np.ndarray]:
        """Like :meth:`search` one query at a time; also the wall-clock seconds of each query (tokenising included)."""
        run: Run = {}
        latencies = np.empty(len(query_ids))
        for i, (query_id, text) in enumerate(zip(query_ids, texts, strict=True)):
            start = time.perf_counter()
            run.update(self.search([query_id], [text], depth))
            latencies[i] = time.perf_counter() - start
        return run, latencies
