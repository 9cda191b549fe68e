"""The bundled knowledge bases by name, and the build step they share (atomic folder + manifest).

Each corpus names a builder ``build(folder, size, seed) -> dict`` that writes its files into
``folder`` and returns the manifest fields it knows (source, licence, counts, parameters), and a
check ``unavailable() -> str | None`` saying how to install what it needs when something is missing.
:func:`build_corpus` adds the name, size, seed, the build command and the sha256 of every file, and
publishes the folder atomically. Nothing in a manifest depends on the time or the output path, so
the same seed gives byte-identical folders.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag_diag import atomic
from rag_diag.errors import RagDiagError

MANIFEST = "manifest.json"
SIZES = ("small", "full")


@dataclass(frozen=True)
class CorpusSpec:
    """A bundled knowledge base: where its builder lives (``module:function``) and what it is."""

    name: str
    builder: str
    check: str
    description: str
    source: str
    licence: str
    optional: bool = False

    def build(self, folder: Path, size: str | int, seed: int) -> dict[str, Any]:
        """Run the builder (imported on first use so ``corpora list`` stays cheap)."""
        return _resolve(self.builder)(folder, size, seed)

    def unavailable(self) -> str | None:
        """None when the corpus can be built here, else how to get what is missing."""
        return _resolve(self.check)()


def _resolve(reference: str) -> Any:
    module, function = reference.split(":")
    return getattr(importlib.import_module(module), function)


CORPORA: dict[str, CorpusSpec] = {
    spec.name: spec
    for spec in (
        CorpusSpec(
            "licenses", "rag_diag.corpora.licenses:build", "rag_diag.corpora.licenses:unavailable",
            "licence notices labelled by SPDX-like expression; near-duplicates with different labels",
            "PyPI licensedcode-data", "CC-BY-4.0 (ScanCode LicenseDB, nexB)",
        ),
        CorpusSpec(
            "lee", "rag_diag.corpora.lee:build", "rag_diag.corpora.lee:unavailable",
            "50 news documents + 1,225 human-rated similarity pairs (STS-style check)",
            "PyPI gensim (test data)", "LGPL-2.1 (gensim test data)",
        ),
        CorpusSpec(
            "wiki-sentences", "rag_diag.corpora.wiki:build",
            "rag_diag.corpora.wiki:unavailable",
            "real Wikipedia sentences (the paper's random-text protocol)",
            "PyPI gensim (test data: shortened enwiki dump)", "CC-BY-SA (Wikipedia text)",
        ),
        CorpusSpec(
            "bible", "rag_diag.corpora.bible:build", "rag_diag.corpora.bible:unavailable",
            "WEB verses as queries against KJV verses, aligned by verse id (optional)",
            "Debian sword-text-kjv, sword-text-web + PyPI pysword", "public domain", optional=True,
        ),
        CorpusSpec(
            "kb-scale", "rag_diag.corpora.scale:build", "rag_diag.corpora.scale:unavailable",
            "mixed real knowledge base for scaling runs: licence rules and texts, Wikipedia, Bible verses",
            "PyPI licensedcode-data, gensim (test data); Debian sword-text-kjv, sword-text-web + pysword",
            "mixed: CC-BY-4.0 (ScanCode LicenseDB, nexB), CC-BY-SA (Wikipedia), public domain (Bible)",
        ),
    )
}


def get_spec(name: str) -> CorpusSpec:
    """The spec registered under ``name``; an unknown name is a one-line user error."""
    if name not in CORPORA:
        raise RagDiagError(f"unknown corpus '{name}' (known: {', '.join(sorted(CORPORA))})")
    return CORPORA[name]


def list_corpora() -> list[dict[str, Any]]:
    """One row per bundled corpus: name, description, source, licence, optional, status."""
    rows = []
    for spec in CORPORA.values():
        missing = spec.unavailable()
        rows.append({
            "name": spec.name, "description": spec.description, "source": spec.source,
            "licence": spec.licence, "optional": spec.optional,
            "status": "available" if missing is None else f"missing: {missing}",
        })
    return rows


def parse_size(size: str | int) -> str | int:
    """``small``, ``full`` or a positive integer (a number of texts, read by each builder)."""
    if isinstance(size, int) or str(size).isdigit():
        number = int(size)
        if number < 1:
            raise RagDiagError(f"size must be small, full or a positive integer, not '{size}'")
        return number
    if size not in SIZES:
        raise RagDiagError(f"size must be small, full or a positive integer, not '{size}'")
    return size


def file_checksums(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` except the manifest, keyed by POSIX relative path."""
    sums = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder).as_posix()
        if relative != MANIFEST:
            sums[relative] = hashlib.sha256(path.read_bytes()).hexdigest()
    return sums


def check_output_folder(out: Path) -> None:
    """Refuse to replace a non-empty folder that is not a previous corpus build (it would be deleted): one marked
    as a rag-diag ``corpus``, or unmarked (as committed) with a corpus manifest, whose ``build_command`` is a
    ``rag-diag corpora`` command. Other rag-diag outputs (an index bundle also has a ``manifest.json``) are refused."""
    if out.is_file():
        raise RagDiagError(f"{out}: is a file; --out must be a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    kind = atomic.artefact_kind(out)
    if kind not in (None, "corpus"):
        raise RagDiagError(f"{out}: holds a rag-diag '{kind}' output, not a corpus; refusing to overwrite it")
    if kind is None and not str(_manifest_field(out / MANIFEST, "build_command")).startswith("rag-diag corpora "):
        raise RagDiagError(f"{out}: folder is not empty and holds no corpus {MANIFEST}; refusing to overwrite it")


def _manifest_field(path: Path, key: str) -> object:
    """``key`` of the JSON object at ``path``; None when the file is missing, unreadable or not an object."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record.get(key) if isinstance(record, dict) else None


def build_corpus(name: str, out: str | Path | None = None, size: str | int = "small", seed: int = 0) -> dict:
    """Build corpus ``name`` into ``out`` (default ``corpora/<name>``) and return its manifest."""
    spec = get_spec(name)
    size = parse_size(size)
    missing = spec.unavailable()
    if missing is not None:
        raise RagDiagError(f"corpus '{name}' cannot be built here: {missing}")
    out = Path(out) if out is not None else Path("corpora") / name
    check_output_folder(out)
    with atomic.atomic_dir(out, kind="corpus", force=True) as folder:  # check_output_folder vetted it
        fields = spec.build(folder, size, seed)
        manifest = {
            "name": name,
            "size": size,
            "seed": seed,
            "build_command": f"rag-diag corpora build {name} --size {size} --seed {seed}",
            **fields,
            "files": file_checksums(folder),
        }
        atomic.write_json(folder / MANIFEST, manifest)
    return manifest
