"""Mean-pooled vectors of texts whose token states are needed only for their mean (windowed chunks).

A token store keeps every token state, T · d · 4 bytes; windowed encoding needs one vector per chunk,
μ(X) = (1/n) Σ x_j over all n tokens (special tokens included, as :meth:`TokenStore.means` by default). Here the
forward passes are the token extractor's (same tokenisation, same length-sorted batches) and each text's states
are summed in float64 and divided by n as they leave the pass, so nothing but the N × d means is written:
on 10,000 ``kb-scale`` documents the 3,462 chunks of the 538 documents the window cuts are 551,094 tokens, an
810 MiB token store, or 5 MiB of means (``benchmarks/bench_windowed.py``).

The means are cached at ``cache_root()/means/<key>.npz`` under the key of the token store the same texts would
have (:func:`rag_diag.tokens.cache.cache_key`, last layer, float32), so a second evaluation of a corpus does not
encode its chunks again. The file is written atomically with the CRC-32 of the means; one that does not load, or
whose shape, dtype or CRC-32 is not the expected one, is encoded again.
"""

from __future__ import annotations

import hashlib
import io
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rag_diag import atomic
from rag_diag.corpora.io import hash_texts
from rag_diag.models.protocol import Encoder
from rag_diag.models.registry import cache_root
from rag_diag.progress import progress_bar, release_heap
from rag_diag.tokens.cache import cache_key
from rag_diag.tokens.extract import RELEASE_BYTES, local_batches

PROGRESS_TEXTS = 500
"""A bar is drawn from this many texts up (≈ 10 s of passes of full-window chunks on 2 cores)."""


def means_path(texts: Sequence[str], encoder: Encoder) -> Path:
    """Where the cache keeps the means of ``texts`` (keyed by their order and content, not by ids)."""
    positions = [str(i) for i in range(len(texts))]
    token_key = cache_key(encoder, [encoder.num_layers], "float32", hash_texts(positions, list(texts)))
    return cache_root() / "means" / f"{hashlib.sha256(f'means:{token_key}'.encode()).hexdigest()[:32]}.npz"


def _cached(path: Path, shape: tuple[int, int]) -> np.ndarray | None:
    """The means at ``path`` when the file holds a float32 array of ``shape`` with its CRC-32, else None."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            means, crc = saved["means"], int(saved["crc32"])
    except (OSError, ValueError, KeyError, zlib.error):
        return None
    if means.shape != shape or means.dtype != np.float32 or zlib.crc32(means.tobytes()) != crc:
        return None
    return means


def encode_means(texts: Sequence[str], encoder: Encoder, batch_size: int = 32,
                 description: str = "encoding chunks") -> tuple[np.ndarray, int]:
    """μ(X) of each text's last-layer token states (N, d) float32, and how many texts the window cut.

    Equal to ``encode_texts(texts, model=encoder, batch_size=batch_size).means()`` up to the order of the float64
    sums (both round the same float64 mean to float32: at most one float32 ulp apart), without the store.
    """
    tokenized = encoder.tokenize(texts)
    path = means_path(texts, encoder)
    cached = _cached(path, (len(texts), encoder.dim))
    if cached is not None:
        return cached, tokenized.n_truncated
    lengths = np.asarray([len(row) for row in tokenized.input_ids], dtype=np.int64)
    order = np.argsort(-lengths, kind="stable")
    means = np.empty((len(texts), encoder.dim), dtype=np.float32)
    unreleased = 0
    with progress_bar(description, len(texts), enabled=len(texts) >= PROGRESS_TEXTS) as advance:
        for batch, states, _ in local_batches(encoder, tokenized.input_ids, order, [encoder.num_layers], batch_size):
            for index, rows in zip(batch, states, strict=True):
                means[index] = rows[0].sum(axis=0, dtype=np.float64) / rows.shape[1]
                unreleased += rows.nbytes
            advance(len(batch))
            if unreleased >= RELEASE_BYTES:  # the passes' freed activations, as the token extractor hands them back
                release_heap()
                unreleased = 0
    release_heap()
    buffer = io.BytesIO()
    np.savez(buffer, means=means, crc32=np.uint32(zlib.crc32(means.tobytes())))
    atomic.write_bytes(path, buffer.getvalue())
    return means, tokenized.n_truncated
