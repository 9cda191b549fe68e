"""Every class of bad input ends in one ``error:`` line and an exit status, and changes no file.

Each case runs ``rag_diag.cli.main`` on a tiny BEIR knowledge base (4 licence notices, 2 queries),
possibly with one file made bad, and checks: the exit status, that stderr is one line starting with
``error:`` (commands that load the model may print progress lines before it, never a traceback), and
that no file under the test folder — the inputs and a folder of unrelated files — changed or appeared.
"""

from __future__ import annotations

import codecs
import errno
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rag_diag import atomic
from rag_diag.cli import main
from rag_diag.corpora import io as corpora_io
from rag_diag.corpora.io import load_corpus, load_qrels, load_queries
from rag_diag.report.data import ReportData, Section
from rag_diag.report.markdown import code_span, escape_markdown, render_markdown, table

DOCS = [
    ("d1", "This program is free software; you can redistribute it under the GNU GPL version 2 or later."),
    ("d2", "This program is free software; you can redistribute it under the GNU GPL version 3 or later."),
    ("d3", "Licensed under the Apache License, Version 2.0; you may not use this file except in compliance."),
    ("d4", "Permission is hereby granted, free of charge, to any person obtaining a copy of this software."),
]
GOOD_FILES = {
    "kb/corpus.jsonl": "".join(json.dumps({"_id": i, "title": "", "text": t}) + "\n" for i, t in DOCS).encode(),
    "kb/queries.jsonl": b'{"_id": "q1", "text": "GPL version 2 or later"}\n{"_id": "q2", "text": "Apache 2.0"}\n',
    "kb/qrels/test.tsv": b"query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\t1\n",
    "unrelated/thesis.tex": b"\\section{Years of work}\n",
    "unrelated/data.csv": b"a,b\n1,2\n",
}
CORPUS_LINE_1 = json.dumps({"_id": "d1", "text": DOCS[0][1]})

PERTURB = ["corpora", "perturb", "--corpus", "{kb}", "--out", "{tmp}/out"]
CHOOSE = ["choose-pooling", "--corpus", "{kb}", "--queries", "{kb}/queries.jsonl", "--qrels", "{kb}/qrels/test.tsv",
          "--out", "{tmp}/choose"]  # reads corpus, queries and qrels before any model work
EVALUATE = ["evaluate", "--index", "{tmp}/no-index", "--queries", "{kb}/queries.jsonl",
            "--qrels", "{kb}/qrels/test.tsv", "--out", "{tmp}/eval"]


@dataclass(frozen=True)
class Case:
    """One bad input: files to overwrite, the command, the expected status and words of the message."""

    argv: list[str]
    status: int
    words: tuple[str, ...]
    files: dict[str, bytes] = field(default_factory=dict)
    patch: str = ""


def _corpus(second_line: str) -> dict[str, bytes]:
    return {"kb/corpus.jsonl": f"{CORPUS_LINE_1}\n{second_line}\n".encode()}


def _raise_os_error(*args, **kwargs):
    raise OSError(errno.EIO, "Input/output error", "kb/corpus.jsonl")


def _raise_interrupt(*args, **kwargs):
    raise KeyboardInterrupt


CASES = {
    # strict JSON types, with file:line
    "corpus-number-id": Case(PERTURB, 2, ("corpus.jsonl:2", "'_id' must be a string, not a number"),
                             _corpus('{"_id": 2, "text": "two"}')),
    "corpus-null-id": Case(PERTURB, 2, ("corpus.jsonl:2", "'_id' must be a string, not null"),
                           _corpus('{"_id": null, "text": "two"}')),
    "corpus-list-title": Case(PERTURB, 2, ("corpus.jsonl:2", "'title' must be a string, not an array"),
                              _corpus('{"_id": "d2", "title": ["GPL"], "text": "two"}')),
    "corpus-dict-text": Case(PERTURB, 2, ("corpus.jsonl:2", "'text' must be a string, not an object"),
                             _corpus('{"_id": "d2", "text": {"body": "two"}}')),
    "corpus-null-text": Case(PERTURB, 2, ("corpus.jsonl:2", "'text' must be a string, not null"),
                             _corpus('{"_id": "d2", "text": null}')),
    "corpus-bool-text": Case(PERTURB, 2, ("corpus.jsonl:2", "'text' must be a string, not a boolean"),
                             _corpus('{"_id": "d2", "text": true}')),
    "queries-number-id": Case(CHOOSE, 2, ("queries.jsonl:1", "'_id' must be a string, not a number"),
                              {"kb/queries.jsonl": b'{"_id": 1, "text": "GPL"}\n'}),
    "qrels-negative-score": Case(CHOOSE, 2, ("test.tsv:3", "score -1 is negative"),
                                 {"kb/qrels/test.tsv": b"query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td3\t-1\n"}),
    # classes that were already refused
    "empty-corpus": Case(PERTURB, 2, ("corpus.jsonl", "the corpus is empty"), {"kb/corpus.jsonl": b""}),
    "duplicate-ids": Case(PERTURB, 2, ("corpus.jsonl:2", "duplicate id 'd1'"),
                          _corpus('{"_id": "d1", "text": "again"}')),
    "qrels-unknown-query": Case(CHOOSE, 2, ("test.tsv:2", "unknown query id 'q9'"),
                                {"kb/qrels/test.tsv": b"query-id\tcorpus-id\tscore\nq9\td1\t1\n"}),
    "qrels-unknown-document": Case(CHOOSE, 2, ("test.tsv:3", "unknown document id 'd9'"),
                                   {"kb/qrels/test.tsv": b"query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td9\t1\n"}),
    "non-utf8": Case(PERTURB, 2, ("corpus.jsonl:2", "not valid UTF-8"),
                     {"kb/corpus.jsonl": f"{CORPUS_LINE_1}\n".encode() + b'{"_id": "d2", "text": "caf\xe9"}\n'}),
    # usage errors from typer's vendored click
    "no-arguments": Case([], 2, ("no command given",)),
    "missing-option": Case(["index", "--corpus", "{kb}"], 2, ("Missing option '--out'",)),
    "unknown-option": Case(["index", "--corpus", "{kb}", "--out", "{tmp}/o", "--bogus"], 2,
                           ("No such option: --bogus",)),
    "k-zero": Case([*EVALUATE, "--k", "0"], 2, ("'--k'",)),
    "unknown-command": Case(["nosuch"], 2, ("No such command 'nosuch'",)),
    # the operating system and the user
    "os-error": Case(PERTURB, 1, ("Input/output error", "kb/corpus.jsonl"), patch="read"),
    "interrupted-reading": Case(PERTURB, 130, ("interrupted", "nothing was published"), patch="interrupt-read"),
    "interrupted-writing": Case(PERTURB, 130, ("interrupted", "nothing was published"), patch="interrupt-write"),
    # outputs that would destroy inputs or unrelated files
    "perturb-out-is-input": Case(["corpora", "perturb", "--corpus", "{kb}", "--out", "{kb}"], 2, ("kb",)),
    "perturb-out-is-a-file": Case(["corpora", "perturb", "--corpus", "{kb}", "--out", "{kb}/corpus.jsonl"], 2,
                                  ("corpus.jsonl",)),
    "perturb-out-unrelated": Case(["corpora", "perturb", "--corpus", "{kb}", "--out", "{tmp}/unrelated"], 2,
                                  ("unrelated",)),
    # an index bundle has a manifest.json too: only a corpus build may be replaced
    "perturb-out-is-an-index": Case(["corpora", "perturb", "--corpus", "{kb}", "--out", "{tmp}/idx"], 2,
                                    ("holds a rag-diag 'index' output, not a corpus",),
                                    {"idx/manifest.json": b'{"format": 1}',
                                     "idx/.rag-diag.json": b'{"kind": "index"}'}),
    "perturb-out-unmarked-manifest": Case(["corpora", "perturb", "--corpus", "{kb}", "--out", "{tmp}/idx"], 2,
                                          ("holds no corpus manifest.json",), {"idx/manifest.json": b'{"format": 1}'}),
    # options that contradict or overflow
    "qrels-without-queries": Case(["choose-pooling", "--corpus", "{kb}", "--qrels", "{kb}/qrels/test.tsv",
                                   "--out", "{tmp}/choose"], 2, ("--qrels needs --queries",)),
    "queries-without-qrels": Case(["choose-pooling", "--corpus", "{kb}", "--queries", "{kb}/queries.jsonl",
                                   "--out", "{tmp}/choose"], 2, ("--queries needs --qrels",)),
    "qrels-given-as-queries": Case(["choose-pooling", "--corpus", "{kb}", "--queries", "{kb}/qrels/test.tsv",
                                    "--qrels", "{kb}/qrels/test.tsv", "--out", "{tmp}/choose"], 2,
                                   ("test.tsv: a qrels file, not queries",)),
    "empty-strategies": Case([*CHOOSE, "--strategies", ""], 2, ("no pooling strategy given",)),
    "export-over-out": Case(["audit", "--store", "{tmp}/store", "--out", "{tmp}/o", "--export", "{tmp}/o/cls",
                             "--export-pooling", "cls"], 2, ("overlap",)),
    "ray-address-without-ray": Case(["collapse", "--corpus", "{kb}", "--out", "{tmp}/c", "--knn", "2",
                                     "--ray-address", "127.0.0.1:1"], 2, ("--ray-address needs --engine ray",)),
    "infinite-budget": Case(["encode", "--corpus", "{kb}", "--out", "{tmp}/enc", "--memory-budget", "inf"], 2,
                            ("--memory-budget must be a positive number of GiB up to",)),
}
SLOW_CASES = {
    "collapse-out-is-input": Case(["collapse", "--corpus", "{kb}", "--out", "{kb}", "--knn", "2"], 2,
                                  ("kb", "is an input")),
    "index-out-is-input": Case(["index", "--corpus", "{kb}", "--out", "{kb}"], 2, ("kb", "is an input")),
    "index-out-inside-input": Case(["index", "--corpus", "{kb}", "--out", "{kb}/index"], 2,
                                   ("lies inside the input",)),
    "index-out-unrelated": Case(["index", "--corpus", "{kb}", "--out", "{tmp}/unrelated"], 2,
                                ("unrelated", "not written by rag-diag")),
}


@pytest.fixture(autouse=True)
def _no_protected_inputs():
    atomic.clear_protected()
    yield
    atomic.clear_protected()


def _tree(root: Path) -> dict[str, str]:
    """sha256 of every file and a mark for every folder under ``root``: equal trees mean nothing changed."""
    return {
        str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
    }


def _setup(root: Path, overrides: dict[str, bytes]) -> None:
    for name, data in {**GOOD_FILES, **overrides}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)


def _run(case: Case, root: Path, monkeypatch, capsys) -> tuple[int, str]:
    _setup(root, case.files)
    if case.patch == "read":
        monkeypatch.setattr(corpora_io, "read_lines", _raise_os_error)
    elif case.patch == "interrupt-read":
        monkeypatch.setattr(corpora_io, "read_lines", _raise_interrupt)
    elif case.patch == "interrupt-write":
        monkeypatch.setattr(atomic, "write_parquet", _raise_interrupt)  # inside perturb's atomic_dir block
    argv = [arg.format(kb=root / "kb", tmp=root) for arg in case.argv]
    capsys.readouterr()
    before = _tree(root)
    status = main(argv)
    err = capsys.readouterr().err
    assert _tree(root) == before
    return status, err


def _check(case: Case, status: int, err: str, strict: bool) -> None:
    assert "Traceback" not in err
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, err
    if strict:
        assert lines == errors, err
    else:  # only progress output may precede the error line
        assert lines[-1] == errors[0], err
    for word in case.words:
        assert word in errors[0], errors[0]
    assert status == case.status, err


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_and_changes_nothing(name, tmp_path, monkeypatch, capsys):
    case = CASES[name]
    status, err = _run(case, tmp_path, monkeypatch, capsys)
    _check(case, status, err, strict=True)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SLOW_CASES))
def test_outputs_never_replace_inputs_or_unrelated_files(name, tmp_path, monkeypatch, capsys):
    case = SLOW_CASES[name]
    status, err = _run(case, tmp_path, monkeypatch, capsys)
    _check(case, status, err, strict=False)


def test_help_is_not_an_error(capsys):
    assert main(["--help"]) == 0
    assert capsys.readouterr().err == ""


def test_byte_order_marks_are_read_through(tmp_path, capsys):
    bom = codecs.BOM_UTF8
    _setup(tmp_path, {name: bom + GOOD_FILES[name] for name in ("kb/corpus.jsonl", "kb/queries.jsonl",
                                                                 "kb/qrels/test.tsv")})
    kb = tmp_path / "kb"
    corpus = load_corpus(kb)
    queries = load_queries(kb)
    qrels = load_qrels(kb, queries=queries, corpus=corpus)
    assert corpus.ids == ["d1", "d2", "d3", "d4"] and corpus.texts[0] == DOCS[0][1]
    assert queries.ids == ["q1", "q2"]
    assert qrels.judgements == {"q1": {"d1": 1}, "q2": {"d3": 1}}
    text_file = tmp_path / "docs.txt"
    text_file.write_bytes(bom + b"first\nsecond\n")
    assert load_corpus(text_file).texts == ["first", "second"]
    before = _tree(kb)
    assert main(["corpora", "perturb", "--corpus", str(kb), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().err == ""
    assert _tree(kb) == before
    assert load_corpus(tmp_path / "out").ids[:4] == ["d1", "d2", "d3", "d4"]


def test_readers_protect_what_they_read(tmp_path):
    _setup(tmp_path, {})
    kb = tmp_path / "kb"
    load_corpus(kb)
    load_qrels(kb)
    protected = atomic.protected_inputs()
    assert {kb.resolve(), (kb / "corpus.jsonl").resolve(), (kb / "qrels" / "test.tsv").resolve()} <= protected


# ---------------------------------------------------------------------------------------------- Markdown


NASTY = "a|b `c` *d* _e_ [f](http://x) <script>alert(1)</script>\nnext \\ line"
UNESCAPED_PIPE = re.compile(r"(?<!\\)\|")


def test_escape_markdown_keeps_data_text_literal():
    escaped = escape_markdown(NASTY)
    assert escaped == (
        r"a\|b \`c\` \*d\* \_e\_ \[f\](http://x) \<script\>alert(1)\</script\> next \\ line"
    )
    assert escape_markdown("plain words, 0.5 and mean+std") == "plain words, 0.5 and mean+std"


def test_code_span_survives_backticks():
    assert code_span("d1") == "`d1`"
    assert code_span("a`b") == "``a`b``"
    assert code_span("`x``") == "``` `x`` ```"
    assert code_span("two\nlines") == "`two lines`"


def test_data_text_cannot_break_the_summary():
    rendered = table(["id", "text"], [["d|1", NASTY], ["d2", "fine"]])
    rows = rendered.splitlines()
    assert len(rows) == 4  # header, rule, two rows: the newline in the text did not split a row
    assert all(len(UNESCAPED_PIPE.findall(row)) == 3 for row in rows[2:])
    data = ReportData(title="audit of *my_store*", sections=[Section("Found", f"{NASTY}\n\nsecond paragraph")])
    markdown = render_markdown(data)
    assert markdown.startswith("# audit of \\*my\\_store\\*\n")
    assert "<script>" not in markdown and "\n\nsecond paragraph" in markdown
