"""Per-document collapse rate: SOCM of each document against its k nearest mean-pooled neighbours.

For document d with neighbours n_1 … n_k under the mean-pooled cosine index (d itself excluded; FAISS
``IndexFlatIP`` on L2-normalised means up to :data:`EXACT_LIMIT` documents, ``IndexHNSWFlat`` beyond, whose
recall@k against exact search is measured on a seeded sample of documents and reported with the result):

- collapse_mean(d) = (1/k) Σ SOCM(d, n_i), collapse_max(d) = max_i SOCM(d, n_i),
- top_confuser(d) = the n_i with the highest SOCM.

This is O(N·k) pairs, a mutual pair (d in n's list and n in d's) computed once. Documents are streamed in
chunks: a chunk loads only its own and its neighbours' token matrices from the memory-mapped store, so
memory is bounded by ``token_budget`` rows.

When token matrices are too many to revisit, :func:`covariance_summary` keeps per document only the
unit mean, the raw statistics and a rank-r factor F (r × d) of the normalised covariance, the top-r
part of A = U S Vᵀ (F = S_r V_rᵀ, so FᵀF is the best rank-r approximation of Σ). BW² between the
truncated covariances then differs from the exact value by at most (triangle inequality for the BW
metric, and BW(Σ, Σ_r)² = the sum of the dropped eigenvalues τ):

    |BW(Σ1, Σ2) − BW(Σ1_r, Σ2_r)| ≤ √τ1 + √τ2.

d_μ is exact either way; texts with at most r + 1 tokens are represented exactly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from rag_diag.collapse.socm import Bank, PairStats, TextStats, fast_pairs, load_bank
from rag_diag.collapse.spill import release, zeros
from rag_diag.devices import resolve_device
from rag_diag.errors import RagDiagError
from rag_diag.progress import progress_bar, release_heap
from rag_diag.tokens.store import TokenStore

DEFAULT_TOKEN_BUDGET = 1 << 17  # token rows loaded per chunk (≈ 400 MB at d = 384 in float64)
EXACT_LIMIT = 50_000
"""Up to this many documents the kNN graph is exact (N² d flops: ≈ 10¹² at 50,000 × 384); beyond, HNSW."""
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 32, 80, 128
RECALL_QUERIES = 500
"""Documents whose HNSW neighbours are checked against exact search (recall@k of the graph)."""
TIE_TOLERANCE = 1e-5
"""A found neighbour whose exact cosine is within this of the k-th exact cosine counts as a true one (ties
between near-duplicates; float32 cosines of unit vectors carry ~1e-7 error)."""


@dataclass(frozen=True)
class KnnResult:
    """kNN-mode output: one row per (document, neighbour) pair, one entry per document."""

    doc_a: np.ndarray
    doc_b: np.ndarray
    pairs: PairStats
    text_stats: TextStats
    collapse_mean: np.ndarray
    collapse_max: np.ndarray
    top_confuser: np.ndarray
    graph: dict[str, Any] = field(default_factory=dict)
    """How the neighbours were found: index type, recall@k against exact search, queries checked."""


@dataclass(frozen=True)
class NeighbourGraph:
    """(N, k) neighbours, the FAISS index that found them, and its recall@k against exact search."""

    neighbours: np.ndarray
    index_type: str
    recall: float
    n_recall_queries: int

    def to_dict(self) -> dict[str, Any]:
        return {"index_type": self.index_type, "recall_at_k": self.recall, "n_recall_queries": self.n_recall_queries,
                "exact": self.index_type == "IndexFlatIP"}


@dataclass(frozen=True)
class CovarianceSummary:
    """Per-document summary: unit means (N, d), rank-r factors (N, r, d), truncated tr Σ_r, raw stats.

    ``tail`` is τ, the part of tr Σ (normalised) that the factor drops.
    """

    means: np.ndarray
    factors: np.ndarray
    traces: np.ndarray
    tail: np.ndarray
    text_stats: TextStats

    def bank(self, indices: np.ndarray, device: str, dtype: torch.dtype) -> Bank:
        """The documents ``indices`` as a Bank (r rows each; zero rows where the rank is lower)."""
        rank, dim = self.factors.shape[1:]
        rows = torch.empty((len(indices) * rank, dim), dtype=dtype)
        for start in range(0, len(indices), GATHER_DOCS):  # a disk-backed gather holds the pages it touched
            part = np.asarray(self.factors[indices[start : start + GATHER_DOCS]])
            rows[start * rank : start * rank + part.shape[0] * rank] = torch.from_numpy(part.reshape(-1, dim))
            self.release_pages()
        return Bank(
            rows=rows.to(device),
            offsets=np.arange(len(indices) + 1, dtype=np.int64) * rank,
            means=torch.as_tensor(self.means[indices], dtype=torch.float64, device=device),
            traces=self.traces[indices],
        )

    def release_pages(self) -> None:
        """Drop the resident pages of disk-backed factors and means (:mod:`rag_diag.collapse.spill`): a bank
        holds copies."""
        release(self.factors)
        release(self.means)


GATHER_DOCS = 256
"""Documents whose factors :meth:`CovarianceSummary.bank` reads at once before dropping the pages it touched."""
UNIT_ATOL = 1e-6
"""Means whose norms are all within this of 1 (float32 rounding of a normalised vector) are used as they are."""
NORM_ROWS = 8192
"""Rows whose norms :func:`_unit` checks at once: ``np.linalg.norm`` squares its whole input first (147 MiB for
100,000 × 384 means)."""


def _unit(means: np.ndarray) -> np.ndarray:
    """Float32 unit vectors of ``means``: the array itself when it already is one (read, never written: the
    summaries' means are unit), else a normalised copy."""
    import faiss

    if means.dtype == np.float32 and means.flags.c_contiguous and all(
            (np.abs(np.linalg.norm(means[start : start + NORM_ROWS], axis=1) - 1.0) <= UNIT_ATOL).all()
            for start in range(0, len(means), NORM_ROWS)):
        return means
    vectors = np.ascontiguousarray(means, dtype=np.float32).copy()
    faiss.normalize_L2(vectors)
    return vectors


@dataclass(frozen=True)
class ExactSearch:
    """Exact inner-product search over ``vectors`` (``faiss.knn``, what ``IndexFlatIP`` runs) without the copy
    an index would hold."""

    vectors: np.ndarray

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        return faiss.knn(np.ascontiguousarray(queries, dtype=np.float32), self.vectors, k,
                         faiss.METRIC_INNER_PRODUCT)


def _search_without_self(index: Any, vectors: np.ndarray, rows: np.ndarray, k: int, chunk: int) -> np.ndarray:
    """(len(rows), k) hits of ``vectors[rows]`` with each query's own row removed (ties between duplicates
    can rank another document first); otherwise the (k+1)-th hit is dropped."""
    out = np.full((len(rows), k), -1, dtype=np.int64)
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        _, hits = index.search(vectors[part], k + 1)
        for position, (row, found) in enumerate(zip(part, hits, strict=True), start=start):
            others = found[(found != row) & (found >= 0)][:k]
            out[position, : len(others)] = others
    return out


def neighbour_graph(
    means: np.ndarray, k: int, *, exact_limit: int = EXACT_LIMIT, seed: int = 0, chunk: int = 4096,
) -> NeighbourGraph:
    """The kNN graph by cosine of the means: exact up to ``exact_limit`` documents, HNSW beyond.

    For HNSW, recall@k = mean over :data:`RECALL_QUERIES` seeded documents q of
    |{found h : cos(q, h) ≥ c_k(q) − TIE_TOLERANCE}| / k, with c_k(q) the k-th exact cosine (exact search of
    the sample against every document).
    """
    import faiss

    from rag_diag.sampling import seeded_sample

    if len(means) < 2:
        raise RagDiagError(f"kNN collapse needs at least 2 texts (the corpus has {len(means)})")
    if not 1 <= k < len(means):
        raise RagDiagError(f"--knn must be between 1 and {len(means) - 1} (the corpus has {len(means)} texts)")
    vectors = _unit(means)
    flat = ExactSearch(vectors)
    rows = np.arange(len(vectors))
    if len(vectors) <= exact_limit:
        return NeighbourGraph(_search_without_self(flat, vectors, rows, k, chunk), "IndexFlatIP", 1.0, 0)
    hnsw = faiss.IndexHNSWFlat(vectors.shape[1], HNSW_M, faiss.METRIC_INNER_PRODUCT)
    hnsw.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    hnsw.add(vectors)
    hnsw.hnsw.efSearch = max(HNSW_EF_SEARCH, k + 1)
    neighbours = _search_without_self(hnsw, vectors, rows, k, chunk)
    short = np.flatnonzero((neighbours < 0).any(axis=1))  # HNSW returned fewer than k: those rows exactly
    if len(short):
        neighbours[short] = _search_without_self(flat, vectors, short, k, chunk)
    sample = seeded_sample(len(vectors), RECALL_QUERIES, seed)
    exact = _search_without_self(flat, vectors, sample, k, chunk)
    hits = 0
    for position, row in enumerate(sample):
        kth = float(vectors[exact[position, -1]] @ vectors[row])
        found = neighbours[row][neighbours[row] >= 0]
        hits += int(np.count_nonzero(vectors[found] @ vectors[row] >= kth - TIE_TOLERANCE))
    return NeighbourGraph(neighbours, "IndexHNSWFlat", hits / (len(sample) * k), len(sample))


def covariance_summary(
    store: TokenStore,
    rank: int,
    *,
    layer: int | None = None,
    drop_special: bool = False,
    chunk_docs: int = 1024,
    chunk_bytes: int = 64 * 2**20,
    show_progress: bool = False,
) -> CovarianceSummary:
    """Rank-r summary of every document (top-r right singular directions of A, scaled), streamed.

    Memory: N·d float32 for the means, N·r·d for the factors (on disk over ``SPILL_BYTES``, their pages dropped
    after each chunk), plus one chunk: a chunk of c documents
    padded to the longest, w tokens, holds c·w·(d + 2w) float64 values (the tokens, their Gram matrix and
    its eigenvectors), so c = min(chunk_docs, ⌊chunk_bytes / (8·w·(d + 2w))⌋); documents are taken in order of
    length, so w is about each document's own length (:func:`_length_chunks`).
    """
    if rank < 1:
        raise RagDiagError(f"--rank must be at least 1, got {rank}")
    n_docs, dim = len(store), store.dim
    means = np.empty((n_docs, dim), dtype=np.float32)
    factors = zeros((n_docs, rank, dim))
    traces, tails = np.empty(n_docs), np.empty(n_docs)
    stats = TextStats(np.empty(n_docs, dtype=np.int64), np.empty(n_docs), np.empty(n_docs))
    with progress_bar("collapse: rank-r summaries", n_docs, enabled=show_progress) as advance:
        for indices in _length_chunks(store.lengths, dim, chunk_docs, chunk_bytes):
            bank, chunk_stats = load_bank(store, indices, layer=layer, drop_special=drop_special)
            width = max(int(bank.lengths.max()), 1)
            centred = bank.padded(np.arange(len(indices)), width)
            values, vectors = torch.linalg.eigh(centred @ centred.transpose(1, 2))
            top = vectors[:, :, -rank:].flip(-1)
            factor = top.transpose(1, 2) @ centred
            kept = min(rank, width)
            factors[indices, :kept] = factor.numpy().astype(np.float32)
            traces[indices] = values.clamp(min=0).flip(-1)[:, :rank].sum(-1).numpy()
            tails[indices] = np.maximum(bank.traces - traces[indices], 0.0)
            means[indices] = bank.means.numpy()
            for name in ("n_tokens", "trace", "concentration"):
                getattr(stats, name)[indices] = getattr(chunk_stats, name)
            store.release_pages()  # the chunk's rows are in the bank: the store's pages need not stay resident
            release(factors)
            del bank, centred, values, vectors, top, factor
            release_heap()  # the chunk's freed buffers: on 1,200 window-long texts, 0.55 → 0.46 GiB peak, same time
            advance(len(indices))
    return CovarianceSummary(means=means, factors=factors, traces=traces, tail=tails, text_stats=stats)


def check_rank(rank: int, dim: int, window: int) -> None:
    """A summary rank r in [1, min(d, W)]: a text's centred token matrix (at most W tokens of dimension d) has rank
    at most min(d, W − 1), so a larger r keeps nothing more and only makes every pair's Gram route r×r."""
    if not 1 <= rank <= min(dim, window):
        raise RagDiagError(f"--rank must be between 1 and {min(dim, window)} (the model's dimension {dim} and "
                           f"window {window} tokens bound a text's covariance rank), got {rank}")


def _length_chunks(lengths: np.ndarray, dim: int, chunk_docs: int, chunk_bytes: int) -> list[np.ndarray]:
    """Documents in order of length, cut into chunks of c = min(chunk_docs, ⌊chunk_bytes / (8·w·(d + 2w))⌋)
    documents, w the chunk's longest: a chunk pads to its own longest text, not to the corpus'. In store order the
    chunks of 10,000 kb-scale texts (5 % of them window-long) were mostly padding: their summaries took 20.7 s that
    way, 14.7 s this way (``benchmarks/results/bench_eigh_threads.txt``)."""
    order = np.argsort(lengths, kind="stable")
    chunks: list[np.ndarray] = []
    start = 0
    while start < len(order):
        stop = min(start + chunk_docs, len(order))
        width = max(int(lengths[order[stop - 1]]), 1)
        stop = min(stop, start + max(1, chunk_bytes // (8 * width * (dim + 2 * width))))
        chunks.append(order[start:stop])
        start = stop
    return chunks


def _query_chunks(lengths: np.ndarray, neighbours: np.ndarray, token_budget: int) -> list[np.ndarray]:
    """Consecutive documents grouped so each group's own + neighbours' tokens stay within the budget."""
    cost = lengths + lengths[neighbours].sum(axis=1)
    chunks: list[np.ndarray] = []
    start = 0
    while start < len(cost):
        total = np.cumsum(cost[start:])
        stop = start + max(1, int(np.searchsorted(total, token_budget, side="right")))
        chunks.append(np.arange(start, stop))
        start = stop
    return chunks


def _first_of_pair(doc_a: np.ndarray, doc_b: np.ndarray, n_docs: int) -> np.ndarray:
    """For each directed pair row, the first row holding the same unordered pair {a, b}.

    SOCM, d_μ, d_Σ and the cosine are symmetric in the pair, so a mutual neighbour pair (i → j and j → i)
    is computed once, at its first row, and copied to the other.
    """
    key = np.minimum(doc_a, doc_b) * n_docs + np.maximum(doc_a, doc_b)
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return first[inverse]


def _summarise(doc_a: np.ndarray, doc_b: np.ndarray, socm: np.ndarray, k: int, n_docs: int) -> tuple[np.ndarray, ...]:
    """collapse_mean, collapse_max, top_confuser per document from its k directed pair rows."""
    per_doc = socm.reshape(n_docs, k)
    best = per_doc.argmax(axis=1)
    return per_doc.mean(axis=1), per_doc.max(axis=1), doc_b.reshape(n_docs, k)[np.arange(n_docs), best]


def knn_collapse(
    store: TokenStore | None,
    k: int,
    *,
    layer: int | None = None,
    drop_special: bool = False,
    device: str = "cpu",
    dtype: torch.dtype = torch.float64,
    rank: int | None = None,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    exact_limit: int = EXACT_LIMIT,
    summary: CovarianceSummary | None = None,
    show_progress: bool = False,
) -> KnnResult:
    """SOCM of every document against its k nearest mean-pooled neighbours (see the module docstring).

    Args:
        k: neighbours per document (self excluded).
        rank: None for exact token matrices, else the rank-r covariance summary.
        token_budget: token rows held in memory per chunk (exact mode).
        exact_limit: the kNN graph is exact up to this many documents, HNSW beyond (recall in ``graph``).
        summary: rank-r summaries computed elsewhere (streamed shards, the Ray engine); then ``store`` may be
            None and ``rank`` is the summary's.
    """
    device = resolve_device(device)
    if summary is None and rank is not None:
        if store is None:
            raise RagDiagError("kNN collapse needs a token store or precomputed summaries")
        summary = covariance_summary(store, rank, layer=layer, drop_special=drop_special, show_progress=show_progress)
    if summary is not None:
        means, n_docs = summary.means, len(summary.means)
        lengths = np.full(n_docs, summary.factors.shape[1], dtype=np.int64)  # a bank holds r rows per document
    elif store is not None:
        means, n_docs, lengths = store.means(layer, drop_special), len(store), store.lengths
    else:
        raise RagDiagError("kNN collapse needs a token store or precomputed summaries")
    graph = neighbour_graph(means, k, exact_limit=exact_limit)
    neighbours = graph.neighbours
    doc_a = np.repeat(np.arange(n_docs), k)
    doc_b = neighbours.reshape(-1)
    source = _first_of_pair(doc_a, doc_b, n_docs)
    computed = source == np.arange(len(source))
    parts: list[PairStats] = []
    stats_parts: list[TextStats] = []
    with progress_bar(f"collapse: {k} neighbours per document", n_docs, enabled=show_progress) as advance:
        for queries in _query_chunks(lengths, neighbours, token_budget):
            rows = np.arange(queries[0] * k, (queries[-1] + 1) * k)
            rows = rows[computed[rows]]  # a mutual pair is computed once, where it first occurs
            members, inverse = np.unique(np.concatenate([queries, doc_b[rows]]), return_inverse=True)
            if summary is not None:
                bank = summary.bank(members, device, dtype)
            else:
                assert store is not None
                bank, stats = load_bank(
                    store, members, layer=layer, drop_special=drop_special, device=device, dtype=dtype
                )
                own = inverse[: len(queries)]
                stats_parts.append(TextStats(stats.n_tokens[own], stats.trace[own], stats.concentration[own]))
            local_a = inverse[: len(queries)][doc_a[rows] - queries[0]]
            parts.append(fast_pairs(bank, local_a, inverse[len(queries) :]))
            del bank  # else it lives on while the next chunk's bank is built: two banks at the peak
            if store is not None:
                store.release_pages()  # the chunk's rows are in the bank: RSS stays at one chunk
            if summary is not None:
                summary.release_pages()
            release_heap()  # freed chunk buffers piled up after a sharded pass: +0.47 → +0.18 GiB (bench_knn_heap.py)
            advance(len(queries))
    pairs = PairStats.concat(parts).take(np.cumsum(computed)[source] - 1)
    text_stats = summary.text_stats if summary is not None else TextStats(
        *(np.concatenate([getattr(s, f) for s in stats_parts]) for f in ("n_tokens", "trace", "concentration"))
    )
    collapse_mean, collapse_max, top_confuser = _summarise(doc_a, doc_b, pairs.socm, k, n_docs)
    return KnnResult(doc_a, doc_b, pairs, text_stats, collapse_mean, collapse_max, top_confuser, graph.to_dict())
