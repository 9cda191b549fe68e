"""rag-diag: RAG retrieval evaluation and diagnostics on near-duplicate knowledge bases.

Importing the package makes Hugging Face libraries offline by default (``HF_HUB_OFFLINE=1``,
``TRANSFORMERS_OFFLINE=1``) so that nothing waits on a hub call; a user who wants a hub model sets
``RAG_DIAG_ONLINE=1`` before importing.
"""

from __future__ import annotations

import os

if os.environ.get("RAG_DIAG_ONLINE") != "1":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"

from rag_diag.errors import RagDiagError  # noqa: E402


def encode(texts, model: str = "minilm", **kwargs):  # type: ignore[no-untyped-def]
    """Encode ``texts`` once and return a :class:`rag_diag.encode.TokenStore` (see ``encode_texts``)."""
    from rag_diag.encode import encode_texts

    return encode_texts(texts, model=model, **kwargs)


__all__ = ["RagDiagError", "encode", "__version__"]
