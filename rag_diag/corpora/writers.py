"""Writing knowledge bases in the BEIR layout: byte-stable files for equal inputs, always atomically.

Records are written in the given order with keys sorted, qrels sorted by query then document id, so
equal inputs give equal bytes (corpus builds are checked by their checksums).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rag_diag import atomic
from rag_diag.corpora.io import Corpus, Qrels, Queries


def _jsonl(records: Iterable[dict[str, Any]]) -> Iterator[str]:
    """One key-sorted JSON line per record, lazily (a corpus is written without its whole text in memory)."""
    return (json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n" for record in records)


def _split_title(title: str, text: str) -> str:
    """Undo :func:`join_title` so that writing then reading gives back the same joined text."""
    title = title.strip()
    return text[len(title) + 1:] if title and text.startswith(f"{title} ") else text


def write_corpus_jsonl(path: str | Path, corpus: Corpus) -> Path:
    """Write ``corpus`` as a BEIR ``corpus.jsonl`` (one object per document, in corpus order), streamed."""
    return atomic.write_lines(path, _jsonl(_corpus_records(corpus)))


def _corpus_records(corpus: Corpus) -> Iterator[dict[str, Any]]:
    for index, (doc_id, text) in enumerate(zip(corpus.ids, corpus.texts, strict=True)):
        title = corpus.titles[index] if corpus.titles else ""
        record: dict[str, Any] = {"_id": doc_id, "title": title, "text": _split_title(title, text)}
        if corpus.metadata and corpus.metadata[index]:
            record["metadata"] = corpus.metadata[index]
        yield record


def write_queries_jsonl(path: str | Path, queries: Queries) -> Path:
    """Write ``queries`` as a BEIR ``queries.jsonl`` (in query order)."""
    records = []
    for index, (query_id, text) in enumerate(zip(queries.ids, queries.texts, strict=True)):
        record: dict[str, Any] = {"_id": query_id, "text": text}
        if queries.metadata and queries.metadata[index]:
            record["metadata"] = queries.metadata[index]
        records.append(record)
    return atomic.write_lines(path, _jsonl(records))


def write_qrels_tsv(path: str | Path, qrels: Qrels) -> Path:
    """Write BEIR qrels (header ``query-id corpus-id score``), sorted by query id then document id."""
    lines = ["query-id\tcorpus-id\tscore"]
    for query_id in sorted(qrels.judgements):
        for doc_id, score in sorted(qrels.judgements[query_id].items()):
            lines.append(f"{query_id}\t{doc_id}\t{score}")
    return atomic.write_text(path, "\n".join(lines) + "\n")


def write_beir(
    folder: str | Path, corpus: Corpus, queries: Queries | None = None, qrels: Qrels | None = None,
    split: str = "test",
) -> list[Path]:
    """Write a BEIR folder (``corpus.jsonl``, ``queries.jsonl``, ``qrels/<split>.tsv``); returns the paths."""
    folder = Path(folder)
    written = [write_corpus_jsonl(folder / "corpus.jsonl", corpus)]
    if queries is not None:
        written.append(write_queries_jsonl(folder / "queries.jsonl", queries))
    if qrels is not None:
        written.append(write_qrels_tsv(folder / "qrels" / f"{split}.tsv", qrels))
    return written
