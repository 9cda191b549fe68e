"""``rag-diag corpora list | build | perturb``: bundled knowledge bases and the near-duplicate generator."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Column, Table

from rag_diag.cli.app import app, console

corpora_app = typer.Typer(help="Bundled knowledge bases and the near-duplicate generator.",
                          no_args_is_help=True)
app.add_typer(corpora_app, name="corpora")


@corpora_app.command("list")
def list_command() -> None:
    """List the corpora that `corpora build` knows: source, licence, whether they can be built here."""
    from rag_diag.corpora.registry import CORPORA, list_corpora

    table = Table("description", "source", "licence", "status")
    table.columns.insert(0, Column("name", no_wrap=True, min_width=max(len(name) for name in CORPORA)))
    for row in list_corpora():
        table.add_row(*(escape(row[key]) for key in ("name", "description", "source", "licence", "status")))
    console.print(table)


@corpora_app.command("build")
def build_command(
    name: Annotated[str, typer.Argument(help="Corpus name (see `rag-diag corpora list`).")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default corpora/NAME).")] = None,
    size: Annotated[str, typer.Option(help="small, full, or a number of texts.")] = "small",
    seed: Annotated[int, typer.Option(help="Seed for sampling and the query split.")] = 0,
) -> dict:
    """Build a bundled corpus deterministically (same seed → byte-identical files) with a manifest."""
    from rag_diag.corpora.registry import build_corpus

    manifest = build_corpus(name, out=out, size=size, seed=seed)
    counts = ", ".join(f"{key} {value}" for key, value in manifest["counts"].items())
    where = out or Path("corpora") / name
    console.print(escape(f"{name} ({manifest['size']}, seed {seed}): {counts} → {where}"))
    return manifest


@corpora_app.command("perturb")
def perturb_command(
    corpus: Annotated[Path, typer.Option(help="BEIR folder, its corpus.jsonl, or a table / text file.")],
    out: Annotated[Path, typer.Option(help="Output BEIR folder: originals + variants, queries, qrels.")],
    seed: Annotated[int, typer.Option(help="Seed that chooses the edits.")] = 0,
    per_doc: Annotated[int, typer.Option(min=1, help="Variants per document.")] = 1,
) -> None:
    """Make meaning-changing near-duplicates of every document, with one targeted query per variant."""
    from rag_diag.corpora.io import load_corpus
    from rag_diag.corpora.perturb import perturb_corpus, write_perturbed

    source = load_corpus(corpus)
    perturbed = perturb_corpus(source, seed=seed, per_doc=per_doc)
    manifest = write_perturbed(out, perturbed, source, seed=seed, per_doc=per_doc)
    edits = ", ".join(f"{kind} {count}" for kind, count in manifest["counts"]["edits"].items())
    console.print(escape(f"{len(source)} documents → {len(perturbed.edits)} variants ({edits}) → {out}"))
