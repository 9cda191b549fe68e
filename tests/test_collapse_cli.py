"""``rag-diag collapse``: the three files with their columns, and a one-line error on bad input."""

from __future__ import annotations

import json

import polars as pl

from rag_diag.cli import main

PAIR_COLUMNS = ["doc_a", "doc_b", "d_mu", "d_sigma", "socm", "cos"]
DOC_COLUMNS = ["doc_id", "n_tokens", "concentration", "trace"]


def corpus_file(tmp_path, texts):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(texts) + "\n")
    return path


def test_pairs_mode_writes_three_files(tiny_texts, tmp_path, minilm):
    out = tmp_path / "pairs"
    args = ["collapse", "--corpus", str(corpus_file(tmp_path, tiny_texts)), "--model", "minilm"]
    assert main([*args, "--pairs", "all", "--sample", "6", "--seed", "1", "--out", str(out)]) == 0
    pairs, docs = pl.read_parquet(out / "pairs.parquet"), pl.read_parquet(out / "docs.parquet")
    summary = json.loads((out / "summary.json").read_text())
    assert pairs.columns == PAIR_COLUMNS and pairs.height == 15
    assert docs.columns == DOC_COLUMNS and docs.height == 6
    assert summary["mode"] == "pairs" and summary["n_pairs"] == 15 and summary["n_docs"] == 6
    assert summary["sample"] == 6 and summary["seed"] == 1 and summary["model_name"] == "minilm"
    assert summary["model"]["name"] == "minilm" and len(summary["model"]["weights_sha256"]) == 64
    assert abs(summary["avg_socm"] - pairs["socm"].mean()) < 1e-12
    assert "--pairs all" in summary["command"] and summary["token_store"]


def test_knn_mode_adds_per_document_columns(tiny_texts, tmp_path, minilm):
    out = tmp_path / "knn"
    args = ["collapse", "--corpus", str(corpus_file(tmp_path, tiny_texts)), "--knn", "2", "--out", str(out)]
    assert main(args) == 0
    docs = pl.read_parquet(out / "docs.parquet")
    assert docs.columns == [*DOC_COLUMNS, "collapse_mean", "collapse_max", "top_confuser"]
    assert docs.height == len(tiny_texts)
    assert set(docs["top_confuser"]) <= set(docs["doc_id"])
    assert pl.read_parquet(out / "pairs.parquet").height == 2 * len(tiny_texts)
    assert json.loads((out / "summary.json").read_text())["k"] == 2


def test_empty_corpus_is_a_one_line_error(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    status = main(["collapse", "--corpus", str(empty), "--pairs", "all", "--out", str(tmp_path / "o")])
    error = capsys.readouterr().err.strip()
    assert status != 0
    assert error.startswith("error:") and "\n" not in error
    assert not (tmp_path / "o").exists()


def test_mode_must_be_chosen(tiny_texts, tmp_path, capsys):
    corpus = str(corpus_file(tmp_path, tiny_texts))
    assert main(["collapse", "--corpus", corpus, "--out", str(tmp_path / "o")]) == 2
    assert main(["collapse", "--corpus", corpus, "--pairs", "all", "--knn", "2", "--out", str(tmp_path / "o")]) == 2
    assert "choose one mode" in capsys.readouterr().err
