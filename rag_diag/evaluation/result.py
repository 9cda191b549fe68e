"""The evaluation artefact: metrics manifest, per-query table, runs and qrels, and its one owner.

An evaluation folder holds ``metrics.json`` (the manifest: metrics and significance per strategy,
k, model identity, index, corpus path and hash, re-rank settings, the command), ``per_query.parquet``
(one row per (query, strategy): first relevant rank and id, top document, confuser, scores),
``runs/<strategy>.trec`` and ``qrels.tsv``. Only this module knows those names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from rag_diag import atomic
from rag_diag.corpora.io import Qrels, load_qrels
from rag_diag.corpora.trec import read_trec_run, write_trec_run
from rag_diag.corpora.writers import write_qrels_tsv
from rag_diag.errors import RagDiagError
from rag_diag.readers import read_json_object, read_parquet, require_files

KIND = "evaluation"
FILES = ("metrics.json", "per_query.parquet", "qrels.tsv")
PER_QUERY_SCHEMA = {
    "query_id": pl.String,
    "strategy": pl.String,
    "first_relevant_rank": pl.Int64,
    "first_relevant_id": pl.String,
    "relevant_score": pl.Float64,
    "top_doc": pl.String,
    "top_score": pl.Float64,
    "confuser": pl.String,
    "confuser_score": pl.Float64,
    "n_relevant": pl.Int64,
}


@dataclass(frozen=True)
class Ranking:
    """One query's ranked documents (best first) and their scores (higher is better)."""

    doc_ids: list[str]
    scores: np.ndarray


Run = dict[str, Ranking]


def rescored_head(ranking: Ranking, depth: int, scores: np.ndarray) -> Ranking:
    """``ranking`` with its first ``depth`` documents re-scored by ``scores`` and sorted by them (stable, highest
    first); the tail keeps its order and scores."""
    head = ranking.doc_ids[:depth]
    order = np.argsort(-scores, kind="stable")
    return Ranking([head[i] for i in order] + ranking.doc_ids[depth:],
                   np.concatenate([scores[order], ranking.scores[depth:]]))


def monotone_scores(scores: np.ndarray) -> np.ndarray:
    """s'_1 = s_1, s'_r = min(s_r, nextafter(s'_{r−1}, −∞)) in float32: strictly decreasing in float32.

    Equal to float32(s) wherever s already decreases by more than one float32 step, so a run written
    to disk and read back (by ranx, trec_eval or us) keeps exactly the order it was ranked in.
    """
    adjusted = np.asarray(scores, dtype=np.float32).copy()
    below = np.float32(-np.inf)
    for rank in range(1, len(adjusted)):
        adjusted[rank] = min(adjusted[rank], np.nextafter(adjusted[rank - 1], below))
    return adjusted.astype(np.float64)


def run_scores(run: Run) -> dict[str, dict[str, float]]:
    """``{qid: {docid: score}}`` with monotone scores (the form ranx and TREC files take)."""
    return {
        query_id: dict(zip(ranking.doc_ids, monotone_scores(ranking.scores).tolist(), strict=True))
        for query_id, ranking in run.items()
    }


@dataclass
class EvalResult:
    """Metrics, significance, per-query rows and runs of every strategy on one query set."""

    manifest: dict[str, Any]
    per_query: pl.DataFrame
    runs: dict[str, Run]
    qrels: Qrels
    path: Path | None = None
    scores: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    """Per-query values of every metric by run, in the runs' query order (in memory only, not written)."""

    @property
    def metrics(self) -> dict[str, dict[str, float]]:
        return dict(self.manifest["metrics"])

    @property
    def significance(self) -> dict[str, Any]:
        return dict(self.manifest.get("significance") or {})

    def write(self, out: str | Path, *, force: bool = False) -> EvalResult:
        """Write the folder atomically; returns the result with ``path`` set."""
        with atomic.atomic_dir(out, kind=KIND, force=force) as tmp:
            (tmp / "runs").mkdir()
            for name, run in self.runs.items():
                write_trec_run(tmp / "runs" / f"{name}.trec", run_scores(run), tag=name)
            write_qrels_tsv(tmp / "qrels.tsv", self.qrels)
            atomic.write_parquet(tmp / "per_query.parquet", self.per_query)
            atomic.write_json(tmp / "metrics.json", self.manifest)
        self.path = Path(out)
        return self

    @classmethod
    def open(cls, path: str | Path) -> EvalResult:
        """Read and validate an evaluation folder; a missing file or column is a one-line error."""
        path = require_files(path, FILES, "evaluation")
        manifest = read_json_object(path / "metrics.json")
        if not isinstance(manifest.get("metrics"), dict):
            raise RagDiagError(f"{path / 'metrics.json'}: no 'metrics' object")
        per_query = read_parquet(path / "per_query.parquet", tuple(PER_QUERY_SCHEMA))
        per_query = per_query.with_columns(
            pl.col("query_id", "first_relevant_id", "top_doc", "confuser").cast(pl.String)
        )
        runs: dict[str, Run] = {}
        for file in sorted((path / "runs").glob("*.trec")):
            runs[file.stem] = {
                query_id: Ranking(list(scores), np.array(list(scores.values()), dtype=np.float64))
                for query_id, scores in read_trec_run(file).items()
            }
        return cls(manifest, per_query, runs, load_qrels(path / "qrels.tsv"), path)


def ranked(doc_ids: list[str], scores: np.ndarray | list[float]) -> Ranking:
    """The documents by descending score, ties by id: the order of every run, whatever produced the scores."""
    pairs = sorted(zip(doc_ids, np.asarray(scores, dtype=np.float64).tolist(), strict=True),
                   key=lambda item: (-item[1], item[0]))
    return Ranking([doc for doc, _ in pairs], np.array([score for _, score in pairs], dtype=np.float64))


def from_scores(scores: dict[str, dict[str, float]]) -> Run:
    """A run from ``{qid: {docid: score}}``: each query's documents by descending score (ties by id)."""
    return {query_id: ranked(list(docs), list(docs.values())) for query_id, docs in scores.items()}
