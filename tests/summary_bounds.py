"""Tolerances for comparing rank-r summaries (and the collapse rates built on them) of two encoder passes whose
token states differ by at most η per entry (two float32 forward passes batched differently: η is the suite's
round-off estimate, test_encode.forward_atol).

Per text, from the local states X (n × d), μ its mean, a = ‖μ‖, Y = X − μ, S(X) = ‖Y‖²_F / n, c = S(X) / a²,
A = Y / (√n·a) (the normalised centred matrix, ‖A‖²_F = c) and λ_1 ≥ λ_2 ≥ … the eigenvalues of AᵀA:

- ‖Δμ‖₂ ≤ m = √d·η, and a' ≥ a − m;
- unit means: ‖u' − u‖₂ ≤ 2m / a (‖p/‖p‖ − q/‖q‖‖ ≤ 2‖p − q‖ / ‖p‖);
- S(X): ‖ΔY‖_F ≤ 2η√(nd), so |ΔS| ≤ 4η√(d·S) + 4dη²;
- c = S / a²: |Δc| ≤ |ΔS| / a'² + S·(2a + m)·m / (a²·a'²);
- ‖ΔA‖_F ≤ δ = 2η√d / a' + √S·m / (a·a'), so ‖Δ(AᵀA)‖₂ ≤ ε_S = 2√c·δ + δ² (‖A‖₂ ≤ ‖A‖_F = √c);
- the kept trace Σ_{i≤r} λ_i moves by ≤ r·ε_S (Weyl), the tail τ = c − kept by ≤ |Δc| + r·ε_S;
- Σ_r = [AᵀA]_r = FᵀF = P S P (P the top-r eigenprojector): ‖ΔΣ_r‖₂ ≤ ε_S + 2λ_1·‖ΔP‖₂ and, by Davis–Kahan,
  ‖ΔP‖₂ ≤ ε_S / (λ_r − λ_{r+1} − ε_S) when the gap exceeds ε_S (else no bound: the factor is ill-defined);
  a text of n ≤ r + 1 tokens has rank A ≤ r, so Σ_r = AᵀA and ‖ΔΣ_r‖₂ ≤ ε_S;
- plus float32 storage: unit means ≤ eps32 an entry, FᵀF ≤ 2.1·eps32·c an entry, each side (c itself: 4·eps32·c).

A pair's SOCM on summaries is (1 − d_μ)·BW²(Σ_r,a, Σ_r,b)/4 with d_μ = (1 − u_a·u_b)/2. BW is a metric and
BW(Σ, Σ') ≤ ‖Σ^½ − Σ'^½‖_F ≤ √‖Σ − Σ'‖_* ≤ √(2r·‖ΔΣ_r‖₂) =: β (Powers–Størmer; ΔΣ_r has rank ≤ 2r), so
|ΔBW| ≤ β_a + β_b, |Δd_Σ| ≤ (2·BW·(β_a + β_b) + (β_a + β_b)²) / 4 with BW ≤ √kept_a + √kept_b,
|Δd_μ| ≤ (‖Δu_a‖ + ‖Δu_b‖) / 2, and |ΔSOCM| ≤ |Δd_μ|·(d_Σ + |Δd_Σ|) + |Δd_Σ|. A collapse rate (mean or max over a
text's k neighbours, the same neighbours on both sides) moves by at most the largest of its pairs' bounds. The
collapse bound is taken from the two summaries' *measured* ‖Δu‖ and ‖ΔΣ_r‖₂: kNN collapse is a fixed function of
the summaries, so this checks that function's wiring to its own rounding and the two square-root steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)
EPS64 = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class SummaryTolerances:
    """Per-text bounds on the difference of every summary field between the two passes."""

    unit_mean: np.ndarray  # ‖Δu‖₂, storage included
    spread: np.ndarray  # |ΔS(X)|
    concentration: np.ndarray
    kept: np.ndarray
    tail: np.ndarray
    sigma_r: np.ndarray  # ‖ΔΣ_r‖₂ by Davis–Kahan (storage added); inf where the gap λ_r − λ_{r+1} ≤ ε_S
    kept_value: np.ndarray  # the local kept trace (for BW ≤ √kept_a + √kept_b)


def summary_tolerances(texts_states: list[np.ndarray], rank: int, eta: float) -> SummaryTolerances:
    """The bounds of the module docstring for each text's local states (n_i × d, float32 or float64)."""
    rows = []
    for states in texts_states:
        x = np.asarray(states, dtype=np.float64)
        n, d = x.shape
        mu = x.mean(axis=0)
        a = float(np.linalg.norm(mu))
        y = x - mu
        spread = float((y * y).sum()) / n
        c = spread / a**2
        m = np.sqrt(d) * eta
        low = a - m
        assert low > 0, "the state bound exceeds the mean's norm: no bound on the unit mean"
        d_spread = 4 * eta * np.sqrt(d * spread) + 4 * d * eta**2
        d_c = d_spread / low**2 + spread * (2 * a + m) * m / (a**2 * low**2)
        delta = 2 * eta * np.sqrt(d) / low + np.sqrt(spread) * m / (a * low)
        eps_s = 2 * np.sqrt(c) * delta + delta**2
        centred = y / (np.sqrt(n) * a)
        lam = np.sort(np.clip(np.linalg.eigvalsh(centred @ centred.T), 0.0, None))[::-1]
        lam = np.concatenate([lam, np.zeros(rank + 1)])
        eig_round = n * EPS64 * c  # eigvalsh of the n × n Gram: backward stable, ≤ n·eps·‖G‖ an eigenvalue
        kept_value = float(lam[:rank].sum())
        d_kept = rank * (eps_s + eig_round)
        gap = lam[rank - 1] - lam[rank]
        davis_kahan = eps_s + 2 * lam[0] * eps_s / (gap - eps_s) if gap > eps_s else np.inf
        if n - 1 <= rank:  # rank A ≤ n − 1 ≤ r: Σ_r = AᵀA itself, bounded by ε_S
            davis_kahan = eps_s
        sigma_r = davis_kahan + 2 * 2.1 * EPS32 * c + eig_round
        rows.append((2 * m / a + 2 * np.sqrt(d) * EPS32, d_spread + n * d * EPS64 * spread, d_c + 4 * EPS32 * c,
                     d_kept, d_c + d_kept, sigma_r, kept_value))
    columns = [np.asarray(column) for column in zip(*rows, strict=True)]
    return SummaryTolerances(*columns)


def measured_beta(got_sigma: np.ndarray, want_sigma: np.ndarray, rank: int) -> np.ndarray:
    """β per text from two passes' Σ_r (N, d, d): √(2r·‖ΔΣ_r‖₂), the spectral norm from eigvalsh of the difference."""
    spectral = np.array([np.abs(np.linalg.eigvalsh(g - w)).max() for g, w in zip(got_sigma, want_sigma, strict=True)])
    return np.sqrt(2 * rank * spectral)


def collapse_tolerances(delta_u: np.ndarray, beta: np.ndarray, kept: np.ndarray, doc_a: np.ndarray,
                        doc_b: np.ndarray, d_sigma: np.ndarray, rank: int, dim: int) -> np.ndarray:
    """Per text: the largest SOCM bound (module docstring) over its neighbour pairs (doc_a, doc_b), from each
    text's ‖Δu‖₂ and β and the local kept traces and pair d_Σ, plus one Gram-route rounding (width r) a side."""
    from test_collapse import gram_atol

    a, b = np.asarray(doc_a), np.asarray(doc_b)
    both = beta[a] + beta[b]
    bw = np.sqrt(kept[a]) + np.sqrt(kept[b])
    d_dsigma = (2 * bw * both + both**2) / 4
    d_dmu = (delta_u[a] + delta_u[b]) / 2
    rounding = np.array([2 * gram_atol(rank, dim, kept[i], kept[j]) for i, j in zip(a, b, strict=True)])
    pair = d_dmu * (np.asarray(d_sigma) + d_dsigma) + d_dsigma + rounding
    largest = np.zeros(len(beta))
    np.maximum.at(largest, a, pair)
    return largest
