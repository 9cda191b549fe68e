"""The ``kb-scale`` knowledge base: a real, mixed corpus of up to 100,000 documents for scaling runs.

Sources, in this order of preference (every document is a real text; ids carry the source):

1. ``lic-<rule>``: every eligible ScanCode licence rule, as read by :func:`rag_diag.corpora.licenses.
   read_notices` (label: the licence expression);
2. ``lictext-<key>-<n>``: the licence texts (``licensedcode/data/licenses/*.LICENSE``, not deprecated),
   split as a RAG chunker would: paragraphs packed greedily into chunks of at most
   :data:`CHUNK_WORDS` words, a longer paragraph first split at sentences (then at words); chunks under
   :data:`~rag_diag.corpora.licenses.MIN_WORDS` words are dropped (label: the licence key);
3. ``wiki-<n>``: the Wikipedia sentences of :func:`rag_diag.corpora.wiki.wiki_sentences` in file order
   (label: the article title);
4. ``kjv-<verse>`` and ``web-<verse>``: KJV and WEB verses read by :func:`rag_diag.corpora.bible.
   read_verses` when the SWORD modules are installed (label: the OSIS book).

Exact-duplicate texts (after whitespace normalisation) are removed, the first occurrence in the order
above wins; near-duplicates (licence variants, one verse in two translations) are kept on purpose.

Mix: the *base mix* fills ``B = min(available, max(N, FULL))`` documents in the order of preference,
each source taken whole until the last one, which is sampled. A build of N documents takes from every
source its share of N in proportion to the base mix (largest remainders, ties to the preferred source),
a seeded sample kept in source order; so ``full`` is every licence rule, licence chunk and Wikipedia
sentence, every KJV verse and a seeded sample of WEB verses, and smaller sizes keep its proportions.

Queries (``queries.jsonl``, ``qrels/test.tsv``; only when the Bible is installed): up to
:data:`QUERIES` seeded WEB verses that are not in the corpus, each relevant to the KJV verse with its
id, as in the ``bible`` corpus.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import random
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from rag_diag import atomic
from rag_diag.corpora import bible, licenses, wiki
from rag_diag.corpora.io import Corpus, Qrels, Queries
from rag_diag.corpora.writers import write_beir
from rag_diag.errors import RagDiagError

FULL = 100_000
SMALL = 10_000
CHUNK_WORDS = 200
QUERIES = 200
SOURCES = ("lic", "lictext", "wiki", "kjv", "web")
_PARAGRAPH = re.compile(r"\n\s*\n")
ATTRIBUTION = (
    "Licence rules and texts from ScanCode LicenseDB, nexB, CC-BY-4.0 "
    "(https://creativecommons.org/licenses/by/4.0/), read from the PyPI package licensedcode-data {version}. "
    "Sentences from English Wikipedia, CC-BY-SA (https://creativecommons.org/licenses/by-sa/4.0/), "
    "see the article histories for authors; read from the gensim wheel's test data. "
    "KJV and WEB verses: public domain. Changes: whitespace normalised; licence texts split into chunks; "
    "texts selected and de-duplicated as recorded in manifest.json.\n"
)


class Doc(NamedTuple):
    """One candidate document: its id (prefixed by its source), text and label."""

    id: str
    text: str
    label: str


def unavailable() -> str | None:
    """None when the licence rules and Wikipedia sentences are installed, else how to install them.

    The Bible is optional here: without it ``small`` still builds, and a size beyond what the other
    sources give fails in :func:`build` with the ``apt-get install sword-text-kjv sword-text-web`` hint.
    """
    return licenses.unavailable() or wiki.unavailable()


def bible_installed() -> bool:
    """Whether pysword and the KJV and WEB SWORD modules are installed (see :mod:`rag_diag.corpora.bible`)."""
    return bible.unavailable() is None


def chunk_paragraphs(paragraphs: list[str], max_words: int = CHUNK_WORDS) -> list[str]:
    """Pack consecutive paragraphs greedily into chunks of at most ``max_words`` words.

    A paragraph longer than ``max_words`` is split into sentences first (a sentence still longer, into
    runs of ``max_words`` words). Words keep their order; whitespace is normalised to single spaces.
    """
    pieces: list[list[str]] = []
    for paragraph in paragraphs:
        words = paragraph.split()
        if len(words) <= max_words:
            pieces.append(words)
            continue
        for sentence in wiki.split_sentences(" ".join(words)):
            tokens = sentence.split()
            pieces.extend(tokens[i:i + max_words] for i in range(0, len(tokens), max_words))
    chunks: list[str] = []
    current: list[str] = []
    for piece in pieces:
        if current and len(current) + len(piece) > max_words:
            chunks.append(" ".join(current))
            current = []
        current.extend(piece)
    if current:
        chunks.append(" ".join(current))
    return chunks


def licence_texts_dir() -> Path:
    """The folder of ``*.LICENSE`` files next to the rules in the installed licensedcode-data."""
    folder = licenses.rules_dir().parent / "licenses"
    if not folder.is_dir():
        raise RagDiagError(f"{folder}: licence texts not found; reinstall {licenses.PACKAGE}")
    return folder


def licence_text_docs(folder: Path | None = None) -> Iterator[Doc]:
    """Chunks of every licence text that is not deprecated, in key order (see the module docstring)."""
    for path in sorted((folder or licence_texts_dir()).glob("*.LICENSE")):
        meta, _ = licenses.parse_rule(path)
        if meta.get("is_deprecated"):
            continue
        raw = path.read_text(encoding="utf-8")
        body = raw.split("---", 2)[2] if raw.startswith("---") else raw
        for index, chunk in enumerate(chunk_paragraphs(_PARAGRAPH.split(body))):
            if len(chunk.split()) >= licenses.MIN_WORDS:
                yield Doc(f"lictext-{path.stem}-{index:03d}", chunk, path.stem)


def _titled_articles(path: Path) -> Iterator[tuple[str, str]]:
    """(title, wikitext) of every article page, as :func:`rag_diag.corpora.wiki._article_texts` reads them."""
    import bz2
    import xml.etree.ElementTree as ElementTree

    with bz2.open(path, "rb") as handle:
        title = namespace = redirect = None
        for _, element in ElementTree.iterparse(handle, events=("end",)):
            tag = element.tag.rsplit("}", 1)[-1]
            if tag == "title":
                title = element.text
            elif tag == "ns":
                namespace = element.text
            elif tag == "redirect":
                redirect = True
            elif tag == "text" and namespace == "0" and not redirect and element.text:
                yield str(title), element.text
            elif tag == "page":
                title = namespace = redirect = None
                element.clear()


def wiki_docs(min_words: int = 5, max_words: int = 60) -> Iterator[Doc]:
    """The sentences of :func:`rag_diag.corpora.wiki.wiki_sentences` (same cleaning, order), with titles."""
    seen: set[str] = set()
    for title, wikitext in _titled_articles(wiki.wiki_file()):
        for paragraph in wiki.strip_markup(wikitext).splitlines():
            for sentence in wiki.split_sentences(paragraph):
                sentence = wiki._clean_sentence(sentence)
                if sentence and wiki._keep(sentence, min_words, max_words) and sentence not in seen:
                    seen.add(sentence)
                    yield Doc(f"wiki-{len(seen) - 1:05d}", sentence, title)


@contextlib.contextmanager
def _block_cache() -> Iterator[None]:
    """Let pysword decompress each compressed block once, not once per verse (about 20x faster, same text).

    pysword 0.2.8 ``ZTextModule._decompressed_text`` inflates a whole block for every verse it
    returns; reading verses in order, the block of the previous verse is remembered (one block, keyed
    by the module object itself so no other module can hit it). Restored on exit.
    """
    from pysword import bible as sword

    module = getattr(sword, "ZTextModule", None)
    original = getattr(module, "_decompressed_text", None)
    if module is None or original is None:
        yield
        return
    last: dict[tuple[Any, str, int], bytes] = {}

    def decompressed_text(self: Any, testament: str, buf_num: int) -> bytes:
        key = (self, testament, buf_num)
        if key not in last:
            last.clear()
            last[key] = original(self, testament, buf_num)
        return last[key]

    module._decompressed_text = decompressed_text
    try:
        yield
    finally:
        module._decompressed_text = original
        last.clear()


def bible_docs(name: str) -> Iterator[Doc]:
    """Every verse of one translation (``KJV`` or ``WEB``) in canonical order, labelled by its book."""
    with _block_cache():
        verses = bible.read_verses(bible.module_ids()[name])
    prefix = name.lower()
    for verse, text in verses.items():
        yield Doc(f"{prefix}-{verse}", text, verse.split(".", 1)[0])


def read_pools(with_bible: bool | None = None) -> dict[str, list[Doc]]:
    """Every source's distinct documents in order of preference (exact duplicates: first one wins)."""
    with_bible = bible_installed() if with_bible is None else with_bible
    readers: dict[str, Any] = {
        "lic": lambda: (Doc(f"lic-{n.rule}", n.text, n.label) for n in licenses.read_notices()),
        "lictext": licence_text_docs, "wiki": wiki_docs,
    }
    if with_bible:
        readers |= {"kjv": lambda: bible_docs("KJV"), "web": lambda: bible_docs("WEB")}
    seen: set[str] = set()
    pools: dict[str, list[Doc]] = {}
    for source, read in readers.items():
        pools[source] = []
        for doc in read():
            if doc.text not in seen:
                seen.add(doc.text)
                pools[source].append(doc)
    return pools


def apportion(total: int, weights: dict[str, int]) -> dict[str, int]:
    """Split ``total`` in proportion to ``weights``: floors, then largest remainders (ties: first key)."""
    whole = sum(weights.values())
    shares = {key: total * weight // whole for key, weight in weights.items()}
    order = sorted(weights, key=lambda key: (-(total * weights[key] % whole), list(weights).index(key)))
    for key in order[: total - sum(shares.values())]:
        shares[key] += 1
    return shares


def plan(available: dict[str, int], count: int) -> tuple[dict[str, int], dict[str, int]]:
    """(base mix, documents per source) for a build of ``count`` (see the module docstring)."""
    total = sum(available.values())
    if count > total:
        detail = ", ".join(f"{source} {n:,}" for source, n in available.items())
        hint = "" if "kjv" in available else f"; install the Bible for more: {bible.INSTALL_HINT}"
        raise RagDiagError(f"size {count:,} exceeds the {total:,} distinct documents available ({detail}){hint}")
    left = min(total, max(count, FULL))
    base = {}
    for source, n in available.items():
        base[source] = min(n, left)
        left -= base[source]
    return base, apportion(count, base)


def select(pools: dict[str, list[Doc]], count: int, seed: int) -> tuple[list[Doc], dict[str, Any]]:
    """The documents of a build of ``count`` and the mix that chose them."""
    base, quotas = plan({source: len(pool) for source, pool in pools.items()}, count)
    chosen: list[Doc] = []
    for index, (source, pool) in enumerate(pools.items()):
        if quotas[source] == len(pool):
            chosen.extend(pool)
        else:
            keep = sorted(random.Random(seed * len(SOURCES) + index).sample(range(len(pool)), quotas[source]))
            chosen.extend(pool[i] for i in keep)
    mix = {"available": {s: len(p) for s, p in pools.items()}, "base": base, "documents": quotas}
    return chosen, mix


def choose_queries(chosen: list[Doc], web: list[Doc], seed: int) -> list[Doc]:
    """Up to :data:`QUERIES` WEB verses outside the corpus whose KJV verse is in it, sorted by id."""
    ids = {doc.id for doc in chosen}
    texts = {doc.text for doc in chosen}
    candidates = [d for d in web if d.id not in ids and "kjv-" + d.id[4:] in ids and d.text not in texts]
    picked = random.Random(seed).sample(candidates, min(QUERIES, len(candidates)))
    return sorted(picked, key=lambda doc: doc.id)


def _versions(with_bible: bool) -> dict[str, str]:
    versions = {package: importlib.metadata.version(package) for package in (licenses.PACKAGE, "gensim")}
    if with_bible:
        ids = bible.module_ids()
        versions |= {"pysword": importlib.metadata.version("pysword"),
                     "sword modules": f"{ids['KJV']}, {ids['WEB']}"}
    return versions


def build(folder: Path, size: str | int, seed: int) -> dict[str, Any]:
    """Write ``corpus.jsonl`` (and Bible queries when installed) and ``ATTRIBUTION`` into ``folder``."""
    count = FULL if size == "full" else SMALL if size == "small" else int(size)
    with_bible = bible_installed()
    pools = read_pools(with_bible)
    chosen, mix = select(pools, count, seed)
    queries = choose_queries(chosen, pools["web"], seed) if with_bible else []
    del pools
    corpus = Corpus(ids=[d.id for d in chosen], texts=[d.text for d in chosen],
                    metadata=[{"source": d.id.split("-", 1)[0], "label": d.label} for d in chosen])
    if queries:
        qrels = Qrels({f"q-{q.id}": {"kjv-" + q.id[4:]: 1} for q in queries})
        query_set = Queries(ids=[f"q-{q.id}" for q in queries], texts=[q.text for q in queries],
                            metadata=[{"source": "web", "label": q.label} for q in queries])
        write_beir(folder, corpus, query_set, qrels)
    else:
        write_beir(folder, corpus)
    versions = _versions(with_bible)
    atomic.write_text(folder / "ATTRIBUTION", ATTRIBUTION.format(version=versions[licenses.PACKAGE]))
    return {
        "source": versions,
        "licence": "mixed: CC-BY-4.0 (licence rules and texts), CC-BY-SA (Wikipedia), public domain (Bible)",
        "attribution": "ScanCode LicenseDB, nexB, CC-BY-4.0; English Wikipedia contributors, CC-BY-SA",
        "counts": {"documents": len(corpus), "queries": len(queries), **mix["documents"]},
        "mix": {
            "rule": (f"base: fill min(available, max(N, {FULL})) in source order, each source whole until "
                     "the last; N documents apportioned to the base (largest remainders), seeded sample"),
            **mix,
        },
        "parameters": {"chunk_words": CHUNK_WORDS, "min_words": licenses.MIN_WORDS, "bible": with_bible,
                       "dedup": "exact text after whitespace normalisation, first source wins"},
    }
