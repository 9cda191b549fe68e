"""The token store of a few texts of a corpus, kept from a sharded pass instead of encoded a second time.

A summaries-mode audit encodes every text once, in shards whose token stores it reduces and deletes; its
evaluation then needs the token matrices of a few thousand of those texts (the re-rankers' candidates and the
relevant documents). :func:`kept_store` gives the pass a :class:`SubsetWriter` that copies those texts' rows
out of each shard's store before it is deleted, into the store :func:`rag_diag.tokens.extract.encode_texts`
would have made of them: same files, same cache key (ids and texts of the subset, in corpus order), so a
later run finds it in the cache. Each copied text's token ids are checked against its own tokenisation.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from rag_diag import atomic
from rag_diag.corpora.io import hash_texts
from rag_diag.errors import RagDiagError
from rag_diag.models.protocol import Encoder
from rag_diag.tokens.cache import cache_key, entry_path, open_cached
from rag_diag.tokens.extract import TokenArrays, release_written, store_manifest
from rag_diag.tokens.store import TokenStore, write_manifest


class SubsetWriter:
    """Fills the store of corpus texts ``rows`` (sorted, unique) from the shard stores of a pass over the corpus."""

    def __init__(self, folder: Path, encoder: Encoder, ids: Sequence[str], texts: Sequence[str], rows: np.ndarray,
                 layers: list[int], dtype: str) -> None:
        self.folder, self.rows = folder, np.asarray(rows, dtype=np.int64)
        self.ids = [ids[r] for r in self.rows]
        self.arrays = TokenArrays.of(encoder.tokenize([texts[r] for r in self.rows]))  # arrays: no int per token
        self.embeddings = np.lib.format.open_memmap(
            folder / "embeddings.npy", mode="w+", dtype=np.float16 if dtype == "float16" else np.float32,
            shape=(len(layers), int(self.arrays.offsets[-1]), encoder.dim))
        self.written = np.zeros(len(self.rows), dtype=bool)

    def take(self, shard: TokenStore, start: int) -> None:
        """Copy the kept texts among corpus rows ``start … start + len(shard)`` out of ``shard``."""
        offsets = self.arrays.offsets
        lo, hi = np.searchsorted(self.rows, [start, start + len(shard)])
        for position in range(int(lo), int(hi)):
            local = int(self.rows[position]) - start
            begin, end = int(shard.offsets[local]), int(shard.offsets[local + 1])
            first, stop = int(offsets[position]), int(offsets[position + 1])
            if not np.array_equal(shard.token_ids[begin:end], self.arrays.token_ids[first:stop]):
                raise RagDiagError(f"text {self.ids[position]!r}: the shard holds other tokens than its tokenisation")
            self.embeddings[:, first:stop] = shard.embeddings[:, begin:end]
            self.written[position] = True
        release_written(self.embeddings)  # the rows just written stay in the file, not in this process

    def finish(self) -> dict[str, int]:
        """Write the store's other files; every kept text must have been taken."""
        if not self.written.all():
            raise RagDiagError(f"the pass skipped {int((~self.written).sum())} of the {len(self.rows)} kept texts")
        self.embeddings.flush()
        del self.embeddings
        self.arrays.save(self.folder, self.ids)
        return {"n_tokens": int(self.arrays.offsets[-1]), "n_truncated": self.arrays.n_truncated}


@contextmanager
def kept_store(encoder: Encoder, ids: Sequence[str], texts: Sequence[str], rows: np.ndarray,
               layers: list[int], dtype: str = "float32") -> Iterator[tuple[SubsetWriter | None, list[TokenStore]]]:
    """Yield (a writer to fill, or None when the cache holds the store already; a list that holds the store after
    the block). The store is published to the cache only when the block ends without error."""
    rows = np.asarray(rows, dtype=np.int64)
    kept_ids, kept_texts = [ids[r] for r in rows], [texts[r] for r in rows]
    text_hash = hash_texts(kept_ids, kept_texts)
    key = cache_key(encoder, layers, dtype, text_hash)
    target = entry_path(key)
    result: list[TokenStore] = []
    cached = open_cached(target, key)
    if cached is not None:
        yield None, result
        result.append(cached)
        return
    with atomic.atomic_dir(target, kind="token-store") as tmp:
        writer = SubsetWriter(tmp, encoder, ids, texts, rows, layers, dtype)
        yield writer, result
        counts = writer.finish()
        write_manifest(tmp, store_manifest(key, encoder, layers, dtype, len(rows), counts, text_hash))
    result.append(TokenStore.open(target, verify=False))
