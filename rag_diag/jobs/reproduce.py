"""Reproduce the paper's average SOCM and concentration on real Wikipedia sentences.

Protocol (shared/docs/science.md §3): n random texts (seed), no prompts or prefixes, last layer,
special tokens kept, SOCM averaged over all n(n−1)/2 pairs. The paper's Wikipedia sample is not
available offline; :func:`rag_diag.corpora.wiki.wiki_sentences` gives a comparable one. Acceptance:
all-mpnet-base-v2 within ±0.02 of the paper's 0.100.

Run from a pipeline file (``[pipeline] kind = "reproduce_paper"``) with ``rag-diag run FILE`` or
``python -m rag_diag.jobs.reproduce FILE``.
"""

from __future__ import annotations

import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import torch

from rag_diag import atomic
from rag_diag.errors import RagDiagError

KIND = "reproduce-paper"
DEFAULT_MODELS = ("mpnet", "minilm", "gemma-270m", "random-minilm")
TOLERANCE = 0.02
# Paper, Wikipedia column (average SOCM). MiniLM-L6 is not in the paper: its L12 sibling is shown.
PAPER: dict[str, tuple[str, float]] = {
    "mpnet": ("all-mpnet-base-v2", 0.100),
    "minilm": ("all-MiniLM-L12-v2 (paper has L12, we run L6)", 0.313),
}


def _measure(model: str, texts: list[str], device: str, dtype: torch.dtype) -> dict[str, Any]:
    from rag_diag.collapse.allpairs import all_pairs
    from rag_diag.tokens.extract import encode_texts

    started = time.perf_counter()
    store = encode_texts(texts, model=model, device=device, show_progress=True)
    encoded = time.perf_counter()
    result = all_pairs(store, device=device, dtype=dtype, show_progress=True)
    finished = time.perf_counter()
    paper_model, paper_value = PAPER.get(model, ("", None))  # type: ignore[assignment]
    avg_socm = float(result.pairs.socm.mean())
    row: dict[str, Any] = {
        "model": model,
        "identity": store.manifest.get("model", {}),
        "avg_socm": avg_socm,
        "avg_concentration": float(result.text_stats.concentration.mean()),
        "avg_d_mu": float(result.pairs.d_mu.mean()),
        "avg_d_sigma": float(result.pairs.d_sigma.mean()),
        "n_pairs": len(result.pairs),
        "mean_tokens": float(result.text_stats.n_tokens.mean()),
        "encode_seconds": round(encoded - started, 2),
        "collapse_seconds": round(finished - encoded, 2),
        "paper_model": paper_model,
        "paper_socm": paper_value,
    }
    if model == "mpnet":
        row["within_tolerance"] = abs(avg_socm - PAPER["mpnet"][1]) <= TOLERANCE
    return row


def _table(rows: list[dict[str, Any]], n: int, seed: int) -> str:
    lines = [
        "# Reproduction: average SOCM on Wikipedia sentences",
        "",
        f"{n} real Wikipedia sentences (gensim enwiki test file, `wiki_sentences(n={n}, seed={seed})`), "
        f"all {n * (n - 1) // 2:,} pairs, last layer, special tokens kept, exact BW² (no jitter).",
        "",
        "| model | avg SOCM (ours) | paper (Wikipedia) | avg concentration | avg d_μ | avg d_Σ | tokens/text |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        paper = f"{row['paper_socm']:.3f} ({row['paper_model']})" if row["paper_socm"] is not None else "—"
        lines.append(
            f"| {row['model']} | {row['avg_socm']:.3f} | {paper} | {row['avg_concentration']:.3f} | "
            f"{row['avg_d_mu']:.3f} | {row['avg_d_sigma']:.3f} | {row['mean_tokens']:.1f} |"
        )
    mpnet = next((row for row in rows if row["model"] == "mpnet"), None)
    if mpnet is not None:
        verdict = "within" if mpnet["within_tolerance"] else "OUTSIDE"
        lines += ["", f"all-mpnet-base-v2: {mpnet['avg_socm']:.3f} vs paper 0.100 — {verdict} ±{TOLERANCE}."]
    lines += [
        "",
        "gemma-270m is a pretrained decoder backbone and random-minilm a randomly initialised control; "
        "neither is in the paper. Wikipedia text: CC-BY-SA, © Wikipedia contributors.",
        "",
    ]
    return "\n".join(lines)


def reproduce_paper(config: dict[str, Any], out: Path | None = None) -> list[dict[str, Any]]:
    """Measure every configured model and write ``table.md`` and ``results.json`` under ``out``.

    Args:
        config: the pipeline file as a dict (its ``[pipeline]`` table or the table itself): models,
            n, seed, device, dtype, out.
        out: output folder (default: the config's ``out``).
    """
    from rag_diag.corpora.wiki import wiki_sentences

    params = config.get("pipeline", config)
    if params.get("kind", "reproduce_paper") != "reproduce_paper":
        raise RagDiagError(f"pipeline kind is '{params.get('kind')}', expected 'reproduce_paper'")
    models = params.get("models", list(DEFAULT_MODELS))
    if not isinstance(models, list) or not models or not all(isinstance(model, str) for model in models):
        raise RagDiagError(f"models must be a non-empty list of model names, got {models!r}")
    n, seed = params.get("n", 1000), params.get("seed", 0)
    for name, value, least in (("n", n, 2), ("seed", seed, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise RagDiagError(f"{name} must be an integer ≥ {least}, got {value!r}")
    dtype_name = params.get("dtype", "float64")
    if dtype_name not in ("float64", "float32"):
        raise RagDiagError(f"dtype must be float64 or float32, got '{dtype_name}'")
    out = Path(out or params.get("out", "reports/reproduce_paper"))
    atomic.check_output(out, KIND)
    from rag_diag.devices import resolve_device

    device = resolve_device(params.get("device", "cpu"))
    texts = wiki_sentences(n, seed=seed)
    rows = [_measure(model, texts, device, getattr(torch, dtype_name)) for model in models]
    with atomic.atomic_dir(out, kind=KIND) as tmp:
        atomic.write_json(tmp / "results.json", {"n": n, "seed": seed, "device": device, "dtype": dtype_name,
                                                 "models": rows})
        atomic.write_text(tmp / "table.md", _table(rows, n, seed))
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python -m rag_diag.jobs.reproduce PIPELINE.toml``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m rag_diag.jobs.reproduce PIPELINE.toml", file=sys.stderr)
        return 2
    try:
        config = tomllib.loads(Path(args[0]).read_text())
        rows = reproduce_paper(config)
    except (RagDiagError, OSError, tomllib.TOMLDecodeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for row in rows:
        print(f"{row['model']}: avg SOCM {row['avg_socm']:.4f}, avg concentration {row['avg_concentration']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
