"""Real Wikipedia sentences from the enwiki sample shipped inside gensim's wheel (206 pages).

The paper averages SOCM over 1,000 random Wikipedia texts. Its sample is not available offline, so
this module rebuilds a comparable one from ``gensim/test/test_data/enwiki-latest-pages-articles1.xml-
p000000010p000030302-shortened.bz2`` (LGPL wheel; article text CC-BY-SA, © Wikipedia contributors):
article pages only (namespace 0, no redirects), wiki markup stripped (comments, references, templates,
tables, files and categories, links kept as their label, headings, lists, bold/italic), split into
sentences, filtered by length, deduplicated, then sampled with a fixed seed. gensim is never imported:
the file is found through the package metadata.
"""

from __future__ import annotations

import bz2
import functools
import importlib.metadata
import random
import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from rag_diag.corpora.io import Corpus
from rag_diag.corpora.lee import PACKAGE
from rag_diag.corpora.lee import unavailable as gensim_unavailable
from rag_diag.corpora.writers import write_corpus_jsonl
from rag_diag.errors import RagDiagError

WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
_NON_ARTICLE_LINK = re.compile(r"^\s*:?\s*(file|image|category|media|wikt|wiktionary|[a-z]{2,3}(-[a-z]+)?):", re.I)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_REF = re.compile(r"<ref[^>/]*/>|<ref[^>]*>.*?</ref>", re.S | re.I)
_BLOCK_TAGS = re.compile(r"<(math|gallery|timeline|score|syntaxhighlight|source|pre|code)[^>]*>.*?</\1>", re.S | re.I)
_TAG = re.compile(r"<[^>]+>")
_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_TABLE = re.compile(r"\{\|(?:(?!\{\||\|\}).)*\|\}", re.S)
_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_EXTERNAL = re.compile(r"\[(?:https?:)?//\S+\s*([^\]]*)\]")
_EMPHASIS = re.compile(r"'{2,}")
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')]?\s+(?=[\"'(]?[A-Z])")
_ABBREVIATION = re.compile(
    r"(?:\b[A-Z]|\b(?:Mr|Mrs|Ms|Dr|St|Jr|Sr|Prof|Gen|Col|Lt|No|vs|etc|ca|c|e\.g|i\.e|Inc|Ltd|Co|Mt|Ft|Vol|pp|Fig))"
    r"\.[\"')]?$"
)
_DASH_TEMPLATE = re.compile(r"\{\{\s*(?:snd|spnd|ndash|mdash|spaced ndash|dash)\s*\}\}", re.I)
_LEFTOVER = re.compile(r"[{}\[\]|=<>_\\]|https?:|&\w+;")
WIKI_SMALL = 1000
"""Sentences in the ``small`` build: the paper's protocol samples 1,000 texts."""
_NON_TEXT_LINE = ("*", "#", ":", ";", "|", "!", "{", "}", "=", "-", "[")


def wiki_file() -> Path:
    """Path of the enwiki sample inside the installed gensim wheel (gensim itself is not imported)."""
    try:
        dist = importlib.metadata.distribution("gensim")
    except importlib.metadata.PackageNotFoundError:
        raise RagDiagError(
            "wiki sentences need the gensim wheel's test data: pip install --no-deps gensim==4.4.0"
        ) from None
    for file in dist.files or []:
        if file.name == WIKI_FILE:
            return Path(str(dist.locate_file(file)))
    raise RagDiagError(f"the installed gensim wheel has no {WIKI_FILE}")


def _article_texts(path: Path) -> Iterator[str]:
    """Wikitext of every article page (namespace 0, not a redirect), in file order."""
    with bz2.open(path, "rb") as handle:
        namespace = redirect = None
        for _, element in ElementTree.iterparse(handle, events=("end",)):
            tag = element.tag.rsplit("}", 1)[-1]
            if tag == "ns":
                namespace = element.text
            elif tag == "redirect":
                redirect = True
            elif tag == "text" and namespace == "0" and not redirect and element.text:
                yield element.text
            elif tag == "page":
                namespace = redirect = None
                element.clear()


def _replace_until_stable(pattern: re.Pattern[str], replacement: object, text: str) -> str:
    """Apply a substitution repeatedly so nested constructs are removed from the inside out."""
    while True:
        new = pattern.sub(replacement, text)  # type: ignore[call-overload]
        if new == text:
            return text
        text = new


def _link_label(match: re.Match[str]) -> str:
    """``[[target|label]]`` → label, ``[[target]]`` → target; files, categories, interwiki → nothing."""
    inner = match.group(1)
    if _NON_ARTICLE_LINK.match(inner):
        return ""
    return inner.rsplit("|", 1)[-1]


def strip_markup(wikitext: str) -> str:
    """Plain prose from wikitext: paragraphs separated by newlines, markup lines dropped."""
    text = _COMMENT.sub("", wikitext)
    text = _REF.sub("", text)
    text = _BLOCK_TAGS.sub("", text)
    text = _TAG.sub("", text)
    text = _DASH_TEMPLATE.sub(" – ", text)
    text = _replace_until_stable(_TEMPLATE, "", text)
    text = _replace_until_stable(_TABLE, "", text)
    text = _replace_until_stable(_LINK, _link_label, text)
    text = _EXTERNAL.sub(r"\1", text)
    text = _EMPHASIS.sub("", text)
    lines = [line.strip() for line in text.splitlines()]
    return "\n".join(line for line in lines if line and not line.startswith(_NON_TEXT_LINE))


def split_sentences(paragraph: str) -> list[str]:
    """Split prose at ., ! or ? followed by space and a capital letter, not after initials or abbreviations."""
    sentences: list[str] = []
    start = 0
    for boundary in _SENTENCE_END.finditer(paragraph):
        if _ABBREVIATION.search(paragraph[start : boundary.start()]):
            continue
        sentences.append(paragraph[start : boundary.start()].strip())
        start = boundary.end()
    sentences.append(paragraph[start:].strip())
    return [sentence for sentence in sentences if sentence]


def _clean_sentence(sentence: str) -> str:
    sentence = re.sub(r"\(\s*[,;]?\s*\)", "", sentence)  # parentheses emptied by markup removal
    sentence = re.sub(r"\s+([,.;:!?])", r"\1", sentence)
    return re.sub(r"\s{2,}", " ", sentence).strip()


def _keep(sentence: str, min_words: int, max_words: int) -> bool:
    words = len(sentence.split())
    return (
        min_words <= words <= max_words
        and sentence[0].isupper()
        and sentence[-1] in ".!?"
        and not _LEFTOVER.search(sentence)
    )


@functools.lru_cache(maxsize=8)
def _all_sentences(min_words: int, max_words: int) -> tuple[str, ...]:
    """Every distinct kept sentence, in file order."""
    seen: dict[str, None] = {}
    for wikitext in _article_texts(wiki_file()):
        for paragraph in strip_markup(wikitext).splitlines():
            for sentence in split_sentences(paragraph):
                sentence = _clean_sentence(sentence)
                if sentence and _keep(sentence, min_words, max_words):
                    seen.setdefault(sentence, None)
    return tuple(seen)


def wiki_sentences(n: int | None = None, seed: int = 0, min_words: int = 5, max_words: int = 60) -> list[str]:
    """Real, distinct Wikipedia sentences, a seeded random sample of ``n`` (all, in file order, if None).

    Args:
        n: how many sentences; None returns every kept sentence.
        seed: the sample's seed (``random.Random(seed).sample``): equal arguments give equal lists.
        min_words: shortest sentence kept, in whitespace-separated words.
        max_words: longest sentence kept.

    Raises:
        RagDiagError: when ``n`` exceeds the number of kept sentences or the bounds are inconsistent.
    """
    if min_words < 1 or max_words < min_words:
        raise RagDiagError(f"need 1 <= min_words <= max_words, got {min_words}, {max_words}")
    sentences = _all_sentences(min_words, max_words)
    if n is None:
        return list(sentences)
    if not 0 <= n <= len(sentences):
        raise RagDiagError(f"asked for {n} Wikipedia sentences, only {len(sentences)} are available")
    return random.Random(seed).sample(sentences, n)


def unavailable() -> str | None:
    """None when the Wikipedia sentence reader and its data are present, else what is missing."""
    return gensim_unavailable()


def build(folder: Path, size: str | int, seed: int) -> dict[str, Any]:
    """Write Wikipedia sentences as corpus.jsonl (``small``: 1,000 as in the paper; ``full``: all)."""
    count = None if size == "full" else WIKI_SMALL if size == "small" else int(size)
    sentences = wiki_sentences(n=count, seed=seed)
    if not sentences:
        raise RagDiagError("no Wikipedia sentences were produced")
    corpus = Corpus(ids=[f"s{i:06d}" for i in range(len(sentences))], texts=list(sentences))
    write_corpus_jsonl(folder / "corpus.jsonl", corpus)
    return {
        "source": {"package": PACKAGE, "version": importlib.metadata.version(PACKAGE),
                   "files": "gensim/test/test_data/enwiki-latest-pages-articles1.xml-*-shortened.bz2"},
        "licence": "CC-BY-SA (Wikipedia text)",
        "attribution": "Text from English Wikipedia, CC-BY-SA; see the article histories for authors",
        "counts": {"documents": len(corpus)},
        "parameters": {"reader": "rag_diag.corpora.wiki.wiki_sentences"},
    }
