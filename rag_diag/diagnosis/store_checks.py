"""Checks of a stored index against the model: does the model reproduce it, and is its ANN search exact?

- **model and pooling check**: the model must have the store's dimension, and on a seeded sample of
  stored rows the re-encoded vector p(X) pooled as the store claims (``--pooling``, default mean) must point
  where the stored vector v points: agreement = median over the sample of cos(p(X), v) ≥ MODEL_AGREEMENT_MIN.
  Cosine makes the check indifferent to whether the store L2-normalised its vectors. Every candidate pooling
  of :data:`CANDIDATE_POOLINGS` is tried on the same pass, so a refusal names what built the store
  ("the stored vectors agree with minilm+cls, not minilm+mean") or, when none agrees, the closest one.
- **ANN recall@k** of the stored index against exact search (``IndexFlat`` with the store's metric)
  over the exact vectors, on a seeded sample of documents used as queries. A hit counts when its
  exact score is within TIE_TOLERANCE of the k-th exact score, so tied near-duplicates are not
  counted as misses. For a flat store this is 1.0 by construction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import faiss
import numpy as np

from rag_diag.errors import RagDiagError
from rag_diag.models.protocol import Encoder
from rag_diag.pooling import pool_store
from rag_diag.sampling import seeded_sample
from rag_diag.stores.stored import StoredIndex
from rag_diag.tokens.extract import encode_texts
from rag_diag.tokens.store import TokenStore

MODEL_AGREEMENT_MIN = 0.99
"""Median cos(re-encoded μ, stored vector) a model must reach on the sample. The same model gives
≈ 1.0 (float32 and batch-padding noise only); another model, even of the same architecture and
dimension, gives far less."""

CANDIDATE_POOLINGS = ("mean", "cls", "max", "last")
"""Poolings a store may have been built with that keep the model's dimension and need no corpus statistics
(sentence-transformers' mean, CLS and max; last-token for decoder embedders)."""

ANN_RECALL_OK = 0.95
"""ANN recall@k below this is reported as a lossy index (the index drops true neighbours)."""

TIE_TOLERANCE = 1e-5
"""An ANN hit whose exact score is within this of the k-th exact score counts as a true neighbour
(float32 scores of unit vectors carry ~6e-8 relative error; near-duplicates tie far below 1e-5)."""

EXACT_CHUNK = 8192
"""Rows the exact search of :func:`ann_recall` reads at once."""

NORM_TOLERANCE = 1e-3
"""Stored vectors whose norms all lie within this of 1 are treated as L2-normalised."""


@dataclass(frozen=True)
class ModelCheck:
    """Agreement between re-encoded and stored vectors on a sample of rows, for the claimed pooling.

    ``agreement`` holds the median cosine of every candidate pooling, so the report can show how clearly
    the claimed one wins.
    """

    model: str
    pooling: str
    dim: int
    n_sample: int
    median_cos: float
    min_cos: float
    mean_cos: float
    normalised: bool
    agreement: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "threshold": MODEL_AGREEMENT_MIN, "passed": self.median_cos >= MODEL_AGREEMENT_MIN}


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)
    return np.einsum("ij,ij->i", a, b) / norms


def check_model(stored: StoredIndex, encoder: Encoder, sample: int, seed: int, pooling: str = "mean") -> ModelCheck:
    """Refuse a model or pooling that does not reproduce the stored vectors (dimension, then median cosine).

    Raises:
        RagDiagError: the dimension differs; another candidate pooling agrees and ``pooling`` does not
            (the message names both); or no candidate agrees (the message names the closest).
    """
    if pooling not in CANDIDATE_POOLINGS:
        raise RagDiagError(f"--pooling {pooling!r}: a store is checked against {', '.join(CANDIDATE_POOLINGS)}")
    if stored.index.d != encoder.dim:
        raise RagDiagError(
            f"{stored.path}: the store has dimension {stored.index.d} but model '{encoder.name}' has "
            f"dimension {encoder.dim}: pass the model the store was built with (--model)"
        )
    rows = seeded_sample(stored.index.ntotal, sample, seed)
    saved = stored.vectors(rows)
    store = encode_texts([stored.texts[r] for r in rows], model=encoder, ids=[stored.doc_ids[r] for r in rows])
    order = (pooling, *[name for name in CANDIDATE_POOLINGS if name != pooling])
    cosines = {name: _cosines(pool_store(name, store), saved) for name in order}
    agreement = {name: float(np.median(values)) for name, values in cosines.items()}
    claimed = cosines[pooling]
    norms = np.linalg.norm(saved, axis=1)
    check = ModelCheck(
        model=encoder.name, pooling=pooling, dim=encoder.dim, n_sample=len(rows), median_cos=agreement[pooling],
        min_cos=float(claimed.min()), mean_cos=float(claimed.mean()),
        normalised=bool(np.all(np.abs(norms - 1.0) <= NORM_TOLERANCE)), agreement=agreement,
    )
    if check.median_cos >= MODEL_AGREEMENT_MIN:
        return check
    best = max(agreement, key=lambda name: agreement[name])
    model, n = encoder.name, check.n_sample
    if agreement[best] >= MODEL_AGREEMENT_MIN:
        raise RagDiagError(
            f"{stored.path}: the stored vectors agree with {model}+{best}, not {model}+{pooling} (median cosine "
            f"{agreement[best]:.3f} vs {agreement[pooling]:.3f} on {n} sampled documents): pass --pooling {best}"
        )
    raise RagDiagError(
        f"{stored.path}: model '{model}' does not reproduce the stored vectors with any pooling (median cosine "
        f"{agreement[pooling]:.3f} for {pooling}, best {agreement[best]:.3f} for {best}, on {n} sampled documents, "
        f"need ≥ {MODEL_AGREEMENT_MIN}): the store was built with another model; pass that one (--model)"
    )


def ann_recall(stored: StoredIndex, exact: np.ndarray | Callable[[np.ndarray], np.ndarray], rows: np.ndarray,
               k: int, chunk: int = EXACT_CHUNK) -> dict[str, Any]:
    """Recall@k of the store's own search (:meth:`StoredIndex.search`) against exact search over ``exact``
    (the true vectors: an N × d array, or a function giving the rows asked for), queries = ``rows``.

    recall@k = mean over queries of |{hits h : s(q, h) ≥ s_k(q) − TIE_TOLERANCE}| / k, where s is the
    exact score under the store's metric (inner product, or −‖q − v‖² for L2) and s_k(q) the k-th best. The exact
    search reads ``chunk`` rows at a time, so no N × d copy is held (147 MiB at 100,000 × 384).
    """
    metric = stored.index.metric_type
    n_docs = stored.index.ntotal
    k = min(k, n_docs)
    read = exact.__getitem__ if isinstance(exact, np.ndarray) else exact
    queries = np.ascontiguousarray(read(rows), dtype=np.float32)
    l2 = metric == faiss.METRIC_L2
    kth = _kth_exact_score(read, n_docs, queries, k, l2, chunk)
    found, answered_by = stored.search(queries, k)
    hits = np.zeros(len(rows))
    for position, (query, row_hits) in enumerate(zip(queries, found, strict=True)):
        candidates = np.asarray(read(row_hits[row_hits >= 0]), dtype=np.float32).astype(np.float64)
        scores = -((candidates - query) ** 2).sum(axis=1) if l2 else candidates @ query.astype(np.float64)
        hits[position] = np.count_nonzero(scores >= kth[position] - TIE_TOLERANCE)
    recall = float((hits / k).mean())
    verdict = "exact" if recall == 1.0 else "ok" if recall >= ANN_RECALL_OK else "lossy"
    return {
        "recall_at_k": recall, "k": k, "n_queries": len(rows), "index_type": answered_by,
        "native": answered_by == f"{stored.kind} search", "metric": "l2" if l2 else "inner_product",
        "threshold": ANN_RECALL_OK, "verdict": verdict, "per_query": (hits / k).tolist(),
    }


def _kth_exact_score(read: Callable[[np.ndarray], np.ndarray], n_docs: int, queries: np.ndarray, k: int, l2: bool,
                     chunk: int) -> np.ndarray:
    """Per query, the k-th best exact score s_k (−‖q − v‖² for L2) over the N rows ``read`` gives, ``chunk`` rows
    at a time: the k best of each chunk (``faiss.knn``, IndexFlat's search without a copy of the vectors),
    then the k-th best of their union."""
    metric = faiss.METRIC_L2 if l2 else faiss.METRIC_INNER_PRODUCT
    best = []
    for start in range(0, n_docs, chunk):
        part = np.ascontiguousarray(read(np.arange(start, min(start + chunk, n_docs))), dtype=np.float32)
        scores, _ = faiss.knn(queries, part, min(k, len(part)), metric)
        best.append(-scores if l2 else scores)
    return -np.sort(-np.concatenate(best, axis=1), axis=1)[:, k - 1]


def exact_vectors(store: TokenStore, normalised: bool, pooling: str = "mean") -> np.ndarray:
    """The vectors the store should hold: the re-encoded texts pooled with ``pooling``, L2-normalised when the
    stored ones are."""
    vectors = store.means().astype(np.float64) if pooling == "mean" else pool_store(pooling, store)
    if normalised:
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors
