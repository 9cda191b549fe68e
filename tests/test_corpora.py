"""Bundled corpora: qrels and label integrity, byte-identical rebuilds, manifests, the CLI."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import polars as pl
import pytest

from rag_diag.cli import main
from rag_diag.corpora.io import load_beir, load_corpus
from rag_diag.corpora.registry import build_corpus

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def licenses_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lic") / "licenses"
    build_corpus("licenses", out, "small", 0)
    return out


def _labels(meta: list[dict]) -> list[str]:
    return [m["label"] for m in meta]


@pytest.mark.slow  # builds the whole licences corpus
def test_licenses_qrels_and_labels_are_consistent(licenses_dir):
    corpus, queries, qrels = load_beir(licenses_dir)  # validates every qrel against queries and corpus
    doc_label = dict(zip(corpus.ids, _labels(corpus.metadata), strict=True))
    query_label = dict(zip(queries.ids, _labels(queries.metadata), strict=True))
    assert 2000 <= len(corpus) <= 3000 and 200 <= len(queries) <= 300
    assert set(qrels.judgements) == set(queries.ids)
    for query_id, label in query_label.items():
        relevant = qrels.relevant(query_id)
        assert relevant == {d for d, lab in doc_label.items() if lab == label}
    labels = pl.read_parquet(licenses_dir / "labels.parquet")
    assert dict(labels.filter(pl.col("role") == "doc").select("id", "label").iter_rows()) == doc_label


@pytest.mark.slow  # builds the whole licences corpus
def test_licenses_near_duplicates_are_labelled_truthfully(licenses_dir):
    corpus = load_corpus(licenses_dir)
    doc_label = dict(zip(corpus.ids, _labels(corpus.metadata), strict=True))
    pairs = pl.read_parquet(licenses_dir / "near_duplicates.parquet")
    assert pairs.height > 0 and (~pairs["same_label"]).sum() > 0, "the traps must exist"
    assert pairs["similarity"].min() >= 0.9
    for doc_a, doc_b, same in pairs.select("doc_a", "doc_b", "same_label").iter_rows():
        assert doc_a < doc_b and same == (doc_label[doc_a] == doc_label[doc_b])


@pytest.mark.slow  # builds the whole licences corpus
def test_licenses_manifest_and_attribution(licenses_dir):
    manifest = json.loads((licenses_dir / "manifest.json").read_text())
    assert manifest["source"] == {"package": "licensedcode-data", "version": "32.1.0",
                                  "files": "licensedcode/data/rules/*.RULE"}
    assert manifest["licence"] == "CC-BY-4.0" and manifest["seed"] == 0 and manifest["size"] == "small"
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((licenses_dir / name).read_bytes()).hexdigest() == digest
    assert "ScanCode LicenseDB, nexB, CC-BY-4.0" in (licenses_dir / "ATTRIBUTION").read_text()


@pytest.mark.slow  # builds the whole licences corpus
def test_licenses_build_is_byte_identical(licenses_dir, tmp_path):
    again = tmp_path / "again"
    assert main(["corpora", "build", "licenses", "--out", str(again), "--seed", "0"]) == 0
    files = sorted(p.relative_to(licenses_dir) for p in licenses_dir.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for name in files:
        assert (licenses_dir / name).read_bytes() == (again / name).read_bytes(), name


@pytest.mark.slow  # builds the whole licences corpus
def test_licenses_seed_changes_the_split(tmp_path):
    manifest = build_corpus("licenses", tmp_path / "s1", 400, seed=1)
    assert manifest["counts"]["documents"] + manifest["counts"]["queries"] == 400
    assert (tmp_path / "s1" / "queries.jsonl").read_bytes() != b""


def test_lee_build_has_all_rated_pairs(tmp_path):
    build_corpus("lee", tmp_path / "lee")
    pairs = pl.read_parquet(tmp_path / "lee" / "pairs.parquet")
    assert len(load_corpus(tmp_path / "lee")) == 50 and pairs.height == 1225
    assert pairs["human_score"].min() >= 0 and pairs["human_score"].max() <= 1


def test_lee_correlation_is_pearson_over_the_rated_pairs(tmp_path):
    """Against an oracle written here: cosines of the vectors vs the ratings in the built pairs.parquet."""
    import numpy as np
    from scipy.stats import pearsonr

    from rag_diag.corpora.lee import lee_sts_correlation, lee_tfidf_correlation

    build_corpus("lee", tmp_path / "lee")
    ids = load_corpus(tmp_path / "lee").ids
    vectors = np.random.default_rng(0).standard_normal((len(ids), 8))
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    row = {doc_id: i for i, doc_id in enumerate(ids)}
    pairs = pl.read_parquet(tmp_path / "lee" / "pairs.parquet")
    cosines = [float(unit[row[a]] @ unit[row[b]]) for a, b in pairs.select("doc_a", "doc_b").iter_rows()]
    expected = pearsonr(cosines, pairs["human_score"].to_numpy()).statistic
    result = lee_sts_correlation(vectors, "random")
    assert result["model"] == "random" and result["n_pairs"] == pairs.height == 1225
    # the same 1,225 cosines and ratings, in the same order: float rounding only (~1e-15)
    assert result["pearson"] == pytest.approx(expected, abs=1e-12)
    # measured 0.559, deterministic (no model): the band only absorbs tokenizer / scikit-learn drift
    assert 0.5 < lee_tfidf_correlation()["pearson"] < 0.65


@pytest.mark.slow
def test_lee_sts_correlation_real_model(minilm):
    from rag_diag.corpora.lee import lee_corpus, lee_sts_correlation
    from rag_diag.tokens.extract import encode_corpus

    result = lee_sts_correlation(encode_corpus(lee_corpus(), model=minilm).means(), "minilm")
    assert result["n_pairs"] == 1225
    # measured 0.656 (LSA ≈ 0.60 published); with n = 1225 pairs the standard error of r is
    # (1 − r²)/√n ≈ 0.016, so the band [0.5, 0.9] is ~10 SE wide on each side: model/library drift only
    assert 0.5 < result["pearson"] < 0.9


def test_wiki_sentences_build(tmp_path):
    out = tmp_path / "wiki"
    manifest = build_corpus("wiki-sentences", out, 50, seed=0)
    assert manifest["counts"]["documents"] == len(load_corpus(out)) == 50


def sword_modules_installed() -> bool:
    """pysword importable and SWORD Bible modules for both translations under the SWORD folder.

    Decided here, not by ``bible.unavailable()``: the test must build the corpus whenever the Debian
    packages are installed, whatever the module names the packages use (``kjv.conf`` or
    ``engKJV2006eb.conf``), so that a library that does not find them fails rather than skips.
    """
    from rag_diag.corpora.bible import sword_path

    if importlib.util.find_spec("pysword") is None:
        return False
    confs = [p.name.lower() for p in (sword_path() / "mods.d").glob("*.conf")]
    return any("kjv" in name for name in confs) and any("web" in name for name in confs)


@pytest.mark.slow
@pytest.mark.optional
def test_bible_build(tmp_path):
    from rag_diag.corpora.bible import INSTALL_HINT

    if not sword_modules_installed():
        pytest.skip(f"the bible corpus needs the SWORD modules and pysword: {INSTALL_HINT}")
    out = tmp_path / "bible"
    assert main(["corpora", "build", "bible", "--out", str(out), "--size", "20", "--seed", "0"]) == 0
    corpus, queries, qrels = load_beir(out)  # validates every qrel against queries and corpus
    assert len(queries) == 20 and len(corpus) > 7000  # the New Testament has 7,957 verses
    texts = dict(zip(corpus.ids, corpus.texts, strict=True))
    assert "For God so loved the world" in texts["John.3.16"]  # KJV wording
    for query_id in queries.ids:  # one relevant document: the KJV verse with the WEB verse's id
        assert qrels.relevant(query_id) == {query_id}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["licence"] == "public domain" and manifest["counts"]["queries"] == 20


def test_bible_without_modules_is_a_one_line_install_hint(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SWORD_PATH", str(tmp_path / "no-sword"))  # as on a machine without the packages
    assert main(["corpora", "build", "bible", "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip()
    assert "sword-text-kjv" in err and "rag-diag[bible]" in err and "\n" not in err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize(
    "argv",
    [["corpora", "build", "nope"], ["corpora", "build", "licenses", "--size", "huge"],
     ["corpora", "build", "lee", "--out", str(ROOT / "rag_diag")]],
    ids=["unknown-name", "bad-size", "refuses-foreign-folder"],
)
def test_cli_build_bad_input_is_one_line_error(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err


def test_cli_list(capsys):
    assert main(["corpora", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("licenses", "lee", "wiki-sentences", "bible"))


@pytest.mark.slow
def test_baseline_loose(tmp_path, minilm):
    import importlib.util as util

    spec = util.spec_from_file_location("bench_baseline", ROOT / "benchmarks" / "bench_baseline.py")
    bench = util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    build_corpus("licenses", tmp_path / "lic", 300, seed=0)
    results = bench.baseline(tmp_path / "lic", model=minilm)
    for metrics in results.values():
        assert 0 < metrics["P@1"] < 1 and metrics["MRR@10"] >= metrics["P@1"]
