"""How far the rank-r summaries' collapse rates are from exact ones, and what they cost, by rank.

On N documents of the real mixed knowledge base (``rag-diag corpora build kb-scale --size N``), encoded once
with all-MiniLM-L6-v2 into a token store:

1. exact kNN collapse (k neighbours per document, the Gram route on every token matrix), timed;
2. for each rank r: the rank-r summaries (:func:`rag_diag.collapse.knn.covariance_summary`) and kNN collapse on
   them, timed; the mean collapse rate against the exact one and the interval the summaries bound it to, the
   per-document |error| (mean, 95th percentile, max), the mean per-pair error bound, the pairs whose exact SOCM
   lies outside their two-sided bounds widened by the float32 rounding of the stored factors and means
   (:func:`outside_sides`; must be 0), and the disk
   the factors take at N and at 100,000 documents.

This is what sets ``MAX_RANK`` in :mod:`rag_diag.collapse.summaries`.
Run: ``.venv/bin/python benchmarks/bench_summary_rank.py [N] [--ranks 3 8 16 24 32 48]``
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_collapse import gram_atol  # noqa: E402  (the tests' rounding bound of one Gram-route evaluation)

from rag_diag.collapse.knn import covariance_summary, knn_collapse  # noqa: E402
from rag_diag.collapse.summaries import bound_summary  # noqa: E402
from rag_diag.corpora.io import load_corpus  # noqa: E402
from rag_diag.models.loading import load_encoder  # noqa: E402
from rag_diag.tokens.extract import encode_texts  # noqa: E402

ROUNDING = 2.0**-24
"""Unit roundoff of float32: the summaries store F and μ in float32, so each text's factor moves by at most
ROUNDING·‖F‖_F = ROUNDING·√tr Σ_r, and BW(FᵀF, F̃ᵀF̃) ≤ ‖F − F̃‖_F adds that to the pair's distances."""


def outside_sides(found, exact, summary, lengths: np.ndarray, dim: int) -> tuple[int, int]:
    """Pairs whose exact SOCM lies outside [SOCM_r − below, SOCM_r + above] (:func:`socm_error_sides`), each side
    widened for the float32 summaries (e grows by the factors' rounding, and d_μ moves from the float32 means to
    the exact float64 ones: SOCM moves by at most |Δd_μ|·(BW_r + e)²/4) and for the rounding of the two Gram-route
    evaluations (``gram_atol`` of the tests, at the pair's longer text and at width r)."""
    tail_a, tail_b = summary.tail[found.doc_a], summary.tail[found.doc_b]
    rounding = ROUNDING * (np.sqrt(summary.traces[found.doc_a]) + np.sqrt(summary.traces[found.doc_b]))
    e = np.sqrt(tail_a) + np.sqrt(tail_b) + rounding
    bw_r = 2.0 * np.sqrt(found.pairs.d_sigma)
    keep = 1.0 - found.pairs.d_mu
    rank = summary.factors.shape[1]
    trace_a, trace_b = found.text_stats.concentration[found.doc_a], found.text_stats.concentration[found.doc_b]
    width = np.maximum(lengths[found.doc_a], lengths[found.doc_b])
    shift = np.abs(found.pairs.d_mu - exact.pairs.d_mu) * (bw_r + e) ** 2 / 4.0 + np.array(
        [gram_atol(int(w), dim, ta, tb) + gram_atol(rank, dim, ta, tb)
         for w, ta, tb in zip(width, trace_a, trace_b, strict=True)])
    below = keep * (bw_r**2 - np.maximum(bw_r - e, 0.0) ** 2) / 4.0 + shift
    above = keep * (tail_a + tail_b + rounding * (2.0 * bw_r + rounding)) / 4.0 + shift
    difference = exact.pairs.socm - found.pairs.socm
    same = found.doc_b == exact.doc_b  # pairs of the same neighbour (ties may order them otherwise)
    return int(np.count_nonzero(same & ((difference > above) | (-difference > below)))), int(same.sum())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("n_docs", nargs="?", type=int, default=3000)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--ranks", type=int, nargs="+", default=[3, 8, 16, 24, 32, 48])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-rank-") as tmp:
        corpus_dir = Path(tmp) / "kb"
        subprocess.run([str(Path(sys.executable).parent / "rag-diag"), "corpora", "build", "kb-scale", "--size",
                        str(args.n_docs), "--out", str(corpus_dir)], check=True, capture_output=True)
        corpus = load_corpus(corpus_dir)
        encoder = load_encoder("minilm")
        store = encode_texts(corpus.texts, model=encoder, ids=corpus.ids, cache=False, out=Path(tmp) / "store")
        started = time.perf_counter()
        exact = knn_collapse(store, args.k)
        exact_seconds = time.perf_counter() - started
        print(f"kb-scale, {len(corpus.texts):,} documents, {int(store.lengths.sum()):,} tokens "
              f"({store.lengths.mean():.1f} per text, longest {int(store.lengths.max())}); all-MiniLM-L6-v2; "
              f"k = {args.k}; 2 torch threads")
        print(f"exact kNN collapse: {exact_seconds:.1f} s, mean collapse rate {exact.collapse_mean.mean():.4f}")
        print("| rank | summaries | kNN on them | mean collapse rate | its bounds (exact inside?) "
              "| per-document |error| mean / p95 / max | mean pair bound | pairs outside their bounds "
              "| factors at N | at 100,000 |")
        print("|---:|---:|---:|---:|---|---|---:|---:|---:|---:|")
        for rank in args.ranks:
            started = time.perf_counter()
            summary = covariance_summary(store, rank)
            summary_seconds = time.perf_counter() - started
            started = time.perf_counter()
            found = knn_collapse(None, args.k, summary=summary)
            knn_seconds = time.perf_counter() - started
            error = np.abs(found.collapse_mean - exact.collapse_mean)
            reported = bound_summary(found, summary, rank)
            low, high = reported["mean_collapse_rate_interval"]
            inside = "yes" if low <= exact.collapse_mean.mean() <= high else "NO"
            outside, compared = outside_sides(found, exact, summary, store.lengths, store.dim)
            disk = len(corpus.texts) * rank * store.dim * 4
            print(f"| {rank} | {summary_seconds:.1f} s | {knn_seconds:.1f} s | {found.collapse_mean.mean():.4f} | "
                  f"[{low:.4f}, {high:.4f}] ({inside}) | "
                  f"{error.mean():.4f} / {np.quantile(error, 0.95):.4f} / {error.max():.4f} | "
                  f"{reported['mean_socm_error_bound']:.3f} | {outside} of {compared:,} | {disk / 2**20:,.0f} MiB | "
                  f"{disk / len(corpus.texts) * 100_000 / 2**30:.1f} GiB |")
        print(f"command: .venv/bin/python benchmarks/bench_summary_rank.py {' '.join(sys.argv[1:])}".rstrip())


if __name__ == "__main__":
    main()
