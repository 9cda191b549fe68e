"""Corpora from gensim's test data: the Lee news corpus with human ratings, and Wikipedia sentences.

Lee: ``gensim/test/test_data/lee.cor`` holds 50 news documents, one per line, and
``similarities0-1.txt`` a 50×50 matrix of averaged human similarity ratings in [0, 1] whose upper
triangle gives 1,225 rated pairs. The STS-style check correlates a model's cosine similarity of two
documents with the human rating (reference: LSA ≈ 0.60 Pearson, published; TF-IDF 0.585 measured).

The files are read from the installed gensim wheel without importing gensim (it is installed with
``--no-deps`` only for its data).
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any

import numpy as np

from rag_diag import atomic
from rag_diag.corpora.io import Corpus
from rag_diag.corpora.writers import write_corpus_jsonl
from rag_diag.errors import RagDiagError

PACKAGE = "gensim"
N_DOCS = 50
INSTALL_HINT = "pip install --no-deps gensim==4.4.0 (read for its test data only)"


def unavailable() -> str | None:
    """None when gensim's test data is installed, else how to install it."""
    try:
        gensim_data_file("lee.cor")
    except RagDiagError:
        return INSTALL_HINT
    return None


def gensim_data_file(name: str) -> Path:
    """Path of a file under ``gensim/test/test_data`` in the installed gensim distribution."""
    try:
        distribution = importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise RagDiagError(f"gensim's test data is not installed: {INSTALL_HINT}") from None
    path = Path(str(distribution.locate_file(f"gensim/test/test_data/{name}")))
    if not path.is_file():
        raise RagDiagError(f"{path}: missing from the gensim installation: {INSTALL_HINT}")
    return path


def lee_corpus() -> Corpus:
    """The 50 Lee documents, ids ``lee00`` … ``lee49`` in file order."""
    path = gensim_data_file("lee.cor")
    lines = path.read_text(encoding="latin-1").splitlines()  # the file has latin-1 bytes (e.g. '£')
    texts = [" ".join(line.split()) for line in lines if line.strip()]
    if len(texts) != N_DOCS:
        raise RagDiagError(f"{path}: expected {N_DOCS} documents, found {len(texts)}")
    return Corpus(ids=[f"lee{i:02d}" for i in range(N_DOCS)], texts=texts, source=str(path))


def human_similarity() -> np.ndarray:
    """The 50×50 matrix of averaged human ratings (only the upper triangle is filled in the file)."""
    path = gensim_data_file("similarities0-1.txt")
    matrix = np.loadtxt(path, dtype=np.float64)
    if matrix.shape != (N_DOCS, N_DOCS):
        raise RagDiagError(f"{path}: expected a {N_DOCS}x{N_DOCS} matrix, found {matrix.shape}")
    return matrix


def scored_pairs() -> Any:
    """The 1,225 rated pairs as a polars frame (doc_a, doc_b, human_score), doc_a before doc_b."""
    import polars as pl

    ids = lee_corpus().ids
    matrix = human_similarity()
    rows, cols = np.triu_indices(N_DOCS, k=1)
    return pl.DataFrame({
        "doc_a": [ids[i] for i in rows], "doc_b": [ids[j] for j in cols],
        "human_score": [float(matrix[i, j]) for i, j in zip(rows, cols, strict=True)],
    })


def _correlations(similarity: np.ndarray) -> dict[str, float]:
    from scipy.stats import pearsonr, spearmanr

    rows, cols = np.triu_indices(N_DOCS, k=1)
    model = similarity[rows, cols]
    human = human_similarity()[rows, cols]
    return {
        "pearson": float(pearsonr(model, human).statistic),
        "spearman": float(spearmanr(model, human).statistic),
        "n_pairs": int(len(rows)),
    }


def _cosine(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors @ vectors.T


def lee_tfidf_correlation() -> dict[str, float]:
    """Lexical reference: TF-IDF cosine vs human ratings (Pearson 0.559 here).

    sklearn ``TfidfVectorizer(stop_words="english")`` fitted on the 50 documents; the 0.585 quoted in the
    module docstring was measured with a different tokenisation.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    matrix = TfidfVectorizer(stop_words="english").fit_transform(lee_corpus().texts)
    return {"model": "tfidf", **_correlations((matrix @ matrix.T).toarray())}  # type: ignore[dict-item]


def lee_sts_correlation(vectors: np.ndarray, name: str) -> dict[str, Any]:
    """Pearson / Spearman of cosine similarity vs the human ratings of the 1,225 Lee pairs.

    Args:
        vectors: one vector per Lee document, in :func:`lee_corpus` order (e.g. a token store's means).
        name: what made the vectors, for the result.

    Returns:
        ``{"model", "pearson", "spearman", "n_pairs"}``.
    """
    return {"model": name, **_correlations(_cosine(np.asarray(vectors, dtype=np.float64)))}


def build(folder: Path, size: str | int, seed: int) -> dict[str, Any]:
    """Write the Lee corpus (always all 50 documents) and its rated pairs into ``folder``."""
    corpus = lee_corpus()
    pairs = scored_pairs()
    write_corpus_jsonl(folder / "corpus.jsonl", corpus)
    atomic.write_parquet(folder / "pairs.parquet", pairs)
    return {
        "source": {"package": PACKAGE, "version": importlib.metadata.version(PACKAGE),
                   "files": "gensim/test/test_data/lee.cor, similarities0-1.txt"},
        "licence": "LGPL-2.1 (gensim test data)",
        "counts": {"documents": len(corpus), "rated_pairs": pairs.height},
        "parameters": {"note": "size and seed do not change this corpus (always the 50 documents)"},
    }
