"""The token-store cache: keyed by everything that changes the stored numbers, verified before reuse.

A cache entry lives at ``cache_root()/tokens/<key>``; the key is a sha256 over the store format,
the encoder identity (name, source, weights hash), the window, the layers, the storage dtype and
the hash of (ids, texts). An entry whose files disagree with its manifest is removed and rebuilt.
Published copies outside the cache are plain copies, so damage to one never reaches the other.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from rag_diag import atomic
from rag_diag.errors import RagDiagError
from rag_diag.models.protocol import Encoder
from rag_diag.models.registry import cache_root
from rag_diag.tokens.store import MANIFEST, STORE_FORMAT, TokenStore


def cache_key(encoder: Encoder, layers: list[int], dtype: str, text_hash: str) -> str:
    """sha256 (32 hex digits) over everything that changes the stored numbers."""
    payload = {
        "format": STORE_FORMAT,
        "model": encoder.identity,
        "max_seq_length": encoder.max_seq_length,
        "layers": layers,
        "dtype": dtype,
        "texts": text_hash,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def entry_path(key: str) -> Path:
    """Where the cache keeps the store of ``key``."""
    return cache_root() / "tokens" / key


def open_cached(path: Path, key: str) -> TokenStore | None:
    """The verified store at ``path`` if it is complete and made under ``key``; a corrupt or stale one is removed."""
    if not path.exists():
        return None
    try:
        store = TokenStore.open(path, verify=True)
    except RagDiagError:
        shutil.rmtree(path, ignore_errors=True)
        return None
    if store.manifest.get("key") != key:
        shutil.rmtree(path, ignore_errors=True)
        return None
    return store


def publish(source: Path, target: Path) -> TokenStore:
    """Copy the store folder at ``source`` to ``target`` (atomically) and open the copy verified."""
    if target.resolve() != source.resolve():
        with atomic.atomic_dir(target, kind="token-store") as tmp:
            for name in (*TokenStore.FILES, MANIFEST):
                shutil.copyfile(source / name, tmp / name)
    return TokenStore.open(target, verify=True)
