"""Knowledge bases: BEIR / plain-text I/O, builders for the bundled real corpora, a near-duplicate generator."""

from rag_diag.corpora.io import Corpus, Qrels, Queries, load_corpus, load_qrels, load_queries

__all__ = ["Corpus", "Qrels", "Queries", "load_corpus", "load_qrels", "load_queries"]
