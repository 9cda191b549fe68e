"""TREC run files (``qid Q0 docid rank score tag``): a validating reader and a deterministic writer.

ranx reads and writes TREC runs too, but without ``file:line`` errors, without a defined order for
tied scores and without atomic replacement; these two functions add exactly that. Scores are written
with ``repr`` (the shortest string that reads back to the same float), so a run survives a round trip.

Fields are separated by whitespace, so an id holding whitespace (a file name, a sentence) is written with its
whitespace and ``%`` percent-encoded (``doc a`` → ``doc%20a``) and decoded on reading; other ids are written as
they are.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import quote, unquote

from rag_diag import atomic
from rag_diag.corpora.io import Corpus, read_lines
from rag_diag.errors import RagDiagError


def read_trec_run(path: str | Path, corpus: Corpus | None = None) -> dict[str, dict[str, float]]:
    """Read a TREC run file (``qid Q0 docid rank score tag``) into ``{qid: {docid: score}}``.

    When ``corpus`` is given, every document id must be in it.
    """
    path = Path(path)
    doc_ids = set(corpus.ids) if corpus is not None else None
    run: dict[str, dict[str, float]] = {}
    for number, line in read_lines(path):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 6:
            raise RagDiagError(
                f"{path}:{number}: expected 6 fields (qid Q0 docid rank score tag), got {len(parts)}"
            )
        query_id, _, doc_id, raw_rank, raw_score, _ = parts
        query_id, doc_id = unquote(query_id), unquote(doc_id)
        try:
            int(raw_rank)
            score = float(raw_score)
        except ValueError:
            raise RagDiagError(
                f"{path}:{number}: rank '{raw_rank}' or score '{raw_score}' is not a number"
            ) from None
        if doc_ids is not None and doc_id not in doc_ids:
            raise RagDiagError(f"{path}:{number}: unknown document id '{doc_id}'")
        row = run.setdefault(query_id, {})
        if doc_id in row:
            raise RagDiagError(f"{path}:{number}: document '{doc_id}' listed twice for query '{query_id}'")
        row[doc_id] = score
    if not run:
        raise RagDiagError(f"{path}: the run is empty")
    return run


_ESCAPED = re.compile(r"[%\s]")


def _field(identifier: str) -> str:
    """``identifier`` with its whitespace and ``%`` percent-encoded (UTF-8), so it stays one field."""
    return _ESCAPED.sub(lambda match: quote(match.group(), safe=""), identifier)


def write_trec_run(path: str | Path, run: dict[str, dict[str, float]], tag: str = "rag-diag") -> Path:
    """Write ``{qid: {docid: score}}`` as a TREC run: queries sorted, documents by score (ties by id)."""
    if not tag or any(ch.isspace() for ch in tag):
        raise RagDiagError(f"run tag '{tag}' must be non-empty and contain no whitespace")
    lines = []
    for query_id in sorted(run):
        ranked = sorted(run[query_id].items(), key=lambda item: (-item[1], item[0]))
        for rank, (doc_id, score) in enumerate(ranked, start=1):
            lines.append(f"{_field(query_id)} Q0 {_field(doc_id)} {rank} {float(score)!r} {tag}")
    return atomic.write_text(path, "\n".join(lines) + "\n" if lines else "")
