"""The ``kb-scale`` corpus: a real mixed knowledge base of up to 100,000 distinct documents.

Counts below were measured with licensedcode-data 32.1.0, gensim 4.4.0 and Debian's
sword-text-kjv (engKJV2006eb) / sword-text-web (engWEB2015eb): after exact de-duplication the sources
give lic 18,112, lictext 12,054, wiki 16,568, kjv 30,856, web 37,015 distinct texts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from rag_diag.cli import main
from rag_diag.corpora import scale, wiki
from rag_diag.corpora.io import load_beir, load_corpus
from rag_diag.corpora.registry import build_corpus, get_spec
from rag_diag.errors import RagDiagError

AVAILABLE = {"lic": 18112, "lictext": 12054, "wiki": 16568, "kjv": 30856, "web": 37015}
FULL_MIX = {"lic": 18112, "lictext": 12054, "wiki": 16568, "kjv": 30856, "web": 22410}  # sums to 100,000
MIX_2000 = {"lic": 362, "lictext": 241, "wiki": 332, "kjv": 617, "web": 448}

needs_bible = pytest.mark.skipif(not scale.bible_installed(), reason="needs apt-get install sword-text-kjv "
                                 "sword-text-web and pysword (rag-diag[bible])")


def test_unavailable_is_none_here():
    assert scale.unavailable() is None
    assert get_spec("kb-scale").unavailable() is None


def test_chunker_packs_paragraphs_and_splits_long_ones():
    long = " ".join(f"Sentence {i} has four words." for i in range(10))  # 50 words, 10 sentences
    paragraphs = ["One two three.", "Four five\n six.", long, "", "Tail words here."]
    chunks = scale.chunk_paragraphs(paragraphs, max_words=12)
    # greedy packing: 3 + 3 words, then the long paragraph by sentences (5 words each), then the tail
    assert chunks[0] == "One two three. Four five six. Sentence 0 has four words."
    assert all(len(chunk.split()) <= 12 for chunk in chunks)
    assert chunks[1] == "Sentence 1 has four words. Sentence 2 has four words."
    assert chunks[-1] == "Sentence 9 has four words. Tail words here."
    assert " ".join(chunks).split() == " ".join(paragraphs).split()  # no word lost, reordered or added
    assert scale.chunk_paragraphs([" ".join(["w"] * 25)], max_words=10) == [" ".join(["w"] * 10)] * 2 + ["w " * 4 + "w"]


def test_licence_texts_are_chunked_with_their_key(tmp_path):
    body = "\n\n".join(" ".join(f"p{p}w{i}" for i in range(90)) for p in range(5))  # 5 paragraphs of 90 words
    (tmp_path / "demo-1.0.LICENSE").write_text(f"---\nkey: demo-1.0\n---\n{body}\n", encoding="utf-8")
    (tmp_path / "old-1.0.LICENSE").write_text("---\nkey: old-1.0\nis_deprecated: yes\n---\n" + body, "utf-8")
    (tmp_path / "short.LICENSE").write_text("---\nkey: short\n---\nToo short to keep.\n", encoding="utf-8")
    docs = list(scale.licence_text_docs(tmp_path))
    assert [d.id for d in docs] == ["lictext-demo-1.0-000", "lictext-demo-1.0-001", "lictext-demo-1.0-002"]
    assert [len(d.text.split()) for d in docs] == [180, 180, 90] and {d.label for d in docs} == {"demo-1.0"}


def test_wiki_docs_are_the_wiki_readers_sentences_with_titles():
    docs = list(scale.wiki_docs())
    assert [d.text for d in docs] == wiki.wiki_sentences()
    assert docs[0].label == "Anarchism" and docs[0].id == "wiki-00000"
    assert len({d.label for d in docs}) > 100 and all(d.label for d in docs)


def test_mix_rule_on_known_counts():
    base, quotas = scale.plan(AVAILABLE, 2000)
    assert base == FULL_MIX and sum(base.values()) == scale.FULL
    assert quotas == MIX_2000 and sum(quotas.values()) == 2000
    for source, share in quotas.items():  # proportional to the full mix, rounding off by less than one
        assert abs(share - 2000 * FULL_MIX[source] / scale.FULL) < 1
    assert scale.plan(AVAILABLE, scale.FULL)[1] == FULL_MIX
    assert scale.plan(AVAILABLE, 110_000)[1] == {**AVAILABLE, "web": 32410}  # beyond full: fill in order
    with pytest.raises(RagDiagError, match="114,605 distinct"):
        scale.plan(AVAILABLE, 114_606)
    no_bible = {source: AVAILABLE[source] for source in ("lic", "lictext", "wiki")}
    assert scale.plan(no_bible, 10)[1] == {"lic": 4, "lictext": 3, "wiki": 3}
    with pytest.raises(RagDiagError, match="sword-text-kjv sword-text-web"):
        scale.plan(no_bible, scale.FULL)


@needs_bible
@pytest.mark.optional
def test_block_cache_reads_the_same_verses():
    from pysword.modules import SwordModules

    from rag_diag.corpora import bible

    modules = SwordModules(str(bible.sword_path()))
    modules.parse_modules()
    for name in ("KJV", "WEB"):
        plain = list(modules.get_bible_from_module(bible.module_ids()[name]).get_iter(books=["Jude", "Ruth"]))
        with scale._block_cache():
            cached = list(modules.get_bible_from_module(bible.module_ids()[name]).get_iter(books=["Jude", "Ruth"]))
        assert cached == plain and len(plain) == 25 + 85


@pytest.fixture(scope="module")
def pools():
    return scale.read_pools()


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("kb")
    for name in ("a", "b"):
        build_corpus("kb-scale", root / name, 2000, seed=0)
    return root / "a", root / "b"


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow  # reads every source twice (about 15 s each)
def test_same_seed_gives_identical_bytes(built):
    first, second = _files(built[0]), _files(built[1])
    assert set(first) >= {"corpus.jsonl", "manifest.json", "ATTRIBUTION"}
    assert first == second


@pytest.mark.slow
@needs_bible
@pytest.mark.optional
def test_small_build_has_the_documented_mix(built):
    corpus, queries, qrels = load_beir(built[0])  # validates every qrel against the corpus and queries
    assert len(corpus) == 2000 and len(set(corpus.ids)) == 2000 and len(set(corpus.texts)) == 2000
    sources = [m["source"] for m in corpus.metadata]
    assert {source: sources.count(source) for source in MIX_2000} == MIX_2000
    assert all(doc_id.startswith(m["source"] + "-") and m["label"] for doc_id, m in zip(corpus.ids, corpus.metadata,
                                                                                         strict=True))
    manifest = json.loads((built[0] / "manifest.json").read_text())
    assert manifest["counts"] == {"documents": 2000, "queries": len(queries), **MIX_2000}
    assert manifest["mix"]["available"] == AVAILABLE and manifest["mix"]["base"] == FULL_MIX
    assert manifest["source"]["licensedcode-data"] == "32.1.0" and "pysword" in manifest["source"]
    texts = dict(zip(corpus.ids, corpus.texts, strict=True))
    assert len(queries) == scale.QUERIES
    for query_id, text in zip(queries.ids, queries.texts, strict=True):  # a WEB verse against its KJV verse
        assert qrels.relevant(query_id) == {"kjv-" + query_id.removeprefix("q-web-")}
        assert query_id.removeprefix("q-") not in texts and text not in texts.values()


@pytest.mark.slow
def test_other_seed_changes_the_sample(built, pools, tmp_path, monkeypatch):
    monkeypatch.setattr(scale, "read_pools", lambda with_bible=None: pools)
    again = tmp_path / "again"
    build_corpus("kb-scale", again, 2000, seed=0)
    assert _files(again)["corpus.jsonl"] == _files(built[0])["corpus.jsonl"]  # the cached pools are the same
    build_corpus("kb-scale", tmp_path / "s1", 2000, seed=1)
    other = load_corpus(tmp_path / "s1")
    assert len(other) == 2000 and set(other.ids) != set(load_corpus(built[0]).ids)


@pytest.mark.slow
def test_without_the_bible_small_still_builds_and_full_says_how_to_install(pools, tmp_path, monkeypatch, capsys):
    no_bible = {source: pools[source] for source in ("lic", "lictext", "wiki")}
    monkeypatch.setattr(scale, "bible_installed", lambda: False)
    monkeypatch.setattr(scale, "read_pools", lambda with_bible=None: no_bible)
    manifest = build_corpus("kb-scale", tmp_path / "small", "small", seed=0)
    assert manifest["counts"] == {"documents": 10_000, "queries": 0, "lic": 3876, "lictext": 2579, "wiki": 3545}
    assert not (tmp_path / "small" / "queries.jsonl").exists()
    assert main(["corpora", "build", "kb-scale", "--out", str(tmp_path / "full"), "--size", "full"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: size 100,000 exceeds") and "apt-get install sword-text-kjv" in err
    assert "\n" not in err and not (tmp_path / "full").exists()


@pytest.mark.slow
def test_size_beyond_every_source_is_a_one_line_error(pools, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(scale, "read_pools", lambda with_bible=None: pools)
    total = sum(len(pool) for pool in pools.values())
    assert main(["corpora", "build", "kb-scale", "--out", str(tmp_path / "kb"), "--size", str(total + 1)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and f"{total:,} distinct documents" in err and "\n" not in err
    assert not (tmp_path / "kb").exists()


@pytest.mark.slow  # 100,000 documents, written in a few seconds once the sources are read
@needs_bible
@pytest.mark.optional
def test_full_build_has_exactly_100000_distinct_documents(pools, tmp_path, monkeypatch):
    monkeypatch.setattr(scale, "read_pools", lambda with_bible=None: pools)
    start = time.perf_counter()
    manifest = build_corpus("kb-scale", tmp_path / "full", "full", seed=0)
    assert time.perf_counter() - start < 60
    corpus = load_corpus(tmp_path / "full")
    assert len(corpus) == 100_000 == manifest["counts"]["documents"]
    assert len(set(corpus.ids)) == 100_000 and len(set(corpus.texts)) == 100_000
    sources = [m["source"] for m in corpus.metadata]
    assert {source: sources.count(source) for source in FULL_MIX} == FULL_MIX
