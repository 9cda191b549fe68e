"""Bounded-memory collapse: per-document summaries built shard by shard, and the error bound they carry.

When the token store of a corpus does not fit the memory budget, the corpus is encoded in shards of
``shard_docs`` texts; each shard's token matrices live in a temporary store only while
:func:`~rag_diag.collapse.knn.covariance_summary` reduces them to what kNN collapse needs per document —
the unit mean, the raw statistics (n, tr Σ, concentration) and a rank-r factor F of the normalised
covariance — and are deleted before the next shard. The factors, N·r·d·4 bytes, go to a disk-backed array
(:mod:`rag_diag.collapse.spill`) whose pages are dropped after each write and each read, and so do the means
(N·d·4 bytes) when they are larger than ``SPILL_BYTES``, so the pass holds one shard, whatever N and r, until
kNN collapse reads the means back.

**Error bounds.** With τ the part of tr Σ a factor drops (the sum of the dropped eigenvalues), Σ_r ≤ Σ in the
Loewner order, and BW_r² the pair's BW² between the truncated covariances:

- *above*: the fidelity tr((Σ1^½ Σ2 Σ1^½)^½) is monotone in each argument in the Loewner order (the square root
  is operator monotone), so it is at least its truncated value, and BW² ≤ BW_r² + τ₁ + τ₂;
- *below*: BW is a metric and BW(Σ, Σ_r)² = τ, so BW ≥ BW_r − e with e = √τ₁ + √τ₂ (triangle inequality),
  and BW² ≥ max(BW_r − e, 0)².

d_μ being exact, SOCM = (1 − d_μ)·BW²/4 lies in [SOCM_r − (1 − d_μ)·(BW_r² − max(BW_r − e, 0)²)/4,
SOCM_r + (1 − d_μ)·(τ₁ + τ₂)/4] for every pair; a document's rate (the mean over its k pairs) and the corpus's
mean rate lie between the means of the two ends. The reported symmetric bound is the larger of the two sides.

**Rounding** (:func:`rounding_slack`). Those sides are exact arithmetic; SOCM_r is computed, in float64, from
factors and unit means stored in float32 (unit roundoff u = 2⁻²⁴). What the audit reports widens both sides by:

- the factors: ‖F̃ − F‖_F ≤ u·‖F‖_F = u·√tr Σ_r and BW(F̃ᵀF̃, FᵀF) ≤ ‖F̃ − F‖_F, so BW_r moves by at most
  ρ = u·(√tr Σ_r1 + √tr Σ_r2), and BW_r²/4 by at most ρ·(2·BW_r + ρ)/4;
- the means: each unit mean moves by at most u, so cos by 2u + u² and d_μ by at most u (its float64 dot product
  adds d·eps₆₄); SOCM moves by that times its largest d_Σ, (BW_r + e + ρ)²/4;
- the Gram route on r-row factors (:func:`rag_diag.collapse.socm.fast_pairs`): with s = √(tr Σ_r1·tr Σ_r2),
  ½·r·(√(r·eps₆₄) + d·eps₆₄)·s for the nuclear norm (Weyl, and a backward-stable eigensolver whose near-null
  eigenvalues become √(r·eps₆₄)·s after the square root) and r·d·eps₆₄·(tr Σ_r1 + tr Σ_r2) for the traces.

The slack (its largest value is reported as ``max_rounding_slack``) is what separates SOCM_r from SOCM where
nothing is truncated (the pairs the summary reports as exact).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rag_diag.collapse.knn import CovarianceSummary, KnnResult, covariance_summary, knn_collapse
from rag_diag.collapse.socm import PairStats, TextStats
from rag_diag.collapse.spill import spilled, zeros
from rag_diag.errors import RagDiagError
from rag_diag.models.protocol import Encoder
from rag_diag.progress import progress_bar, release_heap
from rag_diag.tokens.estimate import sharded_passes
from rag_diag.tokens.extract import encode_texts
from rag_diag.tokens.store import TokenStore


@dataclass(frozen=True)
class StreamedSummaries:
    """Summaries of a whole corpus from a sharded pass, with the untruncated lengths and the window."""

    summary: CovarianceSummary
    full_lengths: np.ndarray
    window: int
    n_shards: int
    shard_docs: int
    seconds: dict[str, float] = field(default_factory=dict)
    """Where the pass's time went: ``encode`` (tokenising, forward passes and writing the shards' token stores) and
    ``summaries`` (reducing them to rank-r summaries); empty from the Ray engine."""


def _allocate(n_docs: int, rank: int, dim: int) -> CovarianceSummary:
    """Room for the summaries of ``n_docs`` documents, filled shard by shard (never two copies at once); the
    factors on disk, and the means too once they outgrow ``SPILL_BYTES`` (147 MiB at 100,000 × 384, which the
    pass would otherwise hold while it encodes)."""
    return CovarianceSummary(
        means=zeros((n_docs, dim)), factors=spilled((n_docs, rank, dim)),
        traces=np.empty(n_docs), tail=np.empty(n_docs),
        text_stats=TextStats(np.empty(n_docs, dtype=np.int64), np.empty(n_docs), np.empty(n_docs)),
    )


def _fill(target: CovarianceSummary, start: int, part: CovarianceSummary) -> None:
    """Copy one shard's summaries into rows ``start …`` of ``target``."""
    rows = slice(start, start + len(part.means))
    target.means[rows], target.factors[rows] = part.means, part.factors
    target.release_pages()
    target.traces[rows], target.tail[rows] = part.traces, part.tail
    for name in ("n_tokens", "trace", "concentration"):
        getattr(target.text_stats, name)[rows] = getattr(part.text_stats, name)


def stream_summaries(
    texts: Sequence[str], ids: Sequence[str], encoder: Encoder, rank: int, *, shard_docs: int,
    dtype: str = "float32", batch_size: int = 32, show_progress: bool = False,
    keep: Callable[[TokenStore, int], None] | None = None,
) -> StreamedSummaries:
    """Encode ``texts`` shard by shard into temporary stores and keep only their rank-r summaries (and whatever
    ``keep(shard_store, first_row)`` copies out of each store before it is deleted)."""
    if shard_docs < 1:
        raise RagDiagError(f"shard size must be at least 1 document, got {shard_docs}")
    summary = _allocate(len(texts), rank, encoder.dim)
    lengths = np.empty(len(texts), dtype=np.int64)
    window = n_shards = 0
    seconds = {"encode": 0.0, "summaries": 0.0}
    with progress_bar(f"encoding with {encoder.name} in shards of {shard_docs:,}", len(texts),
                      enabled=show_progress) as advance, tempfile.TemporaryDirectory(prefix="rag-diag-shard-") as tmp:
        for number, start in enumerate(range(0, len(texts), shard_docs)):
            stop = min(start + shard_docs, len(texts))
            started = time.perf_counter()
            store = encode_texts(list(texts[start:stop]), model=encoder, ids=list(ids[start:stop]), dtype=dtype,
                                 batch_size=batch_size, cache=False, out=Path(tmp) / f"shard-{number}")
            seconds["encode"] += time.perf_counter() - started
            release_heap()  # the forward passes' freed activations, before the summaries' chunks are allocated
            if keep is not None:
                keep(store, start)
                store.release_pages()
            started = time.perf_counter()
            _fill(summary, start, covariance_summary(store, rank))
            seconds["summaries"] += time.perf_counter() - started
            lengths[start:stop] = store.full_lengths
            window, n_shards = int(store.window), number + 1
            path = store.path
            del store
            _remove(path)
            release_heap()  # the shard's freed buffers: without it RSS crept up shard after shard at 100,000
            advance(stop - start)
    return StreamedSummaries(summary, lengths, window, n_shards, shard_docs, seconds)


def build_summaries(
    texts: Sequence[str], ids: Sequence[str], encoder: Encoder, rank: int, *, shard_docs: int,
    full_lengths: np.ndarray | None = None, engine: str = "local", address: str | None = None,
    model: str | None = None, keep: Callable[[TokenStore, int], None] | None = None,
) -> StreamedSummaries:
    """The corpus's rank-r summaries, in shards here (``local``) or by Ray actors (``ray``, at ``address`` or on a
    local instance, each loading ``model`` — a registry name travels better than a loaded encoder). Ray gives
    no untruncated lengths: pass the tokeniser's (``full_lengths``). ``keep``: as for :func:`stream_summaries`
    (local only)."""
    if engine == "local":
        return stream_summaries(texts, ids, encoder, rank, shard_docs=shard_docs, show_progress=True, keep=keep)
    if engine != "ray":
        raise RagDiagError(f"--engine must be local or ray, got {engine!r}")
    if full_lengths is None:
        raise RagDiagError("the Ray engine needs the texts' token lengths (from the estimate)")
    from rag_diag.collapse.ray_engine import ray_summaries

    summary = ray_summaries(list(texts), list(ids), model=model or encoder, rank=rank, address=address,
                            max_seq_length=encoder.max_seq_length, show_progress=True)
    return StreamedSummaries(summary, np.asarray(full_lengths), encoder.max_seq_length, 0, 0)


def collapse_from_summaries(summary: CovarianceSummary, k: int, rank: int,
                            token_budget: int = 1 << 17) -> tuple[KnnResult, dict[str, Any]]:
    """kNN collapse on the summaries, and the summary of its per-pair error bounds (:func:`bound_summary`)."""
    found = knn_collapse(None, k, summary=summary, token_budget=token_budget, show_progress=True)
    return found, bound_summary(found, summary, rank)


def _remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)


def socm_error_sides(pairs: PairStats, tail_a: np.ndarray, tail_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pair, how far exact SOCM can lie below and above SOCM_r (the module docstring):
    below = (1 − d_μ)·(BW_r² − max(BW_r − e, 0)²)/4, above = (1 − d_μ)·(τ₁ + τ₂)/4."""
    tail_a, tail_b = np.maximum(tail_a, 0.0), np.maximum(tail_b, 0.0)
    e = np.sqrt(tail_a) + np.sqrt(tail_b)
    bw_r = 2.0 * np.sqrt(np.maximum(pairs.d_sigma, 0.0))
    keep = 1.0 - pairs.d_mu
    return keep * (bw_r**2 - np.maximum(bw_r - e, 0.0) ** 2) / 4.0, keep * (tail_a + tail_b) / 4.0


def socm_error_bound(pairs: PairStats, tail_a: np.ndarray, tail_b: np.ndarray) -> np.ndarray:
    """Per pair, the bound on |SOCM − SOCM_r|: the larger side of :func:`socm_error_sides`."""
    return np.maximum(*socm_error_sides(pairs, tail_a, tail_b))


UNIT_ROUNDOFF_32 = 2.0**-24
"""u of float32, in which the summaries store their factors and unit means."""
EPS64 = float(np.finfo(np.float64).eps)


def rounding_slack(found: KnnResult, summary: CovarianceSummary) -> np.ndarray:
    """Per pair of ``found`` (computed on ``summary``), how far rounding can move the computed SOCM_r from the exact
    arithmetic the sides assume: the float32 factors and means and the float64 Gram route (module docstring)."""
    rank, dim = summary.factors.shape[1:]
    trace_a = np.maximum(summary.traces[found.doc_a], 0.0)
    trace_b = np.maximum(summary.traces[found.doc_b], 0.0)
    tails = np.sqrt(np.maximum(summary.tail[found.doc_a], 0.0)) + np.sqrt(np.maximum(summary.tail[found.doc_b], 0.0))
    rho = UNIT_ROUNDOFF_32 * (np.sqrt(trace_a) + np.sqrt(trace_b))
    bw_r = 2.0 * np.sqrt(np.maximum(found.pairs.d_sigma, 0.0))
    factors = (1.0 - found.pairs.d_mu) * rho * (2.0 * bw_r + rho) / 4.0
    means = (UNIT_ROUNDOFF_32 + dim * EPS64) * (bw_r + tails + rho) ** 2 / 4.0
    gram = (0.5 * rank * (np.sqrt(rank * EPS64) + dim * EPS64) * np.sqrt(trace_a * trace_b)
            + rank * dim * EPS64 * (trace_a + trace_b))
    return factors + means + gram


def bound_summary(found: KnnResult, summary: CovarianceSummary, rank: int) -> dict[str, Any]:
    """What the audit reports of the bounds over every kNN pair of ``found`` (k rows per document, in order, computed
    on ``summary``): the symmetric bound's max and mean, the share of pairs nothing was truncated from (both texts'
    centred matrices, of rank ≤ min(n − 1, d), fit r rows, or τ = 0), and the interval the exact mean collapse rate
    lies in.
    Each side includes :func:`rounding_slack`."""
    tail_a, tail_b = summary.tail[found.doc_a], summary.tail[found.doc_b]
    fits = np.minimum(np.asarray(summary.text_stats.n_tokens) - 1, summary.factors.shape[2]) <= rank  # min(n − 1, d)
    whole = fits | (np.asarray(summary.tail) <= 0.0)
    slack = rounding_slack(found, summary)
    below, above = (side + slack for side in socm_error_sides(found.pairs, tail_a, tail_b))
    bound = np.maximum(below, above)
    if not len(bound):
        return {"rank": rank, "max_socm_error_bound": 0.0, "mean_socm_error_bound": 0.0, "share_pairs_exact": 1.0}
    n_docs = len(found.collapse_mean)
    low = np.maximum(found.pairs.socm - below, 0.0).reshape(n_docs, -1).mean(axis=1)
    high = (found.pairs.socm + above).reshape(n_docs, -1).mean(axis=1)
    return {"rank": rank, "max_socm_error_bound": float(bound.max()), "mean_socm_error_bound": float(bound.mean()),
            "share_pairs_exact": float(np.mean(whole[found.doc_a] & whole[found.doc_b])),
            "max_rounding_slack": float(slack.max()),
            "mean_socm_below": float(below.mean()), "mean_socm_above": float(above.mean()),
            "mean_collapse_rate_interval": [float(low.mean()), float(high.mean())]}


DEFAULT_MEMORY_BUDGET = 2 * 2**30
"""Bytes of corpus data an audit may hold (token store pages, summaries, a shard): sized for a laptop, on top
of the ≈ 1 GiB that Python, torch and the model take."""
STORE_SHARE, SHARD_SHARE, BANK_SHARE = 0.5, 0.1, 0.05
"""Shares of the budget for a whole token store, for one shard's token store and for the float64 bank of token
rows kNN collapse holds at once (its pair kernel's temporaries come on top). With 0.05 rather than 0.1, and one
bank alive at a time, the 100,000-document audit's peak fell from 2.24 to 2.06 GiB (``bench_scale.txt``)."""
MAX_RANK = 32
"""The summaries' rank unless ``--max-store`` caps their disk. Measured on 3,000 ``kb-scale`` documents (67 tokens
on average, all-MiniLM-L6-v2, k = 10): the mean collapse rate is 0.605 exact, 0.283 at rank 3, 0.567 at 16 and
0.602 at 32, whose per-document error is 0.007 on average (``benchmarks/results/summary_rank.txt``)."""


@dataclass(frozen=True)
class MemoryPlan:
    """How an audit holds the corpus: a whole token store, or shard-built rank-r summaries (and why)."""

    mode: str
    budget_bytes: int
    store_bytes: int
    max_store_bytes: int | None
    rank: int | None
    shard_docs: int | None
    summary_bytes: int
    """Disk the summaries' factors take (N·r·d·4); 0 in token-store mode."""
    reason: str
    token_rows: int = 1 << 17
    """Token rows kNN collapse loads at once (float64): BANK_SHARE of the budget."""
    forward_passes: int | None = None
    """The pass's forward passes over the local shards (summaries on the local engine, lengths given), else None."""
    ray: bool = False
    """Summaries built by Ray actors (their batches, not the shards)."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def line(self) -> str:
        """The plan in one line, printed before the pass."""
        if self.mode == "token-store":
            return f"plan: one token store, exact kNN collapse ({self.reason})"
        where = ("by Ray actors" if self.ray else f"in shards of {self.shard_docs:,} documents"
                 + ("" if self.forward_passes is None else f", {self.forward_passes:,} forward passes"))
        return (f"plan: rank-{self.rank} summaries built {where} ({self.reason}); "
                f"their factors take {self.summary_bytes / 2**20:,.0f} MiB of a temporary file on disk")


RAY_REASON = "the Ray engine builds summaries"


def plan_memory(
    n_docs: int, n_tokens: int, store_bytes: int, dim: int, budget_bytes: int = DEFAULT_MEMORY_BUDGET,
    max_store_bytes: int | None = None, summaries: bool = False, lengths: Sequence[int] = (),
) -> MemoryPlan:
    """The token store when it fits (≤ STORE_SHARE of the budget and ≤ ``max_store_bytes``), else summaries:

    r = MAX_RANK, or min(MAX_RANK, ⌊max_store / (N·d·4)⌋) (at least 1) under ``max_store_bytes``: the N·r·d
    float32 factors, on disk (``summary_bytes``); the N·d means stay in memory;
    shard = ⌊SHARD_SHARE·budget / (T/N · d · 4)⌋ documents (at least 1), one shard's token store.
    Either way kNN collapse holds token_rows = ⌊BANK_SHARE·budget / (d·8)⌋ (at least 1024) float64 rows at once.
    ``summaries`` asks for summaries whatever the size (the Ray engine computes nothing else). With the texts'
    token ``lengths``, local summaries also count their forward passes (:func:`.estimate.sharded_passes`).
    """
    if budget_bytes <= 0:
        raise RagDiagError(f"--memory-budget must be positive, got {budget_bytes}")
    fits = store_bytes <= STORE_SHARE * budget_bytes and (max_store_bytes is None or store_bytes <= max_store_bytes)
    token_rows = max(1024, int(BANK_SHARE * budget_bytes // (dim * 8)))
    if fits and not summaries:
        return MemoryPlan("token-store", budget_bytes, store_bytes, max_store_bytes, None, None, 0,
                          f"the token store ({store_bytes / 2**20:,.0f} MiB) fits the budget", token_rows)
    per_rank = max(n_docs * dim * 4, 1)
    most = min(MAX_RANK, dim)  # a covariance of d-dimensional tokens has rank ≤ d
    rank = most if max_store_bytes is None else max(1, min(most, int(max_store_bytes // per_rank)))
    per_doc = max(n_tokens / max(n_docs, 1), 1.0) * dim * 4
    shard = max(1, min(n_docs, int(SHARD_SHARE * budget_bytes // per_doc)))
    capped = max_store_bytes is not None and store_bytes > max_store_bytes
    why = RAY_REASON if fits else (f"the token store ({store_bytes / 2**20:,.0f} MiB) is over "
           + (f"--max-store ({max_store_bytes / 2**20:,.0f} MiB)" if capped and max_store_bytes is not None
              else f"half the memory budget ({budget_bytes / 2**20:,.0f} MiB)"))
    passes = sharded_passes(lengths, shard) if len(lengths) and not summaries else None
    return MemoryPlan("summaries", budget_bytes, store_bytes, max_store_bytes, rank, shard,
                      rank * per_rank, why, token_rows, passes, summaries)
