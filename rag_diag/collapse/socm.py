"""Second-order collapse (SOCM): one definition, two providers that must agree.

Definition (shared/docs/science.md, Hara et al., ACL 2026). For a text with token states
X = {x_1 … x_n} ⊂ R^d:

- μ(X) = (1/n) Σ x_j, Σ(X) = (1/n) Σ (x_j − μ)(x_j − μ)ᵀ, S(X) = tr Σ(X);
- token concentration = S(X) / ‖μ(X)‖² on the raw states.

Before two texts are compared each text's tokens are divided by max(‖μ(X)‖, 1e-12), so means are unit
vectors and tr Σ equals the concentration. For the normalised pair:

- d_μ = ‖μ1 − μ2‖² / 4 = (1 − cos(μ1, μ2)) / 2,
- BW²(Σ1, Σ2) = tr Σ1 + tr Σ2 − 2 tr((Σ1^½ Σ2 Σ1^½)^½),  d_Σ = BW² / 4,
- SOCM = (1 − d_μ) · d_Σ.

Providers:

- **reference** (:func:`reference_pair`): float64, Σ as d×d matrices, square roots by symmetric
  eigendecomposition with eigenvalues clipped at 0, no jitter. ``paper_jitter=True`` adds 1e-9·I to
  Σ1 and to Σ1^½ Σ2 Σ1^½ before their square roots, as the published code does; on low-rank
  covariances (n ≪ d) that biases BW²: each of the ~d − n null eigenvalues of the inner matrix adds
  √1e-9 ≈ 3e-5 to the cross term, so BW² comes out too small by up to ~2·d·3e-5.
- **fast** (:func:`fast_pairs`, :func:`fast_all_pairs`): with A = (X1 − μ1)/√n1 and
  B = (X2 − μ2)/√n2 (normalised), Σ1 = AᵀA, Σ2 = BᵀB and tr((Σ1^½ Σ2 Σ1^½)^½) = ‖A Bᵀ‖_*, the
  nuclear norm of an n1×n2 matrix, computed as Σ √λ over the eigenvalues λ (clipped at 0) of the
  smaller Gram matrix (ABᵀ)(ABᵀ)ᵀ in float64. Token matrices are zero-padded per chunk (zero rows do
  not change singular values) and processed in batches; ``dtype`` sets the precision of the
  d-dimensional products, the dominant cost.

One-token texts (and any text whose tokens are all equal) have Σ = 0: concentration 0, and against
another text BW²(0, Σ2) = tr Σ2 exactly, so d_Σ = tr Σ2 / 4. Both providers return exactly that.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from rag_diag.collapse.eigen import eigvalsh
from rag_diag.devices import resolve_device
from rag_diag.errors import RagDiagError
from rag_diag.tokens.store import TokenStore

MEAN_EPS = 1e-12
PAPER_JITTER = 1e-9
DEFAULT_BUDGET = 1 << 22  # elements of the largest temporary tensor of a chunk
CUDA_BUDGET = 1 << 26
"""The same on a CUDA device (float32 products: the two padded tensors 256 MiB together). There the host solves
Grams over 32×32 on a pool of threads (:mod:`rag_diag.collapse.eigen`), which needs batches of hundreds: under
``DEFAULT_BUDGET`` a batch of 120-token texts holds about 45 pairs."""


@dataclass(frozen=True)
class PairStats:
    """Per-pair statistics, one entry per pair: d_μ, d_Σ, SOCM and the cosine of the two means."""

    d_mu: np.ndarray
    d_sigma: np.ndarray
    socm: np.ndarray
    cos: np.ndarray

    def __len__(self) -> int:
        return len(self.socm)

    def take(self, order: np.ndarray) -> PairStats:
        """The same statistics reordered / subset by ``order``."""
        return PairStats(self.d_mu[order], self.d_sigma[order], self.socm[order], self.cos[order])

    @staticmethod
    def concat(parts: Sequence[PairStats]) -> PairStats:
        """Concatenate several PairStats in order."""
        if not parts:
            empty = np.zeros(0)
            return PairStats(empty, empty, empty, empty)
        return PairStats(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("d_mu", "d_sigma", "socm", "cos")))


@dataclass(frozen=True)
class TextStats:
    """Per-text statistics on the raw states: n tokens, S(X) = tr Σ(X), concentration S(X)/‖μ(X)‖²."""

    n_tokens: np.ndarray
    trace: np.ndarray
    concentration: np.ndarray


def socm_from_parts(cos: np.ndarray, trace_a: np.ndarray, trace_b: np.ndarray, cross_nuclear: np.ndarray) -> PairStats:
    """Assemble PairStats from unit-mean cosines, normalised traces and tr((Σ1^½Σ2Σ1^½)^½).

    d_μ = (1 − cos)/2 (= ‖μ1 − μ2‖²/4 for unit means), BW² = max(tr Σ1 + tr Σ2 − 2·cross, 0),
    d_Σ = BW²/4, SOCM = (1 − d_μ)·d_Σ.
    """
    d_mu = np.clip((1.0 - cos) / 2.0, 0.0, 1.0)
    d_sigma = np.maximum(trace_a + trace_b - 2.0 * cross_nuclear, 0.0) / 4.0
    return PairStats(d_mu=d_mu, d_sigma=d_sigma, socm=(1.0 - d_mu) * d_sigma, cos=cos)


# ---------------------------------------------------------------- per-text kernel


class PreparedText(NamedTuple):
    """One text ready for comparison: unit mean, scaled centred matrix A, and raw statistics."""

    mean: np.ndarray
    centred: np.ndarray
    n_tokens: int
    spread: float
    concentration: float


def prepare_text(tokens: np.ndarray) -> PreparedText:
    """Normalise one raw token matrix (float64).

    mean = μ/‖μ‖ and centred = A = (X − μ)/(‖μ‖·√n), so AᵀA is the normalised covariance and
    ‖A‖²_F = tr Σ; spread = S(X) = ‖X − μ‖²_F / n and concentration = S(X)/‖μ‖² on the raw states
    (‖μ‖ clipped at 1e-12). A one-token text has A = 0, spread 0 and concentration 0.
    """
    x = np.asarray(tokens, dtype=np.float64)
    mean = x.mean(axis=0)
    centred = x - mean
    norm = max(float(np.linalg.norm(mean)), MEAN_EPS)
    spread = float(np.einsum("ij,ij->", centred, centred)) / len(x)
    return PreparedText(mean / norm, centred / (norm * np.sqrt(len(x))), len(x), spread, spread / norm**2)


# ---------------------------------------------------------------- reference provider


def _psd_sqrt(matrix: np.ndarray, jitter: float) -> np.ndarray:
    """Symmetric square root of a PSD matrix by eigendecomposition (eigenvalues clipped at 0)."""
    values, vectors = np.linalg.eigh(matrix + jitter * np.eye(len(matrix)))
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def reference_bw2(sigma1: np.ndarray, sigma2: np.ndarray, paper_jitter: bool = False) -> float:
    """BW²(Σ1, Σ2) = tr Σ1 + tr Σ2 − 2 tr((Σ1^½ Σ2 Σ1^½)^½) with d×d float64 matrices, clamped at 0 as the fast
    route's is (BW² ≥ 0; for Σ1 = Σ2 the square roots of null eigenvalues leave about −1e-8).

    Args:
        paper_jitter: add 1e-9·I before each square root, reproducing the published (biased) numbers, unclamped.
    """
    jitter = PAPER_JITTER if paper_jitter else 0.0
    root1 = _psd_sqrt(sigma1, jitter)
    inner = root1 @ sigma2 @ root1
    inner = (inner + inner.T) / 2.0
    cross = float(np.trace(_psd_sqrt(inner, jitter)))
    bw2 = float(np.trace(sigma1) + np.trace(sigma2) - 2.0 * cross)
    return bw2 if paper_jitter else max(bw2, 0.0)


def reference_pair(x1: np.ndarray, x2: np.ndarray, paper_jitter: bool = False) -> PairStats:
    """SOCM of one pair of raw token matrices by the d×d reference route (one-element arrays)."""
    mu1, a, *_ = prepare_text(x1)
    mu2, b, *_ = prepare_text(x2)
    bw2 = reference_bw2(a.T @ a, b.T @ b, paper_jitter)
    d_mu = float(((mu1 - mu2) ** 2).sum() / 4.0)
    d_sigma = bw2 / 4.0
    return PairStats(
        d_mu=np.array([d_mu]),
        d_sigma=np.array([d_sigma]),
        socm=np.array([(1.0 - d_mu) * d_sigma]),
        cos=np.array([float(mu1 @ mu2)]),
    )


# ---------------------------------------------------------------- fast provider


@dataclass
class Bank:
    """Normalised texts ready for the Gram route, on one device.

    ``rows`` holds every text's A (or a rank-r factor F with FᵀF ≈ AᵀA) stacked; text i owns rows
    ``offsets[i]:offsets[i+1]``. ``means`` are unit means and ``traces`` tr Σ of the normalised text,
    both float64.
    """

    rows: torch.Tensor
    offsets: np.ndarray
    means: torch.Tensor
    traces: np.ndarray

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def padded(self, index: np.ndarray, width: int) -> torch.Tensor:
        """(m, width, d) zero-padded rows of the texts ``index``."""
        starts = torch.as_tensor(self.offsets[index], device=self.rows.device)
        lengths = torch.as_tensor(self.lengths[index], device=self.rows.device)
        positions = torch.arange(width, device=self.rows.device)
        valid = positions[None, :] < lengths[:, None]
        rows = self.rows[(starts[:, None] + positions[None, :]).clamp(max=len(self.rows) - 1)]
        return rows.mul_(valid[..., None].to(rows.dtype))  # the gathered copy is this call's own: masked in place


def build_bank(
    factors: Sequence[np.ndarray],
    means: np.ndarray,
    device: str = "cpu",
    dtype: torch.dtype = torch.float64,
) -> Bank:
    """Bank from per-text row matrices (A or rank-r factors, float64) and unit means (m, d)."""
    lengths = np.array([len(f) for f in factors], dtype=np.int64)
    offsets = np.zeros(len(factors) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    stacked = np.concatenate(factors) if len(factors) else np.zeros((0, means.shape[1]))
    traces = np.array([float((f * f).sum()) for f in factors])
    return Bank(
        rows=torch.as_tensor(stacked, dtype=dtype, device=device),
        offsets=offsets,
        means=torch.as_tensor(means, dtype=torch.float64, device=device),
        traces=traces,
    )


def nuclear_norms(cross: torch.Tensor) -> torch.Tensor:
    """‖C‖_* for a batch (m, p, q): Σ √λ over eigenvalues of the smaller Gram, float64 on C's device."""
    cross = cross.to(torch.float64)
    if cross.shape[1] > cross.shape[2]:
        cross = cross.transpose(1, 2)
    if cross.shape[1] == 0:
        return torch.zeros(cross.shape[0], dtype=torch.float64, device=cross.device)
    gram = cross @ cross.transpose(1, 2)
    return eigvalsh(gram).clamp(min=0.0).sqrt().sum(dim=-1)


COSINE_CHUNK = 4096
"""Pairs whose two unit means are gathered at once (2 · 4096 · d float64: 25 MB at d = 384)."""


def _pair_cosines(bank: Bank, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """cos(μ_a, μ_b) of each pair, gathered ``COSINE_CHUNK`` pairs at a time (each row's sum is the same)."""
    out = np.empty(len(a))
    for start in range(0, len(a), COSINE_CHUNK):
        ta = torch.as_tensor(a[start : start + COSINE_CHUNK], device=bank.means.device)
        tb = torch.as_tensor(b[start : start + COSINE_CHUNK], device=bank.means.device)
        out[start : start + len(ta)] = (bank.means[ta] * bank.means[tb]).sum(dim=-1).cpu().numpy()
    return out


def fast_pairs(
    bank: Bank,
    a: np.ndarray,
    b: np.ndarray,
    budget: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> PairStats:
    """SOCM of pairs (a[i], b[i]) of bank texts by the batched Gram route.

    Pairs are oriented so the shorter text comes first, sorted by length and cut into chunks whose
    padded token tensors hold at most ``budget`` elements (default ``DEFAULT_BUDGET``, or ``CUDA_BUDGET`` on a
    CUDA bank), so memory stays bounded.
    """
    if budget is None:
        budget = CUDA_BUDGET if bank.rows.device.type == "cuda" else DEFAULT_BUDGET
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    lengths = bank.lengths
    swap = lengths[a] > lengths[b]
    short, long = np.where(swap, b, a), np.where(swap, a, b)
    order = np.lexsort((lengths[short], lengths[long]))
    nuclear = np.zeros(len(a))
    dim = bank.rows.shape[1]
    start = 0
    while start < len(order):
        width = max(int(lengths[long[order[start]]]), 1)
        stop = min(len(order), start + max(1, budget // (2 * width * dim)))
        width = max(int(lengths[long[order[stop - 1]]]), 1)
        stop = min(stop, start + max(1, budget // (2 * width * dim)))
        chunk = order[start:stop]
        short_width = max(int(lengths[short[chunk]].max()), 1)
        cross = bank.padded(short[chunk], short_width) @ bank.padded(long[chunk], width).transpose(1, 2)
        nuclear[chunk] = nuclear_norms(cross).cpu().numpy()
        if progress is not None:
            progress(len(chunk))
        start = stop
    return socm_from_parts(_pair_cosines(bank, a, b), bank.traces[a], bank.traces[b], nuclear)


# ---------------------------------------------------------------- token-store API


def load_bank(
    store: TokenStore,
    indices: np.ndarray,
    *,
    layer: int | None = None,
    drop_special: bool = False,
    device: str = "cpu",
    dtype: torch.dtype = torch.float64,
) -> tuple[Bank, TextStats]:
    """Normalised bank and raw per-text statistics of the store texts ``indices``.

    Each text's A is written straight into one preallocated float64 matrix (the store's lengths bound the rows:
    dropping special tokens only removes some), so a chunk's rows are held once, not once per text and again
    stacked."""
    indices = np.asarray(indices, dtype=np.int64)
    rows = np.empty((int(store.lengths[indices].sum()), store.dim))
    offsets = np.zeros(len(indices) + 1, dtype=np.int64)
    means = np.zeros((len(indices), store.dim))
    n_tokens = np.empty(len(indices), dtype=np.int64)
    spread, concentration, traces = np.empty(len(indices)), np.empty(len(indices)), np.empty(len(indices))
    for position, row in enumerate(indices):
        prepared = prepare_text(store.tokens(int(row), layer, drop_special))
        stop = offsets[position] + prepared.n_tokens
        rows[offsets[position] : stop] = prepared.centred
        offsets[position + 1] = stop
        means[position], n_tokens[position] = prepared.mean, prepared.n_tokens
        spread[position], concentration[position] = prepared.spread, prepared.concentration
        traces[position] = float((prepared.centred * prepared.centred).sum())
    bank = Bank(rows=torch.as_tensor(rows[: offsets[-1]], dtype=dtype, device=resolve_device(device)),
                offsets=offsets, means=torch.as_tensor(means, dtype=torch.float64, device=resolve_device(device)),
                traces=traces)
    return bank, TextStats(n_tokens=n_tokens, trace=spread, concentration=concentration)


PAIR_TOKEN_BUDGET = 1 << 16
"""Token rows one group of :func:`pair_socm` loads (≈ 200 MB at d = 384 in float64), whatever the pair count."""


def pair_groups(lengths: np.ndarray, a: np.ndarray, b: np.ndarray, budget: int) -> list[np.ndarray]:
    """Consecutive pair positions grouped so each group's distinct texts hold at most ``budget`` token rows
    (``lengths[t]`` each; a single pair over the budget is a group of its own)."""
    groups: list[np.ndarray] = []
    start, held, members = 0, 0, set[int]()
    for position, pair in enumerate(zip(a.tolist(), b.tolist(), strict=True)):
        new = set(pair) - members
        cost = sum(int(lengths[t]) for t in new)
        if position > start and held + cost > budget:
            groups.append(np.arange(start, position))
            start, held, members = position, 0, set[int]()
            new = set(pair)
            cost = sum(int(lengths[t]) for t in new)
        members |= new
        held += cost
    if len(a) > start:
        groups.append(np.arange(start, len(a)))
    return groups


def pair_socm(
    store: TokenStore,
    a: np.ndarray,
    b: np.ndarray,
    *,
    layer: int | None = None,
    drop_special: bool = False,
    device: str = "cpu",
    dtype: torch.dtype = torch.float64,
    token_budget: int = PAIR_TOKEN_BUDGET,
) -> PairStats:
    """SOCM of the store pairs (a[i], b[i]) (integer row indices) by the fast provider.

    Pairs are taken in order of (a, b) and in groups (:func:`pair_groups`) whose texts hold at most
    ``token_budget`` token rows, so memory is bounded whatever the number of pairs.

    Args:
        store: token store; only the texts named in ``a`` and ``b`` are read.
        layer: stored hidden layer (None: the deepest stored, the last hidden layer by default).
        drop_special: drop [CLS]/[SEP]/BOS tokens (a text made only of special tokens keeps them).
        device: "cpu", "cuda" or "auto".
        dtype: precision of the d-dimensional products (float64 or float32).
    """
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    if a.shape != b.shape:
        raise RagDiagError(f"pair index arrays differ in shape: {a.shape} vs {b.shape}")
    if len(a) and (min(a.min(), b.min()) < 0 or max(a.max(), b.max()) >= len(store)):
        raise RagDiagError(f"pair indices must lie in 0..{len(store) - 1}")
    order = np.lexsort((b, a))
    parts, positions = [], []
    for group in pair_groups(store.lengths, a[order], b[order], token_budget):
        rows = order[group]
        unique, inverse = np.unique(np.concatenate([a[rows], b[rows]]), return_inverse=True)
        bank, _ = load_bank(store, unique, layer=layer, drop_special=drop_special, device=device, dtype=dtype)
        parts.append(fast_pairs(bank, inverse[: len(rows)], inverse[len(rows) :]))
        positions.append(rows)
        store.release_pages()
        del bank
    return PairStats.concat(parts).take(np.argsort(np.concatenate(positions or [np.zeros(0, np.int64)])))
