"""The paper's protocol: SOCM of all N(N−1)/2 pairs of a (seeded sample of a) corpus.

Texts are sorted by length and grouped into blocks; each pair of blocks is one large GEMM of their
padded token rows, whose (n_i × n_j) sub-blocks are the cross matrices A_i A_jᵀ of the Gram route
(:mod:`rag_diag.collapse.socm`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from rag_diag.collapse.socm import Bank, PairStats, TextStats, load_bank, nuclear_norms, socm_from_parts
from rag_diag.errors import RagDiagError
from rag_diag.progress import progress_bar
from rag_diag.sampling import seeded_sample
from rag_diag.tokens.store import TokenStore


def _length_blocks(lengths: np.ndarray, block_rows: int) -> list[np.ndarray]:
    """Texts sorted by length, cut into blocks with (texts × longest) ≤ block_rows."""
    order = np.argsort(lengths, kind="stable")
    blocks: list[np.ndarray] = []
    start = 0
    while start < len(order):
        stop = start + 1
        while stop < len(order) and (stop + 1 - start) * max(int(lengths[order[stop]]), 1) <= block_rows:
            stop += 1
        blocks.append(order[start:stop])
        start = stop
    return blocks


def fast_all_pairs(
    bank: Bank,
    block_rows: int = 2048,
    progress: Callable[[int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, PairStats]:
    """All N(N−1)/2 pairs i < j of a bank: (i, j, stats) sorted by (i, j).

    Texts are sorted by length and grouped into blocks; each pair of blocks is one large GEMM of their
    padded token rows, whose (n_i × n_j) sub-blocks are the cross matrices A_i A_jᵀ.
    """
    lengths = bank.lengths
    blocks = _length_blocks(lengths, block_rows)
    padded = [bank.padded(block, max(int(lengths[block].max()), 1)) for block in blocks]
    firsts, seconds, nuclear = [], [], []
    for i, (block_i, rows_i) in enumerate(zip(blocks, padded, strict=True)):
        for block_j, rows_j in zip(blocks[i:], padded[i:], strict=True):
            count_i, width_i, dim = rows_i.shape
            count_j, width_j, _ = rows_j.shape
            product = rows_i.reshape(-1, dim) @ rows_j.reshape(-1, dim).T
            cross = product.reshape(count_i, width_i, count_j, width_j).permute(0, 2, 1, 3)
            first = np.repeat(block_i, count_j)
            second = np.tile(block_j, count_i)
            keep = first < second if block_j is block_i else np.ones(len(first), dtype=bool)
            cross = cross.reshape(-1, width_i, width_j)[torch.as_tensor(keep, device=cross.device)]
            nuclear.append(nuclear_norms(cross).cpu().numpy())
            firsts.append(first[keep])
            seconds.append(second[keep])
            if progress is not None:
                progress(int(keep.sum()))
    first = np.concatenate(firsts) if firsts else np.zeros(0, dtype=np.int64)
    second = np.concatenate(seconds) if seconds else np.zeros(0, dtype=np.int64)
    lo, hi = np.minimum(first, second), np.maximum(first, second)
    order = np.lexsort((hi, lo))
    lo, hi = lo[order], hi[order]
    cross_nuclear = np.concatenate(nuclear)[order] if nuclear else np.zeros(0)
    cosines = (bank.means @ bank.means.T).cpu().numpy()[lo, hi]
    stats = socm_from_parts(cosines, bank.traces[lo], bank.traces[hi], cross_nuclear)
    return lo, hi, stats


def sample_indices(n_texts: int, sample: int | None, seed: int) -> np.ndarray:
    """Sorted seeded sample of ``sample`` text indices (all texts when None); pairs need at least two."""
    if sample is not None and sample < 2:
        raise RagDiagError(f"--sample must be at least 2 (pairs need two texts), got {sample}")
    return seeded_sample(n_texts, sample, seed)


@dataclass(frozen=True)
class AllPairsResult:
    """All pairs of a sample: store indices of the texts, pair endpoints (store indices) and stats."""

    texts: np.ndarray
    text_stats: TextStats
    doc_a: np.ndarray
    doc_b: np.ndarray
    pairs: PairStats


def all_pairs(
    store: TokenStore,
    sample: int | None = None,
    seed: int = 0,
    *,
    layer: int | None = None,
    drop_special: bool = False,
    device: str = "cpu",
    dtype: torch.dtype = torch.float64,
    show_progress: bool = False,
) -> AllPairsResult:
    """The paper's protocol: all N(N−1)/2 pairs of a seeded sample of N texts (all texts if None)."""
    texts = sample_indices(len(store), sample, seed)
    if len(texts) < 2:
        raise RagDiagError("all-pairs mode needs at least two texts")
    bank, stats = load_bank(store, texts, layer=layer, drop_special=drop_special, device=device, dtype=dtype)
    total = len(texts) * (len(texts) - 1) // 2
    with progress_bar("collapse: all pairs", total, enabled=show_progress) as advance:
        first, second, pairs = fast_all_pairs(bank, progress=advance)
    return AllPairsResult(texts=texts, text_stats=stats, doc_a=texts[first], doc_b=texts[second], pairs=pairs)
