"""Hubness of a kNN graph: k-occurrence, its skewness, hubs and anti-hubs.

Given the k nearest neighbours nn_k(x) of every document x (self excluded):

- the **k-occurrence** of a document y is N_k(y) = |{x : y ∈ nn_k(x)}|, the number of documents whose
  k nearest neighbours include y. Every document names k neighbours, so Σ_y N_k(y) = N·k and the mean
  of N_k is k;
- **hubness** is the skewness of the N_k distribution (Radovanović, Nanopoulos, Ivanović, JMLR 2010):
  S = E[(N_k − k)³] / σ³ with σ² = E[(N_k − k)²] (population moments). S ≈ 0 for a symmetric
  distribution; a large positive S means a few *hubs* appear in many neighbour lists — in a RAG index,
  documents that show up for every query;
- a **hub** is a document with N_k ≥ HUB_FACTOR·k; an *anti-hub* one with N_k = 0 (never retrieved as
  a neighbour).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

HUB_FACTOR = 2
"""N_k ≥ 2k marks a hub: it appears in twice as many neighbour lists as the average document."""

HIGH_HUBNESS_SKEW = 1.0
"""Skewness of N_k above which the report calls hubness *high* (a conventional cut: a right tail
heavier than an exponential distribution's, whose skewness is 2, is not needed to hurt retrieval;
a skew of 1 already means a handful of documents crowd many result lists)."""


@dataclass(frozen=True)
class Hubness:
    """k-occurrence statistics of a kNN graph."""

    k: int
    k_occurrence: np.ndarray
    skewness: float
    n_hubs: int
    n_antihubs: int

    def top_hubs(self, count: int) -> np.ndarray:
        """Row indices of the ``count`` documents with the largest N_k (ties: lower row first)."""
        order = np.lexsort((np.arange(len(self.k_occurrence)), -self.k_occurrence))
        return order[:count]


def k_occurrence(neighbours: np.ndarray, n_docs: int) -> np.ndarray:
    """N_k(y) = number of rows of ``neighbours`` (N, k) that contain y; Σ N_k = N·k (−1 entries ignored)."""
    flat = np.asarray(neighbours, dtype=np.int64).reshape(-1)
    return np.bincount(flat[flat >= 0], minlength=n_docs).astype(np.int64)


def skewness(values: np.ndarray) -> float:
    """Population skewness E[(v − mean)³] / σ³ (scipy, biased estimator); 0.0 when every value is equal."""
    values = np.asarray(values, dtype=np.float64)
    if np.all(values == values[0]):
        return 0.0
    return float(stats.skew(values, bias=True))


def hubness(neighbours: np.ndarray) -> Hubness:
    """Hubness of the kNN graph given as its (N, k) neighbour rows."""
    n_docs, k = neighbours.shape
    counts = k_occurrence(neighbours, n_docs)
    return Hubness(
        k=k,
        k_occurrence=counts,
        skewness=skewness(counts),
        n_hubs=int((counts >= HUB_FACTOR * k).sum()),
        n_antihubs=int((counts == 0).sum()),
    )
