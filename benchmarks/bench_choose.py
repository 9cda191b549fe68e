"""choose-pooling on the licences knowledge base: out-of-fold scores next to in-sample ones.

Every candidate (pooling strategies, re-rankers with tuned blend weights, BM25, BM25 fused with mean
pooling at tuned weights, windowed encoding) is scored by 5-fold cross-validation over the queries
(grouped by relevant document); the table prints each family's out-of-fold MRR@10 beside the
in-sample score of its best parameter, and the whole selection's optimism (the winner's curse).

Run: ``python benchmarks/bench_choose.py [--corpus corpora/licenses]`` (builds the corpus if missing).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from rag_diag.corpora.io import load_beir  # noqa: E402
from rag_diag.jobs.choose import PRIMARY_METRIC, choose_pooling  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=Path("corpora/licenses"))
    args = parser.parse_args()
    if not (args.corpus / "corpus.jsonl").is_file():
        from rag_diag.corpora.registry import build_corpus

        build_corpus("licenses", args.corpus, "small", 0)
    corpus, queries, qrels = load_beir(args.corpus)
    started = time.perf_counter()
    choice = choose_pooling(corpus, queries=queries, qrels=qrels, command="python benchmarks/bench_choose.py")
    seconds = time.perf_counter() - started
    summary, selection = choice.summary, choice.summary["selection"]
    print(f"licenses: {summary['n_documents']} documents, {summary['n_queries']} queries; {seconds:.0f} s on "
          f"{os.cpu_count()} cores")
    print(f"{'candidate':16s} {'chosen':22s} {'out-of-fold':>11s} {'in-sample':>9s} {'p vs mean':>9s} "
          f"{'fixes':>5s} {'breaks':>6s} {'bytes/doc':>10s} {'ms/query':>8s}")
    for row in sorted(choice.recommendation.candidates, key=lambda c: -c.score):
        p_value = "—" if row.p_vs_mean is None else f"{row.p_vs_mean:.3g}"
        print(f"{row.name:16s} {row.chosen:22s} {row.score:11.4f} {row.in_sample:9.4f} {p_value:>9s} "
              f"{row.fixes:5d} {row.breaks:6d} {row.bytes_per_doc:10.0f} {row.latency_ms:8.2f}")
    print(f"whole selection ({selection['folds']} folds): in-sample best {selection['in_sample_best']} "
          f"{PRIMARY_METRIC} {selection['in_sample_score']:.4f}; out-of-fold {selection['out_of_fold_score']:.4f} "
          f"(optimism {selection['optimism']:+.4f}); chosen per fold: {', '.join(selection['per_fold'])}")
    print(f"recommended: {choice.recommendation.recommended} — {choice.recommendation.reason}")


if __name__ == "__main__":
    main()
