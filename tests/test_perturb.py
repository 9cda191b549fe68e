"""The near-duplicate generator: exactly one recorded, meaning-bearing edit per variant."""

from __future__ import annotations

import polars as pl
import pytest

from rag_diag.cli import main
from rag_diag.corpora.io import Corpus, load_beir
from rag_diag.corpora.perturb import MEANING_TOKENS, NUMBER, perturb_corpus, tokens


@pytest.fixture(scope="module")
def source(tiny_texts) -> Corpus:
    return Corpus(ids=[f"d{i}" for i in range(len(tiny_texts))], texts=list(tiny_texts))


@pytest.fixture(scope="module")
def perturbed(source):
    return perturb_corpus(source, seed=3, per_doc=3)


def test_each_variant_is_exactly_its_recorded_edit(source, perturbed):
    texts = dict(zip(perturbed.docs.ids, perturbed.docs.texts, strict=True))
    assert perturbed.edits, "the tiny corpus has editable tokens"
    for edit in perturbed.edits:
        original, variant = texts[edit.source_id], texts[edit.variant_id]
        assert original[edit.start:edit.start + len(edit.before)] == edit.before
        assert variant == original[:edit.start] + edit.after + original[edit.start + len(edit.before):]
        before, after = tokens(edit.before), tokens(edit.after)
        src = tokens(original)
        assert tokens(variant) == src[:edit.token_index] + after + src[edit.token_index + len(before):]
        changed = {t.lower() for t in before + after}
        assert all(t in MEANING_TOKENS or NUMBER.fullmatch(t) for t in changed), edit
        assert variant != original


def test_queries_target_their_variant_only(perturbed):
    assert len(perturbed.queries) == len(perturbed.edits)
    texts = [t.lower() for t in perturbed.docs.texts]
    for edit, query in zip(perturbed.edits, perturbed.queries.texts, strict=True):
        assert perturbed.qrels.relevant(edit.query_id) == {edit.variant_id}
        holders = [i for i, text in enumerate(texts) if query.lower() in text]
        assert [perturbed.docs.ids[i] for i in holders] == [edit.variant_id]


def test_variants_record_the_edit_in_metadata(perturbed):
    variants = {e.variant_id: e for e in perturbed.edits}
    for doc_id, meta in zip(perturbed.docs.ids, perturbed.docs.metadata, strict=True):
        if doc_id in variants:
            assert meta["perturbation"]["edit"] == variants[doc_id].edit
            assert meta["perturbation"]["source_id"] == variants[doc_id].source_id


def test_edit_kinds_on_known_sentences():
    corpus = Corpus(ids=["a", "b", "c"], texts=[
        "Licensed under GPL-2.0-only.", "You may not copy it.", "Use is permitted with notice.",
    ])
    seen = {(e.edit, e.before, e.after) for e in perturb_corpus(corpus, seed=0, per_doc=5).edits}
    assert ("scope", "only", "or-later") in seen
    assert ("number", "2.0", "3.0") in seen
    assert ("negation", "may not", "may") in seen
    assert ("swap", "may", "must") in seen
    assert ("swap", "permitted", "prohibited") in seen


def test_deterministic_and_seed_sensitive(source):
    first, again = perturb_corpus(source, seed=1, per_doc=2), perturb_corpus(source, seed=1, per_doc=2)
    assert first == again
    assert perturb_corpus(source, seed=2, per_doc=2).edits != first.edits


def test_cli_perturb_writes_a_valid_beir_folder(tmp_path, tiny_texts):
    corpus_file = tmp_path / "docs.txt"
    corpus_file.write_text("\n".join(tiny_texts) + "\n")
    outs = [tmp_path / "a", tmp_path / "b"]
    for out in outs:
        assert main(["corpora", "perturb", "--corpus", str(corpus_file), "--out", str(out), "--seed", "4"]) == 0
    docs, queries, qrels = load_beir(outs[0])
    edits = pl.read_parquet(outs[0] / "edits.parquet")
    assert edits.height == len(queries) == len(qrels.judgements)
    for name in ("corpus.jsonl", "queries.jsonl", "qrels/test.tsv", "edits.parquet", "manifest.json"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()


def test_cli_perturb_bad_input_is_one_line_error(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"_id": "x", "text": "ok"}\n{"_id": "x", "text": "again"}\n')
    assert main(["corpora", "perturb", "--corpus", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and f"{bad}:2" in err and "\n" not in err
