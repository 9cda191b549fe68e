"""Baseline retrieval numbers on the ``licenses`` knowledge base (small): TF-IDF vs mean-pooled MiniLM.

Prints precision@1 and MRR@10 (ranx) for:

- TF-IDF: word 1–2-grams (single-character tokens kept), l2-normalised, fitted on the corpus
  documents; queries ranked by cosine.
- MiniLM mean pooling: ``encode_corpus(corpus, model="minilm").means()`` l2-normalised, searched with a
  FAISS ``IndexFlatIP`` (cosine).

Usage: ``python benchmarks/bench_baseline.py [--corpus DIR] [--seed S]``; without ``--corpus`` the
small build is made in a temporary folder first (seconds).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from rag_diag.corpora.io import Corpus, Qrels, Queries, load_beir

K = 10


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def _run_from_scores(ids: list[str], query_ids: list[str], scores: np.ndarray, top: np.ndarray) -> dict:
    return {
        qid: {ids[j]: float(scores[i, r]) for r, j in enumerate(top[i]) if j >= 0}
        for i, qid in enumerate(query_ids)
    }


def tfidf_run(corpus: Corpus, queries: Queries) -> dict[str, dict[str, float]]:
    """Top-K TF-IDF cosine run."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), token_pattern=r"(?u)\b\w+\b").fit(corpus.texts)
    similarity = (vectorizer.transform(queries.texts) @ vectorizer.transform(corpus.texts).T).toarray()
    top = np.argsort(-similarity, axis=1, kind="stable")[:, :K]
    return _run_from_scores(corpus.ids, queries.ids, np.take_along_axis(similarity, top, axis=1), top)


def minilm_mean_run(corpus: Corpus, queries: Queries, model: object = "minilm") -> dict[str, dict]:
    """Top-K run of mean-pooled token embeddings, FAISS inner product on l2-normalised means."""
    import faiss

    from rag_diag.tokens.extract import encode_corpus, encode_texts

    docs = _normalise(encode_corpus(corpus, model=model).means())
    query_vectors = _normalise(encode_texts(queries.texts, model=model, ids=queries.ids).means())
    index = faiss.IndexFlatIP(docs.shape[1])
    index.add(docs)
    scores, top = index.search(query_vectors, K)
    return _run_from_scores(corpus.ids, queries.ids, scores, top)


def evaluate(qrels: Qrels, run: dict[str, dict[str, float]]) -> dict[str, float]:
    """precision@1 and MRR@10 with ranx."""
    from ranx import Qrels as RanxQrels
    from ranx import Run
    from ranx import evaluate as ranx_evaluate

    scores = ranx_evaluate(RanxQrels(qrels.judgements), Run(run), ["precision@1", f"mrr@{K}"])
    return {"P@1": float(scores["precision@1"]), f"MRR@{K}": float(scores[f"mrr@{K}"])}


def baseline(folder: Path, model: object = "minilm") -> dict[str, dict[str, float]]:
    """Both baselines on the BEIR folder ``folder``: ``{"tfidf": {...}, "minilm-mean": {...}}``."""
    corpus, queries, qrels = load_beir(folder)
    return {
        "tfidf": evaluate(qrels, tfidf_run(corpus, queries)),
        "minilm-mean": evaluate(qrels, minilm_mean_run(corpus, queries, model)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, help="a built licenses folder (default: build small now)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = args.corpus
        if folder is None:
            from rag_diag.corpora.registry import build_corpus

            folder = Path(tmp) / "licenses"
            build_corpus("licenses", folder, "small", args.seed)
        start = time.perf_counter()
        results = baseline(folder)
        elapsed = time.perf_counter() - start
    print(f"licenses small (seed {args.seed}), {elapsed:.1f} s")
    for name, metrics in results.items():
        print(f"  {name:12s} " + "  ".join(f"{metric} {value:.3f}" for metric, value in metrics.items()))


if __name__ == "__main__":
    main()
