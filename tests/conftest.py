"""Shared fixtures: offline Hugging Face, one project-local cache, the real default model loaded once,
and a token store from the deterministic mock encoder for fast unit tests.

Tests that load a real model are marked ``slow`` (``make test-fast`` runs ``-m "not slow"``). As a
safety net, any test that requests the real-model fixture ``minilm`` (directly or through another
fixture such as ``tiny_store``) is marked ``slow`` here too, so a forgotten mark can never pull a
torch model into the fast run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("RAG_DIAG_CACHE", str(ROOT / ".cache" / "rag-diag"))

# Real licence-notice style sentences: near-duplicates that differ in one meaning-bearing word.
TINY_TEXTS = [
    "This program is free software; you can redistribute it under the GNU GPL version 2 or later.",
    "This program is free software; you can redistribute it under the GNU GPL version 3 or later.",
    "This program is free software; you can redistribute it under the GNU GPL version 2 only.",
    "Licensed under the Apache License, Version 2.0; you may not use this file except in compliance.",
    "Permission is hereby granted, free of charge, to any person obtaining a copy of this software.",
    "Redistribution and use in source and binary forms, with or without modification, are permitted.",
    "THE SOFTWARE IS PROVIDED AS IS, WITHOUT WARRANTY OF ANY KIND.",
    "Public domain.",
]

REAL_MODEL_FIXTURES = frozenset({"minilm"})
"""Fixtures that load a real torch model; every test that (transitively) uses one is slow."""


@pytest.hookimpl(tryfirst=True)  # before the ``-m`` deselection sees the items
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if REAL_MODEL_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("slow") is None:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def tiny_texts() -> list[str]:
    return list(TINY_TEXTS)


@pytest.fixture(scope="session")
def minilm():
    """The real default encoder (all-MiniLM-L6-v2), loaded once per session (tests using it are slow)."""
    from rag_diag.models.loading import load_encoder

    return load_encoder("minilm")


@pytest.fixture(scope="session")
def tiny_store(minilm, tmp_path_factory):
    """Token store of TINY_TEXTS from the real default model (float32, last layer)."""
    from rag_diag.tokens.extract import encode_texts

    return encode_texts(TINY_TEXTS, model=minilm, out=tmp_path_factory.mktemp("tiny") / "store")


@pytest.fixture(scope="session")
def mock_encoder():
    """The deterministic :class:`~rag_diag.models.mock.MockEncoder` (d = 16, 2 layers, window 32): no torch."""
    from rag_diag.models.mock import MockEncoder

    return MockEncoder()


@pytest.fixture(scope="session")
def mock_store(tmp_path_factory):
    """Token store of TINY_TEXTS from :class:`~rag_diag.models.mock.MockEncoder` (d = 16, last layer).

    No weights and no torch forward pass: milliseconds. Built with ``cache=False`` into a temporary
    folder, so it never touches the shared cache. Lengths 4…19 tokens, [CLS]/[SEP] flagged.
    """
    from rag_diag.models.mock import MockEncoder
    from rag_diag.tokens.extract import encode_texts

    return encode_texts(TINY_TEXTS, model=MockEncoder(), out=tmp_path_factory.mktemp("mock") / "store", cache=False)


@pytest.fixture(scope="session")
def licences():
    """(ids, texts, labels): real licence notices, three per label, and a planted exact copy (store tests)."""
    from test_index_helpers import planted_licences

    return planted_licences()
