"""Shared fixtures: offline Hugging Face, one project-local cache, the real default model loaded once."""

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


@pytest.fixture(scope="session")
def tiny_texts() -> list[str]:
    return list(TINY_TEXTS)


@pytest.fixture(scope="session")
def minilm():
    """The real default encoder (all-MiniLM-L6-v2), loaded once per session."""
    from rag_diag.models import load_encoder

    return load_encoder("minilm")


@pytest.fixture(scope="session")
def tiny_store(minilm, tmp_path_factory):
    """Token store of TINY_TEXTS from the real default model (float32, last layer)."""
    from rag_diag.encode import encode_texts

    return encode_texts(TINY_TEXTS, model=minilm, out=tmp_path_factory.mktemp("tiny") / "store")
