"""Real Wikipedia sentences from gensim's enwiki test file: clean, distinct, seeded."""

from __future__ import annotations

import re

import pytest

from rag_diag.corpora.wiki import split_sentences, strip_markup, wiki_sentences
from rag_diag.errors import RagDiagError


def test_sample_is_deterministic_clean_and_distinct():
    first = wiki_sentences(200, seed=0)
    assert first == wiki_sentences(200, seed=0)
    assert first != wiki_sentences(200, seed=1)
    assert len(set(first)) == 200
    for sentence in first:
        assert 5 <= len(sentence.split()) <= 60
        assert sentence[-1] in ".!?" and sentence[0].isupper()
        assert not re.search(r"[{}\[\]|<>=]|https?:", sentence)


def test_pool_is_large_enough_for_the_paper_protocol():
    assert len(wiki_sentences()) >= 1000
    with pytest.raises(RagDiagError):
        wiki_sentences(10**7)


def test_markup_is_stripped():
    wikitext = (
        "{{Infobox|name=x}}\n'''Anarchism''' is a [[political philosophy]] that advocates "
        "[[self-governance|self-governed]] societies.<ref>cite</ref> See [http://example.org the site].\n"
        "==History==\n* a list item\n{| class=wikitable\n| cell\n|}\n[[File:A.jpg|thumb|a [[caption]]]]"
    )
    text = strip_markup(wikitext)
    assert text.splitlines() == [
        "Anarchism is a political philosophy that advocates self-governed societies. See the site."
    ]


def test_sentence_split_keeps_initials_together():
    assert split_sentences("He joined the U.S. Army in 1900. Then J. Smith left.") == [
        "He joined the U.S. Army in 1900.",
        "Then J. Smith left.",
    ]
