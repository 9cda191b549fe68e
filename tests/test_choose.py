"""choose-pooling: the decision rule on hand-made candidate tables whose answer is worked out by hand,
a knowledge base built so that the answer is known, and (slow) the real model end to end on real
licence notices (ScanCode LicenseDB, nexB, CC-BY-4.0).

These tests hold the rule to its contract: names, scores, corrected p-values against mean and against the
best, bytes per document; its held-out check is in test_choose_rule.py.
"""

from __future__ import annotations

import json
from dataclasses import fields

import numpy as np
import pytest
from test_index_helpers import write_licence_beir

from rag_diag.corpora.io import Corpus, Qrels, Queries, load_beir, load_corpus
from rag_diag.errors import RagDiagError
from rag_diag.evaluation.crossval import assign_folds, query_groups
from rag_diag.jobs.choose import BASELINE, Candidate, choose_pooling, decide, write_choice

ALPHA = 0.05  # the rule's level (rag_diag.evaluation.significance.ALPHA)


def row(name: str, score: float, p_mean: float | None, p_best: float | None, bytes_per_doc: float) -> Candidate:
    """A candidate with the fields the rule reads; every other field gets a neutral value."""
    values = {"name": name, "chosen": name, "metrics": {"P@1": score, "MRR@10": score, "nDCG@10": score},
              "score": score, "in_sample": score, "p_vs_mean": p_mean, "p_vs_best": p_best, "fixes": 0,
              "breaks": 0, "p_flips": None, "bytes_per_doc": bytes_per_doc, "latency_ms": 1.0, "index_bytes": 0,
              "dim": 384}
    return Candidate(**{f.name: values[f.name] for f in fields(Candidate) if f.name in values})


MEAN = row("mean", 0.60, None, 0.001, 1536)


def test_mean_when_nothing_beats_it_significantly():
    # cls scores higher but p = 0.20 ≥ 0.05; rerank-w2 p = 0.06 ≥ 0.05: no winner → mean
    table = [MEAN, row("cls", 0.70, 0.20, None, 1536), row("rerank-w2", 0.65, 0.06, 0.5, 90_000)]
    assert decide(table)[0] == BASELINE


def test_significantly_worse_candidate_never_beats_mean():
    # max is significant (p = 0.001) but scores lower: "beats" needs a higher score too
    assert decide([row("mean", 0.6, None, None, 1536), row("max", 0.4, 0.001, 0.001, 1536)])[0] == BASELINE


def test_cheapest_winner_not_worse_than_best():
    # both beat mean; the best is rerank-w2 (0.72); mean+std is not significantly worse than it
    # (p_best = 0.40) and costs 3,072 < 90,000 bytes/doc → mean+std
    table = [MEAN, row("mean+std", 0.70, 0.01, 0.40, 3072), row("rerank-w2", 0.72, 0.001, None, 90_000)]
    name, reason = decide(table)
    assert name == "mean+std" and "cheapest" in reason


def test_best_when_the_cheaper_winner_is_significantly_worse():
    # mean+std beats mean but is significantly worse than the best (p_best = 0.01) → the best, rerank-w2
    table = [MEAN, row("mean+std", 0.66, 0.01, 0.01, 3072), row("rerank-w2", 0.80, 0.001, None, 90_000)]
    assert decide(table)[0] == "rerank-w2"


def test_fallback_reason_says_the_winner_is_worse_than_the_best():
    # cls beats mean but is significantly worse than the best, rerank-w2, which does not beat mean itself
    # (p = 0.08): the rule falls back to the best winner, and the reason must not call it "not worse"
    table = [MEAN, row("cls", 0.66, 0.01, 0.01, 1536), row("rerank-w2", 0.70, 0.08, None, 90_000)]
    name, reason = decide(table)
    assert name == "cls" and "not significantly worse" not in reason
    assert "every candidate that beats mean is significantly worse than the best (rerank-w2, 0.7000)" in reason


def test_equal_cost_ties_go_to_the_higher_score():
    # max and cls both qualify at 1,536 bytes/doc; the cost tie is broken by the higher score → cls
    table = [MEAN, row("max", 0.70, 0.01, 0.5, 1536), row("cls", 0.71, 0.01, None, 1536)]
    assert decide(table)[0] == "cls"


def test_a_larger_table_worked_by_hand():
    """Mean 0.50. Winners (score > 0.50 and p_mean < 0.05): power (0.58), sif (0.61), bm25 (0.66),
    rerank-hybrid (0.67). Not winners: cls (p 0.30), last (0.45 < mean), sketch (p = 0.05, not < 0.05).
    Best = rerank-hybrid (0.67). Not significantly worse than it (p_best ≥ 0.05, or the best itself):
    sif (0.20), bm25 (0.05), rerank-hybrid; power is (p_best 0.02). Cheapest of those: sif (2,000
    bytes/doc) < bm25 (5,000) < rerank-hybrid (90,000) → sif."""
    table = [
        row("mean", 0.50, None, 0.001, 1536),
        row("cls", 0.56, 0.30, 0.01, 1536),
        row("last", 0.45, 0.01, 0.001, 1536),
        row("sketch", 0.60, 0.05, 0.30, 1000),
        row("power", 0.58, 0.01, 0.02, 1536),
        row("sif", 0.61, 0.02, 0.20, 2000),
        row("bm25", 0.66, 0.001, 0.05, 5000),
        row("rerank-hybrid", 0.67, 0.001, None, 90_000),
    ]
    assert decide(table)[0] == "sif"
    # the same table without sif: bm25 (5,000) is the cheapest qualifying candidate
    assert decide([c for c in table if c.name != "sif"])[0] == "bm25"
    # and with every cheaper winner significantly worse than the best: the best, rerank-hybrid
    worse = [row(c.name, c.score, c.p_vs_mean, 0.01, c.bytes_per_doc) if c.name in ("sif", "bm25") else c
             for c in table]
    assert decide(worse)[0] == "rerank-hybrid"


def test_mean_is_required():
    with pytest.raises(RagDiagError, match="mean"):
        decide([row("cls", 0.7, None, None, 1536)])


# ---------------------------------------------------------------------------------------------- known answer


def identifier_kb(tmp_path) -> tuple[Corpus, Queries, Qrels]:
    """Licence notices, each tagged with a unique reference code; each query is one code alone.

    BM25 finds every code (the only document holding that term: MRR 1). Mean pooling averages the code
    into ~40 other tokens and mostly misses it. Candidates: mean and BM25 (+ its fusions with mean).
    By the rule: BM25 beats mean (higher score, every per-query difference ≥ 0, and with ≥ 7 of them
    non-zero the exact sign-flip p ≤ 2/2^7 ≈ 0.016, ≤ 0.047 after Holm over ≤ 3 candidates, and
    below 1e-4 beyond 16); BM25 is the best (MRR 1 cannot be exceeded), and any fusion that ties it
    costs more (BM25 plus the mean index) → BM25."""
    corpus = load_corpus(write_licence_beir(tmp_path / "beir", docs=5, queries=0))
    codes = [f"xq{i:03d}" for i in range(len(corpus))]
    texts = [f"{text} Reference code {code}." for text, code in zip(corpus.texts, codes, strict=True)]
    tagged = Corpus(ids=corpus.ids, texts=texts)
    ids = [f"q{i}" for i in range(len(corpus))]
    return tagged, Queries(ids=ids, texts=codes), Qrels({q: {d: 1} for q, d in zip(ids, corpus.ids, strict=True)})


def test_identifier_lookups_choose_bm25(tmp_path):
    from rag_diag.models.mock import MockEncoder

    corpus, queries, qrels = identifier_kb(tmp_path)
    choice = choose_pooling(corpus, queries=queries, qrels=qrels, model=MockEncoder(max_seq_length=128),
                            strategies="mean", rerankers="none", lexical=True, windowed=False)
    by_name = {c.name: c for c in choice.recommendation.candidates}
    misses = sum(ranking.doc_ids[0] not in qrels.relevant(q) for q, ranking in choice.evaluation.runs["mean"].items())
    assert misses >= 7, "precondition of the worked answer: mean misses at least 7 codes"
    assert by_name["bm25"].score == 1.0
    assert choice.recommendation.recommended == "bm25"
    out = write_choice(choice, tmp_path / "choose")
    written = json.loads((out / "recommendation.json").read_text())
    assert written["recommended"] == "bm25"
    # the held-out figures are the deployed runs' scores on each outer fold's queries, recomputed here
    held, scores = written["held_out"], choice.evaluation.scores
    folds = assign_folds(query_groups(list(queries.ids), qrels), len(held["picks"]), seed=0)
    mrr = np.empty(len(queries))
    for fold, pick in enumerate(held["picks"]):
        mrr[folds == fold] = scores[pick]["MRR@10"][folds == fold]
    # the same values in the same order through the same numpy mean, and JSON keeps a float's repr: equal bits
    assert held["score"] == float(mrr.mean())
    assert held["mean_metrics"]["MRR@10"] == float(scores["mean"]["MRR@10"].mean())


# ---------------------------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_choose_pooling_end_to_end(tmp_path):
    from rag_diag.retrieval.bundle import IndexBundle

    corpus, queries, qrels = load_beir(write_licence_beir(tmp_path / "beir", docs=5, queries=2))
    choice = choose_pooling(corpus, queries=queries, qrels=qrels, model="minilm", strategies="mean+std",
                            rerankers="w2")
    out = write_choice(choice, tmp_path / "choose")
    written = json.loads((out / "recommendation.json").read_text())
    metrics = json.loads((out / "eval" / "metrics.json").read_text())["metrics"]
    by_name = {entry["name"]: entry for entry in written["table"]}
    assert {"mean", "mean+std", "rerank-w2"} <= set(by_name)
    assert written["recommended"] == choice.recommendation.recommended and written["recommended"] in by_name
    for name in ("mean", "mean+std", "rerank-w2"):
        assert name in metrics and by_name[name]["bytes_per_doc"] > 0 and by_name[name]["latency_ms"] > 0
    sizes = [by_name[name]["bytes_per_doc"] for name in ("rerank-w2", "mean+std", "mean")]
    assert sizes[0] > sizes[1] > sizes[2]  # token store > two moments > one mean, per document
    # the rule's first clause, on the written numbers: the recommendation beats mean, or nothing does
    mean_score = by_name["mean"]["score"]
    beats = {n for n, e in by_name.items()
             if n != "mean" and e["p_vs_mean"] is not None and e["p_vs_mean"] < ALPHA and e["score"] > mean_score}
    assert (written["recommended"] in beats) if beats else written["recommended"] == "mean"
    assert written["rule"] and written["reason"]
    assert IndexBundle.open(out / "index").strategies == ["mean", "mean+std"]
    html = (out / "report.html").read_text()
    assert "mean+std" in html and "rerank-w2" in html and (out / "summary.md").is_file()


# ---------------------------------------------------------------------------------------------- the CLI


def test_cli_bad_input_is_one_line(tmp_path, capsys):
    from rag_diag.cli import main

    status = main(["choose-pooling", "--corpus", str(tmp_path / "nope"), "--out", str(tmp_path / "out"),
                   "--strategies", "mean"])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.startswith("error: ") and len(err.splitlines()) == 1


def test_cli_unknown_strategy(tmp_path, capsys):
    from rag_diag.cli import main

    (tmp_path / "docs.txt").write_text("one\ntwo\n")
    status = main(["choose-pooling", "--corpus", str(tmp_path / "docs.txt"), "--out", str(tmp_path / "o"),
                   "--strategies", "x"])
    assert status == 2 and "unknown pooling strategy 'x'" in capsys.readouterr().err
