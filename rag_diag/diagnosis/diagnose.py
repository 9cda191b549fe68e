"""Diagnose a strategy's retrieval failures against the collapse table, and judge mean pooling.

Inputs are artefact objects held in memory: an :class:`~rag_diag.evaluation.result.EvalResult` and a
:class:`~rag_diag.collapse.table.CollapseTable` of the same corpus (model identity and corpus hash
are checked), optionally the corpus and queries for texts and labels. The result is a
:class:`Diagnosis`, which owns its folder (``failures.parquet``, ``queries.parquet``,
``diagnosis.json``); rendering it is the report package's job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from rag_diag import atomic
from rag_diag.collapse.table import CollapseTable
from rag_diag.corpora.io import Corpus, Queries
from rag_diag.diagnosis.answer import answer
from rag_diag.diagnosis.failures import check_known_ids, doc_columns, failure_table, query_table
from rag_diag.diagnosis.taxonomy import cause_counts, classify, k_occurrence, truncation_summary, unchecked_causes
from rag_diag.diagnosis.verdict import HIGH_SOCM_QUANTILE, THRESHOLDS, corpus_statistics, high_socm_null, verdict
from rag_diag.errors import RagDiagError
from rag_diag.evaluation.counterfactual import counterfactual_frame, counterfactuals
from rag_diag.evaluation.result import EvalResult
from rag_diag.readers import read_json_object, read_parquet, require_files
from rag_diag.tokens.store import TokenStore

KIND = "diagnosis"
FILES = ("diagnosis.json", "failures.parquet", "queries.parquet", "counterfactuals.parquet")


@dataclass
class Diagnosis:
    """The diagnosis of one strategy's failures.

    Attributes:
        queries: one row per diagnosed query (relevant document, failed, its collapse statistics).
        failures: one row per failed query (confuser, pair statistics, labels).
        summary: the content of ``diagnosis.json`` (corpus-level statistics, verdict, thresholds).
        collapse_rates: every document's collapse rate (for the histogram).
        texts / query_texts: document and query texts, when the corpus was given.
    """

    strategy: str
    queries: pl.DataFrame
    failures: pl.DataFrame
    summary: dict[str, Any]
    collapse_rates: np.ndarray
    counterfactuals: pl.DataFrame = field(default_factory=pl.DataFrame)
    metrics: dict[str, Any] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    query_texts: dict[str, str] = field(default_factory=dict)

    def write_files(self, folder: Path) -> None:
        """Write the diagnosis files into an existing (temporary) folder."""
        atomic.write_parquet(folder / "failures.parquet", self.failures)
        atomic.write_parquet(folder / "queries.parquet", self.queries)
        atomic.write_parquet(folder / "counterfactuals.parquet", self.counterfactuals)
        atomic.write_json(folder / "diagnosis.json", self.summary)

    def write(self, out: str | Path, *, force: bool = False) -> Path:
        """Write the folder atomically."""
        with atomic.atomic_dir(out, kind=KIND, force=force) as tmp:
            self.write_files(tmp)
        return Path(out)

    @classmethod
    def open(cls, path: str | Path) -> Diagnosis:
        """Read a diagnosis folder back (texts are not stored, so they come back empty)."""
        path = require_files(path, FILES, "diagnosis")
        summary = read_json_object(path / "diagnosis.json")
        return cls(summary["strategy"], read_parquet(path / "queries.parquet", ("query_id",)),
                   read_parquet(path / "failures.parquet", ("query_id",)), summary, np.zeros(0),
                   read_parquet(path / "counterfactuals.parquet", ("candidate",)))


def _model_key(model: Any) -> str | None:
    """A comparable identity: the weights hash of an identity dict, else the name as given."""
    if isinstance(model, dict):
        return model.get("weights_sha256") or model.get("name")
    return str(model) if model else None


def check_same_inputs(evaluation: EvalResult, collapse: CollapseTable) -> None:
    """Refuse an evaluation and a collapse table made with different models or from different corpora."""
    eval_key, collapse_key = _model_key(evaluation.manifest.get("model")), _model_key(collapse.summary.get("model"))
    if eval_key and collapse_key and eval_key != collapse_key:
        raise RagDiagError(
            f"the evaluation used model {eval_key[:12]} but the collapse table was computed with "
            f"{collapse_key[:12]}: run collapse with the same model"
        )
    eval_corpus, collapse_corpus = evaluation.manifest.get("corpus_sha256"), collapse.summary.get("corpus_sha256")
    if eval_corpus and collapse_corpus and eval_corpus != collapse_corpus:
        raise RagDiagError(
            "the evaluation and the collapse table were made from different corpora (corpus hashes "
            f"{eval_corpus[:12]} ≠ {collapse_corpus[:12]}): run both on the same corpus"
        )


def _labels(corpus: Corpus | None, named: pl.Series) -> dict[str, str]:
    """``metadata.label`` of the ``named`` documents that have one (licence labels on the licences corpus)."""
    if corpus is None or not corpus.metadata:
        return {}
    wanted = set(named.to_list())
    return {doc: str(meta["label"]) for doc, meta in zip(corpus.ids, corpus.metadata, strict=True)
            if doc in wanted and meta.get("label") is not None}


def _named_lengths(collapse: CollapseTable, named: pl.Series) -> dict[str, int]:
    """Token count of the ``named`` documents (the queries' relevant documents and confusers), not of all N."""
    rows = collapse.docs.filter(pl.col("doc_id").is_in(named))
    return dict(zip(rows["doc_id"].to_list(), rows["n_tokens"].to_list(), strict=True))


def _named_texts(corpus: Corpus | None, named: pl.Series) -> dict[str, str]:
    """Texts of the ``named`` documents, for the failure evidence and the report: what they read, not all N."""
    if corpus is None:
        return {}
    wanted = set(named.to_list())
    return {doc: text for doc, text in zip(corpus.ids, corpus.texts, strict=True) if doc in wanted}


def _open_token_store(collapse: CollapseTable) -> TokenStore | None:
    """The token store the collapse table names, when it still exists (for pair SOCMs and truncation)."""
    path = collapse.summary.get("token_store")
    return TokenStore.open(path) if path and Path(path).is_dir() else None


def _counterfactuals(evaluation: EvalResult, baseline: str) -> pl.DataFrame:
    """Fixes, breaks and exact McNemar test of every other run against ``baseline`` (success: P@1 = 1)."""
    ranks = evaluation.per_query.select("query_id", "strategy", "first_relevant_rank")
    wide = ranks.pivot(on="strategy", index="query_id", values="first_relevant_rank").sort("query_id")
    success = {name: (wide[name].fill_null(0) == 1).to_numpy() for name in wide.columns if name != "query_id"}
    if baseline not in success:
        return counterfactual_frame([])
    return counterfactual_frame(counterfactuals(success, baseline, wide["query_id"].to_list()))


def diagnose(
    evaluation: EvalResult,
    collapse: CollapseTable,
    *,
    strategy: str = "mean",
    corpus: Corpus | None = None,
    queries: Queries | None = None,
    token_store: TokenStore | None = None,
    corpus_lengths: np.ndarray | None = None,
    graph_k_occurrence: Mapping[str, int] | None = None,
    reference_docs: list[str] | None = None,
    command: str = "",
) -> Diagnosis:
    """Link ``strategy``'s failures to collapse: per-query and per-failure tables, statistics, verdict.

    Args:
        evaluation: the evaluation whose per-query rows are diagnosed.
        collapse: a kNN collapse table of the same corpus (every document needs a collapse rate).
        strategy: the strategy whose failures are diagnosed.
        corpus, queries: for texts and labels in the report (optional).
        token_store: the corpus token store, to compute pair SOCMs missing from the table (default:
            the one the collapse summary names).
        corpus_lengths: every corpus document's untruncated token count, for the truncation figures (default:
            the token store's, which may hold only some documents: an audit over summaries keeps only those its
            evaluation reads).
        graph_k_occurrence: every document's N_k over the whole kNN graph, for the hub rule, where the collapse
            table's pairs are only some documents' neighbours (``audit --estimate``: counting them would shrink
            every N_k by about the sampled share); default: counted from the table.
        reference_docs: the documents whose kNN pairs stand for the corpus's in the high-SOCM threshold (a
            quantile) and its cosine-matched null; default: every pair of the table (``audit --estimate`` passes
            its random sample, as the table's other rated documents are relevant documents and top hits).
        command: the command line to record.
    """
    check_same_inputs(evaluation, collapse)
    if not collapse.has_rates:
        raise RagDiagError("the collapse table has no per-document collapse rates: run collapse with --knn K")
    table = query_table(evaluation, strategy)
    check_known_ids(table, collapse)
    relevant = doc_columns(collapse, "relevant", table["relevant_id"].to_list())
    table = table.join(relevant, left_on="relevant_id", right_on="relevant_doc_id", how="left")
    reference = collapse.pairs if reference_docs is None else collapse.pairs.filter(
        pl.col("doc_a").is_in(pl.Series(reference_docs, dtype=pl.String).implode()))
    socm_values = np.asarray(reference["socm"].drop_nulls().to_numpy(), dtype=np.float64)
    threshold = float(np.quantile(socm_values, HIGH_SOCM_QUANTILE)) if len(socm_values) else float("inf")
    store = token_store or _open_token_store(collapse)
    named = pl.concat([table["relevant_id"], table["confuser_id"].drop_nulls()]).unique()
    labels = _labels(corpus, named)
    failures = failure_table(table, collapse, labels, threshold, store)
    lengths = _named_lengths(collapse, named)
    texts = _named_texts(corpus, named)
    full_lengths = {} if store is None else dict(zip(store.doc_ids, store.full_lengths.tolist(), strict=True))
    k = collapse.summary.get("k") if collapse.summary.get("mode") == "knn" else None
    confusers = failures["confuser_id"].drop_nulls().to_list()
    hubs = (k_occurrence(collapse.pairs, confusers) if graph_k_occurrence is None
            else {doc_id: int(graph_k_occurrence.get(doc_id, 0)) for doc_id in confusers})
    failures = classify(failures, evaluation.runs, evaluation.qrels, texts=texts, full_lengths=full_lengths,
                        window=None if store is None else store.window, hubs=hubs, k=k)
    flips = _counterfactuals(evaluation, strategy)
    n_queries, n_failures = len(table), len(failures)
    summary: dict[str, Any] = {
        "strategy": strategy,
        "model": evaluation.manifest.get("model") or collapse.summary.get("model"),
        "corpus_sha256": collapse.summary.get("corpus_sha256"),
        "n_queries": n_queries,
        "n_failures": n_failures,
        "failure_rate": n_failures / n_queries if n_queries else 0.0,
        "n_pairs_computed": int((failures["pair_source"] == "computed").sum()),
        "high_socm_threshold": {"quantile": HIGH_SOCM_QUANTILE, "value": threshold, "n_pairs": len(socm_values)},
        "high_socm_null": high_socm_null(failures, reference, threshold),
        "labels_known": bool(labels),
        "n_failures_labels_differ": int(failures["labels_differ"].fill_null(False).sum()),
        **corpus_statistics(table, lengths),
        "taxonomy": cause_counts(failures, unchecked_causes(
            evaluation.runs, has_texts=bool(texts), window=None if store is None else store.window, k=k)),
        "truncation": None if store is None else truncation_summary(
            store.full_lengths if corpus_lengths is None else corpus_lengths, store.window, failures),
        "counterfactual_metric": "P@1 = 1",
        "thresholds": THRESHOLDS,
        "command": command,
        "collapse_command": collapse.summary.get("command"),
        "eval_command": evaluation.manifest.get("command"),
    }
    summary["verdict"] = verdict(summary)
    summary["answer"] = answer(summary, flips)
    return Diagnosis(
        strategy=strategy, queries=table, failures=failures, summary=summary,
        collapse_rates=collapse.docs["collapse_mean"].to_numpy().astype(np.float64),
        counterfactuals=flips, metrics=evaluation.manifest, texts=texts,
        query_texts={} if queries is None else dict(zip(queries.ids, queries.texts, strict=True)),
    )
