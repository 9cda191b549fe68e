"""Collapse artefacts: a corpus → ``pairs.parquet``, ``docs.parquet``, ``summary.json`` (and ``layers.parquet``).

The folder is the hand-off to ``diagnose``: ``pairs.parquet`` (doc_a, doc_b, d_mu, d_sigma, socm, cos),
``docs.parquet`` (doc_id, n_tokens, concentration, trace and, in kNN mode, collapse_mean, collapse_max,
top_confuser) and ``summary.json`` (model, mode, counts, averages, token store, the command).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import numpy as np

from rag_diag import atomic
from rag_diag.errors import RagDiagError

DTYPES = ("float64", "float32")


def command_line(options: dict[str, Any]) -> str:
    """The canonical command line that reproduces this run."""
    parts = ["rag-diag", "collapse"]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif value is not None and value is not False:
            parts.extend([flag, str(value)])
    return shlex.join(parts)


def pairs_frame(doc_ids: list[str], doc_a: np.ndarray, doc_b: np.ndarray, stats: Any) -> Any:
    """``pairs.parquet`` rows: (doc_a, doc_b, d_mu, d_sigma, socm, cos) for index pairs into ``doc_ids``."""
    import polars as pl

    ids = np.asarray(doc_ids, dtype=object)
    return pl.DataFrame(
        {
            "doc_a": ids[doc_a].tolist(), "doc_b": ids[doc_b].tolist(), "d_mu": stats.d_mu,
            "d_sigma": stats.d_sigma, "socm": stats.socm, "cos": stats.cos,
        }
    )


def docs_frame(doc_ids: list[str], texts: np.ndarray, stats: Any, knn: Any = None) -> Any:
    """``docs.parquet`` rows for texts ``texts``; with a kNN result also collapse_mean / max and top_confuser."""
    import polars as pl

    ids = np.asarray(doc_ids, dtype=object)
    columns: dict[str, Any] = {
        "doc_id": ids[texts].tolist(), "n_tokens": stats.n_tokens, "concentration": stats.concentration,
        "trace": stats.trace,
    }
    if knn is not None:
        columns |= {
            "collapse_mean": knn.collapse_mean, "collapse_max": knn.collapse_max,
            "top_confuser": ids[knn.top_confuser].tolist(),
        }
    return pl.DataFrame(columns)


def collapse_summary(
    store: Any, pairs: Any, docs: Any, *, mode: str, drop_special: bool, command: str
) -> dict[str, Any]:
    """The core of ``summary.json``: model identity, mode, counts, averages, token store, layer, command."""
    return {
        "model": store.manifest.get("model"), "mode": mode, "n_docs": docs.height, "n_pairs": pairs.height,
        "avg_socm": float(pairs["socm"].mean()), "avg_concentration": float(docs["concentration"].mean()),
        "token_store": str(store.path), "layer": store.layers[-1], "drop_special": drop_special, "command": command,
    }


def write_collapse(
    store: Any,
    out: Path,
    *,
    mode: str,
    model: str,
    sample: int | None,
    seed: int,
    k: int | None,
    rank: int | None,
    profile_layers: bool,
    drop_special: bool,
    device: str,
    dtype: Any,
    command: str,
) -> dict[str, Any]:
    """Compute SOCM in ``mode`` and write pairs.parquet, docs.parquet, summary.json (and layers.parquet).

    The folder appears complete or not at all. Returns the summary.
    """
    import polars as pl

    from rag_diag.collapse import all_pairs
    from rag_diag.collapse_knn import knn_collapse
    from rag_diag.collapse_layers import layer_profile

    layer = store.layers[-1]
    options = {"layer": layer, "drop_special": drop_special, "device": device, "dtype": dtype, "show_progress": True}
    if mode == "pairs":
        result = all_pairs(store, sample, seed, **options)
        pairs = pairs_frame(store.doc_ids, result.doc_a, result.doc_b, result.pairs)
        docs = docs_frame(store.doc_ids, result.texts, result.text_stats)
    else:
        knn = knn_collapse(store, k, rank=rank, **options)  # type: ignore[arg-type]
        pairs = pairs_frame(store.doc_ids, knn.doc_a, knn.doc_b, knn.pairs)
        docs = docs_frame(store.doc_ids, np.arange(len(store)), knn.text_stats, knn)
    summary = collapse_summary(store, pairs, docs, mode=mode, drop_special=drop_special, command=command)
    summary |= {"model_name": model, "dtype": str(dtype).removeprefix("torch."), "device": device}
    summary |= {"sample": sample, "seed": seed} if mode == "pairs" else {"k": k, "rank": rank}
    with atomic.atomic_dir(out) as tmp:
        pairs.write_parquet(tmp / "pairs.parquet")
        docs.write_parquet(tmp / "docs.parquet")
        if profile_layers:
            options.pop("layer")
            rows = layer_profile(store, sample, seed, **options)
            pl.DataFrame([row.as_dict() for row in rows]).write_parquet(tmp / "layers.parquet")
            summary["layers"] = [row.as_dict() for row in rows]
        atomic.write_json(tmp / "summary.json", summary)
    return summary


def check_mode(pairs: str | None, knn: int | None, rank: int | None) -> str:
    if (pairs is None) == (knn is None):
        raise RagDiagError("choose one mode: --pairs all (with --sample N --seed S) or --knn K")
    if pairs is not None and pairs != "all":
        raise RagDiagError(f"--pairs takes only 'all', got '{pairs}'")
    if rank is not None and knn is None:
        raise RagDiagError("--rank applies to --knn mode only")
    return "pairs" if pairs is not None else "knn"


def collapse_corpus(
    corpus: Any,
    out: str | Path,
    *,
    model: str = "minilm",
    knn: int | None = None,
    sample: int | None = None,
    seed: int = 0,
    rank: int | None = None,
    layer: str = "last",
    drop_special: bool = False,
    device: str = "cpu",
    dtype: str = "float64",
) -> dict[str, Any]:
    """Encode ``corpus`` once (cached) and write its collapse folder; kNN mode when ``knn`` is given.

    Args:
        corpus: a :class:`~rag_diag.corpora.io.Corpus` or a path ``load_corpus`` accepts.
        out: the output folder (replaced atomically).
        knn: k nearest mean-pooled neighbours per document; None means all pairs of a ``sample``.
    Returns:
        The summary written to ``summary.json``.
    """
    import torch

    from rag_diag.corpora.io import Corpus, load_corpus
    from rag_diag.encode import encode_corpus
    from rag_diag.models import resolve_device

    mode = check_mode("all" if knn is None else None, knn, rank)
    if dtype not in DTYPES:
        raise RagDiagError(f"--dtype must be float64 or float32, got '{dtype}'")
    device = resolve_device(device)
    docs = corpus if isinstance(corpus, Corpus) else load_corpus(corpus)
    store = encode_corpus(docs, model, layers=layer, device=device, show_progress=True)
    command = command_line(
        {"corpus": corpus if not isinstance(corpus, Corpus) else corpus.source, "model": model,
         "pairs": "all" if knn is None else None, "sample": sample, "seed": seed if knn is None else None,
         "knn": knn, "rank": rank, "layer": layer, "drop_special": drop_special, "device": device,
         "dtype": dtype, "out": out}
    )
    return write_collapse(
        store, Path(out), mode=mode, model=model, sample=sample, seed=seed, k=knn, rank=rank,
        profile_layers=layer == "all", drop_special=drop_special, device=device,
        dtype=getattr(torch, dtype), command=command,
    )
