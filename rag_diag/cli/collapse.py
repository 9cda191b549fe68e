"""``rag-diag collapse``: SOCM over a corpus (all pairs of a sample, or k nearest neighbours per document)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer

from rag_diag import atomic
from rag_diag.cli.app import app
from rag_diag.errors import RagDiagError

DTYPES = ("float64", "float32")


def _command_line(options: dict[str, Any]) -> str:
    """The canonical command line that reproduces this run."""
    parts = ["rag-diag", "collapse"]
    for name, value in options.items():
        flag = "--" + name.replace("_", "-")
        if value is True:
            parts.append(flag)
        elif value is not None and value is not False:
            parts.extend([flag, str(value)])
    return shlex.join(parts)


def _pairs_frame(doc_ids: list[str], doc_a: np.ndarray, doc_b: np.ndarray, stats: Any) -> Any:
    import polars as pl

    ids = np.asarray(doc_ids, dtype=object)
    return pl.DataFrame(
        {
            "doc_a": ids[doc_a].tolist(), "doc_b": ids[doc_b].tolist(), "d_mu": stats.d_mu,
            "d_sigma": stats.d_sigma, "socm": stats.socm, "cos": stats.cos,
        }
    )


def _docs_frame(doc_ids: list[str], texts: np.ndarray, stats: Any, knn: Any = None) -> Any:
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
        pairs = _pairs_frame(store.doc_ids, result.doc_a, result.doc_b, result.pairs)
        docs = _docs_frame(store.doc_ids, result.texts, result.text_stats)
    else:
        knn = knn_collapse(store, k, rank=rank, **options)  # type: ignore[arg-type]
        pairs = _pairs_frame(store.doc_ids, knn.doc_a, knn.doc_b, knn.pairs)
        docs = _docs_frame(store.doc_ids, np.arange(len(store)), knn.text_stats, knn)
    summary: dict[str, Any] = {
        "model": model, "mode": mode, "n_docs": docs.height, "n_pairs": pairs.height,
        "avg_socm": float(pairs["socm"].mean()), "avg_concentration": float(docs["concentration"].mean()),
        "token_store": str(store.path), "layer": layer, "drop_special": drop_special,
        "dtype": str(dtype).removeprefix("torch."), "device": device, "command": command,
    }
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


def _check_mode(pairs: str | None, knn: int | None, rank: int | None) -> str:
    if (pairs is None) == (knn is None):
        raise RagDiagError("choose one mode: --pairs all (with --sample N --seed S) or --knn K")
    if pairs is not None and pairs != "all":
        raise RagDiagError(f"--pairs takes only 'all', got '{pairs}'")
    if rank is not None and knn is None:
        raise RagDiagError("--rank applies to --knn mode only")
    return "pairs" if pairs is not None else "knn"


@app.command("collapse")
def collapse_command(
    corpus: Annotated[Path, typer.Option(help="BEIR folder, its corpus.jsonl, or a text file (one text per line).")],
    out: Annotated[Path, typer.Option(help="Folder for pairs.parquet, docs.parquet and summary.json.")],
    model: str = typer.Option("minilm", help="Registered model name or a local model folder."),
    pairs: str = typer.Option(None, help="'all': every pair of a seeded sample (the paper's protocol)."),
    sample: int = typer.Option(None, min=2, help="Texts in the --pairs all sample (default: all texts)."),
    seed: int = typer.Option(0, help="Seed of the --pairs all sample."),
    knn: int = typer.Option(None, min=1, help="SOCM of each document against its K nearest mean-pooled neighbours."),
    rank: int = typer.Option(None, min=1, help="--knn only: use a rank-R covariance summary instead of all tokens."),
    layer: str = typer.Option("last", help="'last', a hidden-state index, or 'all' (adds layers.parquet)."),
    drop_special: bool = typer.Option(False, help="Drop [CLS]/[SEP]/BOS tokens (the paper keeps them)."),
    device: str = typer.Option("cpu", help="cpu, cuda or auto."),
    dtype: str = typer.Option("float64", help="Precision of the token products: float64 or float32."),
) -> None:
    """Second-order collapse (SOCM) of a corpus, from its token store (encoded once, cached)."""
    import torch

    from rag_diag.corpora.io import load_corpus
    from rag_diag.encode import encode_corpus
    from rag_diag.models import resolve_device

    mode = _check_mode(pairs, knn, rank)
    if dtype not in DTYPES:
        raise RagDiagError(f"--dtype must be float64 or float32, got '{dtype}'")
    device = resolve_device(device)
    docs = load_corpus(corpus)
    store = encode_corpus(docs, model, layers=layer, device=device, show_progress=True)
    command = _command_line(
        {"corpus": corpus, "model": model, "pairs": pairs, "sample": sample, "seed": seed if pairs else None,
         "knn": knn, "rank": rank, "layer": layer, "drop_special": drop_special, "device": device,
         "dtype": dtype, "out": out}
    )
    summary = write_collapse(
        store, out, mode=mode, model=model, sample=sample, seed=seed, k=knn, rank=rank,
        profile_layers=layer == "all", drop_special=drop_special, device=device,
        dtype=getattr(torch, dtype), command=command,
    )
    typer.echo(
        f"{summary['mode']}: {summary['n_docs']} docs, {summary['n_pairs']} pairs, "
        f"avg SOCM {summary['avg_socm']:.4f}, avg concentration {summary['avg_concentration']:.4f} → {out}"
    )
