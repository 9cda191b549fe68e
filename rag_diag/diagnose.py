"""Diagnose retrieval failures by second-order collapse, and judge mean pooling for a knowledge base.

Inputs are two artefacts on disk: an evaluation folder (``rag-diag evaluate``: ``metrics.json``,
``per_query.parquet``, ``qrels.tsv``) and a collapse folder (``rag-diag collapse``: ``pairs.parquet``,
``docs.parquet``, ``summary.json``). A *failure* is a query of the diagnosed strategy (``mean`` by
default) whose first relevant document is not ranked first; its *confuser* is the highest-ranked
non-relevant document above the relevant one.

Per failure the (relevant, confuser) pair gets d_μ, d_Σ, SOCM = (1 − d_μ)·d_Σ and the mean-pooled
cosine (from ``pairs.parquet``, else computed on the token store by ``rag_diag.collapse.pair_socm``).
Across queries, the relevant document's collapse rate (mean SOCM with its k nearest neighbours) is
tested as a predictor of failure, next to the plain mean-pooled cosine to its nearest neighbour, so
the report can say whether second-order collapse explains failures beyond mean similarity.
"""

from __future__ import annotations

import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from rag_diag import atomic, stats
from rag_diag.corpora.io import Qrels, load_corpus, load_qrels, load_queries
from rag_diag.errors import RagDiagError
from rag_diag.report import Confusion, DecileRow, Headline, ReportData, StrategyRow, Verdict

FAILURE_RATE_ADEQUATE = 0.10
"""At or below this share of failed queries (relevant document not first) mean pooling is *adequate*:
one query in ten lost at rank 1 is within what a better encoder or a reranker is expected to fix, and
on the licence benchmarks a TF-IDF baseline already fails about this often."""

FAILURE_RATE_UNSUITABLE = 0.30
"""At or above this failure share, *with* collapse implicated, mean pooling is *unsuitable*: almost one
query in three loses its answer at rank 1 and the evidence says the pooling is why."""

HIGH_SOCM_QUANTILE = 0.75
"""A (relevant, confuser) pair counts as collapsed when its SOCM is at or above this quantile of the
corpus' nearest-neighbour pair SOCMs: the top quarter of pairs whose token distributions differ most
while their means agree, i.e. the pairs second-order information separates and mean pooling merges."""

HIGH_SOCM_SHARE = 0.5
"""Collapse is implicated when at least this share of failures have a collapsed pair (a majority: the
typical failure is a collapse, not a plain semantic near-miss) …"""

AUROC_CHANCE = 0.5
"""… or when the bootstrap CI of the collapse-rate AUROC lies entirely above chance (0.5)."""

SIGNIFICANCE_LEVEL = 0.05
"""Level for the likelihood-ratio test of collapse beyond mean similarity."""

WORST_CONFUSIONS = 10
"""Failures shown side by side in the report (highest pair SOCM first)."""

EVAL_FILES = ("metrics.json", "per_query.parquet", "qrels.tsv")
COLLAPSE_FILES = ("summary.json", "docs.parquet", "pairs.parquet")
PER_QUERY_COLUMNS = (
    "query_id", "strategy", "first_relevant_rank", "first_relevant_id", "top_doc", "confuser",
)
DOCS_COLUMNS = ("doc_id", "concentration", "collapse_mean", "collapse_max")
PAIRS_COLUMNS = ("doc_a", "doc_b", "d_mu", "d_sigma", "socm", "cos")
PAIR_STATS = ("d_mu", "d_sigma", "socm", "cos")
DOC_STATS = ("collapse_mean", "collapse_max", "concentration")


@dataclass(frozen=True)
class EvalInputs:
    """An evaluation folder: metrics manifest, per-query table and qrels."""

    path: Path
    metrics: dict[str, Any]
    per_query: pl.DataFrame
    qrels: Qrels


@dataclass(frozen=True)
class CollapseInputs:
    """A collapse folder: summary manifest, per-document and per-pair tables."""

    path: Path
    summary: dict[str, Any]
    docs: pl.DataFrame
    pairs: pl.DataFrame


@dataclass
class Diagnosis:
    """The diagnosis of one strategy's failures, as written to ``out``.

    Attributes:
        queries: one row per diagnosed query (relevant document, failed, its collapse rate, cos_nn).
        failures: one row per failed query (confuser, pair statistics, labels, separability).
        summary: the content of ``diagnosis.json`` (corpus-level statistics, verdict, thresholds).
    """

    out: Path
    strategy: str
    queries: pl.DataFrame
    failures: pl.DataFrame
    summary: dict[str, Any]
    collapse_rates: np.ndarray
    metrics: dict[str, Any] = field(default_factory=dict)
    texts: dict[str, str] = field(default_factory=dict)
    query_texts: dict[str, str] = field(default_factory=dict)

    @property
    def verdict(self) -> Verdict:
        entry = self.summary["verdict"]
        return Verdict(entry["label"], entry["summary"], list(entry["evidence"]))

    def report_data(self, title: str | None = None) -> ReportData:
        """Report sections: headline, verdict, strategies (from metrics.json), plots, confusions, tables."""
        return ReportData(
            title=title or f"rag-diag diagnosis of {self.strategy} pooling",
            headline=_headline(self.summary),
            verdict=self.verdict,
            strategies=strategy_rows(self.metrics),
            collapse_rates=self.collapse_rates,
            deciles=[DecileRow(**row) for row in self.summary["deciles"]],
            confusions=self._confusions(),
            commands=[c for c in (self.metrics.get("command"), self.summary["collapse_command"],
                                  self.summary["command"]) if c],
            tables={"failures": self.failures, "queries": self.queries},
        )

    def _confusions(self) -> list[Confusion]:
        worst = self.failures.sort("socm", descending=True, nulls_last=True).head(WORST_CONFUSIONS)
        return [
            Confusion(
                query_id=row["query_id"],
                query_text=self.query_texts.get(row["query_id"], ""),
                relevant_id=row["relevant_id"],
                relevant_text=self.texts.get(row["relevant_id"], ""),
                confuser_id=row["confuser_id"],
                confuser_text=self.texts.get(row["confuser_id"], ""),
                relevant_rank=row["relevant_rank"],
                socm=row["socm"],
                cos=row["cos"],
                relevant_label=row["relevant_label"],
                confuser_label=row["confuser_label"],
            )
            for row in worst.iter_rows(named=True)
        ]


# ---------------------------------------------------------------------------------------------- inputs


def _require_files(path: Path, names: tuple[str, ...], what: str) -> None:
    if not path.is_dir():
        raise RagDiagError(f"{path}: no such {what} folder")
    missing = [name for name in names if not (path / name).is_file()]
    if missing:
        raise RagDiagError(f"{path}: not a complete {what} folder (missing {', '.join(missing)})")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RagDiagError(f"{path}: corrupt JSON ({exc})") from None
    if not isinstance(value, dict):
        raise RagDiagError(f"{path}: expected a JSON object")
    return value


def _read_parquet(path: Path, columns: tuple[str, ...]) -> pl.DataFrame:
    try:
        frame = pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise RagDiagError(f"{path}: unreadable parquet ({str(exc).splitlines()[0]})") from None
    missing = [column for column in columns if column not in frame.columns]
    if missing:
        raise RagDiagError(f"{path}: missing columns {', '.join(missing)}")
    return frame


def load_eval(path: str | Path) -> EvalInputs:
    """Read an evaluation folder; a missing file or column is a one-line error."""
    path = Path(path)
    _require_files(path, EVAL_FILES, "evaluation")
    per_query = _read_parquet(path / "per_query.parquet", PER_QUERY_COLUMNS).with_columns(
        pl.col("query_id", "first_relevant_id", "top_doc", "confuser").cast(pl.String)
    )
    return EvalInputs(path, _read_json(path / "metrics.json"), per_query, load_qrels(path / "qrels.tsv"))


def load_collapse(path: str | Path) -> CollapseInputs:
    """Read a collapse folder; a missing file or column is a one-line error."""
    path = Path(path)
    _require_files(path, COLLAPSE_FILES, "collapse")
    docs = _read_parquet(path / "docs.parquet", DOCS_COLUMNS).with_columns(pl.col("doc_id").cast(pl.String))
    pairs = _read_parquet(path / "pairs.parquet", PAIRS_COLUMNS).with_columns(
        pl.col("doc_a", "doc_b").cast(pl.String)
    )
    return CollapseInputs(path, _read_json(path / "summary.json"), docs, pairs)


def _model_key(model: Any) -> str | None:
    """A comparable identity: the weights hash of an identity dict, else the name as given."""
    if isinstance(model, dict):
        return model.get("weights_sha256") or model.get("name")
    return str(model) if model else None


def _model_name(model: Any) -> str:
    return str(model.get("name", model)) if isinstance(model, dict) else str(model)


def _check_same_model(evaluation: EvalInputs, collapse: CollapseInputs) -> None:
    eval_model, collapse_model = evaluation.metrics.get("model"), collapse.summary.get("model")
    eval_key, collapse_key = _model_key(eval_model), _model_key(collapse_model)
    if isinstance(eval_model, dict) != isinstance(collapse_model, dict):
        eval_key, collapse_key = _model_name(eval_model), _model_name(collapse_model)
    if eval_key and collapse_key and eval_key != collapse_key:
        eval_model, collapse_model = _model_name(eval_model), _model_name(collapse_model)
        raise RagDiagError(
            f"the evaluation used model '{eval_model}' but the collapse table was computed with "
            f"'{collapse_model}': run collapse with the same model"
        )


def _corpus_folder(metrics: dict[str, Any], corpus: str | Path | None) -> Path | None:
    """The BEIR folder recorded in metrics.json (or given), if it exists on this machine."""
    raw = corpus if corpus is not None else metrics.get("corpus")
    if not raw:
        return None
    path = Path(raw)
    if corpus is not None and not path.exists():
        raise RagDiagError(f"{path}: no such corpus file or folder")
    if not path.exists():
        return None
    return path if path.is_dir() else path.parent


def _read_labels(folder: Path) -> dict[str, str]:
    """``metadata.label`` of every corpus record that has one (licence labels on the licences corpus)."""
    labels: dict[str, str] = {}
    with open(folder / "corpus.jsonl", encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            record = json.loads(line)
            label = (record.get("metadata") or {}).get("label")
            if label is not None:
                labels[str(record["_id"])] = str(label)
    return labels


def _texts_and_labels(folder: Path | None) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """(document texts, query texts, labels) from a BEIR folder; empty when it is unavailable."""
    if folder is None or not (folder / "corpus.jsonl").is_file():
        return {}, {}, {}
    corpus = load_corpus(folder)
    texts = dict(zip(corpus.ids, corpus.texts, strict=True))
    queries: dict[str, str] = {}
    if (folder / "queries.jsonl").is_file():
        loaded = load_queries(folder / "queries.jsonl")
        queries = dict(zip(loaded.ids, loaded.texts, strict=True))
    return texts, queries, _read_labels(folder)


# ---------------------------------------------------------------------------------------------- tables


def _first_qrels_relevant(qrels: Qrels, query_id: str) -> str | None:
    """The query's most relevant judged document (highest grade, then id) — used when none was retrieved."""
    graded = [(-score, doc) for doc, score in qrels.judgements.get(query_id, {}).items() if score > 0]
    return min(graded)[1] if graded else None


def query_table(evaluation: EvalInputs, strategy: str) -> pl.DataFrame:
    """One row per query of ``strategy``: relevant_id, relevant_rank, failed, confuser_id, scores.

    failed ⇔ the first relevant document is not at rank 1 (or not retrieved at all). The confuser is
    the evaluator's; when the relevant document was not retrieved it falls back to the top document.
    """
    rows = evaluation.per_query.filter(pl.col("strategy") == strategy)
    if rows.is_empty():
        available = sorted(evaluation.per_query["strategy"].unique().to_list())
        raise RagDiagError(
            f"{evaluation.path}: no per-query rows for strategy '{strategy}' (have {available})"
        )
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
        raise RagDiagError(
            f"{evaluation.path}: no query of strategy '{strategy}' has a judged relevant document"
        )
    return table


def _check_known_ids(queries: pl.DataFrame, docs: pl.DataFrame, collapse_path: Path) -> None:
    known = set(docs["doc_id"].to_list())
    named = set(queries["relevant_id"].to_list()) | set(queries["confuser_id"].drop_nulls().to_list())
    unknown = sorted(named - known)
    if unknown:
        raise RagDiagError(
            f"{len(unknown)} document ids of the evaluation are not in {collapse_path / 'docs.parquet'} "
            f"(e.g. '{unknown[0]}'): run collapse on the same corpus as the evaluation"
        )


def _doc_columns(docs: pl.DataFrame, pairs: pl.DataFrame, prefix: str) -> pl.DataFrame:
    """Per-document statistics renamed ``<prefix>_<stat>`` (collapse rates, concentration, cos_nn)."""
    ends = pl.concat([
        pairs.select(pl.col("doc_a").alias("doc_id"), "cos"),
        pairs.select(pl.col("doc_b").alias("doc_id"), "cos"),
    ])
    nearest = ends.group_by("doc_id").agg(pl.col("cos").max().alias("cos_nn"))
    table = docs.select("doc_id", *DOC_STATS).join(nearest, on="doc_id", how="left")
    return table.rename({c: f"{prefix}_{c}" for c in table.columns})


def _ordered_pair(first: str, second: str) -> list[pl.Expr]:
    smaller = pl.col(first) <= pl.col(second)
    return [
        pl.when(smaller).then(pl.col(first)).otherwise(pl.col(second)).alias("key_a"),
        pl.when(smaller).then(pl.col(second)).otherwise(pl.col(first)).alias("key_b"),
    ]


def _pair_lookup(failures: pl.DataFrame, pairs: pl.DataFrame) -> pl.DataFrame:
    """Attach d_mu, d_sigma, socm, cos from pairs.parquet (either order); pair_source says where from."""
    table = pairs.select(*_ordered_pair("doc_a", "doc_b"), *PAIR_STATS)
    table = table.unique(["key_a", "key_b"], keep="first")
    return (
        failures.with_columns(*_ordered_pair("relevant_id", "confuser_id"))
        .join(table, on=["key_a", "key_b"], how="left")
        .drop("key_a", "key_b")
        .with_columns(pl.when(pl.col("socm").is_not_null()).then(pl.lit("pairs")).alias("pair_source"))
    )


def _compute_missing_pairs(failures: pl.DataFrame, collapse: CollapseInputs) -> pl.DataFrame:
    """Compute the pair statistics absent from pairs.parquet on the token store (``pair_socm``)."""
    missing = failures.filter(pl.col("socm").is_null())
    if missing.is_empty():
        return failures
    store_path = collapse.summary.get("token_store")
    if not store_path:
        raise RagDiagError(
            f"{len(missing)} (relevant, confuser) pairs are not in {collapse.path / 'pairs.parquet'} and "
            "its summary.json names no token_store to compute them from"
        )
    from rag_diag.collapse import pair_socm
    from rag_diag.encode import TokenStore

    store = TokenStore.open(store_path)
    index = {doc_id: position for position, doc_id in enumerate(store.doc_ids)}
    named = set(missing["relevant_id"].to_list()) | set(missing["confuser_id"].to_list())
    absent = sorted(named - set(index))
    if absent:
        raise RagDiagError(f"{store_path}: document '{absent[0]}' is not in the collapse run's token store")
    layer = collapse.summary.get("layer")
    result = pair_socm(
        store,
        np.array([index[d] for d in missing["relevant_id"].to_list()], dtype=np.int64),
        np.array([index[d] for d in missing["confuser_id"].to_list()], dtype=np.int64),
        layer=layer if isinstance(layer, int) else None,
        drop_special=bool(collapse.summary.get("drop_special", False)),
    )
    computed = missing.select("query_id").with_columns(
        *(pl.Series(name, np.asarray(getattr(result, name), dtype=np.float64)).alias(f"new_{name}")
          for name in PAIR_STATS)
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
    queries: pl.DataFrame, collapse: CollapseInputs, labels: dict[str, str], socm_threshold: float
) -> pl.DataFrame:
    """One row per failed query: confuser, pair statistics, both documents' collapse statistics, labels.

    ``queries`` is :func:`query_table` joined with the relevant document's statistics
    (``relevant_collapse_mean`` …); the confuser's are joined here.

    ``second_order_separates`` ⇔ pair SOCM ≥ ``socm_threshold`` (the corpus' high-SOCM quantile): the
    two token distributions differ while their means coincide, so second-order information tells
    apart what mean pooling merged. ``socm_quantile`` = share of corpus pairs with SOCM ≤ the pair's.
    """
    failures = queries.filter(pl.col("failed")).drop("failed")
    failures = _compute_missing_pairs(_pair_lookup(failures, collapse.pairs), collapse)
    failures = failures.join(
        _doc_columns(collapse.docs, collapse.pairs, "confuser"), left_on="confuser_id",
        right_on="confuser_doc_id", how="left",
    )
    corpus_socm = np.sort(collapse.pairs["socm"].drop_nulls().to_numpy().astype(np.float64))
    pair_socm_values = failures["socm"].to_numpy().astype(np.float64)
    quantile = np.searchsorted(corpus_socm, pair_socm_values, side="right") / max(len(corpus_socm), 1)
    return failures.with_columns(
        pl.Series("socm_quantile", quantile),
        (pl.col("socm") >= socm_threshold).alias("second_order_separates"),
        *(_label(f"{role}_id", labels).alias(f"{role}_label") for role in ("relevant", "confuser")),
    ).with_columns((pl.col("relevant_label") != pl.col("confuser_label")).alias("labels_differ"))


# ---------------------------------------------------------------------------------------------- verdict


def _implicated(share_high_socm: float | None, auroc_ci_excludes_half: bool) -> bool:
    return (share_high_socm is not None and share_high_socm >= HIGH_SOCM_SHARE) or auroc_ci_excludes_half


def judge(failure_rate: float, share_high_socm: float | None, auroc_ci_excludes_half: bool) -> str:
    """Verdict label on mean pooling from the three pieces of evidence (monotone in each).

    collapse implicated ⇔ share of failures with a high-SOCM pair ≥ HIGH_SOCM_SHARE, or the collapse
    AUROC's CI lies above AUROC_CHANCE. Then: failure rate ≤ FAILURE_RATE_ADEQUATE → ``adequate``;
    failure rate ≥ FAILURE_RATE_UNSUITABLE and collapse implicated → ``unsuitable``; else ``at risk``.
    """
    implicated = _implicated(share_high_socm, auroc_ci_excludes_half)
    if failure_rate <= FAILURE_RATE_ADEQUATE:
        return "adequate"
    if failure_rate >= FAILURE_RATE_UNSUITABLE and implicated:
        return "unsuitable"
    return "at risk"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _verdict(summary: dict[str, Any]) -> dict[str, Any]:
    collapse_auroc = summary["collapse"]["auroc"]
    share = summary["share_failures_high_socm"]
    label = judge(summary["failure_rate"], share, collapse_auroc["ci_excludes_half"])
    implicated = _implicated(share, collapse_auroc["ci_excludes_half"])
    beyond = summary["beyond_mean_similarity"]
    evidence = [
        f"failure rate {summary['failure_rate']:.3f} ({summary['n_failures']} of {summary['n_queries']} "
        f"queries lose their relevant document at rank 1); adequate ≤ {FAILURE_RATE_ADEQUATE}, "
        f"unsuitable ≥ {FAILURE_RATE_UNSUITABLE} when collapse is implicated",
        f"{summary['n_failures_high_socm']} of {summary['n_failures']} failures (share {_fmt(share)}) have a "
        f"(relevant, confuser) pair with SOCM ≥ {summary['high_socm_threshold']['value']:.4f}, the corpus' "
        f"{HIGH_SOCM_QUANTILE:.0%} pair quantile; collapse implicated at share ≥ {HIGH_SOCM_SHARE}",
        f"AUROC of the relevant document's collapse rate for failure {_fmt(collapse_auroc['auroc'])} "
        f"(95% CI {_fmt(collapse_auroc['ci_low'])}–{_fmt(collapse_auroc['ci_high'])}); "
        f"collapse implicated when the CI excludes {AUROC_CHANCE}",
        f"AUROC of the mean-pooled cosine to the nearest neighbour "
        f"{_fmt(summary['cos_nn']['auroc']['auroc'])}; "
        f"collapse beyond mean similarity: likelihood-ratio p = {_fmt(beyond['p_value'], 4)} "
        f"(coefficient {_fmt(beyond['coef_extra'])} log-odds per SD)",
    ]
    if label == "adequate":
        text = "failures are rare enough that mean pooling serves this knowledge base."
    elif label == "unsuitable":
        text = ("failures are frequent and track second-order collapse: use a second-order strategy "
                "(mean+std, second-order rerank) or multi-vector retrieval.")
    elif implicated:
        text = ("failures are frequent enough to matter and collapse is implicated: "
                "compare second-order strategies.")
    else:
        text = ("failures are frequent but not explained by second-order collapse: look at the encoder, "
                "chunking or qrels before changing the pooling.")
    return {"label": label, "summary": text, "evidence": evidence, "collapse_implicated": bool(implicated)}


THRESHOLDS = {
    "FAILURE_RATE_ADEQUATE": FAILURE_RATE_ADEQUATE,
    "FAILURE_RATE_UNSUITABLE": FAILURE_RATE_UNSUITABLE,
    "HIGH_SOCM_QUANTILE": HIGH_SOCM_QUANTILE,
    "HIGH_SOCM_SHARE": HIGH_SOCM_SHARE,
    "AUROC_CHANCE": AUROC_CHANCE,
    "SIGNIFICANCE_LEVEL": SIGNIFICANCE_LEVEL,
}


# ---------------------------------------------------------------------------------------------- statistics


def corpus_statistics(predictors: pl.DataFrame) -> dict[str, Any]:
    """Collapse rate and cos_nn of the relevant document as predictors of failure.

    Rows with a missing predictor are left out (counted in ``n_used``). Returns deciles of the collapse
    rate, AUROC with bootstrap CI and Spearman ρ for each predictor, and the likelihood-ratio test of
    collapse beyond cos_nn.
    """
    usable = predictors.drop_nulls(["relevant_collapse_mean", "relevant_cos_nn"])
    failed = usable["failed"].to_numpy()
    collapse = usable["relevant_collapse_mean"].to_numpy().astype(np.float64)
    cos_nn = usable["relevant_cos_nn"].to_numpy().astype(np.float64)
    beyond = stats.likelihood_ratio_test(cos_nn, collapse, failed)
    adds = None if beyond["p_value"] is None else bool(
        beyond["p_value"] < SIGNIFICANCE_LEVEL and beyond["coef_extra"] > 0
    )
    return {
        "n_used": len(usable),
        "deciles": stats.failure_rate_by_decile(collapse, failed),
        "collapse": {"auroc": stats.auroc_with_ci(collapse, failed).to_dict(),
                     "spearman": stats.spearman(collapse, failed)},
        "cos_nn": {"auroc": stats.auroc_with_ci(cos_nn, failed).to_dict(),
                   "spearman": stats.spearman(cos_nn, failed)},
        "beyond_mean_similarity": {**beyond, "collapse_adds_information": adds},
    }


# ---------------------------------------------------------------------------------------------- API


def _default_command(eval_dir: Path, collapse_dir: Path, out: Path, strategy: str) -> str:
    parts = ["rag-diag", "diagnose", "--eval", str(eval_dir), "--collapse", str(collapse_dir)]
    parts += ["--out", str(out)]
    if strategy != "mean":
        parts += ["--strategy", strategy]
    return shlex.join(parts)


def diagnose(
    eval_dir: str | Path,
    collapse_dir: str | Path,
    out: str | Path,
    strategy: str = "mean",
    *,
    corpus: str | Path | None = None,
    report: bool = True,
    command: str | None = None,
) -> Diagnosis:
    """Link ``strategy``'s failures to collapse; write failures.parquet, queries.parquet, diagnosis.json.

    Args:
        eval_dir: an evaluation folder (metrics.json, per_query.parquet, qrels.tsv).
        collapse_dir: a collapse folder (summary.json, docs.parquet, pairs.parquet) of the same corpus.
        out: output folder (created; other files in it are left alone).
        strategy: the strategy whose failures are diagnosed.
        corpus: BEIR folder for texts, queries and labels (default: the one recorded in metrics.json).
        report: also render report.html and summary.md into ``out``.
        command: the command line to record (default: the equivalent ``rag-diag diagnose`` call).
    """
    eval_dir, collapse_dir, out = Path(eval_dir), Path(collapse_dir), Path(out)
    evaluation, collapse = load_eval(eval_dir), load_collapse(collapse_dir)
    _check_same_model(evaluation, collapse)
    texts, query_texts, labels = _texts_and_labels(_corpus_folder(evaluation.metrics, corpus))
    queries = query_table(evaluation, strategy)
    _check_known_ids(queries, collapse.docs, collapse.path)
    queries = queries.join(
        _doc_columns(collapse.docs, collapse.pairs, "relevant"), left_on="relevant_id",
        right_on="relevant_doc_id", how="left",
    )
    socm_values = collapse.pairs["socm"].drop_nulls().to_numpy().astype(np.float64)
    threshold = float(np.quantile(socm_values, HIGH_SOCM_QUANTILE)) if len(socm_values) else float("inf")
    failures = failure_table(queries, collapse, labels, threshold)
    n_queries, n_failures = len(queries), len(failures)
    n_high = int(failures["second_order_separates"].sum())
    summary: dict[str, Any] = {
        "strategy": strategy,
        "eval_dir": str(eval_dir),
        "collapse_dir": str(collapse_dir),
        "model": evaluation.metrics.get("model") or collapse.summary.get("model"),
        "n_queries": n_queries,
        "n_failures": n_failures,
        "failure_rate": n_failures / n_queries if n_queries else 0.0,
        "n_pairs_computed": int((failures["pair_source"] == "computed").sum()),
        "high_socm_threshold": {
            "quantile": HIGH_SOCM_QUANTILE, "value": threshold, "n_pairs": len(socm_values),
        },
        "n_failures_high_socm": n_high,
        "share_failures_high_socm": n_high / n_failures if n_failures else None,
        "labels_known": bool(labels),
        "n_failures_labels_differ": int(failures["labels_differ"].fill_null(False).sum()),
        **corpus_statistics(queries),
        "thresholds": THRESHOLDS,
        "command": command or _default_command(eval_dir, collapse_dir, out, strategy),
        "collapse_command": collapse.summary.get("command"),
    }
    summary["verdict"] = _verdict(summary)
    diagnosis = Diagnosis(
        out=out, strategy=strategy, queries=queries, failures=failures, summary=summary,
        collapse_rates=collapse.docs["collapse_mean"].to_numpy().astype(np.float64),
        metrics=evaluation.metrics, texts=texts, query_texts=query_texts,
    )
    _write(diagnosis, report)
    return diagnosis


def _write(diagnosis: Diagnosis, report: bool) -> None:
    out = diagnosis.out
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_parquet(out / "failures.parquet", diagnosis.failures)
    atomic.write_parquet(out / "queries.parquet", diagnosis.queries)
    atomic.write_json(out / "diagnosis.json", diagnosis.summary)
    if report:
        from rag_diag.report import render_report

        render_report(out, diagnosis.report_data())


# ---------------------------------------------------------------------------------------------- report


def strategy_rows(metrics: dict[str, Any], delta_metric: str = "nDCG@10") -> list[StrategyRow]:
    """Comparison rows from an evaluation's metrics.json (Δ and p-value on ``delta_metric`` vs mean)."""
    table = metrics.get("metrics") or {}
    baseline = (table.get("mean") or {}).get(delta_metric)
    rows = []
    for name, values in table.items():
        test = ((metrics.get("significance") or {}).get(name) or {}).get(delta_metric) or {}
        value = values.get(delta_metric)
        rows.append(StrategyRow(
            strategy=name,
            p_at_1=values.get("P@1"),
            mrr_at_10=values.get("MRR@10"),
            ndcg_at_10=values.get("nDCG@10"),
            delta_vs_mean=None if baseline is None or value is None else value - baseline,
            p_value=test.get("corrected_p_value", test.get("p_value")),
            significant=test.get("significant"),
        ))
    return rows


def _headline(summary: dict[str, Any]) -> list[Headline]:
    collapse_auroc = summary["collapse"]["auroc"]
    cos_auroc = summary["cos_nn"]["auroc"]
    share = summary["share_failures_high_socm"]
    beyond = summary["beyond_mean_similarity"]
    return [
        Headline("failure rate", f"{summary['failure_rate']:.3f}",
                 f"{summary['n_failures']} of {summary['n_queries']} queries miss rank 1"),
        Headline("failures with a collapsed pair", _fmt(share),
                 f"pair SOCM ≥ corpus p{int(HIGH_SOCM_QUANTILE * 100)} "
                 f"= {summary['high_socm_threshold']['value']:.4f}"),
        Headline("AUROC collapse rate → failure", _fmt(collapse_auroc["auroc"]),
                 f"95% CI {_fmt(collapse_auroc['ci_low'])}–{_fmt(collapse_auroc['ci_high'])}"),
        Headline("AUROC mean cosine → failure", _fmt(cos_auroc["auroc"]),
                 f"95% CI {_fmt(cos_auroc['ci_low'])}–{_fmt(cos_auroc['ci_high'])}"),
        Headline("collapse beyond mean similarity", f"p = {_fmt(beyond['p_value'], 4)}",
                 "likelihood-ratio test, logistic failure ~ cos_nn + collapse"),
    ]
