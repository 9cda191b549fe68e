"""Store-native findings an audit hands to the store's owner: what to delete and what to re-chunk.

- **exact duplicate chunks**: groups of stored chunks whose texts are identical (byte for byte). In each
  group the first id in the store's row order is kept and the others are listed to delete: they fill the
  top-k with copies of one answer. (Near-duplicates — the kNN clusters of :mod:`rag_diag.diagnosis.duplicates`
  — are not listed for deletion: in a knowledge base of versioned texts they are often distinct answers.)
- **long chunks**: chunks with more tokens than the model window; only the first ``window`` tokens were
  embedded, so the tail cannot be retrieved. Re-chunk them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

LISTED = 50
"""At most this many ids are listed per finding in ``audit.json`` (the counts are complete)."""


def exact_duplicates(doc_ids: list[str], texts: list[str]) -> dict[str, Any]:
    """Groups of identical texts (first id kept, the rest to delete), in row order of their first member."""
    groups: dict[str, list[str]] = {}
    for doc_id, text in zip(doc_ids, texts, strict=True):
        groups.setdefault(text, []).append(doc_id)
    found = [ids for ids in groups.values() if len(ids) > 1]
    delete = [doc_id for ids in found for doc_id in ids[1:]]
    return {
        "n_groups": len(found), "n_to_delete": len(delete), "ids_to_delete": delete[:LISTED],
        "groups": [{"keep": ids[0], "delete": ids[1:]} for ids in found[:LISTED]],
    }


def long_chunks(doc_ids: list[str], full_lengths: np.ndarray, window: int) -> dict[str, Any]:
    """Chunks longer than the window: their count, share, the tokens not embedded, and their ids (longest first)."""
    over = np.asarray(full_lengths, dtype=np.int64) - int(window)
    rows = [int(r) for r in sorted(range(len(doc_ids)), key=lambda r: (-int(over[r]), r)) if over[r] > 0]
    return {
        "window": int(window), "n_chunks": len(rows), "share": len(rows) / max(len(doc_ids), 1),
        "tokens_not_embedded": int(over[over > 0].sum()), "ids": [doc_ids[r] for r in rows[:LISTED]],
    }
