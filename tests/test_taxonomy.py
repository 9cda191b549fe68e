"""The failure taxonomy: each planted cause is named, the precedence is the documented one, counts add up."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from rag_diag.corpora.io import Qrels, Queries
from rag_diag.diagnosis.taxonomy import (
    CAUSES,
    cause_counts,
    classify,
    same_words,
    truncation_summary,
    unchecked_causes,
)
from rag_diag.evaluation.result import Ranking

TAIL = "zircon quasar marker nebula pulsar comet orbit galaxy"
"""Eight words after 40 filler words: past a 24-token window, inside the last 12-word chunk."""


def _run(order_by_query: dict[str, list[str]]) -> dict[str, Ranking]:
    return {q: Ranking(list(docs), np.arange(len(docs), 0, -1, dtype=np.float64)) for q, docs in order_by_query.items()}


def test_same_words_ignores_case_punctuation_order_and_repetition_but_not_one_changed_word():
    assert same_words("GPL, version 2 or later.", "or later version 2 gpl gpl")
    assert not same_words("GPL version 2 or later", "GPL version 3 or later")
    assert not same_words("", "")


def test_each_cause_by_its_evidence_and_the_documented_precedence():
    """Hand-built failures, one per cause; q_dup is also fixed by BM25 but duplicate comes first."""
    qrels = Qrels({q: {f"rel_{q}": 1} for q in ("q_dup", "q_trunc", "q_lex", "q_2nd", "q_tok", "q_hub", "q_enc")})
    failures = pl.DataFrame({
        "query_id": list(qrels.judgements),
        "relevant_id": [f"rel_{q}" for q in qrels.judgements],
        "confuser_id": ["conf_dup", "conf", "conf", "conf", "conf", "hub", "conf"],
    })
    texts = {f"rel_{q}": f"text of {q}" for q in qrels.judgements} | {"conf": "something else", "hub": "hub text"}
    texts |= {"rel_q_dup": "Same words, here.", "conf_dup": "here same WORDS"}
    first = {q: [f"rel_{q}", "conf"] for q in qrels.judgements}
    missed = {q: ["conf", f"rel_{q}"] for q in qrels.judgements}
    runs = {
        "windowed": _run({**missed, "q_trunc": first["q_trunc"]}),
        "bm25": _run({**missed, "q_dup": first["q_dup"], "q_lex": first["q_lex"], "q_trunc": first["q_trunc"]}),
        "rerank-w2": _run({**missed, "q_2nd": first["q_2nd"], "q_tok": first["q_tok"]}),
        "rerank-maxsim": _run({**missed, "q_tok": first["q_tok"], "q_hub": missed["q_hub"]}),
    }
    runs["rerank-w2"]["q_tok"] = Ranking(["conf", "rel_q_tok"], np.array([2.0, 1.0]))  # only MaxSim fixes q_tok
    lengths = {doc: 10 for doc in texts} | {"rel_q_trunc": 900}
    table = classify(failures, runs, qrels, texts=texts, full_lengths=lengths, window=256,
                     hubs={"hub": 25, "conf": 3}, k=10)
    causes = dict(zip(table["query_id"].to_list(), table["cause"].to_list(), strict=True))
    assert causes == {"q_dup": "duplicate", "q_trunc": "truncated", "q_lex": "lexical", "q_2nd": "second-order",
                      "q_tok": "token-level", "q_hub": "hub", "q_enc": "encoder"}
    unchecked = unchecked_causes(runs, has_texts=True, window=256, k=10)
    assert unchecked == {}  # every cause had its evidence
    counts = cause_counts(table, unchecked)
    assert [row["cause"] for row in counts] == list(CAUSES)
    assert sum(row["n_failures"] for row in counts) == len(failures) == 7
    assert all(row["not_checked"] is None for row in counts)
    # without the windowed run the truncated failure falls to the next cause that holds (BM25 fixes it) and the
    # table says truncation was not checked rather than counting 0
    without = {name: run for name, run in runs.items() if name != "windowed"}
    table = classify(failures, without, qrels, texts=texts, full_lengths=lengths, window=256,
                     hubs={"hub": 25, "conf": 3}, k=10)
    assert table.filter(pl.col("query_id") == "q_trunc")["cause"].item() == "lexical"
    rows = {row["cause"]: row for row in cause_counts(table, unchecked_causes(without, has_texts=True, window=256,
                                                                               k=10))}
    assert rows["truncated"]["not_checked"] == "no windowed / rerank-windowed run"
    assert rows["truncated"]["n_failures"] == 0
    assert [cause for cause, row in rows.items() if row["not_checked"]] == ["truncated"]
    assert table.filter(pl.col("query_id") == "q_trunc")["relevant_truncated"].item() is True


def test_missing_evidence_never_invents_a_cause():
    """Without runs, texts or a kNN graph only 'encoder' remains."""
    failures = pl.DataFrame({"query_id": ["q"], "relevant_id": ["r"], "confuser_id": ["c"]})
    table = classify(failures, {}, Qrels({"q": {"r": 1}}), texts={}, full_lengths={}, window=None, hubs={}, k=None)
    assert table["cause"].to_list() == ["encoder"]
    assert table["same_words"].to_list() == [None]
    assert unchecked_causes({}, has_texts=False, window=None, k=None) == {
        "duplicate": "no document texts", "truncated": "no token counts", "lexical": "no bm25 run",
        "second-order": "no rerank-w2 / rerank-blend / mean+std run",
        "token-level": "no rerank-maxsim / rerank-hybrid run", "hub": "no kNN graph"}


def test_truncation_summary_counts_cut_tokens():
    failures = pl.DataFrame({"relevant_truncated": [True, False, None]})
    summary = truncation_summary(np.array([10, 300, 256, 1000]), 256, failures)
    assert summary["n_truncated"] == 2 and summary["tokens_cut"] == 44 + 744
    assert summary["n_failures_relevant_truncated"] == 1
    assert summary["share_tokens_cut"] == pytest.approx(788 / 1566, abs=1e-15)  # exact ratio of integers


@pytest.mark.slow
def test_audit_of_a_planted_store_names_the_planted_causes(tmp_path):
    """A store with a duplicate pair, a document whose match lies after the window, and a rare-name query.

    The deterministic mock encoder (window 24 tokens; token vectors plus a positional term, so word
    order matters) stands in for the model; BM25, windowed encoding and the re-rankers run for real.
    """
    import faiss

    from rag_diag.jobs.audit import audit_store
    from rag_diag.models.mock import MockEncoder
    from rag_diag.stores.stored import StoredIndex
    from rag_diag.tokens.extract import encode_texts

    common = "alpha beta gamma delta epsilon"
    texts = {
        "a_dup": "Licence text, for duplicates: one two three.",      # the query's word order
        "b_dup": "three two one duplicates for TEXT licence licence",  # same vocabulary, a word repeated
        "long": " ".join(["filler"] * 40) + f" {TAIL}",                # the match lies after the window
        "decoy": "zircon quasar beacon",                              # what the window-cut store finds instead
        "rare": "kryptonite99 omega psi chi",                         # only the rare name matches its query
        **{f"other{i}": f"{common} topic{i} words here" for i in range(8)},
    }
    ids = list(texts)
    encoder = MockEncoder(max_seq_length=24)
    store = encode_texts(list(texts.values()), model=encoder, ids=ids, cache=False, out=tmp_path / "tokens")
    vectors = store.means().astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    stored = StoredIndex(tmp_path, "faiss", index, ids, list(texts.values()), [{} for _ in ids])
    queries = Queries(ids=["q_dup", "q_long", "q_rare"],
                      texts=["licence text for duplicates one two three", TAIL,
                             f"{common} kryptonite99"])
    qrels = Qrels({"q_dup": {"b_dup": 1}, "q_long": {"long": 1}, "q_rare": {"rare": 1}})
    result = audit_store(stored, model=encoder, queries=queries, qrels=qrels, k=3, sample=5)
    failures = result.diagnosis.failures
    causes = dict(zip(failures["query_id"].to_list(), failures["cause"].to_list(), strict=True))
    assert causes.get("q_dup") == "duplicate"
    assert causes.get("q_long") == "truncated"
    assert causes.get("q_rare") == "lexical"
    taxonomy = result.diagnosis.summary["taxonomy"]
    assert sum(row["n_failures"] for row in taxonomy) == result.diagnosis.summary["n_failures"] == len(failures)
    assert result.diagnosis.summary["truncation"]["n_truncated"] >= 1


def test_the_short_answer_names_the_causes_it_could_not_check():
    """The answer's 'why' lists the counted causes, the truncation figures and, last, what was not checked."""
    from rag_diag.diagnosis.answer import why

    rows = cause_counts(pl.DataFrame({"cause": ["lexical", "encoder", "lexical"]}), {"truncated": "no windowed run"})
    summary = {"taxonomy": rows, "truncation": {"n_truncated": 3, "n_documents": 40, "window": 256,
                                                "n_failures_relevant_truncated": 1}}
    assert why(summary) == (
        "Primary causes: lexical 2, encoder 1. The largest group is 'lexical': " + rows[2]["advice"] + ". "
        "3 of 40 documents are longer than the 256-token window (1 failures' relevant documents among them). "
        "Not checked: truncated (no windowed run).")
    summary["taxonomy"] = cause_counts(pl.DataFrame({"cause": ["lexical"]}))
    assert "Not checked" not in why(summary)
