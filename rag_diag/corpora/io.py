"""Reading knowledge bases in the BEIR layout or as plain text, with validation that names file and line.

BEIR layout: ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``, ``text``),
``qrels/<split>.tsv`` (header ``query-id corpus-id score``). A plain text file is one text per line,
ids are the line numbers from 0. A document's text is ``title + " " + text`` when the title is non-empty.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rag_diag.errors import RagDiagError


@dataclass(frozen=True)
class Corpus:
    """Documents in a fixed order: ``ids[i]`` names ``texts[i]`` (title already joined)."""

    ids: list[str]
    texts: list[str]
    titles: list[str] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    def content_hash(self) -> str:
        """sha256 over (id, text) pairs: equal hashes mean equal inputs to the encoder."""
        return hash_texts(self.ids, self.texts)


@dataclass(frozen=True)
class Queries:
    """Queries in file order."""

    ids: list[str]
    texts: list[str]
    source: str = ""

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
    if not ids:
        raise RagDiagError(f"{path}: the corpus is empty")
    return Corpus(ids=ids, texts=texts, titles=titles, source=str(path))


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
    for number, record in _read_jsonl(path):
        query_id = _record_id(path, number, record, seen)
        text = str(record.get("text") or "")
        if not text.strip():
            raise RagDiagError(f"{path}:{number}: query '{query_id}' has an empty text")
        ids.append(query_id)
        texts.append(text)
    if not ids:
        raise RagDiagError(f"{path}: no queries")
    return Queries(ids=ids, texts=texts, source=str(path))


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
        judgements.setdefault(query_id, {})[doc_id] = score
    if not judgements:
        raise RagDiagError(f"{path}: no judgements")
    return Qrels(judgements=judgements, source=str(path))
