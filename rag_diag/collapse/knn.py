"""Per-document collapse rate: SOCM of each document against its k nearest mean-pooled neighbours.

For document d with neighbours n_1 … n_k under the mean-pooled cosine index (FAISS ``IndexFlatIP`` on
L2-normalised means, d itself excluded):

- collapse_mean(d) = (1/k) Σ SOCM(d, n_i), collapse_max(d) = max_i SOCM(d, n_i),
- top_confuser(d) = the n_i with the highest SOCM.

This is O(N·k) pairs. Documents are streamed in chunks: a chunk loads only its own and its neighbours'
token matrices from the memory-mapped store, so memory is bounded by ``token_budget`` rows.

When token matrices are too many to revisit, :func:`covariance_summary` keeps per document only the
unit mean, the raw statistics and a rank-r factor F (r × d) of the normalised covariance, the top-r
part of A = U S Vᵀ (F = S_r V_rᵀ, so FᵀF is the best rank-r approximation of Σ). BW² between the
truncated covariances then differs from the exact value by at most (triangle inequality for the BW
metric, and BW(Σ, Σ_r)² = the sum of the dropped eigenvalues τ):

    |BW(Σ1, Σ2) − BW(Σ1_r, Σ2_r)| ≤ √τ1 + √τ2.

d_μ is exact either way; texts with at most r + 1 tokens are represented exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from rag_diag.collapse.socm import Bank, PairStats, TextStats, fast_pairs, load_bank
from rag_diag.devices import resolve_device
from rag_diag.errors import RagDiagError
from rag_diag.progress import progress_bar
from rag_diag.tokens.store import TokenStore

DEFAULT_TOKEN_BUDGET = 1 << 17  # token rows loaded per chunk (≈ 400 MB at d = 384 in float64)


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
        rows = self.factors[indices].reshape(-1, dim)
        return Bank(
            rows=torch.as_tensor(rows, dtype=dtype, device=device),
            offsets=np.arange(len(indices) + 1, dtype=np.int64) * rank,
            means=torch.as_tensor(self.means[indices], dtype=torch.float64, device=device),
            traces=self.traces[indices],
        )


def knn_neighbours(means: np.ndarray, k: int, chunk: int = 4096) -> np.ndarray:
    """(N, k) nearest neighbours by cosine of the means (FAISS IndexFlatIP), self excluded.

    Searches k + 1 and removes the document itself wherever it appears (ties between duplicates can
    rank another document first); otherwise the (k+1)-th hit is dropped.
    """
    import faiss

    if not 1 <= k < len(means):
        raise RagDiagError(f"--knn must be between 1 and {len(means) - 1} (the corpus has {len(means)} texts)")
    vectors = np.ascontiguousarray(means, dtype=np.float32)
    faiss.normalize_L2(vectors)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    out = np.empty((len(vectors), k), dtype=np.int64)
    for start in range(0, len(vectors), chunk):
        _, hits = index.search(vectors[start : start + chunk], k + 1)
        for row, found in enumerate(hits, start=start):
            others = found[(found != row) & (found >= 0)]
            out[row] = others[:k]
    return out


def covariance_summary(
    store: TokenStore,
    rank: int,
    *,
    layer: int | None = None,
    drop_special: bool = False,
    chunk_docs: int = 1024,
    show_progress: bool = False,
) -> CovarianceSummary:
    """Rank-r summary of every document (top-r right singular directions of A, scaled), streamed.

    Memory: N·r·d float32 for the factors plus N·d for the means.
    """
    if rank < 1:
        raise RagDiagError(f"--rank must be at least 1, got {rank}")
    n_docs, dim = len(store), store.dim
    means = np.empty((n_docs, dim), dtype=np.float32)
    factors = np.zeros((n_docs, rank, dim), dtype=np.float32)
    traces, tails = np.empty(n_docs), np.empty(n_docs)
    stats_parts: list[TextStats] = []
    with progress_bar("collapse: rank-r summaries", n_docs, enabled=show_progress) as advance:
        for start in range(0, n_docs, chunk_docs):
            indices = np.arange(start, min(start + chunk_docs, n_docs))
            bank, stats = load_bank(store, indices, layer=layer, drop_special=drop_special)
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
            stats_parts.append(stats)
            advance(len(indices))
    text_stats = TextStats(*(np.concatenate([getattr(s, f) for s in stats_parts])
                             for f in ("n_tokens", "trace", "concentration")))
    return CovarianceSummary(means=means, factors=factors, traces=traces, tail=tails, text_stats=text_stats)


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


def _summarise(doc_a: np.ndarray, doc_b: np.ndarray, socm: np.ndarray, k: int, n_docs: int) -> tuple[np.ndarray, ...]:
    """collapse_mean, collapse_max, top_confuser per document from its k directed pair rows."""
    per_doc = socm.reshape(n_docs, k)
    best = per_doc.argmax(axis=1)
    return per_doc.mean(axis=1), per_doc.max(axis=1), doc_b.reshape(n_docs, k)[np.arange(n_docs), best]


def knn_collapse(
    store: TokenStore,
    k: int,
    *,
    layer: int | None = None,
    drop_special: bool = False,
    device: str = "cpu",
    dtype: torch.dtype = torch.float64,
    rank: int | None = None,
    token_budget: int = DEFAULT_TOKEN_BUDGET,
    show_progress: bool = False,
) -> KnnResult:
    """SOCM of every document against its k nearest mean-pooled neighbours (see the module docstring).

    Args:
        k: neighbours per document (self excluded).
        rank: None for exact token matrices, else the rank-r covariance summary.
        token_budget: token rows held in memory per chunk (exact mode).
    """
    device = resolve_device(device)
    n_docs = len(store)
    summary = None
    if rank is not None:
        summary = covariance_summary(store, rank, layer=layer, drop_special=drop_special, show_progress=show_progress)
        means = summary.means
    else:
        means = store.means(layer, drop_special)
    neighbours = knn_neighbours(means, k)
    doc_a = np.repeat(np.arange(n_docs), k)
    doc_b = neighbours.reshape(-1)
    parts: list[PairStats] = []
    stats_parts: list[TextStats] = []
    with progress_bar(f"collapse: {k} neighbours per document", n_docs, enabled=show_progress) as advance:
        for queries in _query_chunks(store.lengths, neighbours, token_budget):
            rows = slice(queries[0] * k, (queries[-1] + 1) * k)
            members, inverse = np.unique(np.concatenate([queries, doc_b[rows]]), return_inverse=True)
            if summary is not None:
                bank = summary.bank(members, device, dtype)
            else:
                bank, stats = load_bank(
                    store, members, layer=layer, drop_special=drop_special, device=device, dtype=dtype
                )
                own = inverse[: len(queries)]
                stats_parts.append(TextStats(stats.n_tokens[own], stats.trace[own], stats.concentration[own]))
            local_a = np.repeat(inverse[: len(queries)], k)
            parts.append(fast_pairs(bank, local_a, inverse[len(queries) :]))
            advance(len(queries))
    pairs = PairStats.concat(parts)
    text_stats = summary.text_stats if summary is not None else TextStats(
        *(np.concatenate([getattr(s, f) for s in stats_parts]) for f in ("n_tokens", "trace", "concentration"))
    )
    collapse_mean, collapse_max, top_confuser = _summarise(doc_a, doc_b, pairs.socm, k, n_docs)
    return KnnResult(doc_a, doc_b, pairs, text_stats, collapse_mean, collapse_max, top_confuser)
