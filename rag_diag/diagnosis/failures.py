"""Per-query and per-failure tables: who failed, what outranked the relevant document, and their SOCM.

A *failure* is a query of the diagnosed strategy whose first relevant document is not ranked first;
its *confuser* is the highest-ranked non-relevant document above the relevant one. Each (relevant,
confuser) pair gets d_μ, d_Σ, SOCM and the mean-pooled cosine — from the collapse table when it holds
the pair, else computed on the token store with the same Gram-route provider.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from rag_diag.collapse.table import CollapseTable
from rag_diag.corpora.io import Qrels
from rag_diag.errors import RagDiagError
from rag_diag.evaluation.result import EvalResult
from rag_diag.tokens.store import TokenStore

PAIR_STATS = ("d_mu", "d_sigma", "socm", "cos")
DOC_STATS = ("collapse_mean", "collapse_max", "concentration")


def _first_qrels_relevant(qrels: Qrels, query_id: str) -> str | None:
    """The query's most relevant judged document (highest grade, then id) — used when none was retrieved."""
    graded = [(-score, doc) for doc, score in qrels.judgements.get(query_id, {}).items() if score > 0]
    return min(graded)[1] if graded else None


def query_table(evaluation: EvalResult, strategy: str) -> pl.DataFrame:
    """One row per query of ``strategy``: relevant_id, relevant_rank, failed, confuser_id, scores.

    failed ⇔ the first relevant document is not at rank 1 (or not retrieved at all). The confuser is
    the evaluator's; when the relevant document was not retrieved it falls back to the top document.
    """
    rows = evaluation.per_query.filter(pl.col("strategy") == strategy)
    if rows.is_empty():
        available = sorted(evaluation.per_query["strategy"].unique().to_list())
        raise RagDiagError(f"the evaluation has no per-query rows for strategy '{strategy}' (have {available})")
    fallback = [_first_qrels_relevant(evaluation.qrels, q) for q in rows["query_id"].to_list()]
    optional = [c for c in ("relevant_score", "confuser_score") if c in rows.columns]
    table = (
        rows.with_columns(
            pl.Series("fallback_id", fallback, dtype=pl.String),
            pl.col("first_relevant_rank").cast(pl.Int64).alias("relevant_rank"),
        )
        .with_columns(pl.col("relevant_rank").is_null().or_(pl.col("relevant_rank") != 1).alias("failed"))
        .select(
            "query_id",
            pl.coalesce("first_relevant_id", "fallback_id").alias("relevant_id"),
            "relevant_rank",
            "failed",
            pl.when("failed").then(pl.coalesce("confuser", "top_doc")).alias("confuser_id"),
            *optional,
        )
        .filter(pl.col("relevant_id").is_not_null())
    )
    if table.is_empty():
        raise RagDiagError(f"no query of strategy '{strategy}' has a judged relevant document")
    return table


def check_known_ids(queries: pl.DataFrame, collapse: CollapseTable) -> None:
    """Every relevant document and confuser must be in the collapse table."""
    known = set(collapse.docs["doc_id"].to_list())
    named = set(queries["relevant_id"].to_list()) | set(queries["confuser_id"].drop_nulls().to_list())
    unknown = sorted(named - known)
    if unknown:
        raise RagDiagError(
            f"{len(unknown)} document ids of the evaluation are not in the collapse table "
            f"(e.g. '{unknown[0]}'): run collapse on the same corpus as the evaluation"
        )


def _touching(pairs: pl.DataFrame, named: pl.Series, *, both: bool = False) -> pl.DataFrame:
    """The pair rows with one end (``both``: both ends) in ``named`` — a mask over the pairs, no join.

    The diagnosis needs the statistics of a few thousand relevant documents and confusers; joining
    the whole N·k pair table by string ids to get them cost 0.2-0.3 GiB per step at N = 100,000.
    """
    in_a, in_b = pl.col("doc_a").is_in(named), pl.col("doc_b").is_in(named)
    return pairs.filter(in_a & in_b if both else in_a | in_b)


def doc_columns(collapse: CollapseTable, prefix: str, doc_ids: list[str]) -> pl.DataFrame:
    """Per-document statistics of ``doc_ids`` renamed ``<prefix>_<stat>`` (collapse rates, concentration, cos_nn).

    cos_nn = the largest mean-pooled cosine over the pairs the document is in (either end).
    """
    named = pl.Series(doc_ids, dtype=pl.String).unique()
    pairs = _touching(collapse.pairs, named)
    ends = pl.concat([
        pairs.select(pl.col("doc_a").alias("doc_id"), "cos"),
        pairs.select(pl.col("doc_b").alias("doc_id"), "cos"),
    ])
    nearest = ends.group_by("doc_id").agg(pl.col("cos").max().alias("cos_nn"))
    present = [c for c in DOC_STATS if c in collapse.docs.columns]
    table = (
        collapse.docs.filter(pl.col("doc_id").is_in(named))
        .select("doc_id", *present)
        .join(nearest, on="doc_id", how="left")
        .join(_collapse_index(collapse.docs, pairs), on="doc_id", how="left")
    )
    return table.rename({c: f"{prefix}_{c}" for c in table.columns})


def _collapse_index(docs: pl.DataFrame, pairs: pl.DataFrame) -> pl.DataFrame:
    """Per document: mean over its pairs (as ``doc_a``) of d_Σ / ((c_a + c_b)/4), the normalised collapse index.

    BW² ≤ c_a + c_b (science.md §4), so the index lies in [0, 1] and, unlike the raw rate, does not
    simply grow with concentration. Pairs whose two concentrations are both zero are left out.
    """
    concentration = docs.select("doc_id", "concentration")
    pairs = (
        pairs.select("doc_a", "doc_b", "d_sigma")
        .join(concentration.rename({"doc_id": "doc_a", "concentration": "c_a"}), on="doc_a", how="left")
        .join(concentration.rename({"doc_id": "doc_b", "concentration": "c_b"}), on="doc_b", how="left")
        .with_columns(((pl.col("c_a") + pl.col("c_b")) / 4.0).alias("bound"))
        .filter(pl.col("bound") > 0)
    )
    return pairs.group_by("doc_a").agg((pl.col("d_sigma") / pl.col("bound")).mean().alias("collapse_index")).rename(
        {"doc_a": "doc_id"}
    )


def _ordered_pair(first: str, second: str) -> list[pl.Expr]:
    smaller = pl.col(first) <= pl.col(second)
    return [
        pl.when(smaller).then(pl.col(first)).otherwise(pl.col(second)).alias("key_a"),
        pl.when(smaller).then(pl.col(second)).otherwise(pl.col(first)).alias("key_b"),
    ]


def _pair_lookup(failures: pl.DataFrame, pairs: pl.DataFrame) -> pl.DataFrame:
    """Attach d_mu, d_sigma, socm, cos from the pair table (either order); pair_source says where from.

    Only pairs whose two ends are failure documents can match, so the table is cut to those first.
    """
    named = pl.concat([failures["relevant_id"], failures["confuser_id"].drop_nulls()]).unique()
    table = (
        _touching(pairs, named, both=True)
        .select(*_ordered_pair("doc_a", "doc_b"), *PAIR_STATS)
        .unique(["key_a", "key_b"], keep="first", maintain_order=True)
    )
    return (
        failures.with_columns(*_ordered_pair("relevant_id", "confuser_id"))
        .join(table, on=["key_a", "key_b"], how="left")
        .drop("key_a", "key_b")
        .with_columns(pl.when(pl.col("socm").is_not_null()).then(pl.lit("pairs")).alias("pair_source"))
    )


def _open_store(collapse: CollapseTable, store: TokenStore | None, n_missing: int) -> TokenStore:
    if store is not None:
        return store
    path = collapse.summary.get("token_store")
    if not path:
        raise RagDiagError(
            f"{n_missing} (relevant, confuser) pairs are not in the collapse table and it names no token "
            "store to compute them from"
        )
    return TokenStore.open(path)


def _compute_missing_pairs(failures: pl.DataFrame, collapse: CollapseTable, store: TokenStore | None) -> pl.DataFrame:
    """Compute the pair statistics absent from the pair table on the token store (``pair_socm``)."""
    from rag_diag.collapse.socm import pair_socm

    missing = failures.filter(pl.col("socm").is_null() & pl.col("confuser_id").is_not_null())  # null: no ranking
    if missing.is_empty():
        return failures
    store = _open_store(collapse, store, len(missing))
    index = {doc_id: position for position, doc_id in enumerate(store.doc_ids)}
    named = set(missing["relevant_id"].to_list()) | set(missing["confuser_id"].to_list())
    absent = sorted(named - set(index))
    if absent:
        raise RagDiagError(f"{store.path}: document '{absent[0]}' is not in the collapse run's token store")
    layer = collapse.summary.get("layer")
    result = pair_socm(
        store,
        np.array([index[d] for d in missing["relevant_id"].to_list()], dtype=np.int64),
        np.array([index[d] for d in missing["confuser_id"].to_list()], dtype=np.int64),
        layer=layer if isinstance(layer, int) else None,
        drop_special=bool(collapse.summary.get("drop_special", False)),
    )
    computed = missing.select("query_id").with_columns(
        *(pl.Series(f"new_{name}", np.asarray(getattr(result, name), dtype=np.float64)) for name in PAIR_STATS)
    )
    return (
        failures.join(computed, on="query_id", how="left")
        .with_columns(
            *(pl.coalesce(name, f"new_{name}").alias(name) for name in PAIR_STATS),
            pl.coalesce("pair_source", pl.when(pl.col("new_socm").is_not_null()).then(pl.lit("computed"))),
        )
        .drop(*(f"new_{name}" for name in PAIR_STATS))
    )


def _label(column: str, labels: dict[str, str]) -> pl.Expr:
    return pl.col(column).replace_strict(labels, default=None, return_dtype=pl.String)


def failure_table(
    queries: pl.DataFrame,
    collapse: CollapseTable,
    labels: dict[str, str],
    socm_threshold: float,
    store: TokenStore | None = None,
) -> pl.DataFrame:
    """One row per failed query: confuser, pair statistics, both documents' collapse statistics, labels.

    ``queries`` is :func:`query_table` joined with the relevant document's statistics
    (``relevant_collapse_mean`` …); the confuser's are joined here. ``high_socm`` ⇔ pair SOCM ≥
    ``socm_threshold`` (the corpus' high-SOCM quantile); ``socm_quantile`` = share of corpus pairs with
    SOCM ≤ the pair's; ``collapse_index`` = d_Σ / ((c_rel + c_conf)/4), the pair's d_Σ relative to its
    bound from the two concentrations (science.md §4), in [0, 1].
    """
    failures = queries.filter(pl.col("failed")).drop("failed")
    failures = _compute_missing_pairs(_pair_lookup(failures, collapse.pairs), collapse, store)
    confusers = failures["confuser_id"].drop_nulls().to_list()
    failures = failures.join(doc_columns(collapse, "confuser", confusers), left_on="confuser_id",
                             right_on="confuser_doc_id", how="left")
    corpus_socm = np.sort(collapse.pairs["socm"].drop_nulls().to_numpy().astype(np.float64))
    pair_values = failures["socm"].to_numpy().astype(np.float64)
    quantile = np.searchsorted(corpus_socm, pair_values, side="right") / max(len(corpus_socm), 1)
    bound = (pl.col("relevant_concentration") + pl.col("confuser_concentration")) / 4.0
    return failures.with_columns(
        pl.Series("socm_quantile", quantile),
        (pl.col("socm") >= socm_threshold).alias("high_socm"),
        pl.when(bound > 0).then(pl.col("d_sigma") / bound).alias("collapse_index"),
        *(_label(f"{role}_id", labels).alias(f"{role}_label") for role in ("relevant", "confuser")),
    ).with_columns((pl.col("relevant_label") != pl.col("confuser_label")).alias("labels_differ"))
