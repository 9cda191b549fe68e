"""rag-diag: RAG retrieval evaluation and diagnostics on near-duplicate knowledge bases.

Importing the package makes Hugging Face libraries offline by default (``HF_HUB_OFFLINE=1``,
``TRANSFORMERS_OFFLINE=1``) so that nothing waits on a hub call; a user who wants a hub model sets
``RAG_DIAG_ONLINE=1`` before importing.

The public API is small and lazy (heavy libraries load on first call); no function here shares a
name with a submodule, so ``rag_diag.encode_texts`` stays a function however often it is called.
"""

from __future__ import annotations

import os
from typing import Any

if os.environ.get("RAG_DIAG_ONLINE") != "1":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

__version__ = "0.1.0"

from rag_diag.errors import RagDiagError  # noqa: E402


def encode_texts(texts: Any, **options: Any) -> Any:
    """Encode ``texts`` once into a token store; options as :func:`rag_diag.tokens.extract.encode_texts`."""
    from rag_diag.tokens.extract import encode_texts as extract

    return extract(texts, **options)


__all__ = ["RagDiagError", "encode_texts", "__version__"]
