"""diagnose on a constructed licence knowledge base whose confusers are known (real MiniLM token stores).

The collapse folder is written by hand from an independent float64 reference (Gram route) so the test
does not depend on rag_diag.collapse; when that module is absent its ``pair_socm`` is stood in for by
the same reference.
"""

from __future__ import annotations

import importlib.util
import json
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from rag_diag.cli import main
from rag_diag.diagnose import FAILURE_RATE_ADEQUATE, FAILURE_RATE_UNSUITABLE, diagnose, judge
from rag_diag.errors import RagDiagError

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
KNN = 3
DROPPED_PAIR = ("lgpl2+", "lgpl21+")  # left out of pairs.parquet: diagnose must compute it


# ------------------------------------------------------------------------- independent float64 reference


@dataclass
class ReferencePairs:
    d_mu: np.ndarray
    d_sigma: np.ndarray
    socm: np.ndarray
    cos: np.ndarray


def _normalised(tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = tokens.astype(np.float64)
    x = x / max(np.linalg.norm(x.mean(axis=0)), 1e-12)
    mu = x.mean(axis=0)
    return mu, (x - mu) / np.sqrt(len(x))


def reference_pair(x1: np.ndarray, x2: np.ndarray) -> tuple[float, float, float, float]:
    """(d_mu, d_sigma, socm, cos): BW² = ‖A‖²_F + ‖B‖²_F − 2‖ABᵀ‖_*, d_Σ = BW²/4, d_μ = ‖μ1−μ2‖²/4."""
    mu1, a = _normalised(x1)
    mu2, b = _normalised(x2)
    bw2 = (a**2).sum() + (b**2).sum() - 2 * np.linalg.svd(a @ b.T, compute_uv=False).sum()
    d_mu = float(((mu1 - mu2) ** 2).sum() / 4)
    d_sigma = float(bw2 / 4)
    return d_mu, d_sigma, (1 - d_mu) * d_sigma, float(mu1 @ mu2)


def reference_pair_socm(store, a, b, *, layer=None, drop_special=False, device="cpu") -> ReferencePairs:
    def tokens(index):
        return store.tokens(int(index), layer, drop_special)

    rows = [reference_pair(tokens(i), tokens(j)) for i, j in zip(a, b, strict=True)]
    return ReferencePairs(*(np.array(column) for column in zip(*rows, strict=True)))


def concentration(tokens: np.ndarray) -> float:
    x = tokens.astype(np.float64)
    mu = x.mean(axis=0)
    return float(((x - mu) ** 2).sum(axis=1).mean() / (mu @ mu))


# ------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def licence_store(minilm, tmp_path_factory):
    from rag_diag.encode import encode_texts

    ids = list(DOCS)
    return encode_texts([DOCS[i][0] for i in ids], model=minilm, ids=ids,
                        out=tmp_path_factory.mktemp("licences") / "store")


def _stand_in_pair_socm(patch: pytest.MonkeyPatch) -> None:
    """Stand in for rag_diag.collapse.pair_socm with the reference while that module does not exist."""
    if importlib.util.find_spec("rag_diag.collapse") is None:
        module = types.ModuleType("rag_diag.collapse")
        module.pair_socm = reference_pair_socm
        patch.setitem(sys.modules, "rag_diag.collapse", module)


@pytest.fixture(autouse=True)
def pair_socm_available(monkeypatch):
    _stand_in_pair_socm(monkeypatch)


def write_corpus(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "corpus.jsonl", "w") as handle:
        for doc_id, (text, label) in DOCS.items():
            record = {"_id": doc_id, "title": "", "text": text, "metadata": {"label": label}}
            handle.write(json.dumps(record) + "\n")
    with open(folder / "queries.jsonl", "w") as handle:
        for query_id, (relevant, _, _) in RUNS.items():
            handle.write(json.dumps({"_id": query_id, "text": f"licence notice {relevant}"}) + "\n")
    return folder


def write_collapse(store, folder: Path, drop: tuple[str, str] | None = DROPPED_PAIR) -> Path:
    """docs.parquet / pairs.parquet / summary.json per the collapse contract, from the reference maths."""
    folder.mkdir(parents=True, exist_ok=True)
    ids = store.doc_ids
    means = store.means().astype(np.float64)
    unit = means / np.linalg.norm(means, axis=1, keepdims=True)
    cosine = unit @ unit.T
    np.fill_diagonal(cosine, -np.inf)
    pairs, per_doc = [], {i: [] for i in range(len(ids))}
    for i in range(len(ids)):
        for j in np.argsort(-cosine[i], kind="stable")[:KNN]:
            d_mu, d_sigma, socm, cos = reference_pair(store.tokens(i), store.tokens(int(j)))
            per_doc[i].append((socm, ids[int(j)]))
            if drop is None or {ids[i], ids[int(j)]} != set(drop):
                pairs.append({"doc_a": ids[i], "doc_b": ids[int(j)], "d_mu": d_mu, "d_sigma": d_sigma,
                              "socm": socm, "cos": cos})
    docs = pl.DataFrame([{
        "doc_id": ids[i], "n_tokens": int(store.lengths[i]), "concentration": concentration(store.tokens(i)),
        "trace": 0.0, "collapse_mean": float(np.mean([s for s, _ in per_doc[i]])),
        "collapse_max": float(max(s for s, _ in per_doc[i])), "top_confuser": max(per_doc[i])[1],
    } for i in range(len(ids))])
    pl.DataFrame(pairs).write_parquet(folder / "pairs.parquet")
    docs.write_parquet(folder / "docs.parquet")
    (folder / "summary.json").write_text(json.dumps({
        "model": "minilm", "mode": "knn", "n_docs": len(ids), "n_pairs": len(pairs), "k": KNN,
        "token_store": str(store.path), "command": "rag-diag collapse --knn 3",
    }))
    return folder


def write_eval(folder: Path, corpus: Path, runs: dict = RUNS) -> Path:
    """metrics.json / per_query.parquet / qrels.tsv per the evaluate contract, from a hand-made run table."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for query_id, (relevant, rank, confuser) in runs.items():
        rows.append({
            "query_id": query_id, "strategy": "mean", "first_relevant_rank": rank,
            "first_relevant_id": relevant if rank is not None else None, "relevant_score": 0.9,
            "top_doc": relevant if rank == 1 else (confuser or "gpl2+"), "top_score": 0.95,
            "confuser": confuser, "confuser_score": 0.95 if confuser else None, "n_relevant": 1,
        })
        rows.append({**rows[-1], "strategy": "mean+std", "first_relevant_rank": 1,
                     "first_relevant_id": relevant, "confuser": None, "confuser_score": None})
    pl.DataFrame(rows, schema_overrides={"first_relevant_rank": pl.Int64}).write_parquet(
        folder / "per_query.parquet")
    (folder / "qrels.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{r}\t1\n" for q, (r, _, _) in runs.items()))
    metrics = {name: {"P@1": p1, "MRR@10": p1, "nDCG@10": p1}
               for name, p1 in (("mean", 0.6), ("mean+std", 1.0))}
    (folder / "metrics.json").write_text(json.dumps({
        "metrics": metrics, "k": 100, "model": "minilm", "index": "flat", "corpus": str(corpus),
        "token_store": "", "command": "rag-diag evaluate --strategies mean,mean+std",
        "significance": {"mean+std": {"nDCG@10": {"p_value": 0.01, "corrected_p_value": 0.02,
                                                  "effect_size": 0.5, "significant": True}}},
    }))
    return folder


@pytest.fixture(scope="module")
def diagnosed(licence_store, tmp_path_factory):
    root = tmp_path_factory.mktemp("diag")
    corpus = write_corpus(root / "corpus")
    collapse = write_collapse(licence_store, root / "collapse")
    evaluation = write_eval(root / "eval", corpus)
    with pytest.MonkeyPatch.context() as patch:
        _stand_in_pair_socm(patch)
        return diagnose(evaluation, collapse, root / "out"), root


# ------------------------------------------------------------------------- tests


def test_names_the_confuser_and_its_socm(diagnosed, licence_store):
    diagnosis, _ = diagnosed
    failures = {row["query_id"]: row for row in diagnosis.failures.iter_rows(named=True)}
    assert set(failures) == {"q-gpl2+", "q-lgpl21+", "q-gpl2"}
    index = {doc_id: i for i, doc_id in enumerate(licence_store.doc_ids)}
    for query_id, row in failures.items():
        relevant, rank, confuser = RUNS[query_id]
        assert row["relevant_id"] == relevant and row["relevant_rank"] == rank
        assert row["confuser_id"] == (confuser or "gpl2+")
        d_mu, d_sigma, socm, cos = reference_pair(
            licence_store.tokens(index[relevant]), licence_store.tokens(index[row["confuser_id"]]))
        assert row["socm"] == pytest.approx(socm, abs=1e-6)
        assert row["d_mu"] == pytest.approx(d_mu, abs=1e-6)
        assert row["d_sigma"] == pytest.approx(d_sigma, abs=1e-6)
        assert row["cos"] == pytest.approx(cos, abs=1e-6)
        assert row["labels_differ"] is True
        assert row["relevant_label"] == DOCS[relevant][1]
    assert failures["q-lgpl21+"]["pair_source"] == "computed"
    assert failures["q-gpl2+"]["pair_source"] == "pairs"


def test_failure_rows_carry_both_documents_statistics(diagnosed):
    diagnosis, root = diagnosed
    docs = pl.read_parquet(root / "collapse" / "docs.parquet")
    row = diagnosis.failures.filter(pl.col("query_id") == "q-gpl2+").row(0, named=True)
    for role, doc_id in (("relevant", "gpl2+"), ("confuser", "gpl3+")):
        expected = docs.filter(pl.col("doc_id") == doc_id).row(0, named=True)
        for stat in ("collapse_mean", "collapse_max", "concentration"):
            assert row[f"{role}_{stat}"] == pytest.approx(expected[stat])
    threshold = diagnosis.summary["high_socm_threshold"]["value"]
    assert row["second_order_separates"] == (row["socm"] >= threshold)


def test_corpus_statistics_match_sklearn(diagnosed):
    diagnosis, _ = diagnosed
    queries = pl.read_parquet(diagnosis.out / "queries.parquet")
    failed = queries["failed"].to_numpy()
    summary = json.loads((diagnosis.out / "diagnosis.json").read_text())
    assert summary["n_queries"] == len(RUNS) and summary["n_failures"] == 3
    for key, column in (("collapse", "relevant_collapse_mean"), ("cos_nn", "relevant_cos_nn")):
        expected = roc_auc_score(failed, queries[column].to_numpy())
        assert summary[key]["auroc"]["auroc"] == pytest.approx(expected)
    assert sum(row["n_queries"] for row in summary["deciles"]) == len(RUNS)
    assert sum(row["n_failures"] for row in summary["deciles"]) == 3


def test_verdict_states_thresholds_and_evidence(diagnosed):
    diagnosis, _ = diagnosed
    summary = diagnosis.summary
    assert summary["verdict"]["label"] == judge(
        summary["failure_rate"], summary["share_failures_high_socm"],
        summary["collapse"]["auroc"]["ci_excludes_half"])
    assert summary["thresholds"]["FAILURE_RATE_ADEQUATE"] == FAILURE_RATE_ADEQUATE
    assert any("failure rate" in line for line in summary["verdict"]["evidence"])


def test_report_written_beside_the_tables(diagnosed):
    diagnosis, _ = diagnosed
    html = (diagnosis.out / "report.html").read_text()
    for name in ("failures.parquet", "queries.parquet", "diagnosis.json", "summary.md"):
        assert (diagnosis.out / name).is_file()
    assert "gpl3+" in html and "<del>" in html and "mean+std" in html


@pytest.mark.parametrize("evidence", [(None, False), (0.2, False), (0.6, False), (0.2, True), (1.0, True)])
def test_verdict_is_monotone_in_failure_rate(evidence):
    order = ["adequate", "at risk", "unsuitable"]
    labels = [order.index(judge(rate, *evidence)) for rate in np.linspace(0, 1, 21)]
    assert labels == sorted(labels)
    assert judge(0.0, *evidence) == "adequate"


def test_verdict_is_monotone_in_evidence():
    order = ["adequate", "at risk", "unsuitable"]
    for rate in (0.05, FAILURE_RATE_ADEQUATE + 0.01, FAILURE_RATE_UNSUITABLE, 0.9):
        weak = order.index(judge(rate, 0.0, False))
        assert order.index(judge(rate, 1.0, False)) >= weak
        assert order.index(judge(rate, 0.0, True)) >= weak
    assert judge(0.9, 0.0, False) == "at risk" and judge(0.9, 1.0, False) == "unsuitable"


def test_no_failures_is_adequate(licence_store, tmp_path):
    corpus = write_corpus(tmp_path / "corpus")
    collapse = write_collapse(licence_store, tmp_path / "collapse", drop=None)
    runs = {q: (relevant, 1, None) for q, (relevant, _, _) in RUNS.items()}
    evaluation = write_eval(tmp_path / "eval", corpus, runs)
    diagnosis = diagnose(evaluation, collapse, tmp_path / "out")
    assert diagnosis.failures.is_empty()
    assert diagnosis.verdict.label == "adequate"
    assert diagnosis.summary["collapse"]["auroc"]["auroc"] is None


def _dirs(evaluation: Path, collapse: Path, out: Path) -> list[str]:
    return ["--eval", str(evaluation), "--collapse", str(collapse), "--out", str(out)]


def test_cli_writes_the_diagnosis(licence_store, tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus")
    collapse = write_collapse(licence_store, tmp_path / "collapse", drop=None)
    evaluation = write_eval(tmp_path / "eval", corpus)
    code = main(["diagnose", *_dirs(evaluation, collapse, tmp_path / "o")])
    assert code == 0
    assert "mean pooling:" in capsys.readouterr().out
    assert json.loads((tmp_path / "o" / "diagnosis.json").read_text())["n_failures"] == 3


# ------------------------------------------------------------------------- bad input


def _cli_error(capsys, *args: str) -> str:
    assert main(["diagnose", *args]) == 2
    message = capsys.readouterr().err.strip()
    assert message.startswith("error: ") and "\n" not in message
    return message


def test_missing_eval_files_are_one_line_errors(licence_store, tmp_path, capsys):
    collapse = write_collapse(licence_store, tmp_path / "collapse", drop=None)
    evaluation = write_eval(tmp_path / "eval", write_corpus(tmp_path / "corpus"))
    (evaluation / "per_query.parquet").unlink()
    message = _cli_error(capsys, *_dirs(evaluation, collapse, tmp_path / "o"))
    assert "per_query.parquet" in message
    message = _cli_error(capsys, *_dirs(tmp_path / "nowhere", collapse, tmp_path / "o"))
    assert "nowhere" in message
    assert not (tmp_path / "o").exists()


def test_unknown_doc_ids_are_refused(licence_store, tmp_path, capsys):
    collapse = write_collapse(licence_store, tmp_path / "collapse", drop=None)
    runs = {**RUNS, "q-unknown": ("not-in-collapse", 2, "gpl2+")}
    evaluation = write_eval(tmp_path / "eval", write_corpus(tmp_path / "corpus"), runs)
    message = _cli_error(capsys, *_dirs(evaluation, collapse, tmp_path / "o"))
    assert "not-in-collapse" in message


def test_other_model_is_refused(licence_store, tmp_path):
    collapse = write_collapse(licence_store, tmp_path / "collapse", drop=None)
    summary = json.loads((collapse / "summary.json").read_text())
    (collapse / "summary.json").write_text(json.dumps({**summary, "model": "mpnet"}))
    evaluation = write_eval(tmp_path / "eval", write_corpus(tmp_path / "corpus"))
    with pytest.raises(RagDiagError, match="same model"):
        diagnose(evaluation, collapse, tmp_path / "o")


def test_unknown_strategy_is_refused(licence_store, tmp_path):
    collapse = write_collapse(licence_store, tmp_path / "collapse", drop=None)
    evaluation = write_eval(tmp_path / "eval", write_corpus(tmp_path / "corpus"))
    with pytest.raises(RagDiagError, match="no per-query rows for strategy 'cls'"):
        diagnose(evaluation, collapse, tmp_path / "o", strategy="cls")
