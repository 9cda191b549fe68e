"""BEIR / TREC / table I/O: round trips, and every validation error names the file and the line."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from rag_diag.corpora.io import (
    SHARED_VALUE_CHARS,
    Corpus,
    Qrels,
    Queries,
    load_beir,
    load_corpus,
    load_qrels,
    load_queries,
)
from rag_diag.corpora.trec import read_trec_run, write_trec_run
from rag_diag.corpora.writers import write_beir
from rag_diag.errors import RagDiagError


def _beir(folder: Path, corpus: str, queries: str, qrels: str) -> Path:
    (folder / "qrels").mkdir(parents=True)
    (folder / "corpus.jsonl").write_bytes(corpus.encode("utf-8", "surrogateescape"))
    (folder / "queries.jsonl").write_text(queries, encoding="utf-8")
    (folder / "qrels" / "test.tsv").write_text(qrels, encoding="utf-8")
    return folder


GOOD_CORPUS = '{"_id": "d1", "title": "", "text": "alpha"}\n{"_id": "d2", "title": "T", "text": "beta"}\n'
GOOD_QUERIES = '{"_id": "q1", "text": "alpha?"}\n'
GOOD_QRELS = "query-id\tcorpus-id\tscore\nq1\td1\t1\n"


@pytest.mark.parametrize(
    ("corpus", "queries", "qrels", "where", "problem"),
    [
        ('{"_id": "d1", "text": "a"}\n{"_id": "d1", "text": "b"}\n', GOOD_QUERIES, GOOD_QRELS,
         "corpus.jsonl:2", "duplicate id 'd1'"),
        (GOOD_CORPUS, GOOD_QUERIES, "query-id\tcorpus-id\tscore\nq1\td9\t1\n", "test.tsv:2", "unknown document"),
        (GOOD_CORPUS, GOOD_QUERIES, "query-id\tcorpus-id\tscore\nq7\td1\t1\n", "test.tsv:2", "unknown query"),
        ('{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "  "}\n', GOOD_QUERIES, GOOD_QRELS,
         "corpus.jsonl:2", "empty text"),
        ('{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": \n', GOOD_QUERIES, GOOD_QRELS,
         "corpus.jsonl:2", "malformed JSON"),
        ('{"_id": "d1", "text": "a"}\n{"_id": "d2", "text": "caf\udce9"}\n', GOOD_QUERIES, GOOD_QRELS,
         "corpus.jsonl:2", "not valid UTF-8"),
        (GOOD_CORPUS, '{"_id": "q1", "text": "x"}\n{"_id": "q1", "text": "y"}\n', GOOD_QRELS,
         "queries.jsonl:2", "duplicate id 'q1'"),
        (GOOD_CORPUS, GOOD_QUERIES, "query-id\tcorpus-id\tscore\nq1\td1\t1\nq1\td1\t2\n", "test.tsv:3",
         "duplicate judgement"),
    ],
    ids=["duplicate-doc", "unknown-doc", "unknown-query", "empty-text", "malformed-json", "non-utf8",
         "duplicate-query", "duplicate-qrel"],
)
def test_validation_errors_name_file_and_line(tmp_path, corpus, queries, qrels, where, problem):
    folder = _beir(tmp_path / "kb", corpus, queries, qrels)
    with pytest.raises(RagDiagError) as error:
        load_beir(folder)
    message = str(error.value)
    assert where in message and problem in message
    assert "\n" not in message


def test_beir_round_trip_keeps_titles_and_metadata(tmp_path):
    corpus = Corpus(ids=["b", "a"], texts=["Title body", "plain"], titles=["Title", ""],
                    metadata=[{"label": "x"}, {"label": "y"}])
    queries = Queries(ids=["q"], texts=["body?"], metadata=[{"label": "x"}])
    write_beir(tmp_path, corpus, queries, Qrels({"q": {"b": 1}}))
    again, again_queries, qrels = load_beir(tmp_path)
    assert again.ids == corpus.ids and again.texts == corpus.texts and again.metadata == corpus.metadata
    assert again_queries.metadata == [{"label": "x"}]
    assert qrels.relevant("q") == {"b"}
    first = json.loads((tmp_path / "corpus.jsonl").read_text().splitlines()[0])
    assert first == {"_id": "b", "title": "Title", "text": "body", "metadata": {"label": "x"}}


def test_repeated_metadata_strings_are_held_once_and_read_back_equal(tmp_path):
    """Keys and short string values repeated across records are one object; long ones stay per record; every
    record's metadata equals its JSON object, nested values and non-strings included."""
    long_value = "z" * (SHARED_VALUE_CHARS + 1)
    records = [{"_id": str(i), "text": f"text {i}",
                "metadata": {"source": "wiki", "label": "MIT" if i % 2 else None, "n": i, "tags": ["a"],
                             "note": long_value}} for i in range(4)]
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    corpus = load_corpus(path)
    assert corpus.metadata == [r["metadata"] for r in records]
    first, second, third = corpus.metadata[:3]
    assert first["source"] is second["source"] and second["label"] is corpus.metadata[3]["label"]
    assert next(iter(first)) is next(iter(third))  # the key "source", read twice
    assert first["note"] == third["note"] and first["note"] is not third["note"]


def test_trec_run_round_trip_sorted_by_score(tmp_path):
    run = {"q2": {"a": 0.5, "b": 0.9, "z": 0.5}, "q1": {"c": 0.1 + 0.2}}
    path = write_trec_run(tmp_path / "run.trec", run, tag="t")
    rows = [line.split() for line in path.read_text().splitlines()]
    # queries sorted, documents by score, tied scores by document id; ranks from 1; the tag last
    assert [(q, zero, d, rank, tag) for q, zero, d, rank, _, tag in rows] == [
        ("q1", "Q0", "c", "1", "t"), ("q2", "Q0", "b", "1", "t"), ("q2", "Q0", "a", "2", "t"),
        ("q2", "Q0", "z", "3", "t"),
    ]
    assert read_trec_run(path) == run  # exactly: 0.1 + 0.2 is not 0.3 and must come back as written


def test_trec_run_ids_with_whitespace_stay_one_field(tmp_path):
    """Store ids may be file names or sentences: their whitespace (and %) is percent-encoded in the file, so the
    run reads back, here and in ranx, with the same ids."""
    from ranx import Run

    run = {"what is x?": {"doc a.pdf": 0.9, "50% off\tsale": 0.5, "é\u00a0b": 0.4, "plain": 0.1}}
    path = write_trec_run(tmp_path / "run.trec", run, tag="t")
    assert all(len(line.split()) == 6 for line in path.read_text().splitlines())
    assert "what%20is%20x?" in path.read_text() and "50%25%20off%09sale" in path.read_text()
    assert read_trec_run(path) == run
    assert set(Run.from_file(str(path), kind="trec").to_dict()["what%20is%20x?"]) == {
        "doc%20a.pdf", "50%25%20off%09sale", "é%C2%A0b", "plain"}


@pytest.mark.parametrize(
    ("content", "problem"),
    [("q1 Q0 d1 1 0.5\n", "expected 6 fields"), ("q1 Q0 d1 one 0.5 t\n", "not a number"),
     ("q1 Q0 d1 1 0.5 t\nq1 Q0 d1 2 0.4 t\n", "listed twice"), ("q1 Q0 zz 1 0.5 t\n", "unknown document")],
)
def test_trec_run_errors(tmp_path, content, problem):
    path = tmp_path / "run.trec"
    path.write_text(content)
    with pytest.raises(RagDiagError, match=problem) as error:
        read_trec_run(path, corpus=Corpus(ids=["d1"], texts=["x"]))
    assert f"{path}:" in str(error.value)


def test_parquet_table_corpus_and_its_errors(tmp_path):
    good = tmp_path / "docs.parquet"
    pl.DataFrame({"id": ["1", "2"], "text": ["one", "two"], "label": ["a", "b"]}).write_parquet(good)
    corpus = load_corpus(good)
    assert corpus.ids == ["1", "2"] and corpus.metadata == [{"label": "a"}, {"label": "b"}]
    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"id": ["1", "1"], "text": ["one", "two"]}).write_parquet(bad)
    with pytest.raises(RagDiagError, match=r"bad.parquet:row 2: duplicate id '1'"):
        load_corpus(bad)
    empty = tmp_path / "empty.csv"
    empty.write_text("_id,text\n1,one\n2,\n")
    with pytest.raises(RagDiagError, match=r"empty.csv:row 2: .*empty text"):
        load_corpus(empty)


def test_plain_text_queries_and_qrels_without_header(tmp_path):
    (tmp_path / "q.txt").write_text("first\nsecond\n")
    assert load_queries(tmp_path / "q.txt").ids == ["0", "1"]
    (tmp_path / "qrels.tsv").write_text("0\td\t1\n")
    assert load_qrels(tmp_path / "qrels.tsv").relevant("0") == {"d"}
