"""Fuzzing the corpus / queries / qrels readers: any file gives a valid parse or a RagDiagError, nothing else.

Two levels: arbitrary bytes (the readers must never crash), and generated JSON lines / TSV rows checked
against an independent statement of the format's rules (the parse must succeed exactly when the rules
hold, and then return what the file says).
"""

from __future__ import annotations

import codecs
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rag_diag import atomic
from rag_diag.corpora.io import load_corpus, load_qrels, load_queries
from rag_diag.errors import RagDiagError

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3),
    max_leaves=6,
)
IDS = st.sampled_from(["d1", "d2", "q1", " ", ""]) | st.text(max_size=4) | JSON_VALUES
TEXTS = st.sampled_from(["alpha", "", "  ", "beta gamma"]) | st.text(max_size=12) | JSON_VALUES
WORDS = st.text(alphabet="abcdefgh 12", min_size=1, max_size=8)
ANY_RECORDS = st.fixed_dictionaries(
    {}, optional={"_id": IDS, "title": TEXTS, "text": TEXTS, "metadata": JSON_VALUES, "other": JSON_VALUES}
)
# Mostly well-formed records, so that valid files (and their exact contents) are exercised too.
LIKELY_RECORDS = st.fixed_dictionaries(
    {"_id": WORDS, "text": WORDS},
    optional={"title": st.sampled_from(["", "T"]) | WORDS, "metadata": st.dictionaries(WORDS, JSON_SCALARS)},
)
# A well-formed record with one field replaced by any JSON value (often a wrong type).
ONE_FIELD_OFF = st.tuples(LIKELY_RECORDS, st.sampled_from(["_id", "title", "text", "metadata"]), JSON_VALUES).map(
    lambda parts: {**parts[0], parts[1]: parts[2]}
)
LINES = st.one_of(
    st.lists(LIKELY_RECORDS | ANY_RECORDS | JSON_VALUES, max_size=5),
    st.tuples(st.lists(LIKELY_RECORDS, max_size=3), ONE_FIELD_OFF | ANY_RECORDS | JSON_VALUES).map(
        lambda parts: [*parts[0], parts[1]]
    ),
)


@pytest.fixture(autouse=True)
def _no_protected_inputs():
    atomic.clear_protected()
    yield
    atomic.clear_protected()


def _parse_or_error(loader: Callable[[Path], Any], name: str, data: bytes) -> Any:
    """Write ``data`` to a fresh file ``name`` and load it: the result, or None after a RagDiagError."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / name
        path.write_bytes(data)
        try:
            return loader(path)
        except RagDiagError as error:
            assert "\n" not in str(error) and str(path) in str(error)
            return None


@SETTINGS
@given(data=st.binary(max_size=300), bom=st.booleans())
def test_arbitrary_bytes_never_crash_a_reader(data, bom):
    raw = (codecs.BOM_UTF8 if bom else b"") + data
    for loader, name in ((load_corpus, "corpus.jsonl"), (load_corpus, "docs.txt"), (load_queries, "queries.jsonl"),
                         (load_queries, "queries.txt"), (load_qrels, "test.tsv")):
        _parse_or_error(loader, name, raw)


@SETTINGS
@given(lines=st.lists(st.text(max_size=40), max_size=6), bom=st.booleans(), crlf=st.booleans())
def test_arbitrary_text_lines_never_crash_a_reader(lines, bom, crlf):
    raw = ("\r\n" if crlf else "\n").join(lines).encode("utf-8")
    raw = (codecs.BOM_UTF8 if bom else b"") + raw
    for loader, name in ((load_corpus, "corpus.jsonl"), (load_queries, "queries.jsonl"), (load_qrels, "test.tsv")):
        _parse_or_error(loader, name, raw)


def _expected_documents(lines: list[Any]) -> list[tuple[str, str]] | None:
    """(id, text) per document when ``lines`` is a valid corpus by the format's rules, else None."""
    documents: list[tuple[str, str]] = []
    for record in lines:
        if not isinstance(record, dict):
            return None
        doc_id = record.get("_id")
        if not isinstance(doc_id, str) or not doc_id.strip() or doc_id in dict(documents):
            return None
        if any(key in record and not isinstance(record[key], str) for key in ("title", "text")):
            return None
        title = record.get("title", "").strip()
        text = f"{title} {record.get('text', '')}" if title else record.get("text", "")
        if not text.strip() or not isinstance(record.get("metadata") or {}, dict):
            return None
        documents.append((doc_id, text))
    return documents or None


def _expected_queries(lines: list[Any]) -> list[tuple[str, str]] | None:
    """(id, text) per query when ``lines`` is a valid queries file (titles play no part), else None."""
    return _expected_documents([{k: v for k, v in r.items() if k != "title"} if isinstance(r, dict) else r
                                for r in lines])


def _jsonl(lines: list[Any], bom: bool) -> bytes:
    text = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
    return (codecs.BOM_UTF8 if bom else b"") + text.encode("utf-8")


@SETTINGS
@given(lines=LINES, bom=st.booleans())
def test_corpus_jsonl_parses_exactly_when_valid(lines, bom):
    expected = _expected_documents(lines)
    corpus = _parse_or_error(load_corpus, "corpus.jsonl", _jsonl(lines, bom))
    if expected is None:
        assert corpus is None
    else:
        assert corpus is not None and list(zip(corpus.ids, corpus.texts, strict=True)) == expected


@SETTINGS
@given(lines=LINES, bom=st.booleans())
def test_queries_jsonl_parses_exactly_when_valid(lines, bom):
    expected = _expected_queries(lines)
    queries = _parse_or_error(load_queries, "queries.jsonl", _jsonl(lines, bom))
    if expected is None:
        assert queries is None
    else:
        assert queries is not None and list(zip(queries.ids, queries.texts, strict=True)) == expected


FIELDS = st.sampled_from(["q1", "d1", "d2", "", " "]) | st.text(
    alphabet=st.characters(blacklist_characters="\t\n\r", blacklist_categories=["Cs"]), max_size=3
)
SCORES = st.integers(-3, 3).map(str) | FIELDS
ROWS = st.lists(
    st.tuples(FIELDS, FIELDS, SCORES).map("\t".join) | st.lists(FIELDS, max_size=4).map("\t".join), max_size=5
)


def _expected_judgements(lines: list[str]) -> dict[str, dict[str, int]] | None:
    """The judgements of a qrels file when every row follows the format's rules, else None."""
    judgements: dict[str, dict[str, int]] = {}
    for number, line in enumerate(lines, start=1):
        parts = line.split("\t")
        if not line.strip() or (number == 1 and parts[:2] == ["query-id", "corpus-id"]):
            continue
        if len(parts) != 3:
            return None
        query_id, doc_id, raw = parts
        try:
            score = int(raw)
        except ValueError:
            return None
        if score < 0 or not query_id.strip() or not doc_id.strip() or doc_id in judgements.get(query_id, {}):
            return None
        judgements.setdefault(query_id, {})[doc_id] = score
    return judgements or None


@SETTINGS
@given(rows=ROWS, header=st.booleans(), bom=st.booleans())
def test_qrels_parse_exactly_when_valid(rows, header, bom):
    lines = (["query-id\tcorpus-id\tscore"] if header else []) + rows
    data = (codecs.BOM_UTF8 if bom else b"") + "".join(line + "\n" for line in lines).encode("utf-8")
    expected = _expected_judgements(lines)
    qrels = _parse_or_error(load_qrels, "test.tsv", data)
    if expected is None:
        assert qrels is None
    else:
        assert qrels is not None and qrels.judgements == expected


@pytest.mark.parametrize(
    "line",
    ["[" * 100_000 + "]" * 100_000, '{"_id": "d1", "text": "x", "n": 1' + "0" * 5000 + "}", '{"_id": "d1", "t'],
    ids=["nesting-too-deep", "integer-too-long", "truncated"],
)
def test_pathological_json_is_a_clean_error(tmp_path, line):
    path = tmp_path / "corpus.jsonl"
    path.write_text(line + "\n", encoding="utf-8")
    with pytest.raises(RagDiagError, match=r"corpus\.jsonl:1: "):
        load_corpus(path)
