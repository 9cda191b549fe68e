"""Reading and writing knowledge bases, with validation that names file and line.

BEIR layout: ``corpus.jsonl`` (``_id``, ``title``, ``text``, optional ``metadata`` object),
``queries.jsonl`` (``_id``, ``text``, optional ``metadata``), ``qrels/<split>.tsv`` (header
``query-id corpus-id score``). A plain text file is one text per line, ids are the line numbers from 0.
A parquet / CSV table has one row per document (columns ``_id`` or ``id``, ``text``, optional
``title``); errors name the row as ``file:row N``. TREC run files are ``qid Q0 docid rank score tag``.
A document's text is ``title + " " + text`` when the title is non-empty.

Writers produce byte-stable files for equal inputs (records in the given order, keys sorted, qrels
and runs sorted), always through :mod:`rag_diag.atomic`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag_diag import atomic
from rag_diag.errors import RagDiagError

TABLE_SUFFIXES = (".parquet", ".csv")


@dataclass(frozen=True)
class Corpus:
    """Documents in a fixed order: ``ids[i]`` names ``texts[i]`` (title already joined).

    ``metadata`` is empty or holds one dict per document (e.g. ``{"label": "gpl-2.0-plus"}``).
    """

    ids: list[str]
    texts: list[str]
    titles: list[str] = field(default_factory=list)
    source: str = ""
    metadata: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def content_hash(self) -> str:
        """sha256 over (id, text) pairs: equal hashes mean equal inputs to the encoder."""
        return hash_texts(self.ids, self.texts)


@dataclass(frozen=True)
class Queries:
    """Queries in file order; ``metadata`` is empty or one dict per query."""

    ids: list[str]
    texts: list[str]
    source: str = ""
    metadata: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)


@dataclass(frozen=True)
class Qrels:
    """Graded relevance: ``judgements[query_id][doc_id] = score`` (score > 0 means relevant)."""

    judgements: dict[str, dict[str, int]]
    source: str = ""

    def relevant(self, query_id: str) -> set[str]:
        """Documents with a positive score for ``query_id``."""
        return {doc for doc, score in self.judgements.get(query_id, {}).items() if score > 0}


def hash_texts(ids: list[str], texts: list[str]) -> str:
    """sha256 of the ids and texts, order-sensitive, unambiguous (length-prefixed)."""
    digest = hashlib.sha256()
    for doc_id, text in zip(ids, texts, strict=True):
        for part in (doc_id, text):
            raw = part.encode("utf-8")
            digest.update(len(raw).to_bytes(8, "little"))
            digest.update(raw)
    return digest.hexdigest()


def join_title(title: str, text: str) -> str:
    """The text a document is encoded as: title and text joined by one space when the title is non-empty."""
    title = title.strip()
    return f"{title} {text}" if title else text


def _read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line without newline); non-UTF-8 bytes raise with the line number."""
    if not path.is_file():
        raise RagDiagError(f"{path}: file not found")
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RagDiagError(
                    f"{path}:{number}: not valid UTF-8 (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})"
                ) from None
            yield number, line.rstrip("\r\n")


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    for number, line in _read_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RagDiagError(f"{path}:{number}: malformed JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise RagDiagError(f"{path}:{number}: expected a JSON object")
        yield number, record


def _record_id(path: Path, number: int, record: dict, seen: dict[str, int]) -> str:
    if "_id" not in record:
        raise RagDiagError(f"{path}:{number}: missing '_id'")
    doc_id = str(record["_id"])
    if doc_id in seen:
        raise RagDiagError(f"{path}:{number}: duplicate id '{doc_id}' (first on line {seen[doc_id]})")
    seen[doc_id] = number
    return doc_id


def read_corpus_jsonl(path: Path) -> Corpus:
    """Read a BEIR ``corpus.jsonl``; every document needs a unique ``_id`` and a non-empty text."""
    ids: list[str] = []
    texts: list[str] = []
    titles: list[str] = []
    metadata: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for number, record in _read_jsonl(path):
        doc_id = _record_id(path, number, record, seen)
        title = str(record.get("title") or "")
        text = join_title(title, str(record.get("text") or ""))
        if not text.strip():
            raise RagDiagError(f"{path}:{number}: document '{doc_id}' has an empty text")
        ids.append(doc_id)
        texts.append(text)
        titles.append(title)
        metadata.append(_record_metadata(path, number, record))
    if not ids:
        raise RagDiagError(f"{path}: the corpus is empty")
    return Corpus(ids=ids, texts=texts, titles=titles, source=str(path), metadata=_drop_empty(metadata))


def _record_metadata(path: Path, number: int, record: dict) -> dict[str, Any]:
    value = record.get("metadata") or {}
    if not isinstance(value, dict):
        raise RagDiagError(f"{path}:{number}: 'metadata' must be a JSON object")
    return value


def _drop_empty(metadata: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """No per-record metadata at all is stored as an empty list (the dataclass default)."""
    return metadata if any(metadata) else []


def read_text_lines(path: Path) -> Corpus:
    """Read a plain text file, one document per line, ids = line numbers from 0."""
    ids: list[str] = []
    texts: list[str] = []
    for number, line in _read_lines(path):
        if not line.strip():
            raise RagDiagError(f"{path}:{number}: empty line (every line is a document)")
        ids.append(str(number - 1))
        texts.append(line)
    if not ids:
        raise RagDiagError(f"{path}: the corpus is empty")
    return Corpus(ids=ids, texts=texts, source=str(path))


def load_corpus(path: str | Path) -> Corpus:
    """Load a corpus from a BEIR folder, its ``corpus.jsonl``, or a plain text file."""
    path = Path(path)
    if path.is_dir():
        jsonl = path / "corpus.jsonl"
        if not jsonl.is_file():
            raise RagDiagError(f"{path}: no corpus.jsonl in this folder (expected the BEIR layout)")
        return read_corpus_jsonl(jsonl)
    if not path.exists():
        raise RagDiagError(f"{path}: no such corpus file or folder")
    if path.suffix == ".jsonl":
        return read_corpus_jsonl(path)
    if path.suffix in TABLE_SUFFIXES:
        return read_corpus_table(path)
    return read_text_lines(path)


def load_queries(path: str | Path) -> Queries:
    """Load ``queries.jsonl`` (``_id``, ``text``) or a plain text file of queries (ids = line numbers)."""
    path = Path(path)
    if path.is_dir():
        path = path / "queries.jsonl"
    if path.suffix != ".jsonl":
        corpus = read_text_lines(path)
        return Queries(ids=corpus.ids, texts=corpus.texts, source=str(path))
    ids: list[str] = []
    texts: list[str] = []
    seen: dict[str, int] = {}
    metadata: list[dict[str, Any]] = []
    for number, record in _read_jsonl(path):
        query_id = _record_id(path, number, record, seen)
        text = str(record.get("text") or "")
        if not text.strip():
            raise RagDiagError(f"{path}:{number}: query '{query_id}' has an empty text")
        ids.append(query_id)
        texts.append(text)
        metadata.append(_record_metadata(path, number, record))
    if not ids:
        raise RagDiagError(f"{path}: no queries")
    return Queries(ids=ids, texts=texts, source=str(path), metadata=_drop_empty(metadata))


def load_qrels(
    path: str | Path, queries: Queries | None = None, corpus: Corpus | None = None, split: str = "test"
) -> Qrels:
    """Load a BEIR qrels TSV (header ``query-id corpus-id score``); a folder means ``qrels/<split>.tsv``.

    When ``queries`` / ``corpus`` are given, every qrel must name a known query and document.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "qrels" / f"{split}.tsv" if (path / "qrels").is_dir() else path / f"{split}.tsv"
    query_ids = set(queries.ids) if queries is not None else None
    doc_ids = set(corpus.ids) if corpus is not None else None
    judgements: dict[str, dict[str, int]] = {}
    for number, line in _read_lines(path):
        if not line.strip():
            continue
        parts = line.split("\t")
        if number == 1 and parts[:2] == ["query-id", "corpus-id"]:
            continue
        if len(parts) != 3:
            raise RagDiagError(f"{path}:{number}: expected 3 tab-separated fields (query-id corpus-id score)")
        query_id, doc_id, raw_score = parts
        try:
            score = int(raw_score)
        except ValueError:
            raise RagDiagError(f"{path}:{number}: score '{raw_score}' is not an integer") from None
        if query_ids is not None and query_id not in query_ids:
            raise RagDiagError(f"{path}:{number}: unknown query id '{query_id}'")
        if doc_ids is not None and doc_id not in doc_ids:
            raise RagDiagError(f"{path}:{number}: unknown document id '{doc_id}'")
        row = judgements.setdefault(query_id, {})
        if doc_id in row:
            raise RagDiagError(
                f"{path}:{number}: duplicate judgement for query '{query_id}', document '{doc_id}'"
            )
        row[doc_id] = score
    if not judgements:
        raise RagDiagError(f"{path}: no judgements")
    return Qrels(judgements=judgements, source=str(path))


def load_beir(path: str | Path, split: str = "test") -> tuple[Corpus, Queries, Qrels]:
    """Load a whole BEIR folder; every qrel must name a known query and document."""
    path = Path(path)
    corpus = load_corpus(path)
    queries = load_queries(path)
    return corpus, queries, load_qrels(path, queries=queries, corpus=corpus, split=split)


def read_corpus_table(path: str | Path) -> Corpus:
    """Read a parquet or CSV table of documents (``_id``/``id``, ``text``, optional ``title``).

    Rows are numbered from 1 in error messages (``file:row N``); other columns become metadata.
    """
    import polars as pl

    path = Path(path)
    try:
        frame = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path, infer_schema=False)
    except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RagDiagError(f"{path}: cannot read the table ({first})") from None
    id_column = next((c for c in ("_id", "id") if c in frame.columns), None)
    if id_column is None or "text" not in frame.columns:
        raise RagDiagError(f"{path}: a corpus table needs an '_id' (or 'id') and a 'text' column")
    extra = [c for c in frame.columns if c not in (id_column, "text", "title")]
    ids: list[str] = []
    texts: list[str] = []
    titles: list[str] = []
    metadata: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for number, row in enumerate(frame.iter_rows(named=True), start=1):
        if row[id_column] is None:
            raise RagDiagError(f"{path}:row {number}: missing id")
        doc_id = str(row[id_column])
        if doc_id in seen:
            raise RagDiagError(f"{path}:row {number}: duplicate id '{doc_id}' (first on row {seen[doc_id]})")
        seen[doc_id] = number
        title = str(row.get("title") or "")
        text = join_title(title, str(row["text"] or ""))
        if not text.strip():
            raise RagDiagError(f"{path}:row {number}: document '{doc_id}' has an empty text")
        ids.append(doc_id)
        texts.append(text)
        titles.append(title)
        metadata.append({c: row[c] for c in extra})
    if not ids:
        raise RagDiagError(f"{path}: the corpus is empty")
    return Corpus(ids=ids, texts=texts, titles=titles, source=str(path), metadata=_drop_empty(metadata))


def _jsonl(records: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(record, ensure_ascii=False, sort_keys=True) + "\n" for record in records)


def _split_title(title: str, text: str) -> str:
    """Undo :func:`join_title` so that writing then reading gives back the same joined text."""
    title = title.strip()
    return text[len(title) + 1:] if title and text.startswith(f"{title} ") else text


def write_corpus_jsonl(path: str | Path, corpus: Corpus) -> Path:
    """Write ``corpus`` as a BEIR ``corpus.jsonl`` (one object per document, in corpus order)."""
    records = []
    for index, (doc_id, text) in enumerate(zip(corpus.ids, corpus.texts, strict=True)):
        title = corpus.titles[index] if corpus.titles else ""
        record: dict[str, Any] = {"_id": doc_id, "title": title, "text": _split_title(title, text)}
        if corpus.metadata and corpus.metadata[index]:
            record["metadata"] = corpus.metadata[index]
        records.append(record)
    return atomic.write_text(path, _jsonl(records))


def write_queries_jsonl(path: str | Path, queries: Queries) -> Path:
    """Write ``queries`` as a BEIR ``queries.jsonl`` (in query order)."""
    records = []
    for index, (query_id, text) in enumerate(zip(queries.ids, queries.texts, strict=True)):
        record: dict[str, Any] = {"_id": query_id, "text": text}
        if queries.metadata and queries.metadata[index]:
            record["metadata"] = queries.metadata[index]
        records.append(record)
    return atomic.write_text(path, _jsonl(records))


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


def read_trec_run(path: str | Path, corpus: Corpus | None = None) -> dict[str, dict[str, float]]:
    """Read a TREC run file (``qid Q0 docid rank score tag``) into ``{qid: {docid: score}}``.

    When ``corpus`` is given, every document id must be in it.
    """
    path = Path(path)
    doc_ids = set(corpus.ids) if corpus is not None else None
    run: dict[str, dict[str, float]] = {}
    for number, line in _read_lines(path):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 6:
            raise RagDiagError(
                f"{path}:{number}: expected 6 fields (qid Q0 docid rank score tag), got {len(parts)}"
            )
        query_id, _, doc_id, raw_rank, raw_score, _ = parts
        try:
            int(raw_rank)
            score = float(raw_score)
        except ValueError:
            raise RagDiagError(
                f"{path}:{number}: rank '{raw_rank}' or score '{raw_score}' is not a number"
            ) from None
        if doc_ids is not None and doc_id not in doc_ids:
            raise RagDiagError(f"{path}:{number}: unknown document id '{doc_id}'")
        row = run.setdefault(query_id, {})
        if doc_id in row:
            raise RagDiagError(f"{path}:{number}: document '{doc_id}' listed twice for query '{query_id}'")
        row[doc_id] = score
    if not run:
        raise RagDiagError(f"{path}: the run is empty")
    return run


def write_trec_run(path: str | Path, run: dict[str, dict[str, float]], tag: str = "rag-diag") -> Path:
    """Write ``{qid: {docid: score}}`` as a TREC run: queries sorted, documents by score (ties by id)."""
    if not tag or any(ch.isspace() for ch in tag):
        raise RagDiagError(f"run tag '{tag}' must be non-empty and contain no whitespace")
    lines = []
    for query_id in sorted(run):
        ranked = sorted(run[query_id].items(), key=lambda item: (-item[1], item[0]))
        for rank, (doc_id, score) in enumerate(ranked, start=1):
            lines.append(f"{query_id} Q0 {doc_id} {rank} {score:.6f} {tag}")
    return atomic.write_text(path, "\n".join(lines) + "\n" if lines else "")
