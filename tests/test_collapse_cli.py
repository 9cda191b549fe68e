"""The collapse stage: ``collapse_store`` → CollapseTable (mock store, fast) and ``rag-diag collapse``
(the three files with their columns with the real model, slow; one-line errors on bad input, fast)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from rag_diag.cli import main
from rag_diag.collapse.run import collapse_store
from rag_diag.collapse.table import CollapseTable
from rag_diag.errors import RagDiagError

PAIR_COLUMNS = ["doc_a", "doc_b", "d_mu", "d_sigma", "socm", "cos"]
DOC_COLUMNS = ["doc_id", "n_tokens", "concentration", "trace"]
KNN_COLUMNS = ["collapse_mean", "collapse_max", "top_confuser"]
EPS64 = float(np.finfo(np.float64).eps)


def corpus_file(tmp_path, texts):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(texts) + "\n")
    return path


def mean_atol(values) -> float:
    """polars and numpy both sum n float64 values: each mean is off by ≤ n·eps·mean|v|."""
    values = np.asarray(values, dtype=np.float64)
    return 2 * len(values) * EPS64 * float(np.abs(values).mean())


# ---------------------------------------------------------------------------------------------- library, mock store


def test_pairs_table_round_trips(mock_store, tmp_path):
    table = collapse_store(mock_store, sample=6, seed=1, command="rag-diag collapse --pairs all")
    written = CollapseTable.open(table.write(tmp_path / "pairs"))
    for frame in (table, written):
        assert frame.pairs.columns == PAIR_COLUMNS and frame.pairs.height == 15
        assert frame.docs.columns == DOC_COLUMNS and frame.docs.height == 6
        assert not frame.has_rates
    assert written.pairs.equals(table.pairs) and written.docs.equals(table.docs)
    summary = written.summary
    assert summary["mode"] == "pairs" and summary["n_pairs"] == 15 and summary["n_docs"] == 6
    assert summary["sample"] == 6 and summary["seed"] == 1 and summary["model"]["name"] == "mock"
    assert abs(summary["avg_socm"] - float(np.mean(table.pairs["socm"].to_numpy()))) <= mean_atol(table.pairs["socm"])
    assert set(table.docs["doc_id"]) <= set(mock_store.doc_ids)
    assert set(table.pairs["doc_a"]) | set(table.pairs["doc_b"]) == set(table.docs["doc_id"])


def test_knn_table_has_per_document_rates(mock_store, tmp_path):
    table = collapse_store(mock_store, knn=2)
    assert table.has_rates
    assert table.docs.columns == [*DOC_COLUMNS, *KNN_COLUMNS] and table.docs.height == len(mock_store)
    assert table.pairs.height == 2 * len(mock_store)
    assert set(table.docs["top_confuser"]) <= set(table.docs["doc_id"])
    assert table.summary["k"] == 2 and table.summary["mode"] == "knn"
    written = CollapseTable.open(table.write(tmp_path / "knn"))
    assert written.has_rates and written.docs.equals(table.docs)
    # collapse_max ≥ collapse_mean: a max and a mean of the same two floats (mean rounds, max is exact)
    docs = table.docs
    assert (docs["collapse_max"] >= docs["collapse_mean"] * (1 - 2 * EPS64)).all()


def test_layer_profile_is_added_for_all_layer_stores(tiny_texts, tmp_path):
    from rag_diag.models.mock import MockEncoder
    from rag_diag.tokens.extract import encode_texts

    store = encode_texts(tiny_texts, model=MockEncoder(), layers="all", out=tmp_path / "s", cache=False)
    table = collapse_store(store, sample=4, seed=0, profile_layers=True)
    assert table.layers is not None and table.layers["layer"].to_list() == store.layers
    assert [row["layer"] for row in table.summary["layers"]] == store.layers
    written = CollapseTable.open(table.write(tmp_path / "layers"))
    assert written.layers is not None and written.layers.height == len(store.layers)


def test_bad_options_are_refused(mock_store):
    with pytest.raises(RagDiagError, match="--rank applies to --knn"):
        collapse_store(mock_store, rank=2)
    with pytest.raises(RagDiagError, match="float64 or float32"):
        collapse_store(mock_store, knn=2, dtype="float16")
    with pytest.raises(RagDiagError, match="at least 2"):
        collapse_store(mock_store, sample=1)


def test_open_refuses_incomplete_folders(tmp_path):
    with pytest.raises(RagDiagError, match="no such collapse folder"):
        CollapseTable.open(tmp_path / "missing")
    (tmp_path / "partial").mkdir()
    with pytest.raises(RagDiagError, match="missing"):
        CollapseTable.open(tmp_path / "partial")


@pytest.mark.parametrize(("edit", "message"), [
    (lambda summary: {}, "no model, mode, n_docs, n_pairs, corpus_sha256"),
    (lambda summary: {**summary, "corpus_sha256": None}, "no corpus_sha256"),
    (lambda summary: {**summary, "mode": "all"}, "unknown mode"),
    (lambda summary: {**summary, "n_docs": summary["n_docs"] + 1}, "not one run's output"),
])
def test_open_refuses_a_summary_that_cannot_vouch_for_its_tables(mock_store, tmp_path, edit, message):
    """diagnose checks the model and corpus hash of the summary: a hollow one would skip both checks."""
    folder = collapse_store(mock_store, knn=2).write(tmp_path / "knn")
    summary = json.loads((folder / "summary.json").read_text())
    (folder / "summary.json").write_text(json.dumps(edit(summary)))
    with pytest.raises(RagDiagError, match=message):
        CollapseTable.open(folder)


# ---------------------------------------------------------------------------------------------- CLI


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
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_pairs_mode_writes_three_files(tiny_texts, tmp_path):
    out = tmp_path / "pairs"
    args = ["collapse", "--corpus", str(corpus_file(tmp_path, tiny_texts)), "--model", "minilm"]
    assert main([*args, "--pairs", "all", "--sample", "6", "--seed", "1", "--out", str(out)]) == 0
    pairs, docs = pl.read_parquet(out / "pairs.parquet"), pl.read_parquet(out / "docs.parquet")
    summary = json.loads((out / "summary.json").read_text())
    assert pairs.columns == PAIR_COLUMNS and pairs.height == 15
    assert docs.columns == DOC_COLUMNS and docs.height == 6
    assert summary["mode"] == "pairs" and summary["n_pairs"] == 15 and summary["n_docs"] == 6
    assert summary["sample"] == 6 and summary["seed"] == 1
    assert summary["model"]["name"] == "minilm" and len(summary["model"]["weights_sha256"]) == 64
    assert abs(summary["avg_socm"] - pairs["socm"].mean()) <= mean_atol(pairs["socm"])
    assert "--pairs all" in summary["command"] and summary["token_store"]


@pytest.mark.slow
def test_knn_mode_adds_per_document_columns(tiny_texts, tmp_path):
    out = tmp_path / "knn"
    args = ["collapse", "--corpus", str(corpus_file(tmp_path, tiny_texts)), "--knn", "2", "--out", str(out)]
    assert main(args) == 0
    docs = pl.read_parquet(out / "docs.parquet")
    assert docs.columns == [*DOC_COLUMNS, *KNN_COLUMNS]
    assert docs.height == len(tiny_texts)
    assert set(docs["top_confuser"]) <= set(docs["doc_id"])
    assert pl.read_parquet(out / "pairs.parquet").height == 2 * len(tiny_texts)
    assert json.loads((out / "summary.json").read_text())["k"] == 2


@pytest.mark.slow
def test_knn_under_a_small_budget_uses_summaries_within_their_bound(tiny_texts, tmp_path):
    """``collapse --knn --memory-budget`` below the token store: shard-built rank-r summaries, no token store
    named, the error bound recorded, and every pair's SOCM within that bound of the exact run's (plus one
    Gram-route rounding per run, at the longest text and largest concentration)."""
    from test_collapse import gram_atol

    path = corpus_file(tmp_path, tiny_texts)
    assert main(["collapse", "--corpus", str(path), "--knn", "2", "--out", str(tmp_path / "exact")]) == 0
    assert main(["collapse", "--corpus", str(path), "--knn", "2", "--rank", "1", "--memory-budget", "1e-6",
                 "--out", str(tmp_path / "small")]) == 0
    summary = json.loads((tmp_path / "small" / "summary.json").read_text())
    assert summary["token_store"] is None and summary["rank"] == 1 and summary["engine"] == "local"
    bound = summary["error_bound"]["max_socm_error_bound"]
    assert bound > 0
    exact = pl.read_parquet(tmp_path / "exact" / "pairs.parquet")
    small = pl.read_parquet(tmp_path / "small" / "pairs.parquet")
    assert exact["doc_b"].to_list() == small["doc_b"].to_list()
    docs = pl.read_parquet(tmp_path / "exact" / "docs.parquet")
    width, trace = int(docs["n_tokens"].max()), float(docs["concentration"].max())
    rounding = gram_atol(width, 384, trace, trace) + gram_atol(1, 384, trace, trace)
    assert np.abs(exact["socm"].to_numpy() - small["socm"].to_numpy()).max() <= bound + rounding
