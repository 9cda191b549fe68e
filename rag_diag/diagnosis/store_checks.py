"""Checks of a stored index against the model: does the model reproduce it, and is its ANN search exact?

- **model check**: the model must have the store's dimension, and on a seeded sample of stored rows
  the re-encoded mean-pooled vector μ must point where the stored vector v points:
  agreement = median over the sample of cos(μ, v) ≥ MODEL_AGREEMENT_MIN. Cosine makes the check
  indifferent to whether the store L2-normalised its vectors.
- **ANN recall@k** of the stored index against exact search (``IndexFlat`` with the store's metric)
  over the exact vectors, on a seeded sample of documents used as queries. A hit counts when its
  exact score is within TIE_TOLERANCE of the k-th exact score, so tied near-duplicates are not
  counted as misses. For a flat store this is 1.0 by construction.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import faiss
import numpy as np

from rag_diag.errors import RagDiagError
from rag_diag.models.protocol import Encoder
from rag_diag.sampling import seeded_sample
from rag_diag.stores.stored import StoredIndex
from rag_diag.tokens.extract import encode_texts
from rag_diag.tokens.store import TokenStore

MODEL_AGREEMENT_MIN = 0.99
"""Median cos(re-encoded μ, stored vector) a model must reach on the sample. The same model gives
≈ 1.0 (float32 and batch-padding noise only); another model, even of the same architecture and
dimension, gives far less."""

ANN_RECALL_OK = 0.95
"""ANN recall@k below this is reported as a lossy index (the index drops true neighbours)."""

TIE_TOLERANCE = 1e-5
"""An ANN hit whose exact score is within this of the k-th exact score counts as a true neighbour
(float32 scores of unit vectors carry ~6e-8 relative error; near-duplicates tie far below 1e-5)."""

NORM_TOLERANCE = 1e-3
"""Stored vectors whose norms all lie within this of 1 are treated as L2-normalised."""


@dataclass(frozen=True)
class ModelCheck:
    """Agreement between re-encoded and stored vectors on a sample of rows."""

    model: str
    dim: int
    n_sample: int
    median_cos: float
    min_cos: float
    mean_cos: float
    normalised: bool

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "threshold": MODEL_AGREEMENT_MIN, "passed": self.median_cos >= MODEL_AGREEMENT_MIN}


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return np.einsum("ij,ij->i", a, b) / norms


def check_model(stored: StoredIndex, encoder: Encoder, sample: int, seed: int) -> ModelCheck:
    """Refuse a model that does not reproduce the stored vectors (dimension, then median cosine on a sample)."""
    if stored.index.d != encoder.dim:
        raise RagDiagError(
            f"{stored.path}: the store has dimension {stored.index.d} but model '{encoder.name}' has "
            f"dimension {encoder.dim}: pass the model the store was built with (--model)"
        )
    rows = seeded_sample(stored.index.ntotal, sample, seed)
    saved = stored.vectors(rows)
    store = encode_texts([stored.texts[r] for r in rows], model=encoder, ids=[stored.doc_ids[r] for r in rows])
    cosines = _cosines(store.means().astype(np.float64), saved)
    norms = np.linalg.norm(saved, axis=1)
    check = ModelCheck(
        model=encoder.name, dim=encoder.dim, n_sample=len(rows), median_cos=float(np.median(cosines)),
        min_cos=float(cosines.min()), mean_cos=float(cosines.mean()),
        normalised=bool(np.all(np.abs(norms - 1.0) <= NORM_TOLERANCE)),
    )
    if check.median_cos < MODEL_AGREEMENT_MIN:
        raise RagDiagError(
            f"{stored.path}: model '{encoder.name}' does not reproduce the stored vectors (median cosine "
            f"{check.median_cos:.3f} on {check.n_sample} sampled documents, need ≥ {MODEL_AGREEMENT_MIN}): "
            "the store was built with another model; pass that one (--model)"
        )
    return check


def ann_recall(index: faiss.Index, exact: np.ndarray, rows: np.ndarray, k: int) -> dict[str, Any]:
    """Recall@k of ``index`` against exact search over ``exact`` (the true stored vectors), queries = ``rows``.

    recall@k = mean over queries of |{hits h : s(q, h) ≥ s_k(q) − TIE_TOLERANCE}| / k, where s is the
    exact score under the index's metric (inner product, or −‖q − v‖² for L2) and s_k(q) the k-th best.
    """
    k = min(k, index.ntotal)
    vectors = np.ascontiguousarray(exact, dtype=np.float32)
    flat = faiss.IndexFlat(vectors.shape[1], index.metric_type)
    flat.add(vectors)
    queries = vectors[rows]
    exact_scores, _ = flat.search(queries, k)
    _, found = index.search(queries, k)
    l2 = index.metric_type == faiss.METRIC_L2
    kth = -exact_scores[:, -1] if l2 else exact_scores[:, -1]
    hits = np.zeros(len(rows))
    for position, (query, row_hits) in enumerate(zip(queries, found, strict=True)):
        valid = row_hits[row_hits >= 0]
        candidates = vectors[valid].astype(np.float64)
        scores = -((candidates - query) ** 2).sum(axis=1) if l2 else candidates @ query.astype(np.float64)
        hits[position] = np.count_nonzero(scores >= kth[position] - TIE_TOLERANCE)
    recall = float((hits / k).mean())
    verdict = "exact" if recall == 1.0 else "ok" if recall >= ANN_RECALL_OK else "lossy"
    return {
        "recall_at_k": recall, "k": k, "n_queries": len(rows), "index_type": type(index).__name__,
        "metric": "l2" if l2 else "inner_product", "threshold": ANN_RECALL_OK, "verdict": verdict,
    }


def exact_vectors(store: TokenStore, normalised: bool) -> np.ndarray:
    """The vectors the store should hold: re-encoded means, L2-normalised when the stored ones are."""
    means = store.means().astype(np.float64)
    if normalised:
        means /= np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)
    return means
