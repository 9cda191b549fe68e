"""Knowledge bases: BEIR / TREC / table I/O, builders for the bundled corpora, a near-duplicate generator."""

from rag_diag.corpora.io import (
    Corpus,
    Qrels,
    Queries,
    load_beir,
    load_corpus,
    load_qrels,
    load_queries,
    read_trec_run,
    write_beir,
    write_trec_run,
)

__all__ = [
    "Corpus", "Qrels", "Queries", "load_beir", "load_corpus", "load_qrels", "load_queries", "read_trec_run",
    "write_beir", "write_trec_run",
]
