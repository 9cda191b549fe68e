"""Near-duplicate generator: variants that keep a document's surface and change its meaning.

Each variant is its source document with exactly one edit of a few meaning-bearing tokens:

- ``number``: a number or version changes (its first component + 1: "2.0" → "3.0", "2001" → "2002");
- ``negation``: "not" inserted after a modal / auxiliary ("may" → "may not") or removed
  ("must not" → "must", "cannot" → "can");
- ``scope``: "only" ↔ "or later" right after a version number;
- ``swap``: a word replaced by its opposite from :data:`SWAPS` (may ↔ must, permitted ↔ prohibited, …).

Tokens are ``\\w+`` runs joined by inner "." or "'" ("2.0", "don't"); hyphens separate tokens, so
"GPL-2.0-only" is GPL / 2.0 / only. Everything outside the edited span is kept byte for byte.

Every variant gets one query that targets it: the shortest window of the variant around the edit
(8 tokens each side, widened as needed) that occurs in no other document, else the whole variant
text. Its qrels name only the variant (score 1); the source document is the trap. The edits are
recorded in the variant's metadata and in ``edits.parquet``.
"""

from __future__ import annotations

import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rag_diag import atomic
from rag_diag.corpora.io import Corpus, Qrels, Queries
from rag_diag.corpora.writers import write_beir
from rag_diag.errors import RagDiagError

TOKEN = re.compile(r"\w+(?:['.]\w+)*")
NUMBER = re.compile(r"\d+(?:\.\d+)*")
WINDOW = 8
EDIT_TYPES = ("negation", "number", "scope", "swap")
NEGATABLE = frozenset({
    "may", "must", "shall", "should", "can", "will", "would", "could", "is", "are", "was", "were",
    "do", "does", "did", "has", "have", "had",
})
SWAPS: dict[str, str] = {}
for _a, _b in (
    ("may", "must"), ("permitted", "prohibited"), ("allowed", "forbidden"), ("with", "without"),
    ("including", "excluding"), ("before", "after"), ("above", "below"), ("more", "less"),
    ("minimum", "maximum"), ("first", "last"), ("always", "never"), ("increase", "decrease"),
    ("increased", "decreased"), ("true", "false"), ("accept", "reject"), ("accepted", "rejected"),
    ("higher", "lower"), ("north", "south"), ("east", "west"), ("buy", "sell"), ("bought", "sold"),
    ("won", "lost"), ("rise", "fall"), ("rose", "fell"), ("licensor", "licensee"),
    ("required", "optional"), ("revocable", "irrevocable"), ("limited", "unlimited"),
    ("public", "private"), ("commercial", "noncommercial"), ("men", "women"), ("man", "woman"),
):
    SWAPS[_a], SWAPS[_b] = _b, _a
MEANING_TOKENS = NEGATABLE | {"not", "cannot", "can't", "only", "or", "later"} | set(SWAPS)


@dataclass(frozen=True)
class Edit:
    """One variant: which edit made it from which document, and the query that targets it.

    ``before`` is the exact source text replaced at character offset ``start`` (token ``token_index``
    of the source) by ``after``.
    """

    variant_id: str
    source_id: str
    query_id: str
    edit: str
    before: str
    after: str
    start: int
    token_index: int


@dataclass(frozen=True)
class PerturbedCorpus:
    """The original documents plus variants, one targeted query per variant, qrels and the edits."""

    docs: Corpus
    queries: Queries
    qrels: Qrels
    edits: list[Edit]

    def edits_frame(self) -> Any:
        """The edits as a polars DataFrame (one row per variant, in variant order)."""
        import polars as pl

        schema = {"variant_id": pl.String, "source_id": pl.String, "query_id": pl.String, "edit": pl.String,
                  "before": pl.String, "after": pl.String, "start": pl.Int64, "token_index": pl.Int64}
        return pl.DataFrame([asdict(edit) for edit in self.edits], schema=schema)


@dataclass(frozen=True)
class _Candidate:
    edit: str
    token_index: int
    start: int
    end: int
    after: str


def tokens(text: str) -> list[str]:
    """The tokens the edits operate on (see the module docstring)."""
    return TOKEN.findall(text)


def match_case(word: str, like: str) -> str:
    """``word`` in the case of ``like`` (UPPER, Title or lower)."""
    if like.isupper() and len(like) > 1:
        return word.upper()
    return word[:1].upper() + word[1:] if like[:1].isupper() else word


def _bump(number: str) -> str:
    first, _, rest = number.partition(".")
    return str(int(first) + 1) + (f".{rest}" if rest else "")


def _candidates(text: str) -> list[_Candidate]:
    """Every single edit that applies to ``text``, in text order."""
    found = list(TOKEN.finditer(text))
    words = [m.group().lower() for m in found]
    out: list[_Candidate] = []

    def add(edit: str, first: int, last: int, after: str) -> None:
        out.append(_Candidate(edit, first, found[first].start(), found[last].end(), after))

    for i, match in enumerate(found):
        word, following = words[i], words[i + 1] if i + 1 < len(words) else ""
        original = match.group()
        if NUMBER.fullmatch(word):
            add("number", i, i, _bump(word))
            if following == "only":
                hyphenated = text[found[i + 1].start() - 1] == "-"
                add("scope", i + 1, i + 1, "or-later" if hyphenated else "or later")
            elif following == "or" and i + 2 < len(words) and words[i + 2] == "later":
                add("scope", i + 1, i + 2, match_case("only", found[i + 1].group()))
        if word in NEGATABLE and following == "not":
            add("negation", i, i + 1, original)
        elif word in NEGATABLE:
            add("negation", i, i, original + match_case(" not", original))
        elif word == "cannot":
            add("negation", i, i, original[:3])
        if word in SWAPS:
            add("swap", i, i, match_case(SWAPS[word], original))
    return out


def _choose(candidates: list[_Candidate], count: int, rng: random.Random) -> list[_Candidate]:
    """Up to ``count`` candidates, one edit type at a time in seeded order, so variants differ in kind."""
    by_type = {kind: [c for c in candidates if c.edit == kind] for kind in EDIT_TYPES}
    order = [kind for kind in EDIT_TYPES if by_type[kind]]
    rng.shuffle(order)
    chosen: list[_Candidate] = []
    while len(chosen) < count and any(by_type[kind] for kind in order):
        for kind in order:
            if by_type[kind] and len(chosen) < count:
                chosen.append(by_type[kind].pop(rng.randrange(len(by_type[kind]))))
    return chosen


def _query_text(variant: str, candidate: _Candidate, lowered: list[str], own: int) -> str:
    """The shortest window around the edit (≥ WINDOW tokens each side) in no text but ``lowered[own]``."""
    spans = [(m.start(), m.end()) for m in TOKEN.finditer(variant)]
    first = candidate.token_index
    last = first + len(tokens(variant[candidate.start:candidate.start + len(candidate.after)])) - 1
    for width in range(WINDOW, len(spans) + 1, WINDOW):
        window = variant[spans[max(0, first - width)][0]:spans[min(len(spans) - 1, last + width)][1]]
        needle = window.lower()
        if not any(needle in other for index, other in enumerate(lowered) if index != own):
            return window
    return variant


def perturb_corpus(corpus: Corpus, seed: int = 0, per_doc: int = 1) -> PerturbedCorpus:
    """Make up to ``per_doc`` meaning-changing variants of every document, with targeted queries and qrels.

    Args:
        corpus: any corpus; documents with no applicable edit get no variant.
        seed: chooses the edits; the same seed gives the same output.
        per_doc: variants per document (each from one edit of the original).

    Returns:
        The original documents followed by the variants (ids ``<source>~p<k>``), one query per
        variant (id ``q~<variant>``), qrels naming only the variant, and the edits.
    """
    if per_doc < 1:
        raise RagDiagError(f"per_doc must be at least 1, not {per_doc}")
    rng = random.Random(seed)
    known_texts = set(corpus.texts)
    ids: list[str] = []
    texts: list[str] = []
    chosen: list[_Candidate] = []
    edits: list[Edit] = []
    for source_id, text in zip(corpus.ids, corpus.texts, strict=True):
        number = 0
        for candidate in _choose(_candidates(text), per_doc, rng):
            variant = text[:candidate.start] + candidate.after + text[candidate.end:]
            if variant in known_texts:
                continue
            known_texts.add(variant)
            number += 1
            variant_id = f"{source_id}~p{number}"
            ids.append(variant_id)
            texts.append(variant)
            chosen.append(candidate)
            edits.append(Edit(variant_id, source_id, f"q~{variant_id}", candidate.edit,
                              text[candidate.start:candidate.end], candidate.after, candidate.start,
                              candidate.token_index))
    if set(ids) & set(corpus.ids):
        raise RagDiagError("variant ids collide with document ids ending in '~p<k>'; rename those documents")
    lowered = [text.lower() for text in corpus.texts + texts]
    query_texts = [
        _query_text(variant, candidate, lowered, len(corpus) + index)
        for index, (variant, candidate) in enumerate(zip(texts, chosen, strict=True))
    ]
    metadata = [{"perturbation": {k: v for k, v in asdict(e).items() if k != "variant_id"}} for e in edits]
    original_meta = corpus.metadata or [{} for _ in corpus.ids]
    docs = Corpus(
        ids=corpus.ids + ids, texts=corpus.texts + texts,
        titles=(corpus.titles or [""] * len(corpus)) + [""] * len(ids),
        source=corpus.source, metadata=original_meta + metadata,
    )
    queries = Queries(
        ids=[e.query_id for e in edits], texts=query_texts,
        metadata=[{"targets": e.variant_id, "edit": e.edit} for e in edits],
    )
    return PerturbedCorpus(docs, queries, Qrels({e.query_id: {e.variant_id: 1} for e in edits}), edits)


def write_perturbed(
    out: str | Path, perturbed: PerturbedCorpus, source: Corpus, seed: int, per_doc: int
) -> dict[str, Any]:
    """Write ``perturbed`` (made from ``source``) as BEIR + ``edits.parquet`` + manifest, atomically."""
    from rag_diag.corpora.registry import MANIFEST, check_output_folder, file_checksums

    out = Path(out)
    check_output_folder(out)
    counts = {kind: sum(e.edit == kind for e in perturbed.edits) for kind in EDIT_TYPES}
    with atomic.atomic_dir(out, kind="corpus", force=True) as folder:  # check_output_folder vetted it
        write_beir(folder, perturbed.docs, perturbed.queries, perturbed.qrels)
        atomic.write_parquet(folder / "edits.parquet", perturbed.edits_frame())
        manifest = {
            "name": "perturbed",
            "source_corpus_sha256": source.content_hash(),
            "seed": seed,
            "per_doc": per_doc,
            "counts": {"documents": len(perturbed.docs), "variants": len(perturbed.edits),
                       "queries": len(perturbed.queries), "edits": counts},
            "files": file_checksums(folder),
        }
        atomic.write_json(folder / MANIFEST, manifest)
    return manifest
