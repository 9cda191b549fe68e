"""Evaluation: metrics equal trec_eval's on the written runs; per-query rows; significance; the CLI."""

from __future__ import annotations

import json
import shutil

import numpy as np
import polars as pl
import pytest
from test_index_helpers import licence_beir, licence_bundle  # noqa: F401  (fixtures)

from rag_diag.corpora.io import load_qrels, load_queries
from rag_diag.evaluate import Ranking, evaluate_bundle, monotone_scores, per_query_rows
from rag_diag.rerank import RerankConfig

TREC_MEASURES = {"P_1": "P@1", "P_5": "P@5", "P_10": "P@10", "recall_10": "R@10", "recall_100": "R@100",
                 "ndcg_cut_10": "nDCG@10", "map": "MAP"}


@pytest.fixture(scope="module")
def evaluation(licence_bundle, licence_beir, tmp_path_factory):  # noqa: F811
    queries = load_queries(licence_beir / "queries.jsonl")
    qrels = load_qrels(licence_beir / "qrels" / "test.tsv", queries)
    out = tmp_path_factory.mktemp("eval") / "out"
    return evaluate_bundle(licence_bundle.path, queries, qrels, 10, "all", out, config=RerankConfig(depth=20))


def _read_trec(path):
    run: dict[str, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        query_id, _, doc_id, _, score, _ = line.split()
        run.setdefault(query_id, {})[doc_id] = float(score)
    return run


@pytest.mark.slow
def test_metrics_equal_trec_eval(evaluation):
    import pytrec_eval

    qrels: dict[str, dict[str, int]] = {}
    for line in (evaluation.path / "qrels.tsv").read_text().splitlines()[1:]:
        query_id, doc_id, score = line.split("\t")
        qrels.setdefault(query_id, {})[doc_id] = int(score)
    metrics = json.loads((evaluation.path / "metrics.json").read_text())["metrics"]
    assert set(metrics) == {"mean", "cls", "max", "mean+std", "sketch", "power", "sif", "last",
                            "rerank-maxsim", "rerank-w2", "rerank-blend", "rerank-hybrid"}
    for name, ours in metrics.items():
        run = _read_trec(evaluation.path / "runs" / f"{name}.trec")
        evaluator = pytrec_eval.RelevanceEvaluator(qrels, {"P.1,5,10", "recall.10,100", "ndcg_cut.10", "map"})
        scores = evaluator.evaluate(run)
        for measure, key in TREC_MEASURES.items():
            expected = np.mean([scores[q][measure] for q in qrels])
            assert ours[key] == pytest.approx(expected, abs=1e-9), (name, key)
        top10 = {q: dict(sorted(docs.items(), key=lambda kv: -kv[1])[:10]) for q, docs in run.items()}
        reciprocal = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
        assert ours["MRR@10"] == pytest.approx(np.mean([reciprocal[q]["recip_rank"] for q in qrels]), abs=1e-9)
        assert 0.0 <= ours["context_precision"] <= 1.0 and 0.0 <= ours["context_recall"] <= 1.0


@pytest.mark.slow
def test_outputs_and_per_query_table(evaluation):
    summary = json.loads((evaluation.path / "metrics.json").read_text())
    assert summary["k"] == 10 and summary["token_store"] and summary["corpus"].endswith("corpus.jsonl")
    assert summary["model"]["name"] == "minilm"
    test = summary["significance"]["rerank-maxsim"]["P@1"]
    assert {"p_value", "corrected_p_value", "effect_size", "significant"} <= set(test)
    assert "mean" not in summary["significance"]
    table = pl.read_parquet(evaluation.path / "per_query.parquet")
    assert table.columns == ["query_id", "strategy", "first_relevant_rank", "first_relevant_id", "relevant_score",
                             "top_doc", "top_score", "confuser", "confuser_score", "n_relevant"]
    assert table.height == 18 * 12
    at_one = table.filter(pl.col("first_relevant_rank") == 1)
    assert at_one["confuser"].null_count() == at_one.height
    later = table.filter(pl.col("first_relevant_rank") > 1)
    assert (later["confuser"] == later["top_doc"]).all()
    mean = table.filter(pl.col("strategy") == "mean")
    assert mean["top_score"].max() <= 1.0 + 1e-6
    lines = (evaluation.path / "runs" / "mean.trec").read_text().splitlines()
    assert len(lines) == 18 * 60 and lines[0].split()[1] == "Q0"


def test_confuser_is_best_non_relevant_above_first_relevant():
    from rag_diag.corpora.io import Qrels

    qrels = Qrels({"q": {"b": 1, "c": 1}})
    ranking = Ranking(["a", "x", "b", "c"], np.array([0.9, 0.8, 0.7, 0.6]))
    (row,) = per_query_rows("mean", {"q": ranking}, qrels)
    assert (row["first_relevant_rank"], row["confuser"], row["confuser_score"]) == (3, "a", 0.9)
    (missing,) = per_query_rows("mean", {"q": Ranking(["a"], np.array([0.5]))}, qrels)
    assert missing["first_relevant_rank"] is None and missing["confuser"] == "a"


def test_monotone_scores_break_ties_in_rank_order():
    adjusted = monotone_scores(np.array([0.5, 0.5, 0.5, 0.2]))
    assert (np.diff(adjusted.astype(np.float32)) < 0).all()
    assert adjusted[0] == 0.5 and adjusted[3] == pytest.approx(0.2, abs=1e-7)


@pytest.mark.slow
def test_cli_end_to_end(licence_beir, tmp_path):  # noqa: F811
    from rag_diag.cli import main

    index_dir, eval_dir = tmp_path / "idx", tmp_path / "eval"
    assert main(["index", "--corpus", str(licence_beir), "--model", "minilm", "--pooling", "mean,mean+std",
                 "--index-type", "hnsw", "--out", str(index_dir)]) == 0
    assert (index_dir / "langchain" / "index.pkl").is_file()
    assert main(["evaluate", "--index", str(index_dir), "--queries", str(licence_beir / "queries.jsonl"),
                 "--qrels", str(licence_beir / "qrels" / "test.tsv"), "--rerank", "maxsim",
                 "--out", str(eval_dir)]) == 0
    summary = json.loads((eval_dir / "metrics.json").read_text())
    assert set(summary["metrics"]) == {"mean", "mean+std", "rerank-maxsim"}
    assert summary["command"].startswith("rag-diag") or "evaluate" in summary["command"]


@pytest.mark.slow
def test_mismatched_model_and_dimension_are_refused(licence_bundle, licence_beir, tmp_path, capsys):  # noqa: F811
    from rag_diag.cli import main

    args = ["evaluate", "--queries", str(licence_beir / "queries.jsonl"),
            "--qrels", str(licence_beir / "qrels" / "test.tsv"), "--out", str(tmp_path / "eval")]
    assert main([*args, "--index", str(licence_bundle.path), "--model", "random-minilm"]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: ") and "random-minilm" in message and "\n" not in message

    copy = tmp_path / "copy"
    shutil.copytree(licence_bundle.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "dim": 768}))
    assert main([*args, "--index", str(copy)]) == 2
    message = capsys.readouterr().err.strip()
    assert "dimension 768" in message and "\n" not in message
    assert not (tmp_path / "eval").exists()
