"""The ``licenses`` knowledge base: ScanCode licence notices labelled by their licence expression.

Source: the ``*.RULE`` files of PyPI ``licensedcode-data`` (ScanCode LicenseDB, nexB, CC-BY-4.0).
Each rule is YAML front matter (``license_expression``, flags) and a notice / reference text. Notices
that differ in one word ("version 2 or later" vs "version 3 or later", "only" vs "or later") carry
different labels, so lexical near-duplicates with different meanings are explicit.

Eligible notices: a ``license_expression``, not ``is_false_positive`` (those have no label and are
left out), not ``is_deprecated``, at least :data:`MIN_WORDS` words after whitespace normalisation.
Exact duplicates (case-insensitive, whitespace-normalised) are merged into the lowest rule id; a text
that occurs under two different labels is dropped entirely, since no retriever could separate it.

Sizes: ``small`` (:data:`SMALL_NOTICES` notices) and an integer N draw notices of at most
:data:`SHORT_MAX_WORDS` words from *confusable families* (labels that are equal once versions and
``-plus``/``-only`` are removed, e.g. gpl-2.0 / gpl-2.0-plus / gpl-3.0-plus), round-robin over labels
so every label is represented evenly; ``full`` takes every eligible notice. A seeded tenth of the
notices (:data:`QUERY_FRACTION`) are held out as queries, never the last one of a label, and each
query's relevant documents are all corpus notices with the same label.

Near-duplicates (``near_duplicates.parquet``): document pairs whose TF-IDF cosine is at least
:data:`NEAR_DUPLICATE_THRESHOLD`, with word 1–2-grams (lowercased, single-character tokens such as
version digits kept, l2-normalised, smoothed idf fitted on the corpus documents).
"""

from __future__ import annotations

import importlib.metadata
import random
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rag_diag import atomic
from rag_diag.corpora.io import Corpus, Qrels, Queries
from rag_diag.corpora.writers import write_beir
from rag_diag.errors import RagDiagError, first_line

PACKAGE = "licensedcode-data"
MIN_WORDS = 8
SHORT_MAX_WORDS = 120
SMALL_NOTICES = 2750
QUERY_FRACTION = 0.1
NEAR_DUPLICATE_THRESHOLD = 0.9
TOKEN_PATTERN = r"(?u)\b\w+\b"
ATTRIBUTION = (
    "Licence notices from ScanCode LicenseDB, nexB, CC-BY-4.0 "
    "(https://creativecommons.org/licenses/by/4.0/), read from the PyPI package {package} {version}. "
    "Changes: whitespace normalised; notices selected, de-duplicated and split into documents and "
    "queries as recorded in manifest.json.\n"
)
_VERSION = re.compile(r"-?\d+(?:\.\d+)*(?:-plus|-only)?|-plus|-only")
_KIND_FLAGS = ("is_license_notice", "is_license_reference", "is_license_text", "is_license_tag",
               "is_license_intro", "is_license_clue")


@dataclass(frozen=True)
class Notice:
    """One eligible rule: its id (the RULE file stem), label, kind and normalised text."""

    rule: str
    label: str
    kind: str
    text: str


def unavailable() -> str | None:
    """None when ``licensedcode-data`` is installed, else how to install it."""
    try:
        importlib.metadata.distribution(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return f"pip install {PACKAGE}==32.1.0"
    return None


def package_version() -> str:
    """Installed version of ``licensedcode-data``."""
    return importlib.metadata.version(PACKAGE)


def rules_dir() -> Path:
    """The folder of ``*.RULE`` files inside the installed package."""
    folder = Path(str(importlib.metadata.distribution(PACKAGE).locate_file("licensedcode/data/rules")))
    if not folder.is_dir():
        raise RagDiagError(f"{folder}: licence rules not found; reinstall {PACKAGE}")
    return folder


def parse_rule(path: Path) -> tuple[dict[str, Any], str]:
    """Split a RULE file into its front matter (a dict) and its whitespace-normalised text."""
    import yaml

    raw = path.read_text(encoding="utf-8")
    if not raw.startswith("---"):
        return {}, " ".join(raw.split())
    _, front, text = raw.split("---", 2)
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        meta = yaml.load(front, Loader=loader) or {}
    except yaml.YAMLError as exc:
        raise RagDiagError(f"{path}: bad YAML front matter ({first_line(exc)})") from None
    return meta, " ".join(text.split())


def _kind(meta: dict[str, Any]) -> str:
    return next((flag[3:] for flag in _KIND_FLAGS if meta.get(flag)), "other")


def read_notices(folder: Path | None = None) -> list[Notice]:
    """Every eligible notice, sorted by rule id, exact duplicates merged (see the module docstring)."""
    by_text: dict[str, list[Notice]] = defaultdict(list)
    for path in sorted((folder or rules_dir()).glob("*.RULE")):
        meta, text = parse_rule(path)
        label = meta.get("license_expression")
        if not label or meta.get("is_false_positive") or meta.get("is_deprecated"):
            continue
        if len(text.split()) < MIN_WORDS:
            continue
        by_text[text.lower()].append(Notice(path.stem, str(label), _kind(meta), text))
    kept = [group[0] for group in by_text.values() if len({n.label for n in group}) == 1]
    return sorted(kept, key=lambda notice: notice.rule)


def label_family(label: str) -> str:
    """The label without versions and ``-plus``/``-only``: gpl-2.0-plus and gpl-3.0 are both ``gpl``."""
    return _VERSION.sub("", label)


def _by_label(notices: list[Notice]) -> dict[str, list[Notice]]:
    groups: dict[str, list[Notice]] = defaultdict(list)
    for notice in notices:
        groups[notice.label].append(notice)
    return dict(sorted(groups.items()))


def confusable(notices: list[Notice]) -> list[Notice]:
    """Short notices whose label shares its family with another label that has ≥ 2 short notices."""
    short = [n for n in notices if len(n.text.split()) <= SHORT_MAX_WORDS]
    groups = {label: group for label, group in _by_label(short).items() if len(group) >= 2}
    families: dict[str, list[str]] = defaultdict(list)
    for label in groups:
        families[label_family(label)].append(label)
    return [n for labels in families.values() if len(labels) >= 2 for label in labels for n in groups[label]]


def select_round_robin(notices: list[Notice], count: int, seed: int) -> list[Notice]:
    """``count`` notices taken one label at a time (labels sorted, each label's notices shuffled)."""
    rng = random.Random(seed)
    queues = []
    for group in _by_label(notices).values():
        group = sorted(group, key=lambda notice: notice.rule)
        rng.shuffle(group)
        queues.append(group)
    chosen: list[Notice] = []
    for depth in range(max((len(q) for q in queues), default=0)):
        for queue in queues:
            if depth < len(queue) and len(chosen) < count:
                chosen.append(queue[depth])
    return sorted(chosen, key=lambda notice: notice.rule)


def split_queries(notices: list[Notice], seed: int) -> tuple[list[Notice], list[Notice]]:
    """Hold out a seeded :data:`QUERY_FRACTION` as queries, leaving ≥ 1 document per label."""
    rng = random.Random(seed + 1)
    remaining = {label: len(group) for label, group in _by_label(notices).items()}
    order = sorted(notices, key=lambda notice: notice.rule)
    rng.shuffle(order)
    target = max(1, round(len(notices) * QUERY_FRACTION))
    held: set[str] = set()
    for notice in order:
        if len(held) == target:
            break
        if remaining[notice.label] > 1:
            remaining[notice.label] -= 1
            held.add(notice.rule)
    docs = [n for n in notices if n.rule not in held]
    queries = [n for n in notices if n.rule in held]
    return docs, queries


def select(notices: list[Notice], size: str | int, seed: int) -> list[Notice]:
    """The notices of one build size (see the module docstring)."""
    if size == "full":
        return notices
    count = SMALL_NOTICES if size == "small" else int(size)
    return select_round_robin(confusable(notices), count, seed)


def near_duplicates(
    ids: list[str], texts: list[str], labels: list[str], threshold: float = NEAR_DUPLICATE_THRESHOLD
) -> Any:
    """Document pairs with TF-IDF cosine ≥ ``threshold`` (see the module docstring), as a polars frame.

    Columns: doc_a, doc_b (doc_a < doc_b), similarity (rounded to 6 decimals), same_label, label_a,
    label_b; rows sorted.
    """
    import polars as pl
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(ngram_range=(1, 2), token_pattern=TOKEN_PATTERN, dtype=np.float64)
    matrix = vectorizer.fit_transform(texts)
    rows: list[tuple[str, str, float, bool, str, str]] = []
    for start in range(0, len(ids), 2048):
        block = (matrix[start:start + 2048] @ matrix.T).tocoo()
        for i, j, value in zip(block.row + start, block.col, block.data, strict=True):
            if value >= threshold and i < j:
                a, b = sorted((int(i), int(j)), key=lambda k: ids[k])
                same = labels[a] == labels[b]
                rows.append((ids[a], ids[b], round(float(value), 6), same, labels[a], labels[b]))
    rows.sort()
    schema = {"doc_a": pl.String, "doc_b": pl.String, "similarity": pl.Float64, "same_label": pl.Boolean,
              "label_a": pl.String, "label_b": pl.String}
    return pl.DataFrame(rows, schema=schema, orient="row")


def _corpus(notices: list[Notice]) -> Corpus:
    return Corpus(
        ids=[n.rule for n in notices], texts=[n.text for n in notices],
        metadata=[{"label": n.label, "kind": n.kind} for n in notices],
    )


def _queries(notices: list[Notice]) -> Queries:
    return Queries(
        ids=[n.rule for n in notices], texts=[n.text for n in notices],
        metadata=[{"label": n.label, "kind": n.kind} for n in notices],
    )


def _qrels(docs: list[Notice], queries: list[Notice]) -> Qrels:
    by_label = _by_label(docs)
    return Qrels({q.rule: {d.rule: 1 for d in by_label[q.label]} for q in queries})


def _labels_frame(docs: list[Notice], queries: list[Notice]) -> Any:
    import polars as pl

    rows = [(n.rule, "doc", n.label) for n in docs] + [(n.rule, "query", n.label) for n in queries]
    schema = {"id": pl.String, "role": pl.String, "label": pl.String}
    return pl.DataFrame(sorted(rows), schema=schema, orient="row")


def build(folder: Path, size: str | int, seed: int) -> dict[str, Any]:
    """Write the ``licenses`` BEIR folder, labels, near-duplicates and attribution into ``folder``."""
    eligible = read_notices()
    chosen = select(eligible, size, seed)
    if len(chosen) < 2:
        raise RagDiagError(f"size {size} leaves fewer than 2 notices; choose a larger size")
    docs, queries = split_queries(chosen, seed)
    qrels = _qrels(docs, queries)
    write_beir(folder, _corpus(docs), _queries(queries), qrels)
    atomic.write_parquet(folder / "labels.parquet", _labels_frame(docs, queries))
    pairs = near_duplicates([d.rule for d in docs], [d.text for d in docs], [d.label for d in docs])
    atomic.write_parquet(folder / "near_duplicates.parquet", pairs)
    version = package_version()
    atomic.write_text(folder / "ATTRIBUTION", ATTRIBUTION.format(package=PACKAGE, version=version))
    different = int((~pairs["same_label"]).sum())
    return {
        "source": {"package": PACKAGE, "version": version, "files": "licensedcode/data/rules/*.RULE"},
        "licence": "CC-BY-4.0",
        "attribution": "ScanCode LicenseDB, nexB, CC-BY-4.0",
        "counts": {
            "eligible_notices": len(eligible), "documents": len(docs), "queries": len(queries),
            "labels": len({d.label for d in docs}), "qrels": sum(len(r) for r in qrels.judgements.values()),
            "near_duplicate_pairs": pairs.height, "different_label_pairs": different,
        },
        "parameters": {
            "min_words": MIN_WORDS, "short_max_words": SHORT_MAX_WORDS, "query_fraction": QUERY_FRACTION,
            "skipped": "is_false_positive, is_deprecated, texts under min_words, texts under two labels",
            "near_duplicate_measure": (
                f"TF-IDF cosine >= {NEAR_DUPLICATE_THRESHOLD}, word 1-2-grams, token pattern "
                f"{TOKEN_PATTERN}, lowercased, l2-normalised, smoothed idf fitted on the corpus documents"
            ),
        },
    }
