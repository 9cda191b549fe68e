"""Time SOCM providers against each other and against POT, in one run, and print the ratios.

1. all 499,500 pairs of 1,000 real Wikipedia sentences (minilm), fast Gram route, float64 and float32;
2. the d×d reference on a sample of those pairs (per-pair time, ratio);
3. POT 0.9.7 ``ot.gaussian.bures_wasserstein_distance`` on the same pairs (ratio, NaN count);
4. kNN mode on the largest real corpus encoded here (all wiki sentences by default): docs/s, peak memory.

Usage: python benchmarks/bench_collapse.py [--reference-pairs 30] [--knn 10] [--knn-docs N]
"""

from __future__ import annotations

import argparse
import os
import resource
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from rag_diag.collapse.allpairs import all_pairs  # noqa: E402
from rag_diag.collapse.knn import knn_collapse  # noqa: E402
from rag_diag.collapse.socm import prepare_text, reference_pair  # noqa: E402
from rag_diag.corpora.wiki import wiki_sentences  # noqa: E402
from rag_diag.tokens.extract import encode_texts  # noqa: E402


def pot_bw2(x1: np.ndarray, x2: np.ndarray) -> float:
    """BW² by POT on the normalised covariances (d×d)."""
    import ot

    _, a, *_ = prepare_text(x1)
    _, b, *_ = prepare_text(x2)
    zero = np.zeros(a.shape[1])
    return float(ot.gaussian.bures_wasserstein_distance(zero, zero, a.T @ a, b.T @ b)) ** 2


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reference-pairs", type=int, default=30)
    parser.add_argument("--knn", type=int, default=10)
    parser.add_argument("--knn-docs", type=int, default=None, help="wiki sentences for kNN mode (default: all)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average {os.getloadavg()}")

    store = encode_texts(wiki_sentences(1000, seed=0), model="minilm")
    print(f"1,000 wiki sentences, minilm: {int(store.offsets[-1])} tokens, mean {store.lengths.mean():.1f}/text")
    timings = {}
    for dtype in (torch.float64, torch.float32):
        started = time.perf_counter()
        result = all_pairs(store, dtype=dtype)
        timings[dtype] = time.perf_counter() - started
        print(f"fast all pairs ({dtype}): {len(result.pairs):,} pairs in {timings[dtype]:.2f} s "
              f"({timings[dtype] / len(result.pairs) * 1e6:.1f} µs/pair), avg SOCM {result.pairs.socm.mean():.6f}")
        if dtype == torch.float64:
            exact = result
    single = all_pairs(store, dtype=torch.float32)
    print(f"float32 vs float64: max |ΔSOCM| {np.abs(single.pairs.socm - exact.pairs.socm).max():.2e}")
    fast_per_pair = min(timings.values()) / len(exact.pairs)

    rng = np.random.default_rng(0)
    rows = rng.choice(len(exact.pairs), size=args.reference_pairs, replace=False)
    pairs = [(store.tokens(int(exact.doc_a[r])), store.tokens(int(exact.doc_b[r]))) for r in rows]
    started = time.perf_counter()
    reference = [reference_pair(x1, x2).d_sigma[0] for x1, x2 in pairs]
    ref_per_pair = (time.perf_counter() - started) / len(pairs)
    error = np.abs(np.array(reference) - exact.pairs.d_sigma[rows]).max()
    print(f"reference d×d: {ref_per_pair * 1e3:.2f} ms/pair; fast is {ref_per_pair / fast_per_pair:.0f}× faster "
          f"per pair; max |Δd_Σ| fast vs reference {error:.2e}")

    started = time.perf_counter()
    pot = np.array([pot_bw2(x1, x2) / 4 for x1, x2 in pairs])
    pot_per_pair = (time.perf_counter() - started) / len(pairs)
    finite = np.isfinite(pot)
    pot_error = np.abs(pot[finite] - exact.pairs.d_sigma[rows][finite]).max() if finite.any() else float("nan")
    print(f"POT bures_wasserstein_distance: {pot_per_pair * 1e3:.2f} ms/pair; fast is "
          f"{pot_per_pair / fast_per_pair:.0f}× faster; NaN {int((~finite).sum())}/{len(pairs)}; "
          f"max |Δd_Σ| on finite {pot_error:.2e}")

    texts = wiki_sentences(args.knn_docs)
    big = encode_texts(texts, model="minilm", show_progress=True)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    knn = knn_collapse(big, args.knn, show_progress=True)
    elapsed = time.perf_counter() - started
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"kNN mode (k={args.knn}) on {len(big):,} wiki sentences: {elapsed:.1f} s, {len(big) / elapsed:.0f} docs/s, "
          f"{len(knn.pairs) / elapsed:.0f} pairs/s; peak RSS {rss_after / 1024:.0f} MiB "
          f"(before kNN {rss_before / 1024:.0f} MiB); mean collapse_mean {knn.collapse_mean.mean():.4f}")


if __name__ == "__main__":
    main()
