"""Index types compared on the largest corpus here: every licensedcode rule text of ≥ 8 words.

For flat, HNSW and IVF-PQ over the mean-pooled MiniLM vectors (cosine as inner product): build time,
search time per query (one batched search of the query sample, divided by its size) and recall@10
against exact search. Recall is tie-tolerant (a near-duplicate corpus is full of equal scores): an
approximate hit counts when its exact score is at least the exact 10th score − 1e-6.

Usage::

    .venv/bin/python benchmarks/bench_index.py [--limit N] [--queries 1000] [--device cpu]

Encoding happens once (token-store cache); ``--limit`` takes the first N rules in file-name order.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

from rag_diag.pooling import index_vectors, pool_store  # noqa: E402
from rag_diag.retrieval.index import INDEX_TYPES, build_faiss, search  # noqa: E402
from rag_diag.tokens.extract import encode_texts  # noqa: E402

LABEL_LINE = re.compile(r"^license_expression:\s*(\S+)\s*$", re.M)
TIE_TOLERANCE = 1e-6


def rule_texts(min_words: int = 8, limit: int | None = None) -> tuple[list[str], list[str]]:
    """(ids, texts) of licensedcode rules with at least ``min_words`` words, in file-name order."""
    import licensedcode

    folder = Path(next(iter(licensedcode.__path__))) / "data" / "rules"
    ids, texts = [], []
    for path in sorted(folder.glob("*.RULE")):
        parts = path.read_text(encoding="utf-8", errors="replace").split("---\n", 2)
        text = " ".join(parts[-1].split())
        if len(text.split()) >= min_words:
            ids.append(path.stem)
            texts.append(text)
        if limit is not None and len(ids) >= limit:
            break
    return ids, texts


def tie_tolerant_recall(exact_scores: np.ndarray, exact_all: np.ndarray, found: np.ndarray, k: int) -> float:
    """Mean over queries of |{found in top-k with exact score ≥ s_k − tol}| / k."""
    threshold = exact_scores[:, k - 1 : k] - TIE_TOLERANCE
    found_scores = np.take_along_axis(exact_all, np.where(found >= 0, found, 0), axis=1)[:, :k]
    return float(((found_scores >= threshold) & (found[:, :k] >= 0)).sum(axis=1).mean() / k)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="use the first N rules only")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()

    ids, texts = rule_texts(limit=args.limit)
    started = time.perf_counter()
    store = encode_texts(texts, model="minilm", ids=ids, show_progress=True, batch_size=64)
    encode_seconds = time.perf_counter() - started
    vectors = index_vectors(pool_store("mean", store), "cosine")
    rng = np.random.default_rng(0)
    queries = vectors[rng.choice(len(vectors), size=min(args.queries, len(vectors)), replace=False)]
    exact_all = queries @ vectors.T
    exact_scores = -np.sort(-exact_all, axis=1)

    print(f"corpus: {len(texts)} licensedcode rules (≥ 8 words), {store.offsets[-1]} tokens, "
          f"dim {vectors.shape[1]}; encode/cache {encode_seconds:.1f} s; {len(queries)} queries, k={args.k}")
    print(f"{'index':<8}{'build s':>10}{'search ms/query':>18}{'recall@10':>12}  params")
    for index_type in INDEX_TYPES:
        started = time.perf_counter()
        index, params = build_faiss(vectors, "cosine", index_type, args.device)
        build_seconds = time.perf_counter() - started
        started = time.perf_counter()
        _, rows = search(index, queries, args.k, "cosine", args.device)
        per_query_ms = (time.perf_counter() - started) * 1000 / len(queries)
        recall = tie_tolerant_recall(exact_scores, exact_all, rows, args.k)
        print(f"{index_type:<8}{build_seconds:>10.2f}{per_query_ms:>18.4f}{recall:>12.4f}  {params}")


if __name__ == "__main__":
    main()
