"""diagnose on a constructed licence knowledge base whose confusers are known.

The evaluation and the kNN collapse table are built in memory by hand: the collapse table from an
independent float64 reference (numpy SVD of ABᵀ, not the library's Gram-eigenvalue route), so the
test checks :mod:`rag_diag.diagnosis` against numbers it did not compute. One pair is left out of the
table on purpose: diagnose must compute it on the token store (rag_diag.collapse.socm.pair_socm).

Token stores: the deterministic MockEncoder for the fast tests; the real MiniLM for the slow
integration run of the same checks.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score
from test_collapse import gram_atol, svd_oracle_atol

from rag_diag.cli import main
from rag_diag.collapse.table import CollapseTable
from rag_diag.corpora.io import Corpus, Qrels, Queries
from rag_diag.corpora.writers import write_beir
from rag_diag.diagnosis.diagnose import Diagnosis, diagnose
from rag_diag.diagnosis.verdict import FAILURE_RATE_ADEQUATE, FAILURE_RATE_UNSUITABLE, HIGH_SOCM_QUANTILE, judge
from rag_diag.errors import RagDiagError
from rag_diag.evaluation.result import PER_QUERY_SCHEMA, EvalResult

GPL = ("This program is free software; you can redistribute it and/or modify it under the terms of the GNU "
       "General Public License as published by the Free Software Foundation; either version {v} of the "
       "License{tail}.")
LGPL = ("This library is free software; you can redistribute it and/or modify it under the terms of the GNU "
        "Lesser General Public License as published by the Free Software Foundation; either version {v} of "
        "the License, or (at your option) any later version.")
DOCS = {
    "gpl2+": (GPL.format(v="2", tail=", or (at your option) any later version"), "gpl-2.0-plus"),
    "gpl3+": (GPL.format(v="3", tail=", or (at your option) any later version"), "gpl-3.0-plus"),
    "gpl2": (GPL.format(v="2", tail=""), "gpl-2.0"),
    "lgpl21+": (LGPL.format(v="2.1"), "lgpl-2.1-plus"),
    "lgpl2+": (LGPL.format(v="2"), "lgpl-2.0-plus"),
    "apache": ("Licensed under the Apache License, Version 2.0 (the License); you may not use this file "
               "except in compliance with the License.", "apache-2.0"),
    "mit": ("Permission is hereby granted, free of charge, to any person obtaining a copy of this software "
            "and associated documentation files, to deal in the Software without restriction.", "mit"),
    "bsd": ("Redistribution and use in source and binary forms, with or without modification, are "
            "permitted provided that the following conditions are met.", "bsd-new"),
}
# query -> (relevant, rank of relevant or None, confuser per the evaluator)
RUNS = {
    "q-gpl2+": ("gpl2+", 2, "gpl3+"),
    "q-lgpl21+": ("lgpl21+", 3, "lgpl2+"),
    "q-gpl2": ("gpl2", None, None),
    "q-apache": ("apache", 1, None),
    "q-mit": ("mit", 1, None),
    "q-bsd": ("bsd", 1, None),
    "q-gpl3+": ("gpl3+", 1, None),
}
FAILED = {"q-gpl2+", "q-lgpl21+", "q-gpl2"}
UNRETRIEVED_TOP = "gpl2+"  # the top document of q-gpl2, whose relevant document was not retrieved
KNN = 3
DROPPED_PAIR = ("lgpl2+", "lgpl21+")  # left out of the pair table: diagnose must compute it

# The library computes the dropped pair by the Gram route, the reference by numpy's SVD: the two differ by at
# most the sum of their rounding bounds (test_collapse.gram_atol and svd_oracle_atol) at the pair's longest
# text and normalised traces (KB.computed_tol).
REFERENCE_ORDER_TOL = 1e-12
"""Table rows and ``kb.ref`` are the same float64 reference evaluated with the pair in either order (ABᵀ
or BAᵀ; LAPACK's SVD of a matrix and of its transpose round differently). Each term is O(1) and its
rounding is bounded by ~n·ε·(‖A‖²_F + ‖B‖²_F) with n ≤ 256 tokens: ≈ 256·2.2e-16·O(1) < 1e-13."""


# ------------------------------------------------------------------------- independent float64 reference


@dataclass(frozen=True)
class Reference:
    d_mu: float
    d_sigma: float
    socm: float
    cos: float


def _normalised(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = tokens.astype(np.float64)
    x = x / max(np.linalg.norm(x.mean(axis=0)), 1e-12)  # the definition's guard (MEAN_EPS), not a tolerance
    mu = x.mean(axis=0)
    return mu, (x - mu) / np.sqrt(len(x))


def reference_pair(x1: np.ndarray, x2: np.ndarray) -> Reference:
    """BW² = ‖A‖²_F + ‖B‖²_F − 2‖ABᵀ‖_* (numpy SVD), d_Σ = BW²/4, d_μ = ‖μ1 − μ2‖²/4, SOCM = (1 − d_μ)·d_Σ."""
    mu1, a = _normalised(x1)
    mu2, b = _normalised(x2)
    bw2 = max((a**2).sum() + (b**2).sum() - 2 * np.linalg.svd(a @ b.T, compute_uv=False).sum(), 0.0)
    d_mu = float(((mu1 - mu2) ** 2).sum() / 4)
    d_sigma = float(bw2 / 4)
    return Reference(d_mu, d_sigma, (1 - d_mu) * d_sigma, float(mu1 @ mu2))


def concentration(tokens: np.ndarray) -> float:
    x = tokens.astype(np.float64)
    mu = x.mean(axis=0)
    return float(((x - mu) ** 2).sum(axis=1).mean() / (mu @ mu))


# ------------------------------------------------------------------------- the knowledge base


@dataclass
class KB:
    store: object
    corpus: Corpus
    queries: Queries
    evaluation: EvalResult
    collapse: CollapseTable

    def ref(self, a: str, b: str) -> Reference:
        index = {doc_id: i for i, doc_id in enumerate(self.store.doc_ids)}
        return reference_pair(self.store.tokens(index[a]), self.store.tokens(index[b]))

    def computed_tol(self, a: str, b: str) -> float:
        """Gram route vs the SVD reference on the pair (a, b): the sum of the two routes' rounding bounds."""
        index = {doc_id: i for i, doc_id in enumerate(self.store.doc_ids)}
        x1, x2 = self.store.tokens(index[a]), self.store.tokens(index[b])
        width, dim, c1, c2 = max(len(x1), len(x2)), x1.shape[1], concentration(x1), concentration(x2)
        return gram_atol(width, dim, c1, c2) + svd_oracle_atol(width, dim, c1, c2)


def licence_corpus() -> tuple[Corpus, Queries, Qrels]:
    ids = list(DOCS)
    corpus = Corpus(ids=ids, texts=[DOCS[i][0] for i in ids], metadata=[{"label": DOCS[i][1]} for i in ids])
    queries = Queries(ids=list(RUNS), texts=[f"licence notice {relevant}" for relevant, _, _ in RUNS.values()])
    return corpus, queries, Qrels({q: {relevant: 1} for q, (relevant, _, _) in RUNS.items()})


def encode(model, folder: Path):
    from rag_diag.tokens.extract import encode_texts

    corpus, _, _ = licence_corpus()
    return encode_texts(corpus.texts, model=model, ids=corpus.ids, out=folder, cache=False)


def build_collapse(store, corpus_sha256: str, drop: tuple[str, str] | None = DROPPED_PAIR) -> CollapseTable:
    """A kNN collapse table (k = KNN by mean cosine) from the reference maths."""
    ids = store.doc_ids
    means = store.means().astype(np.float64)
    unit = means / np.linalg.norm(means, axis=1, keepdims=True)
    cosine = unit @ unit.T
    np.fill_diagonal(cosine, -np.inf)
    pairs, per_doc = [], {i: [] for i in range(len(ids))}
    for i in range(len(ids)):
        for j in np.argsort(-cosine[i], kind="stable")[:KNN]:
            ref = reference_pair(store.tokens(i), store.tokens(int(j)))
            per_doc[i].append((ref.socm, ids[int(j)]))
            if drop is None or {ids[i], ids[int(j)]} != set(drop):
                pairs.append({"doc_a": ids[i], "doc_b": ids[int(j)], "d_mu": ref.d_mu, "d_sigma": ref.d_sigma,
                              "socm": ref.socm, "cos": ref.cos})
    docs = pl.DataFrame([{
        "doc_id": ids[i], "n_tokens": int(store.lengths[i]), "concentration": concentration(store.tokens(i)),
        "trace": 0.0, "collapse_mean": float(np.mean([s for s, _ in per_doc[i]])),
        "collapse_max": float(max(s for s, _ in per_doc[i])), "top_confuser": max(per_doc[i])[1],
    } for i in range(len(ids))])
    summary = {"model": store.manifest["model"], "mode": "knn", "n_docs": len(ids), "n_pairs": len(pairs),
               "k": KNN, "token_store": str(store.path), "layer": store.layers[-1], "drop_special": False,
               "corpus_sha256": corpus_sha256, "command": "rag-diag collapse --knn 3"}
    return CollapseTable(summary=summary, docs=docs, pairs=pl.DataFrame(pairs))


def build_evaluation(model: dict, corpus: Corpus, runs: dict = RUNS, source: str = "") -> EvalResult:
    """metrics manifest and per-query rows of ``mean`` (from ``runs``) and of a perfect ``mean+std``."""
    rows = []
    for query_id, (relevant, rank, confuser) in runs.items():
        rows.append({
            "query_id": query_id, "strategy": "mean", "first_relevant_rank": rank,
            "first_relevant_id": relevant if rank is not None else None, "relevant_score": 0.9,
            "top_doc": relevant if rank == 1 else (confuser or UNRETRIEVED_TOP), "top_score": 0.95,
            "confuser": confuser, "confuser_score": 0.95 if confuser else None, "n_relevant": 1,
        })
        rows.append({**rows[-1], "strategy": "mean+std", "first_relevant_rank": 1, "first_relevant_id": relevant,
                     "confuser": None, "confuser_score": None})
    metrics = {name: {"P@1": p1, "MRR@10": p1, "nDCG@10": p1} for name, p1 in (("mean", 0.6), ("mean+std", 1.0))}
    manifest = {
        "metrics": metrics, "k": 100, "model": model, "index": "flat", "corpus": source,
        "corpus_sha256": corpus.content_hash(), "token_store": None,
        "command": "rag-diag evaluate --strategies mean,mean+std",
        "significance": {"mean+std": {"nDCG@10": {"p_value": 0.01, "corrected_p_value": 0.02,
                                                  "effect_size": 0.5, "significant": True}}},
    }
    qrels = Qrels({q: {relevant: 1} for q, (relevant, _, _) in runs.items()})
    return EvalResult(manifest, pl.DataFrame(rows, schema=PER_QUERY_SCHEMA), {}, qrels)


def make_kb(store, runs: dict = RUNS, drop: tuple[str, str] | None = DROPPED_PAIR) -> KB:
    corpus, queries, _ = licence_corpus()
    evaluation = build_evaluation(store.manifest["model"], corpus, runs)
    return KB(store, corpus, queries, evaluation, build_collapse(store, corpus.content_hash(), drop))


@pytest.fixture(scope="module")
def mock_licence_store(tmp_path_factory):
    from rag_diag.models.mock import MockEncoder

    return encode(MockEncoder(max_seq_length=64), tmp_path_factory.mktemp("mock-licences") / "store")


@pytest.fixture(scope="module", params=["mock", pytest.param("minilm", marks=pytest.mark.slow)])
def kb(request, mock_licence_store, tmp_path_factory) -> KB:
    if request.param == "mock":
        return make_kb(mock_licence_store)
    minilm = request.getfixturevalue("minilm")
    return make_kb(encode(minilm, tmp_path_factory.mktemp("minilm-licences") / "store"))


@pytest.fixture(scope="module")
def diagnosed(kb) -> Diagnosis:
    # no token_store argument: the dropped pair is computed on the store the collapse summary names
    return diagnose(kb.evaluation, kb.collapse, corpus=kb.corpus, queries=kb.queries)


@pytest.fixture
def mock_kb(mock_licence_store) -> KB:
    return make_kb(mock_licence_store)


# ------------------------------------------------------------------------- tests


def test_names_the_confuser_and_its_socm(diagnosed, kb):
    failures = {row["query_id"]: row for row in diagnosed.failures.iter_rows(named=True)}
    assert set(failures) == FAILED
    for query_id, row in failures.items():
        relevant, rank, confuser = RUNS[query_id]
        assert row["relevant_id"] == relevant and row["relevant_rank"] == rank
        assert row["confuser_id"] == (confuser or UNRETRIEVED_TOP)
        ref = kb.ref(relevant, row["confuser_id"])
        # table rows are our own reference numbers (up to the pair's order); the dropped pair is the library's
        tol = REFERENCE_ORDER_TOL if row["pair_source"] == "pairs" else kb.computed_tol(relevant, row["confuser_id"])
        for stat in ("socm", "d_mu", "d_sigma", "cos"):
            assert row[stat] == pytest.approx(getattr(ref, stat), abs=tol), (query_id, stat)
        assert row["labels_differ"] is True
        assert row["relevant_label"] == DOCS[relevant][1] and row["confuser_label"] == DOCS[row["confuser_id"]][1]
    assert failures["q-lgpl21+"]["pair_source"] == "computed"
    assert failures["q-gpl2+"]["pair_source"] == "pairs"
    assert diagnosed.summary["n_pairs_computed"] >= 1


def test_failure_rows_carry_both_documents_statistics(diagnosed, kb):
    docs = kb.collapse.docs
    row = diagnosed.failures.filter(pl.col("query_id") == "q-gpl2+").row(0, named=True)
    for role, doc_id in (("relevant", "gpl2+"), ("confuser", "gpl3+")):
        expected = docs.filter(pl.col("doc_id") == doc_id).row(0, named=True)
        for stat in ("collapse_mean", "collapse_max", "concentration"):
            assert row[f"{role}_{stat}"] == expected[stat]  # copied from the table, not recomputed
    threshold = float(np.quantile(kb.collapse.pairs["socm"].to_numpy(), HIGH_SOCM_QUANTILE))
    assert diagnosed.summary["high_socm_threshold"]["value"] == threshold
    for failure in diagnosed.failures.iter_rows(named=True):
        assert failure["high_socm"] == (failure["socm"] >= threshold)


def test_corpus_statistics_match_sklearn(diagnosed, kb):
    queries = diagnosed.queries
    failed = queries["failed"].to_numpy()
    assert {q for q, f in zip(queries["query_id"], failed, strict=True) if f} == FAILED
    rates = dict(zip(kb.collapse.docs["doc_id"], kb.collapse.docs["collapse_mean"], strict=True))
    assert queries["relevant_collapse_mean"].to_list() == [rates[r] for r in queries["relevant_id"]]
    summary = diagnosed.summary
    assert summary["n_queries"] == len(RUNS) and summary["n_failures"] == len(FAILED)
    for key, column in (("collapse", "relevant_collapse_mean"), ("cos_nn", "relevant_cos_nn")):
        expected = roc_auc_score(failed, queries[column].to_numpy())
        # both are the Mann–Whitney ratio of the same ranks: exact up to float rounding (~1e-16)
        assert summary[key]["auroc"]["auroc"] == pytest.approx(expected, abs=1e-12)
    assert sum(row["n_queries"] for row in summary["deciles"]) == len(RUNS)
    assert sum(row["n_failures"] for row in summary["deciles"]) == len(FAILED)


def test_verdict_follows_from_evidence_computed_here(diagnosed, kb):
    from math import comb

    summary = diagnosed.summary
    rate = len(FAILED) / len(RUNS)  # 3/7 ≈ 0.43: above 0.10 and above 0.30
    assert summary["failure_rate"] == rate
    verdict = summary["verdict"]
    # by the rule: not adequate (3/7 > 0.10); at 3/7 ≥ 0.30 unsuitable exactly when collapse is implicated
    assert verdict["label"] == ("unsuitable" if verdict["collapse_implicated"] else "at risk")
    threshold = float(np.quantile(kb.collapse.pairs["socm"].to_numpy(), HIGH_SOCM_QUANTILE))
    named = [(RUNS[q][0], RUNS[q][2] or UNRETRIEVED_TOP) for q in FAILED]
    pairs = [kb.ref(a, b) for a, b in named]
    # the dropped pair is the library's: a SOCM within its rounding bound of the threshold could flip
    assert all(abs(p.socm - threshold) > kb.computed_tol(a, b) for p, (a, b) in zip(pairs, named, strict=True))
    null = summary["high_socm_null"]
    assert null["n"] == len(FAILED) and null["n_high"] == sum(p.socm >= threshold for p in pairs)
    share = null["null_share"]
    tail = sum(comb(3, x) * share**x * (1 - share) ** (3 - x) for x in range(null["n_high"], 4))
    assert null["p_value"] == pytest.approx(tail, rel=1e-9)  # exact tail, 4 terms: float rounding only
    assert summary["thresholds"]["FAILURE_RATE_ADEQUATE"] == FAILURE_RATE_ADEQUATE
    assert any(f"failure rate {rate:.3f}" in line for line in verdict["evidence"])


def test_report_written_beside_the_tables(diagnosed, tmp_path):
    from rag_diag.report import render_report
    from rag_diag.report.views import diagnosis_report

    out = diagnosed.write(tmp_path / "diag")
    render_report(out, diagnosis_report(diagnosed))
    for name in ("failures.parquet", "queries.parquet", "diagnosis.json", "summary.md", "report.html"):
        assert (out / name).is_file()
    html = (out / "report.html").read_text()
    assert "gpl3+" in html and "<del>" in html and "mean+std" in html


def test_written_diagnosis_opens_back(mock_kb, tmp_path):
    diagnosis = diagnose(mock_kb.evaluation, mock_kb.collapse, corpus=mock_kb.corpus)
    again = Diagnosis.open(diagnosis.write(tmp_path / "d"))
    assert again.summary == json.loads(json.dumps(diagnosis.summary))
    assert again.failures.equals(diagnosis.failures) and again.queries.equals(diagnosis.queries)


@pytest.mark.parametrize("implicated", [False, True])
def test_verdict_is_monotone_in_failure_rate(implicated):
    order = ["adequate", "at risk", "unsuitable"]
    labels = [order.index(judge(rate, implicated)) for rate in np.linspace(0, 1, 21)]
    assert labels == sorted(labels)
    assert judge(0.0, implicated) == "adequate"


def test_verdict_is_monotone_in_evidence():
    order = ["adequate", "at risk", "unsuitable"]
    for rate in (0.05, FAILURE_RATE_ADEQUATE + 0.01, FAILURE_RATE_UNSUITABLE, 0.9):
        assert order.index(judge(rate, True)) >= order.index(judge(rate, False))
    assert judge(0.9, False) == "at risk" and judge(0.9, True) == "unsuitable"


def test_no_failures_is_adequate(mock_licence_store):
    runs = {q: (relevant, 1, None) for q, (relevant, _, _) in RUNS.items()}
    kb = make_kb(mock_licence_store, runs, drop=None)
    diagnosis = diagnose(kb.evaluation, kb.collapse)
    assert diagnosis.failures.is_empty()
    assert diagnosis.summary["verdict"]["label"] == "adequate"
    assert diagnosis.summary["collapse"]["auroc"]["auroc"] is None


def test_a_failure_with_nothing_retrieved_has_no_pair_and_no_error(mock_kb):
    """A run can return nothing for a query (BM25 without a shared word): no confuser, so no pair to compute."""
    per_query = mock_kb.evaluation.per_query.with_columns(
        pl.when(pl.col("query_id") == "q-gpl2").then(None).otherwise(pl.col("top_doc")).alias("top_doc"))
    evaluation = EvalResult(mock_kb.evaluation.manifest, per_query, mock_kb.evaluation.runs, mock_kb.evaluation.qrels)
    failures = {row["query_id"]: row for row in diagnose(evaluation, mock_kb.collapse).failures.iter_rows(named=True)}
    assert set(failures) == FAILED
    assert failures["q-gpl2"]["confuser_id"] is None and failures["q-gpl2"]["socm"] is None
    assert failures["q-lgpl21+"]["pair_source"] == "computed"  # the other missing pair is still computed


# ------------------------------------------------------------------------- the CLI


def write_folders(kb: KB, root: Path, runs: dict = RUNS) -> tuple[Path, Path]:
    """The corpus as a BEIR folder, and the evaluation and collapse folders the CLI reads."""
    corpus_dir = root / "corpus"
    write_beir(corpus_dir, kb.corpus, kb.queries)
    evaluation = build_evaluation(kb.store.manifest["model"], kb.corpus, runs, str(corpus_dir / "corpus.jsonl"))
    evaluation.write(root / "eval")
    kb.collapse.write(root / "collapse")
    return root / "eval", root / "collapse"


def _dirs(evaluation: Path, collapse: Path, out: Path) -> list[str]:
    return ["--eval", str(evaluation), "--collapse", str(collapse), "--out", str(out)]


def test_cli_writes_the_diagnosis(mock_kb, tmp_path, capsys):
    evaluation, collapse = write_folders(mock_kb, tmp_path)
    assert main(["diagnose", *_dirs(evaluation, collapse, tmp_path / "o")]) == 0
    assert "mean pooling:" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "diagnosis.json").read_text())["n_failures"] == len(FAILED)
    html = (tmp_path / "o" / "report.html").read_text()
    assert "gpl3+" in html and "<del>" in html  # texts come from the corpus the evaluation names


def _cli_error(capsys, *args: str) -> str:
    assert main(["diagnose", *args]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: ") and "\n" not in message
    return message


def test_a_corpus_other_than_the_evaluated_one_is_refused(mock_kb, tmp_path, capsys):
    """--corpus must exist and be the corpus the evaluation ran on, else the report quotes other texts."""
    evaluation, collapse = write_folders(mock_kb, tmp_path)
    message = _cli_error(capsys, *_dirs(evaluation, collapse, tmp_path / "o"), "--corpus", str(tmp_path / "nowhere"))
    assert "nowhere: no such corpus" in message
    other = Corpus(ids=mock_kb.corpus.ids, texts=[*mock_kb.corpus.texts[:-1], "snow instead of rain"])
    write_beir(tmp_path / "other", other, mock_kb.queries)
    message = _cli_error(capsys, *_dirs(evaluation, collapse, tmp_path / "o"), "--corpus", str(tmp_path / "other"))
    assert "not the corpus the evaluation ran on" in message
    assert not (tmp_path / "o").exists()
    assert main(["diagnose", *_dirs(evaluation, collapse, tmp_path / "o"), "--corpus", str(tmp_path / "corpus")]) == 0


def test_missing_eval_files_are_one_line_errors(mock_kb, tmp_path, capsys):
    evaluation, collapse = write_folders(mock_kb, tmp_path)
    (evaluation / "per_query.parquet").unlink()
    message = _cli_error(capsys, *_dirs(evaluation, collapse, tmp_path / "o"))
    assert "per_query.parquet" in message
    message = _cli_error(capsys, *_dirs(tmp_path / "nowhere", collapse, tmp_path / "o"))
    assert "nowhere" in message
    assert not (tmp_path / "o").exists()


def test_unknown_doc_ids_are_refused(mock_kb, tmp_path, capsys):
    runs = {**RUNS, "q-unknown": ("not-in-collapse", 2, "gpl2+")}
    evaluation, collapse = write_folders(mock_kb, tmp_path, runs)
    message = _cli_error(capsys, *_dirs(evaluation, collapse, tmp_path / "o"))
    assert "not-in-collapse" in message


def test_other_model_is_refused(mock_kb):
    other = CollapseTable({**mock_kb.collapse.summary, "model": {"name": "mpnet"}}, mock_kb.collapse.docs,
                          mock_kb.collapse.pairs)
    with pytest.raises(RagDiagError, match="same model"):
        diagnose(mock_kb.evaluation, other)


def test_other_corpus_is_refused(mock_kb):
    other = CollapseTable({**mock_kb.collapse.summary, "corpus_sha256": "0" * 64}, mock_kb.collapse.docs,
                          mock_kb.collapse.pairs)
    with pytest.raises(RagDiagError, match="different corpora"):
        diagnose(mock_kb.evaluation, other)


def test_unknown_strategy_is_refused(mock_kb):
    with pytest.raises(RagDiagError, match="no per-query rows for strategy 'cls'"):
        diagnose(mock_kb.evaluation, mock_kb.collapse, strategy="cls")
