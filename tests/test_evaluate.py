"""Evaluation: metrics equal trec_eval's (pytrec_eval) on the written runs and qrels; per-query rows;
significance against a brute-force sign-flip enumeration; the written folder opens back; the CLI.

Fast tests evaluate an index bundle built with the deterministic MockEncoder (the model is not the
point); the slow ones repeat the trec_eval check with the real MiniLM and drive the CLI.
"""

from __future__ import annotations

import itertools
import json
import shlex
import shutil

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_index_helpers import licence_beir  # noqa: F401  (fixture)

from rag_diag.corpora.io import load_beir
from rag_diag.corpora.trec import read_trec_run
from rag_diag.errors import RagDiagError
from rag_diag.evaluation.evaluate import RANX_ID_WIDTH, evaluate_bundle, per_query_rows, ranx_codes, ranx_per_query
from rag_diag.evaluation.result import PER_QUERY_SCHEMA, EvalResult, Ranking, monotone_scores
from rag_diag.retrieval.rerank import RerankConfig

STRATEGIES = "mean,max,mean+std"
RERANKERS = "maxsim,w2"
RUN_NAMES = {"mean", "max", "mean+std", "rerank-maxsim", "rerank-w2"}
TREC_MEASURES = {"P_1": "P@1", "P_5": "P@5", "P_10": "P@10", "recall_10": "R@10", "recall_100": "R@100",
                 "ndcg_cut_10": "nDCG@10", "map": "MAP", "success_10": "hit@10"}
# ranx and trec_eval add the same double-precision terms per query, in different orders: ≤ ~1e-15 per
# query and ≤ 20 queries, so 1e-9 is a generous bound on the difference of the means.
METRIC_TOL = 1e-9


@pytest.fixture(scope="module")
def mock_encoder():
    from rag_diag.models.mock import MockEncoder

    return MockEncoder(max_seq_length=128)


@pytest.fixture(scope="module")
def mock_bundle(licence_beir, mock_encoder):  # noqa: F811
    from rag_diag.retrieval.bundle import build_indexes

    corpus, _, _ = load_beir(licence_beir)
    return build_indexes(corpus, model=mock_encoder, strategies=STRATEGIES)  # in memory


@pytest.fixture(scope="module")
def mock_evaluation(licence_beir, mock_bundle, mock_encoder, tmp_path_factory):  # noqa: F811
    _, queries, qrels = load_beir(licence_beir)
    result = evaluate_bundle(mock_bundle, queries, qrels, k=10, rerankers=RERANKERS, model=mock_encoder,
                             config=RerankConfig(depth=20), command="test-command")
    return result.write(tmp_path_factory.mktemp("eval") / "out")


def _qrels(path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for line in path.read_text().splitlines()[1:]:
        query_id, doc_id, score = line.split("\t")
        qrels.setdefault(query_id, {})[doc_id] = int(score)
    return qrels


def trec_eval_per_query(folder) -> dict[str, dict[str, dict[str, float]]]:
    """{run: {query: {measure: value}}} by pytrec_eval on the written runs and qrels (MRR on the top 10)."""
    import pytrec_eval

    qrels = _qrels(folder / "qrels.tsv")
    measures = {"P.1,5,10", "recall.10,100", "ndcg_cut.10", "map", "success.10"}
    values = {}
    for path in sorted((folder / "runs").glob("*.trec")):
        run = read_trec_run(path)
        scores = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
        top10 = {q: dict(sorted(docs.items(), key=lambda kv: -kv[1])[:10]) for q, docs in run.items()}
        reciprocal = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
        values[path.stem] = {q: {**scores[q], "recip_rank_10": reciprocal[q]["recip_rank"]} for q in qrels}
    return values


def check_against_trec_eval(result: EvalResult) -> None:
    per_query = trec_eval_per_query(result.path)
    assert set(per_query) == set(result.metrics)
    for name, ours in result.metrics.items():
        queries = per_query[name]
        for measure, key in TREC_MEASURES.items():
            expected = np.mean([values[measure] for values in queries.values()])
            assert ours[key] == pytest.approx(expected, abs=METRIC_TOL), (name, key)
        expected_mrr = np.mean([values["recip_rank_10"] for values in queries.values()])
        assert ours["MRR@10"] == pytest.approx(expected_mrr, abs=METRIC_TOL), name
        # ragas' ID-based context precision / recall at k = 10 are P@10 and R@10 of the same top 10
        assert ours["context_precision"] == pytest.approx(ours["P@10"], abs=METRIC_TOL), name
        assert ours["context_recall"] == pytest.approx(ours["R@10"], abs=METRIC_TOL), name


# ---------------------------------------------------------------------------------------------- metrics


def test_metrics_equal_trec_eval(mock_evaluation):
    assert set(mock_evaluation.metrics) == RUN_NAMES
    check_against_trec_eval(mock_evaluation)


def brute_force_p(differences: np.ndarray) -> float:
    """Two-sided sign-flip p over every sign pattern of the non-zero differences (itertools, no library)."""
    nonzero = [d for d in differences if d != 0]
    if len(nonzero) < 2:
        return 1.0
    observed = abs(sum(nonzero))
    # the differences are P@1 differences (±1): every sum is an exact small integer; 1e-12 only guards rounding
    hits = sum(abs(sum(s * d for s, d in zip(signs, nonzero, strict=True))) >= observed - 1e-12
               for signs in itertools.product((1, -1), repeat=len(nonzero)))
    return hits / 2 ** len(nonzero)


def holm(p_values: dict[str, float]) -> dict[str, float]:
    ordered = sorted(p_values.items(), key=lambda kv: kv[1])
    adjusted, running = {}, 0.0
    for position, (name, p) in enumerate(ordered):
        running = max(running, min(1.0, (len(ordered) - position) * p))
        adjusted[name] = running
    return adjusted


def test_significance_is_an_exact_sign_flip_test_with_holm(mock_evaluation):
    """P@1 differs on ≤ 16 queries per strategy (18 queries): the library's p is exact, so equal to ours."""
    per_query = trec_eval_per_query(mock_evaluation.path)
    queries = sorted(per_query["mean"])
    baseline = np.array([per_query["mean"][q]["P_1"] for q in queries])
    raw = {}
    for name in RUN_NAMES - {"mean"}:
        differences = np.array([per_query[name][q]["P_1"] for q in queries]) - baseline
        test = mock_evaluation.significance[name]["P@1"]
        assert test["n_nonzero"] == int(np.count_nonzero(differences)) <= 16
        raw[name] = brute_force_p(differences)
        # a count of sign patterns over 2^n: both sides are the same exact ratio
        assert test["p_value"] == pytest.approx(raw[name], abs=1e-12), name
        assert test["effect_size"] == pytest.approx(differences.mean(), abs=1e-12), name  # mean of 0/±1 values
    for name, adjusted in holm(raw).items():
        test = mock_evaluation.significance[name]["P@1"]
        assert test["corrected_p_value"] == pytest.approx(adjusted, abs=1e-12)  # products of exact ratios
        assert test["significant"] == (adjusted < 0.05)
    assert "mean" not in mock_evaluation.significance


# ---------------------------------------------------------------------------------------------- artefacts


def test_outputs_and_per_query_table(mock_evaluation, mock_encoder):
    manifest = mock_evaluation.manifest
    assert manifest["k"] == 10 and manifest["n_queries"] == 18 and manifest["command"] == "test-command"
    assert manifest["model"] == mock_encoder.identity and manifest["corpus_sha256"]
    assert manifest["rerank"]["depth"] == 20
    table = pl.read_parquet(mock_evaluation.path / "per_query.parquet")
    assert set(PER_QUERY_SCHEMA) <= set(table.columns)
    assert table.height == 18 * len(RUN_NAMES)
    at_one = table.filter(pl.col("first_relevant_rank") == 1)
    assert at_one["confuser"].null_count() == at_one.height
    later = table.filter(pl.col("first_relevant_rank") > 1)
    assert later.height > 0 and (later["confuser"] == later["top_doc"]).all()
    per_query = trec_eval_per_query(mock_evaluation.path)
    for row in table.iter_rows(named=True):  # rank 1 ⇔ trec_eval's P@1 = 1 for that query and run
        assert (row["first_relevant_rank"] == 1) == (per_query[row["strategy"]][row["query_id"]]["P_1"] == 1.0)
    mean = table.filter(pl.col("strategy") == "mean")
    # cosines of float32 unit vectors: a d-term float32 dot product is off by ≤ (d + 2)·eps32
    from rag_diag.models.mock import MockEncoder

    assert mean["top_score"].max() <= 1.0 + (MockEncoder().dim + 2) * float(np.finfo(np.float32).eps)
    lines = (mock_evaluation.path / "runs" / "mean.trec").read_text().splitlines()
    assert len(lines) == 18 * 60 and lines[0].split()[1] == "Q0"


def test_written_folder_opens_back(mock_evaluation):
    again = EvalResult.open(mock_evaluation.path)
    assert again.metrics == mock_evaluation.metrics and again.significance == mock_evaluation.significance
    assert again.per_query.equals(mock_evaluation.per_query)
    assert again.qrels.judgements == mock_evaluation.qrels.judgements
    for name, run in mock_evaluation.runs.items():
        for query_id, ranking in run.items():
            opened = again.runs[name][query_id]
            assert opened.doc_ids == ranking.doc_ids
            # runs are written monotone-adjusted (float32 steps), with repr: they read back exactly
            assert opened.scores.tolist() == monotone_scores(ranking.scores).tolist()


def test_another_encoder_is_refused(licence_beir, mock_bundle):  # noqa: F811
    from rag_diag.models.mock import MockEncoder

    _, queries, qrels = load_beir(licence_beir)
    with pytest.raises(RagDiagError, match="dimension 8"):
        evaluate_bundle(mock_bundle, queries, qrels, model=MockEncoder(dim=8))
    # same dimension, another identity (no weights hash to compare): still another model
    with pytest.raises(RagDiagError, match="rebuild the index or pass its model"):
        evaluate_bundle(mock_bundle, queries, qrels, model=MockEncoder(max_seq_length=128, name="other"))


def test_judged_document_outside_the_index_is_refused(licence_beir, mock_bundle):  # noqa: F811
    from rag_diag.corpora.io import Qrels

    _, queries, _ = load_beir(licence_beir)
    qrels = Qrels({queries.ids[0]: {"not-indexed": 1}})
    with pytest.raises(RagDiagError, match="not-indexed"):
        evaluate_bundle(mock_bundle, queries, qrels)


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
    # 0.2 is not a float32: the adjusted value is float32(0.2), within half a float32 ulp (≈ 7.5e-9)
    assert adjusted[0] == 0.5 and adjusted[3] == pytest.approx(0.2, abs=1e-8)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.dictionaries(st.text(min_size=1, max_size=40), st.integers(0, 3), max_size=6), max_size=4))
def test_ranx_codes_have_one_width_and_sort_as_the_ids(per_query):
    judged = {f"q{i}": judgements for i, judgements in enumerate(per_query)}
    code = ranx_codes(judged)
    ids = sorted(code)
    assert ids == sorted({doc_id for judgements in per_query for doc_id in judgements})
    assert all(len(code[doc_id]) == RANX_ID_WIDTH and code[doc_id].isdigit() for doc_id in ids)
    assert [code[doc_id] for doc_id in ids] == sorted(code.values())  # order kept, so also one code per id
    assert len(set(code.values())) == len(ids)


def test_ranx_metrics_do_not_depend_on_id_lengths():
    """The hand example: the relevant document second of three, under short and long ids alike."""
    from rag_diag.corpora.io import Qrels

    for first, relevant in (("a", "b"), ("x" * 91, "y")):
        run = {"q": Ranking([first, relevant, "c"], np.array([0.9, 0.8, 0.7]))}
        values = ranx_per_query(Qrels({"q": {relevant: 1}}), run, "mean", 10)
        assert (values["P@1"][0], values["MRR@10"][0], values["hit@10"][0]) == (0.0, 0.5, 1.0)
        assert values["nDCG@10"][0] == pytest.approx(1 / np.log2(3), abs=1e-15)


# ---------------------------------------------------------------------------------------------- real model


@pytest.fixture(scope="module")
def minilm_bundle(licence_beir, minilm, tmp_path_factory):  # noqa: F811
    from rag_diag.retrieval.bundle import build_indexes

    corpus, _, _ = load_beir(licence_beir)
    return build_indexes(corpus, model=minilm, strategies="mean,mean+std").write(tmp_path_factory.mktemp("b") / "idx")


@pytest.mark.slow
def test_real_model_metrics_equal_trec_eval(minilm_bundle, licence_beir, tmp_path):  # noqa: F811
    _, queries, qrels = load_beir(licence_beir)
    result = evaluate_bundle(minilm_bundle, queries, qrels, rerankers="maxsim").write(tmp_path / "eval")
    assert set(result.metrics) == {"mean", "mean+std", "rerank-maxsim"}
    assert result.manifest["model"]["name"] == "minilm" and result.manifest["model"]["weights_sha256"]
    check_against_trec_eval(result)
    # real licence notices with the real model: far better than chance (1 relevant label of 6)
    assert result.metrics["mean"]["P@1"] > 0.5


@pytest.mark.slow
def test_cli_end_to_end(licence_beir, tmp_path):  # noqa: F811
    from rag_diag.cli import main
    from rag_diag.stores.langchain import load_langchain_store

    index_dir, eval_dir = tmp_path / "idx", tmp_path / "eval"
    assert main(["index", "--corpus", str(licence_beir), "--model", "minilm", "--pooling", "mean,mean+std",
                 "--index-type", "hnsw", "--out", str(index_dir)]) == 0
    export = index_dir / "langchain"  # the mean index exported inside the bundle folder
    _, doc_ids, _, _ = load_langchain_store(export)
    assert doc_ids == load_beir(licence_beir)[0].ids
    assert main(["evaluate", "--index", str(index_dir), "--queries", str(licence_beir / "queries.jsonl"),
                 "--qrels", str(licence_beir / "qrels" / "test.tsv"), "--rerank", "maxsim",
                 "--out", str(eval_dir)]) == 0
    summary = json.loads((eval_dir / "metrics.json").read_text())
    assert set(summary["metrics"]) == {"mean", "mean+std", "rerank-maxsim"}
    words = shlex.split(summary["command"])
    assert words[:2] == ["rag-diag", "evaluate"]
    assert words[words.index("--index") + 1] == str(index_dir) and words[words.index("--rerank") + 1] == "maxsim"
    check_against_trec_eval(EvalResult.open(eval_dir))


@pytest.mark.slow
def test_mismatched_model_and_dimension_are_refused(minilm_bundle, licence_beir, tmp_path, capsys):  # noqa: F811
    from rag_diag.cli import main

    args = ["evaluate", "--queries", str(licence_beir / "queries.jsonl"),
            "--qrels", str(licence_beir / "qrels" / "test.tsv"), "--out", str(tmp_path / "eval")]
    assert main([*args, "--index", str(minilm_bundle.path), "--model", "random-minilm"]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: ") and "random-minilm" in message and "\n" not in message

    copy = tmp_path / "copy"
    shutil.copytree(minilm_bundle.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "dim": 768}))
    assert main([*args, "--index", str(copy)]) == 2
    message = capsys.readouterr().err.strip()
    assert "dimension 768" in message and "\n" not in message
    assert not (tmp_path / "eval").exists()


def test_ragas_scores_count_a_query_with_nothing_retrieved_as_zero():
    """ragas scores an empty retrieval NaN; averaged with it left out, precision would be over fewer queries than
    every ranx metric. Hand values: q1 retrieves [d1 relevant, d2] → precision 1/2, recall 1/1; q2 nothing → 0, 0."""
    from rag_diag.corpora.io import Qrels
    from rag_diag.evaluation.evaluate import ragas_context_scores

    run = {"q1": Ranking(["d1", "d2"], np.array([2.0, 1.0])), "q2": Ranking([], np.array([]))}
    scores = ragas_context_scores(Qrels({"q1": {"d1": 1}, "q2": {"d3": 1}}), run, 10)
    assert scores == pytest.approx({"context_precision": 0.25, "context_recall": 0.5}, abs=1e-12)


def test_dense_ties_are_ordered_by_document_id(mock_encoder):
    """Exact duplicates tie; their order must not be FAISS's. Two twin pairs, one with the smaller id at the lower
    row and one at the higher row, so whatever order FAISS gives ties, one pair would come out of id order."""
    from rag_diag.corpora.io import Corpus
    from rag_diag.evaluation.evaluate import retrieve
    from rag_diag.retrieval.bundle import build_indexes
    from rag_diag.tokens.extract import encode_texts

    texts = ["the gnu general public license version two", "apache license version two point zero"]
    corpus = Corpus(ids=["a-gpl", "z-apache", "other", "b-gpl", "c-apache"],
                    texts=[texts[0], texts[1], "a text about something else", texts[0], texts[1]])
    bundle = build_indexes(corpus, model=mock_encoder, strategies="mean")
    queries = encode_texts(texts, model=mock_encoder, ids=["q-gpl", "q-apache"])
    run = retrieve(bundle, "mean", queries, 5, "cpu")
    for query_id, twins in (("q-gpl", ["a-gpl", "b-gpl"]), ("q-apache", ["c-apache", "z-apache"])):
        ranking = run[query_id]
        assert ranking.scores[0] == ranking.scores[1] and ranking.doc_ids[:2] == twins
        assert list(ranking.scores) == sorted(ranking.scores, reverse=True)
