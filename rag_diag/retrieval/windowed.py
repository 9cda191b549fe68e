"""Windowed encoding of long documents: split into window-sized chunks, score = the best chunk.

A document longer than the model window is encoded by a single pass only up to the window; the rest is
invisible to every pooling. Here each such document is cut into word chunks of ``chunk_words`` words with
``overlap_words`` words shared by neighbouring chunks (documents whose tokens fit the window stay whole), every
chunk is mean-pooled from its own forward pass (only the means are kept:
:func:`rag_diag.tokens.means.encode_means`), and a document's score for a query is the best cosine over its
chunks: s(q, d) = max_c cos(μ_q, μ_c).

Word chunks are sized from the window so that they fit: with W tokens, ``chunk_words = W // 2``
(English subword tokenizers average ≈ 1.3 tokens per word, so W/2 words stay under W tokens with room
to spare). Text dense in tokens (URLs, code, numbers) can still overflow: a chunk over the window, and a cut
document short enough to be one chunk, is cut again into chunks of half its words (same overlap share) until
every chunk fits, so no word of a long document is left unseen (:func:`fit_to_window`). Only a single word
longer than the window is cut by the encoder; those chunks are counted in ``n_chunks_truncated``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import islice

import faiss
import numpy as np

from rag_diag.corpora.io import Corpus, Queries
from rag_diag.models.protocol import Encoder
from rag_diag.tokens.means import encode_means
from rag_diag.tokens.store import TokenStore

OVERLAP_SHARE = 0.25
"""Share of a chunk's words repeated at the start of the next chunk, so a sentence cut at a boundary
is whole in one of the two."""
CHUNK_BATCH_TOKENS = 2048
"""Window tokens per forward pass when chunks are encoded: ``CHUNK_BATCH_TOKENS // W`` chunks a batch (8 at
W = 256). Chunks nearly fill the window, so a batch of 32 is 32 full-window passes at once, and its activations
(attention alone: 32 · 12 heads · 256² floats, 100 MB) set the audit's peak RSS where windowed encoding runs
(``benchmarks/bench_windowed.py`` measures both batch sizes)."""


def chunk_words(text: str, size: int, overlap: int) -> list[str]:
    """Word chunks of ``size`` words, each starting ``size − overlap`` words after the previous one."""
    words = text.split()
    if len(words) <= size:
        return [text]
    step = max(size - overlap, 1)
    starts = range(0, max(len(words) - overlap, 1), step)
    return [" ".join(words[start : start + size]) for start in starts]


def fit_to_window(chunks: list[str], encoder: Encoder) -> list[list[str]]:
    """For each chunk, the chunks it becomes: itself when its tokens fit the encoder's window or it is a single
    word, else word chunks of half its words (overlap ``OVERLAP_SHARE``), each fitted again. One tokenizer call
    per round."""
    if not chunks:
        return []
    fitted: list[list[str]] = []
    for chunk, n_tokens in zip(chunks, encoder.tokenize(chunks).full_lengths, strict=True):
        n_words = len(chunk.split())
        if n_tokens <= encoder.max_seq_length or n_words < 2:
            fitted.append([chunk])
            continue
        size = (n_words + 1) // 2
        halves = fit_to_window(chunk_words(chunk, size, int(size * OVERLAP_SHARE)), encoder)
        fitted.append([piece for pieces in halves for piece in pieces])
    return fitted


@dataclass
class WindowedIndex:
    """Chunk vectors of a corpus and the document each chunk belongs to."""

    doc_ids: list[str]
    chunk_doc: np.ndarray
    index: faiss.Index
    n_chunks_truncated: int
    _chunks_of: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def index_bytes(self) -> int:
        return int(self.index.ntotal * self.index.d * 4 + self.chunk_doc.nbytes)

    @classmethod
    def build(cls, corpus: Corpus, encoder: Encoder, whole: TokenStore | None = None,
              batch_size: int | None = None) -> WindowedIndex:
        """Chunk every document to the encoder's window and index the chunks' normalised means.

        ``whole``, a token store of the same encoder holding every document of the corpus (in any order, among
        others), serves the documents that fit the window (their only chunk is the whole text), so only the long
        documents are encoded again, ``batch_size`` chunks a pass (default: :data:`CHUNK_BATCH_TOKENS` tokens' worth).
        """
        size = max(encoder.max_seq_length // 2, 8)
        row_of = {} if whole is None else {doc_id: row for row, doc_id in enumerate(whole.doc_ids)}
        reuse = whole is not None and all(doc_id in row_of for doc_id in corpus.ids)
        rows = np.array([row_of[doc_id] for doc_id in corpus.ids], dtype=np.int64) if reuse else None
        fits = fits_window(corpus.texts, encoder, None if rows is None or whole is None else whole.lengths[rows])
        pieces = [[text] if fit else chunk_words(text, size, int(size * OVERLAP_SHARE))
                  for text, fit in zip(corpus.texts, fits, strict=True)]
        cut = np.flatnonzero(~fits)
        fitted = iter(fit_to_window([chunk for position in cut for chunk in pieces[position]], encoder))
        for position in cut:
            pieces[position] = [piece for parts in islice(fitted, len(pieces[position])) for piece in parts]
        vectors, owners = [], []
        if reuse:
            assert whole is not None and rows is not None
            vectors.append(whole.means()[rows[fits]])
            owners += np.flatnonzero(fits).tolist()
        rest = [(position, chunk) for position, chunks in enumerate(pieces)
                if not (reuse and fits[position]) for chunk in chunks]
        truncated = 0
        if rest:
            means, truncated = encode_means([chunk for _, chunk in rest], encoder,
                                            batch_size or max(1, CHUNK_BATCH_TOKENS // encoder.max_seq_length),
                                            f"windowed: encoding {len(rest):,} chunks")
            vectors.append(means)
            owners += [position for position, _ in rest]
        matrix = unit_rows(np.concatenate(vectors))
        index = faiss.IndexFlatIP(matrix.shape[1])
        index.add(matrix)
        return cls(list(corpus.ids), np.asarray(owners, dtype=np.int64), index, truncated)

    def search(self, queries: Queries, query_store: TokenStore, depth: int) -> dict[str, dict[str, float]]:
        """Top-``depth`` documents per query by their best chunk's cosine: the top chunks, ``4·depth`` at first and
        twice as many for a query whose chunks name fewer than ``depth`` documents (a few long documents' chunks
        can fill the first list), until the list holds ``depth`` documents or every chunk."""
        vectors = unit_rows(query_store.means())
        wanted = min(depth, len(self.doc_ids))
        run: dict[str, dict[str, float]] = {}
        pending, fetch = np.arange(len(vectors)), depth * 4
        while len(pending):
            fetch = min(fetch, self.index.ntotal)
            scores, rows = self.index.search(vectors[pending], fetch)
            short = []
            for position, row_scores, row_chunks in zip(pending.tolist(), scores, rows, strict=True):
                best: dict[str, float] = {}
                for score, chunk in zip(row_scores.tolist(), row_chunks.tolist(), strict=True):
                    if chunk >= 0:
                        doc_id = self.doc_ids[int(self.chunk_doc[chunk])]
                        best[doc_id] = max(best.get(doc_id, -np.inf), score)
                if len(best) < wanted and fetch < self.index.ntotal:
                    short.append(position)
                    continue
                run[queries.ids[position]] = dict(sorted(best.items(), key=lambda item: (-item[1], item[0]))[:depth])
            pending, fetch = np.array(short, dtype=np.int64), fetch * 2
        return {query_id: run[query_id] for query_id in queries.ids}

    def best_chunk_scores(self, query: np.ndarray, doc_ids: Sequence[str]) -> np.ndarray:
        """s(q, d) = max_c ⟨q, μ̂_c⟩ over the chunks c of each document in ``doc_ids``, for a unit query vector q:
        the score :meth:`search` ranks by (float32 products of the indexed unit chunk means)."""
        if not self._chunks_of:
            vectors = self.index.reconstruct_n(0, self.index.ntotal)
            order = np.argsort(self.chunk_doc, kind="stable")
            bounds = np.searchsorted(self.chunk_doc[order], np.arange(len(self.doc_ids) + 1))
            for position, doc_id in enumerate(self.doc_ids):
                self._chunks_of[doc_id] = vectors[order[bounds[position] : bounds[position + 1]]]
        query = np.asarray(query, dtype=np.float32)
        return np.array([float((self._chunks_of[doc_id] @ query).max()) for doc_id in doc_ids])


def fits_window(texts: list[str], encoder: Encoder, stored_lengths: np.ndarray | None = None) -> np.ndarray:
    """Whether each text's tokens (special tokens included) fit the encoder's window.

    With ``stored_lengths``, each text's token count in a token store of the same encoder (cut to the window), a
    text stored with fewer tokens than the window fits; only the texts stored at the full window are tokenised
    again, to tell an exact fit from a cut.
    """
    window = encoder.max_seq_length
    fits = np.zeros(len(texts), dtype=bool)
    if stored_lengths is not None:
        fits = np.asarray(stored_lengths) < window
    unsure = np.flatnonzero(~fits)
    if len(unsure):
        full = encoder.tokenize([texts[i] for i in unsure]).full_lengths
        fits[unsure] = np.asarray(full) <= window
    return fits


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows divided by their norm (float64, norms clipped at 1e-12), as float32."""
    vectors = np.asarray(vectors, dtype=np.float64)
    return np.ascontiguousarray(vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12),
                                dtype=np.float32)
