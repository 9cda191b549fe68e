"""Shared fixtures for the index / evaluate / LangChain tests: a small real licence-notice BEIR folder.

Documents and queries are ScanCode licence rules (licensedcode-data, CC-BY-4.0, "ScanCode LicenseDB,
nexB"); a query's relevant documents are the corpus rules with the same ``license_expression``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

LABELS = ("gpl-2.0-plus", "gpl-3.0-plus", "gpl-2.0", "lgpl-2.1-plus", "apache-2.0", "mit")
LABEL_LINE = re.compile(r"^license_expression:\s*(\S+)\s*$", re.M)


def rules_folder() -> Path:
    import licensedcode

    return Path(next(iter(licensedcode.__path__))) / "data" / "rules"


def read_rule(path: Path) -> tuple[str, str] | None:
    """(label, text) of a RULE file: YAML front matter between '---' lines, then the text."""
    parts = path.read_text(encoding="utf-8").split("---\n", 2)
    if len(parts) < 3:
        return None
    match = LABEL_LINE.search(parts[1])
    if match is None or "is_false_positive: yes" in parts[1]:
        return None
    return match.group(1), " ".join(parts[2].split())


Rules = dict[str, list[tuple[str, str]]]


def licence_rules(labels: tuple[str, ...], per_label: int, min_words: int = 8) -> Rules:
    """Up to ``per_label`` (rule id, text) per label, in file-name order, texts of ≥ ``min_words`` words."""
    found: Rules = {label: [] for label in labels}
    for path in sorted(rules_folder().glob("*.RULE")):
        prefix = path.stem.rsplit("_", 1)[0]
        if prefix not in found or len(found[prefix]) >= per_label:
            continue
        rule = read_rule(path)
        if rule and rule[0] == prefix and len(rule[1].split()) >= min_words:
            found[prefix].append((path.stem, rule[1]))
    return found


def write_licence_beir(
    folder: Path, labels: tuple[str, ...] = LABELS, docs: int = 10, queries: int = 3
) -> Path:
    """A BEIR folder: ``docs`` corpus rules and ``queries`` held-out query rules per label."""
    folder.mkdir(parents=True, exist_ok=True)
    rules = licence_rules(labels, docs + queries)
    corpus_lines, query_lines, qrel_lines = [], [], ["query-id\tcorpus-id\tscore"]
    for items in rules.values():
        in_corpus, held_out = items[:docs], items[docs:]
        corpus_lines += [json.dumps({"_id": rid, "title": "", "text": text}) for rid, text in in_corpus]
        for rid, text in held_out:
            query_lines.append(json.dumps({"_id": f"q-{rid}", "text": text}))
            qrel_lines += [f"q-{rid}\t{doc_id}\t1" for doc_id, _ in in_corpus]
    (folder / "corpus.jsonl").write_text("\n".join(corpus_lines) + "\n")
    (folder / "queries.jsonl").write_text("\n".join(query_lines) + "\n")
    (folder / "qrels").mkdir(exist_ok=True)
    (folder / "qrels" / "test.tsv").write_text("\n".join(qrel_lines) + "\n")
    return folder


@pytest.fixture(scope="session")
def licence_beir(tmp_path_factory) -> Path:
    return write_licence_beir(tmp_path_factory.mktemp("licences") / "beir")


@pytest.fixture(scope="session")
def licence_bundle(licence_beir, minilm, tmp_path_factory):
    """Every pooling strategy over the licence corpus, flat indexes, built once (real model: slow).

    Built in memory and written: the returned bundle is the opened on-disk copy (``.path`` is set).
    """
    from rag_diag.retrieval.bundle import build_indexes

    out = tmp_path_factory.mktemp("bundle") / "idx"
    bundle = build_indexes(licence_beir, model=minilm, strategies="all", index_type="flat", device="cpu")
    return bundle.write(out)


def test_licence_beir_is_well_formed(licence_beir):
    from rag_diag.corpora.io import load_corpus, load_qrels, load_queries

    corpus = load_corpus(licence_beir)
    queries = load_queries(licence_beir / "queries.jsonl")
    qrels = load_qrels(licence_beir / "qrels" / "test.tsv", queries, corpus)
    assert len(corpus) == 10 * len(LABELS)
    assert len(queries) == 3 * len(LABELS)
    assert all(len(qrels.relevant(query_id)) == 10 for query_id in queries.ids)


def planted_licences() -> tuple[list[str], list[str], list[str]]:
    """(ids, texts, labels): real licence notices, three per label, then an exact copy of the first one."""
    rules = licence_rules(LABELS, per_label=3)
    items = [(rule_id, text, label) for label, found in rules.items() for rule_id, text in found]
    items.append(("planted-copy", items[0][1], items[0][2]))
    return [i for i, _, _ in items], [t for _, t, _ in items], [lab for _, _, lab in items]
