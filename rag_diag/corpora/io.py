"""Reading and writing knowledge bases, with validation that names file and line.

BEIR layout: ``corpus.jsonl`` (``_id``, ``title``, ``text``, optional ``metadata`` object),
``queries.jsonl`` (``_id``, ``text``, optional ``metadata``), ``qrels/<split>.tsv`` (header
``query-id corpus-id score``). A plain text file is one text per line, ids are the line numbers from 0.
A parquet / CSV table has one row per document (columns ``_id`` or ``id``, ``text``, optional
``title``); errors name the row as ``file:row N``. TREC run files are ``qid Q0 docid rank score tag``.
A document's text is ``title + " " + text`` when the title is non-empty.

Validation is strict so that a malformed file fails with ``file:line`` instead of being silently
coerced: ``_id``, ``title`` and ``text`` must be JSON strings, ids non-empty, qrels scores
non-negative integers; a UTF-8 byte-order mark at the start of a file is skipped. Every file and
folder a reader opens is registered with :func:`rag_diag.atomic.protect_input`, so no output of the
same command can replace it.

Writers produce byte-stable files for equal inputs (records in the given order, keys sorted, qrels
and runs sorted), always through :mod:`rag_diag.atomic`.
"""

from __future__ import annotations

import codecs
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag_diag import atomic
from rag_diag.errors import RagDiagError, first_line

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


def read_lines(path: Path) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, line without newline); non-UTF-8 bytes raise with the line number.

    A UTF-8 byte-order mark at the start of the file (written by some Windows editors) is skipped, so
    that the first id or the qrels header reads as written.
    """
    if not path.is_file():
        raise RagDiagError(f"{path}: file not found")
    atomic.protect_input(path)
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if number == 1 and raw.startswith(codecs.BOM_UTF8):
                raw = raw[len(codecs.BOM_UTF8):]
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise RagDiagError(
                    f"{path}:{number}: not valid UTF-8 (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})"
                ) from None
            yield number, line.rstrip("\r\n")


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    for number, line in read_lines(path):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise RagDiagError(f"{path}:{number}: malformed JSON ({exc.msg})") from None
        except (ValueError, RecursionError) as exc:  # e.g. an integer over 4300 digits, or nesting too deep
            raise RagDiagError(f"{path}:{number}: unreadable JSON ({type(exc).__name__})") from None
        if not isinstance(record, dict):
            raise RagDiagError(f"{path}:{number}: expected a JSON object")
        yield number, record


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, dict) else type(value).__name__


def _string_field(path: Path, number: int, record: dict, key: str) -> str:
    """``record[key]`` when it is a string, ``""`` when absent; any other JSON type is refused.

    Coercing (``str(123)``, ``str(None)`` → ``"None"``, ``str([...])``) would silently change ids and
    texts, so a wrong type is an error naming the file and line.
    """
    if key not in record:
        return ""
    value = record[key]
    if not isinstance(value, str):
        raise RagDiagError(f"{path}:{number}: '{key}' must be a string, not {_json_type(value)}")
    return value


def _record_id(path: Path, number: int, record: dict, seen: dict[str, int]) -> str:
    if "_id" not in record:
        raise RagDiagError(f"{path}:{number}: missing '_id'")
    doc_id = _string_field(path, number, record, "_id")
    if not doc_id.strip():
        raise RagDiagError(f"{path}:{number}: '_id' is empty")
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
    shared: dict[str, str] = {}
    for number, record in _read_jsonl(path):
        doc_id = _record_id(path, number, record, seen)
        title = _string_field(path, number, record, "title")
        text = join_title(title, _string_field(path, number, record, "text"))
        if not text.strip():
            raise RagDiagError(f"{path}:{number}: document '{doc_id}' has an empty text")
        ids.append(doc_id)
        texts.append(text)
        titles.append(title)
        metadata.append(_record_metadata(path, number, record, shared))
    if not ids:
        raise RagDiagError(f"{path}: the corpus is empty")
    return Corpus(ids=ids, texts=texts, titles=titles, source=str(path), metadata=_drop_empty(metadata))


SHARED_VALUE_CHARS = 64
"""Metadata strings up to this long (keys, labels, sources) are held once per corpus, not once per record."""


def _record_metadata(path: Path, number: int, record: dict, shared: dict[str, str]) -> dict[str, Any]:
    """The record's ``metadata`` object, its keys and short string values taken from ``shared`` (the first equal
    string read; JSON parsing makes a new one per record: at 100,000 ``kb-scale`` records, 20 MiB of copies)."""
    value = record.get("metadata") or {}
    if not isinstance(value, dict):
        raise RagDiagError(f"{path}:{number}: 'metadata' must be a JSON object")
    return {shared.setdefault(key, key): shared.setdefault(item, item)
            if isinstance(item, str) and len(item) <= SHARED_VALUE_CHARS else item for key, item in value.items()}


def _drop_empty(metadata: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """No per-record metadata at all is stored as an empty list (the dataclass default)."""
    return metadata if any(metadata) else []


def read_text_lines(path: Path) -> Corpus:
    """Read a plain text file, one document per line, ids = line numbers from 0."""
    ids: list[str] = []
    texts: list[str] = []
    for number, line in read_lines(path):
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
    atomic.protect_input(path)
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
    atomic.protect_input(path)
    if path.is_dir():
        path = path / "queries.jsonl"
    if path.suffix != ".jsonl":
        corpus = read_text_lines(path)
        if corpus.texts[0].strip().split("\t")[:2] == ["query-id", "corpus-id"]:
            raise RagDiagError(f"{path}: a qrels file, not queries (give queries.jsonl, or one query per line)")
        return Queries(ids=corpus.ids, texts=corpus.texts, source=str(path))
    ids: list[str] = []
    texts: list[str] = []
    seen: dict[str, int] = {}
    metadata: list[dict[str, Any]] = []
    shared: dict[str, str] = {}
    for number, record in _read_jsonl(path):
        query_id = _record_id(path, number, record, seen)
        text = _string_field(path, number, record, "text")
        if not text.strip():
            raise RagDiagError(f"{path}:{number}: query '{query_id}' has an empty text")
        ids.append(query_id)
        texts.append(text)
        metadata.append(_record_metadata(path, number, record, shared))
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
    atomic.protect_input(path)
    if path.is_dir():
        path = path / "qrels" / f"{split}.tsv" if (path / "qrels").is_dir() else path / f"{split}.tsv"
    query_ids = set(queries.ids) if queries is not None else None
    doc_ids = set(corpus.ids) if corpus is not None else None
    judgements: dict[str, dict[str, int]] = {}
    for number, line in read_lines(path):
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
        if score < 0:
            raise RagDiagError(f"{path}:{number}: score {score} is negative (graded relevance is 0 or more)")
        if not query_id.strip() or not doc_id.strip():
            raise RagDiagError(f"{path}:{number}: empty query or document id")
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
    atomic.protect_input(path)
    try:
        frame = pl.read_parquet(path) if path.suffix == ".parquet" else pl.read_csv(path, infer_schema=False)
    except (pl.exceptions.PolarsError, OSError, UnicodeDecodeError) as exc:
        raise RagDiagError(f"{path}: cannot read the table ({first_line(exc)})") from None
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
