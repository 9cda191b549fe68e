"""``audit --estimate``: corpus-level figures from a seeded sample of documents, each with a 95 % interval.

The encoder runs on the sample S (``--sample`` documents, the probe sample), the documents the evaluation
needs, and their k nearest neighbours — not on the corpus. What needs no encoder is computed for every
document:

- the **kNN graph** comes from the *stored* vectors (which the model check has just shown to be the model's
  mean vectors), so **hubness** (N_k skew) and the **near-duplicate share** (documents with a neighbour at
  cosine ≥ 0.95) are exact; the **truncated share** is exact from tokenising every text;
- the **collapse rate** is exact SOCM of each sampled document with its neighbours; its corpus mean is
  estimated from S with the normal interval and the finite-population correction:

      mean ± z·s/√n·√((N − n)/(N − 1)),  z = 1.96,

  and so is the **ANN recall** (the per-query recall over the sampled queries).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from rag_diag.collapse.knn import KnnResult, neighbour_graph
from rag_diag.collapse.socm import PairStats, TextStats, pair_socm, prepare_text
from rag_diag.errors import RagDiagError
from rag_diag.models.protocol import Encoder
from rag_diag.progress import release_heap
from rag_diag.stores.stored import StoredIndex
from rag_diag.tokens.extract import encode_texts
from rag_diag.tokens.store import TokenStore

Z95 = 1.959963984540054


@dataclass(frozen=True)
class SampledPass:
    """The full stored-vector graph, and exact collapse for the rated documents (the sample and the relevant)."""

    neighbours: np.ndarray
    cos: np.ndarray
    graph: dict[str, Any]
    rated: np.ndarray
    knn: KnnResult
    tokens: TokenStore


def interval(values: np.ndarray, population: int) -> dict[str, Any]:
    """Mean of ``values`` (a simple random sample of ``population``) with its 95 % normal interval (FPC)."""
    n = len(values)
    mean = float(np.mean(values)) if n else float("nan")
    if n < 2:
        return {"value": mean, "ci_low": None, "ci_high": None, "n": n, "method": "sample of one"}
    correction = math.sqrt(max(population - n, 0) / max(population - 1, 1))
    half = Z95 * float(np.std(values, ddof=1)) / math.sqrt(n) * correction
    return {"value": mean, "ci_low": mean - half, "ci_high": mean + half, "n": n,
            "method": "normal, finite-population corrected"}


def exact(value: float, n: int, how: str) -> dict[str, Any]:
    """A figure computed on every document: its interval is the value itself."""
    return {"value": value, "ci_low": value, "ci_high": value, "n": n, "method": f"exact ({how})"}


def neighbour_cosines(unit: np.ndarray, neighbours: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """cos(v_i, v_j) for every document i and each of its neighbours j, row-major (N·k,), from unit vectors.

    In chunks of ``chunk`` documents, each gathered once in float32 and once in float64: chunk·k·d·12 bytes,
    47 MB at k = 10, d = 384 (gathering every neighbour's vector at once would hold N·k·d floats). Chunks of 8,192
    set the peak RSS of a 100,000-document ``audit --estimate``: +0.21 GiB over the graph's (rss_profile.py).
    """
    cos = np.empty(neighbours.shape, dtype=np.float64)
    for start in range(0, len(unit), chunk):
        rows = slice(start, start + chunk)
        cos[rows] = np.einsum("ij,ikj->ik", unit[rows].astype(np.float64), unit[neighbours[rows]].astype(np.float64))
    return cos.reshape(-1)


def text_stats(store: TokenStore, rows: np.ndarray) -> TextStats:
    """Raw statistics (n, S(X), concentration) of the store texts ``rows``, one text at a time: a bank of them
    all would hold every token in float64 at once."""
    stats = np.empty((len(rows), 3))
    for position, row in enumerate(rows):
        prepared = prepare_text(store.tokens(int(row)))
        stats[position] = prepared.n_tokens, prepared.spread, prepared.concentration
    return TextStats(stats[:, 0].astype(np.int64), stats[:, 1], stats[:, 2])


def run_sampled_pass(stored: StoredIndex, encoder: Encoder, k: int, sample: np.ndarray, extra: np.ndarray,
                     seed: int) -> SampledPass:
    """Graph from the stored vectors; token store and exact SOCM for ``sample ∪ extra`` and their neighbours."""
    unit = stored.all_vectors(unit=True)  # float32: the graph searches float32 vectors whatever it is given
    release_heap()  # the store's mapped vectors all_vectors paged in (147 MiB at 100,000 × 384): the graph reads unit
    if not np.all(np.einsum("ij,ij->i", unit, unit) > 0):  # rows are unit or zero; no N·d temporary
        raise RagDiagError(f"{stored.path}: a stored vector is zero; --estimate needs directions")
    graph = neighbour_graph(unit, k, seed=seed)
    neighbours = graph.neighbours
    cos = neighbour_cosines(unit, neighbours)
    del unit  # N·d float32 (147 MiB at 100,000 × 384), not read by the encoding below
    release_heap()  # and the graph's freed index
    rated = np.unique(np.concatenate([sample, extra])).astype(np.int64)
    needed = np.unique(np.concatenate([rated, neighbours[rated].reshape(-1)]))
    tokens = encode_texts([stored.texts[r] for r in needed], model=encoder, ids=[stored.doc_ids[r] for r in needed],
                          show_progress=True)
    local = {int(row): position for position, row in enumerate(needed)}
    doc_a = np.repeat(rated, k)
    doc_b = neighbours[rated].reshape(-1)
    pairs = pair_socm(tokens, np.array([local[int(r)] for r in doc_a]), np.array([local[int(r)] for r in doc_b]))
    stats = text_stats(tokens, np.array([local[int(r)] for r in rated]))
    per_doc = pairs.socm.reshape(len(rated), k)
    best = per_doc.argmax(axis=1)
    knn = KnnResult(doc_a, doc_b, PairStats(pairs.d_mu, pairs.d_sigma, pairs.socm, pairs.cos),
                    TextStats(stats.n_tokens, stats.trace, stats.concentration), per_doc.mean(axis=1),
                    per_doc.max(axis=1), doc_b.reshape(len(rated), k)[np.arange(len(rated)), best], graph.to_dict())
    tokens.release_pages()
    release_heap()  # with the token pages: what the SOCM chunks read and freed, before the steps after the pass
    return SampledPass(neighbours, cos, graph.to_dict(), rated, knn, tokens)


def sample_estimates(sampled: SampledPass, sample: np.ndarray, n_docs: int, *, hub_skew: float,
                     duplicate_share: float, truncated_share: float, per_query_recall: np.ndarray) -> dict[str, Any]:
    """Every corpus-level figure with its interval (module docstring)."""
    position = {int(row): i for i, row in enumerate(sampled.rated)}
    rates = sampled.knn.collapse_mean[[position[int(r)] for r in sample]]
    return {
        "sample": len(sample), "n_documents": n_docs,
        "mean_collapse_rate": interval(rates, n_docs),
        "near_duplicate_share": exact(duplicate_share, n_docs, "stored-vector kNN graph"),
        "hubness_skew": exact(hub_skew, n_docs, "stored-vector kNN graph"),
        "truncated_share": exact(truncated_share, n_docs, "every text tokenised"),
        "ann_recall": interval(per_query_recall, n_docs),
    }


def full_view(sampled: SampledPass, n_docs: int, k: int) -> tuple[KnnResult, np.ndarray]:
    """A KnnResult over every document for the graph statistics (neighbours and cosines exact; rates and
    token statistics NaN outside the rated documents), and the mask of rated documents."""
    rated = np.zeros(n_docs, dtype=bool)
    rated[sampled.rated] = True
    doc_a, doc_b = np.repeat(np.arange(n_docs), k), sampled.neighbours.reshape(-1)
    nan = np.full(n_docs * k, np.nan)
    socm, d_sigma = nan.copy(), nan.copy()
    rows = (sampled.rated[:, None] * k + np.arange(k)).reshape(-1)
    socm[rows], d_sigma[rows] = sampled.knn.pairs.socm, sampled.knn.pairs.d_sigma
    per_doc = np.full(n_docs, np.nan)
    mean, worst, concentration, trace = per_doc.copy(), per_doc.copy(), per_doc.copy(), per_doc.copy()
    n_tokens = np.zeros(n_docs, dtype=np.int64)
    mean[sampled.rated], worst[sampled.rated] = sampled.knn.collapse_mean, sampled.knn.collapse_max
    stats = sampled.knn.text_stats
    concentration[sampled.rated], trace[sampled.rated] = stats.concentration, stats.trace
    n_tokens[sampled.rated] = stats.n_tokens
    confuser = sampled.neighbours[:, 0].copy()
    confuser[sampled.rated] = sampled.knn.top_confuser
    view = KnnResult(doc_a, doc_b, PairStats((1.0 - sampled.cos) / 2.0, d_sigma, socm, sampled.cos),
                     TextStats(n_tokens, trace, concentration), mean, worst, confuser, sampled.graph)
    return view, rated
