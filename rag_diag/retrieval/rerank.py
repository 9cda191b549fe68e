"""Token-aware re-scoring of a query against candidate documents, from the stored token matrices.

Two scorers use what mean pooling throws away:

- **MaxSim** (ColBERT late interaction): s(Q, D) = Σ_i max_j q̂_i · d̂_j over L2-normalised token
  vectors; divided by n_q it lies in [−1, 1] and is comparable to a cosine.
- **Second order** (science.md §2): after dividing each text's tokens by ‖μ‖,
  W₂²/4 = d_μ + d_Σ between the two Gaussian fits, with d_μ = ‖μ1 − μ2‖²/4 and d_Σ = BW²/4,
  BW² = ‖A‖²_F + ‖B‖²_F − 2‖A Bᵀ‖_* for A = (X1 − μ1)/√n1, B = (X2 − μ2)/√n2 (the Gram route: one
  n1×n2 nuclear norm instead of two d×d matrix square roots). Candidates are batched by zero-padding
  B, which changes neither ‖B‖_F nor the singular values of A Bᵀ.

Rerankers combine these with the mean-pooled cosine of the first stage:
``maxsim`` = MaxSim/n_q; ``w2`` = −(d_μ + d_Σ); ``blend`` = α·cos + (1 − α)·(−(d_μ + d_Σ));
``hybrid`` = α·cos + (1 − α)·MaxSim/n_q.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from rag_diag.collapse.socm import build_bank, fast_pairs, prepare_text
from rag_diag.errors import RagDiagError

EPS = 1e-12
RERANKERS = ("maxsim", "w2", "blend", "hybrid")


@dataclass(frozen=True)
class RerankConfig:
    """How re-ranking is run: candidate depth, blend weight, and whether MaxSim drops special tokens."""

    depth: int = 30
    alpha: float = 0.5
    drop_special: bool = True
    extra_alphas: tuple[float, ...] = ()
    """Further blend weights to run for ``blend`` and ``hybrid`` (as ``rerank-<name>@<alpha>``), for tuning."""


def parse_rerankers(spec: str | Sequence[str] | None) -> list[str]:
    """Comma-separated reranker names (or ``all``) → validated list; None or empty → []."""
    if not spec:
        return []
    names = list(RERANKERS) if spec == "all" else spec.split(",") if isinstance(spec, str) else list(spec)
    cleaned = list(dict.fromkeys(name.strip() for name in names if name.strip()))
    for name in cleaned:
        if name not in RERANKERS:
            raise RagDiagError(f"unknown reranker '{name}' (known: {', '.join(RERANKERS)})")
    return cleaned


def _pad(matrices: Sequence[np.ndarray], dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ragged (n_k, d) matrices into (K, m, d) zero-padded, with a (K, m) validity mask."""
    width = max(len(matrix) for matrix in matrices)
    dim = matrices[0].shape[1]
    padded = torch.zeros((len(matrices), width, dim), dtype=dtype)
    mask = torch.zeros((len(matrices), width), dtype=torch.bool)
    for row, matrix in enumerate(matrices):
        padded[row, : len(matrix)] = torch.as_tensor(np.asarray(matrix), dtype=dtype)
        mask[row, : len(matrix)] = True
    return padded, mask


def maxsim(query: np.ndarray, documents: Sequence[np.ndarray]) -> np.ndarray:
    """Σ_i max_j q̂_i·d̂_j for one query token matrix (n_q, d) against each document (n_k, d)."""
    q = torch.nn.functional.normalize(torch.tensor(np.asarray(query), dtype=torch.float32), dim=1, eps=EPS)
    docs, mask = _pad([np.asarray(doc, dtype=np.float32) for doc in documents], torch.float32)
    docs = torch.nn.functional.normalize(docs, dim=2, eps=EPS)
    similarity = torch.einsum("id,kjd->kij", q, docs).masked_fill(~mask[:, None, :], -torch.inf)
    return similarity.max(dim=2).values.sum(dim=1).double().numpy()


def second_order(query: np.ndarray, documents: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(d_μ, d_Σ) between one query and each document, by the collapse module's Gram route.

    d_μ = ‖μ_q − μ_k‖²/4 and d_Σ = BW²(Σ_q, Σ_k)/4 on ‖μ‖-normalised texts (see
    :mod:`rag_diag.collapse.socm`): the same provider that computes SOCM, so a re-rank score and a
    collapse figure never disagree.
    """
    prepared = [prepare_text(query), *(prepare_text(doc) for doc in documents)]
    bank = build_bank([p.centred for p in prepared], np.stack([p.mean for p in prepared]))
    stats = fast_pairs(bank, np.zeros(len(documents), dtype=np.int64), np.arange(1, len(prepared)))
    return stats.d_mu, stats.d_sigma


def rerank_scores(
    name: str,
    query: np.ndarray,
    documents: Sequence[np.ndarray],
    cosines: np.ndarray,
    alpha: float = 0.5,
) -> np.ndarray:
    """Scores (higher = better) of reranker ``name`` for the candidates of one query.

    Args:
        name: one of ``RERANKERS``.
        query: the query's token matrix (MaxSim callers pass it without special tokens if wanted).
        documents: the candidates' token matrices, in candidate order.
        cosines: the first-stage mean-pooled cosines of the candidates.
        alpha: weight of the cosine in ``blend`` and ``hybrid``.
    """
    if name in ("maxsim", "hybrid"):
        normalised = maxsim(query, documents) / len(query)
        return normalised if name == "maxsim" else alpha * cosines + (1.0 - alpha) * normalised
    d_mu, d_sigma = second_order(query, documents)
    distance = d_mu + d_sigma
    return -distance if name == "w2" else alpha * cosines - (1.0 - alpha) * distance
