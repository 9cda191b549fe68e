"""The diagnosis' per-document and per-pair lookups, cut to the documents asked for, against plain-Python loops.

doc_columns, _pair_lookup and k_occurrence filter the N·k pair table to the rows touching the named
documents before any join (bounded memory at N = 100,000). The reference here reads every pair, so a
filter that dropped a needed row (or kept a wrong one) changes a value.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st

from rag_diag.collapse.table import CollapseTable
from rag_diag.diagnosis.failures import _pair_lookup, doc_columns
from rag_diag.diagnosis.taxonomy import k_occurrence


def _table(seed: int, n_docs: int, k: int) -> CollapseTable:
    rng = np.random.default_rng(seed)
    ids = [f"d{i:03d}" for i in range(n_docs)]
    a = np.repeat(np.arange(n_docs), k)
    b = (a + rng.integers(1, n_docs, len(a))) % n_docs
    pairs = pl.DataFrame({
        "doc_a": [ids[i] for i in a], "doc_b": [ids[i] for i in b],
        **{c: rng.random(len(a)) for c in ("d_mu", "d_sigma", "socm", "cos")},
    })
    concentration = rng.random(n_docs)
    concentration[rng.random(n_docs) < 0.2] = 0.0  # zero bounds are left out of the collapse index
    docs = pl.DataFrame({"doc_id": ids, "n_tokens": rng.integers(3, 50, n_docs), "concentration": concentration,
                         "trace": rng.random(n_docs), "collapse_mean": rng.random(n_docs),
                         "collapse_max": rng.random(n_docs), "top_confuser": ids[::-1]})
    return CollapseTable(summary={"mode": "knn", "k": k}, docs=docs, pairs=pairs)


def _reference(collapse: CollapseTable, doc_id: str) -> dict[str, float | None]:
    conc = dict(zip(collapse.docs["doc_id"], collapse.docs["concentration"], strict=True))
    rows = collapse.pairs.to_dicts()
    cos = [r["cos"] for r in rows if doc_id in (r["doc_a"], r["doc_b"])]
    ratios = [r["d_sigma"] / ((conc[r["doc_a"]] + conc[r["doc_b"]]) / 4) for r in rows
              if r["doc_a"] == doc_id and conc[r["doc_a"]] + conc[r["doc_b"]] > 0]
    return {"cos_nn": max(cos) if cos else None, "collapse_index": sum(ratios) / len(ratios) if ratios else None}


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), n_docs=st.integers(3, 25), k=st.integers(1, 4), data=st.data())
def test_doc_columns_of_a_subset_equal_a_loop_over_every_pair(seed, n_docs, k, data):
    collapse = _table(seed, n_docs, k)
    ids = collapse.docs["doc_id"].to_list()
    wanted = data.draw(st.lists(st.sampled_from(ids), min_size=1, max_size=n_docs))
    got = {row["x_doc_id"]: row for row in doc_columns(collapse, "x", wanted).to_dicts()}
    assert set(got) == set(wanted)
    for doc_id in set(wanted):
        expected = _reference(collapse, doc_id)
        for stat, value in expected.items():
            # each side: a float64 division and a mean of at most n_docs·k positive terms, so within
            # (n_docs·k + 2)·u of the exact value (u = 2⁻⁵³); the two sides within twice that
            if value is None:
                assert got[doc_id][f"x_{stat}"] is None
            else:
                assert math.isclose(got[doc_id][f"x_{stat}"], value, rel_tol=(n_docs * k + 2) * 2**-52)
        assert got[doc_id]["x_concentration"] == collapse.docs.filter(pl.col("doc_id") == doc_id)["concentration"][0]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), n_docs=st.integers(3, 25), k=st.integers(1, 4), data=st.data())
def test_pair_lookup_and_k_occurrence_equal_dictionary_lookups(seed, n_docs, k, data):
    collapse = _table(seed, n_docs, k)
    ids = collapse.docs["doc_id"].to_list()
    n = data.draw(st.integers(1, 8))
    relevant = data.draw(st.lists(st.sampled_from(ids), min_size=n, max_size=n))
    confuser = data.draw(st.lists(st.one_of(st.none(), st.sampled_from(ids)), min_size=n, max_size=n))
    failures = pl.DataFrame({"query_id": [f"q{i}" for i in range(n)], "relevant_id": relevant,
                             "confuser_id": pl.Series(confuser, dtype=pl.String)})
    first: dict[frozenset[str], dict] = {}
    for row in collapse.pairs.to_dicts():
        first.setdefault(frozenset((row["doc_a"], row["doc_b"])), row)
    looked = _pair_lookup(failures, collapse.pairs).to_dicts()
    assert [r["query_id"] for r in looked] == failures["query_id"].to_list()
    for row, rel, conf in zip(looked, relevant, confuser, strict=True):
        hit = None if conf is None else first.get(frozenset((rel, conf)))
        assert row["pair_source"] == (None if hit is None else "pairs")
        assert row["socm"] == (None if hit is None else hit["socm"])
        assert row["cos"] == (None if hit is None else hit["cos"])
    named = [c for c in confuser if c is not None]
    assert k_occurrence(collapse.pairs, named) == {
        doc: count for doc, count in Counter(collapse.pairs["doc_b"].to_list()).items() if doc in set(named)
    }
