"""The collapse table artefact: per-pair and per-document SOCM, its summary, and its one owner.

A collapse folder holds ``pairs.parquet`` (doc_a, doc_b, d_mu, d_sigma, socm, cos), ``docs.parquet``
(doc_id, n_tokens, concentration, trace and, in kNN mode, collapse_mean, collapse_max, top_confuser),
optionally ``layers.parquet``, and ``summary.json`` (model identity, mode, counts, averages, token
store, corpus hash, the command). Only this module knows those names and columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from rag_diag import atomic
from rag_diag.collapse.socm import PairStats, TextStats
from rag_diag.errors import RagDiagError
from rag_diag.readers import read_json_object, read_parquet, require_files

KIND = "collapse"
FILES = ("summary.json", "docs.parquet", "pairs.parquet")
PAIR_COLUMNS = ("doc_a", "doc_b", "d_mu", "d_sigma", "socm", "cos")
DOC_COLUMNS = ("doc_id", "n_tokens", "concentration", "trace")
SUMMARY_KEYS = ("model", "mode", "n_docs", "n_pairs", "corpus_sha256")
MODES = ("knn", "pairs")


def id_column(ids: pl.Series, rows: np.ndarray) -> pl.Series:
    """``ids[rows]`` as a string column, gathered by polars: no Python list of the N·k ids is built (at
    1,000,000 kNN pairs such a list and the strings copied from it held 0.07 GiB more than the gathered column)."""
    return ids.gather(np.asarray(rows, dtype=np.int64))


def pairs_frame(doc_ids: list[str], doc_a: np.ndarray, doc_b: np.ndarray, stats: PairStats) -> pl.DataFrame:
    """Rows (doc_a, doc_b, d_mu, d_sigma, socm, cos) for index pairs into ``doc_ids``."""
    ids = pl.Series(doc_ids, dtype=pl.String)
    return pl.DataFrame({
        "doc_a": id_column(ids, doc_a), "doc_b": id_column(ids, doc_b),
        "d_mu": stats.d_mu, "d_sigma": stats.d_sigma, "socm": stats.socm, "cos": stats.cos,
    })


def docs_frame(doc_ids: list[str], texts: np.ndarray, stats: TextStats, knn: Any = None) -> pl.DataFrame:
    """Rows for the texts ``texts``; with a :class:`~rag_diag.collapse.knn.KnnResult` also the collapse rates."""
    ids = pl.Series(doc_ids, dtype=pl.String)
    columns: dict[str, Any] = {
        "doc_id": id_column(ids, texts), "n_tokens": stats.n_tokens,
        "concentration": stats.concentration, "trace": stats.trace,
    }
    if knn is not None:
        columns |= {
            "collapse_mean": knn.collapse_mean, "collapse_max": knn.collapse_max,
            "top_confuser": id_column(ids, knn.top_confuser),
        }
    return pl.DataFrame(columns)


def check_summary(summary: dict[str, Any], n_docs: int, n_pairs: int, path: Path) -> None:
    """Refuse a ``summary.json`` that cannot vouch for its tables: a missing model, corpus hash or mode (the checks
    against the evaluation would be skipped), or counts that are not those of ``docs.parquet`` / ``pairs.parquet``."""
    missing = [key for key in SUMMARY_KEYS if not summary.get(key) and summary.get(key) != 0]
    if missing:
        raise RagDiagError(f"{path / 'summary.json'}: no {', '.join(missing)}: not a collapse summary")
    if summary["mode"] not in MODES:
        raise RagDiagError(f"{path / 'summary.json'}: unknown mode {summary['mode']!r} (expected knn or pairs)")
    if (summary["n_docs"], summary["n_pairs"]) != (n_docs, n_pairs):
        raise RagDiagError(f"{path}: summary.json counts {summary['n_docs']} documents and {summary['n_pairs']} "
                           f"pairs but the tables hold {n_docs} and {n_pairs}: the folder is not one run's output")


@dataclass(frozen=True)
class CollapseTable:
    """SOCM of a corpus: per-pair rows, per-document rows, the summary manifest (and a layer profile)."""

    summary: dict[str, Any]
    docs: pl.DataFrame
    pairs: pl.DataFrame
    layers: pl.DataFrame | None = None

    @classmethod
    def build(cls, store: Any, docs: pl.DataFrame, pairs: pl.DataFrame, *, mode: str, drop_special: bool,
              command: str, corpus_sha256: str | None = None, model: dict[str, Any] | None = None,
              **extra: Any) -> CollapseTable:
        """A table with its summary: model identity, mode, counts, averages, token store, layer, command.

        ``store`` may be None for a table built from summaries (no token store kept); then ``model`` names
        the encoder and the layer is the last one."""
        manifest = {} if store is None else store.manifest
        summary = {
            "model": manifest.get("model") or model, "mode": mode, "n_docs": docs.height, "n_pairs": pairs.height,
            "avg_socm": float(pairs["socm"].to_numpy().mean()) if pairs.height else None,
            "avg_concentration": float(docs["concentration"].to_numpy().mean()),
            "token_store": None if store is None else str(store.path),
            "layer": "last" if store is None else store.layers[-1], "drop_special": drop_special,
            "corpus_sha256": corpus_sha256 or manifest.get("text_sha256"), "command": command, **extra,
        }
        return cls(summary=summary, docs=docs, pairs=pairs)

    @property
    def has_rates(self) -> bool:
        """True in kNN mode: every document has a collapse rate (mean / max SOCM over its neighbours)."""
        return "collapse_mean" in self.docs.columns

    def write(self, out: str | Path, *, force: bool = False) -> Path:
        """Write the folder atomically (it appears complete or not at all)."""
        with atomic.atomic_dir(out, kind=KIND, force=force) as tmp:
            self.pairs.write_parquet(tmp / "pairs.parquet")
            self.docs.write_parquet(tmp / "docs.parquet")
            if self.layers is not None:
                self.layers.write_parquet(tmp / "layers.parquet")
            atomic.write_json(tmp / "summary.json", self.summary)
        return Path(out)

    @classmethod
    def open(cls, path: str | Path) -> CollapseTable:
        """Read and validate a collapse folder; a missing file or column is a one-line error."""
        path = require_files(path, FILES, "collapse")
        summary = read_json_object(path / "summary.json")
        docs = read_parquet(path / "docs.parquet", DOC_COLUMNS).with_columns(pl.col("doc_id").cast(pl.String))
        pairs = read_parquet(path / "pairs.parquet", PAIR_COLUMNS)
        pairs = pairs.with_columns(pl.col("doc_a", "doc_b").cast(pl.String))
        layers = read_parquet(path / "layers.parquet", ()) if (path / "layers.parquet").is_file() else None
        check_summary(summary, docs.height, pairs.height, path)
        return cls(summary={**summary, "path": str(path)}, docs=docs, pairs=pairs, layers=layers)
