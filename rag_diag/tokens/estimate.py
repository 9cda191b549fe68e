"""What an encoder pass will cost, said before it starts: documents, tokens, forward passes, bytes, time.

The counts are exact (the whole corpus is tokenised, which is cheap next to the forward pass):

    tokens   T = Σ_i min(n_i, W)            (n_i: text i's tokens with special tokens, W: the window)
    passes   P = the batches of texts sorted longest first: B texts (the batch size), fewer where B long texts
             would pass BATCH_TOKENS padded tokens (see :func:`batch_slices`)
    bytes    S = T · d · s                   (s = 4 for a float32 token store, 2 for float16; one layer)

The time comes from a calibration batch of seeded documents encoded first (their forward passes only). A
batch costs its padded size — its texts times its longest one — and the pass batches texts sorted by length,
as the calibration does, so

    seconds ≈ t_c · P(all) / P(calibration),   P(texts) = Σ over those batches  |batch|·max n_i

(t_c: the calibration time). It is an estimate: attention is quadratic in length, which the padded size
does not weigh, so a corpus much longer than its sample is underestimated.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from rag_diag.models.protocol import Encoder
from rag_diag.progress import release_heap
from rag_diag.sampling import seeded_sample

CALIBRATION_DOCS = 64
BYTES_PER_VALUE = {"float32": 4, "float16": 2}


@dataclass(frozen=True)
class EncodeEstimate:
    """Counts and the calibrated time of one encoder pass over a corpus."""

    model: str
    n_documents: int
    n_tokens: int
    n_truncated: int
    forward_passes: int
    store_bytes: int
    calibration_documents: int
    calibration_seconds: float
    seconds: float
    full_lengths: tuple[int, ...] = field(default=(), repr=False)
    """Every text's untruncated token count (not in :meth:`to_dict`)."""
    lengths: tuple[int, ...] = field(default=(), repr=False)
    """Every text's token count in the window, what the pass encodes (not in :meth:`to_dict`)."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("full_lengths", "lengths")}

    def line(self) -> str:
        """One line for the terminal."""
        mib = self.store_bytes / 2**20
        return (f"expect {self.n_documents:,} documents, {self.n_tokens:,} tokens ({self.n_truncated:,} texts cut to "
                f"the window), {self.forward_passes:,} forward passes of {self.model}, a {mib:,.0f} MiB token "
                f"store, ≈ {_duration(self.seconds)} of encoding (calibrated on "
                f"{self.calibration_documents} documents in {self.calibration_seconds:.1f} s)")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


TOKENIZE_CHUNK = 4096
"""Texts tokenised at a time: only their token ids are held (for 10⁵ texts, all ids as Python lists would
take ≈ 0.5 GB, which the allocator keeps after they are freed)."""


BATCH_TOKENS = 4096
"""Most padded tokens in one forward pass: 16 texts of a full 256-token window, up to the batch size of shorter
texts. On the 800 longest texts of the 100k knowledge base (all-MiniLM-L6-v2, 2 threads), batches of 16 took
51 s and peaked 0.10 GiB lower than batches of 32 (56 s)."""


def batch_slices(lengths_desc: Sequence[int], batch_size: int) -> list[slice]:
    """The forward passes over texts sorted longest first: consecutive batches of at most ``batch_size`` texts and
    at most max(1, ⌊BATCH_TOKENS / n_first⌋), n_first being the batch's first (longest) text."""
    slices: list[slice] = []
    start = 0
    while start < len(lengths_desc):
        rows = max(1, min(batch_size, BATCH_TOKENS // max(int(lengths_desc[start]), 1)))
        slices.append(slice(start, min(start + rows, len(lengths_desc))))
        start += rows
    return slices


def sharded_passes(lengths: Sequence[int], shard_docs: int, batch_size: int = 32) -> int:
    """Forward passes of a pass in shards of ``shard_docs`` consecutive texts, each sorted longest first and batched
    by :func:`batch_slices`: Σ over the shards (each shard can end in a short batch, so ≥ the unsharded count)."""
    return sum(len(batch_slices(sorted(lengths[start : start + shard_docs], reverse=True), batch_size))
               for start in range(0, len(lengths), max(shard_docs, 1)))


def padded_tokens(lengths: Sequence[int], batch_size: int) -> int:
    """Σ over the forward passes (:func:`batch_slices` of the texts sorted longest first) of |batch| · its longest."""
    ordered = sorted(lengths, reverse=True)
    return sum((part.stop - part.start) * ordered[part.start] for part in batch_slices(ordered, batch_size))


def estimate_encode(
    texts: Sequence[str], encoder: Encoder, *, batch_size: int = 32, dtype: str = "float32",
    calibration: int = CALIBRATION_DOCS, seed: int = 0,
) -> EncodeEstimate:
    """Tokenise every text, time the forward passes of a seeded calibration sample, extrapolate (docstring)."""
    lengths: list[int] = []
    full_lengths: list[int] = []
    n_truncated = 0
    for start in range(0, len(texts), TOKENIZE_CHUNK):  # the token ids of one chunk at a time
        part = encoder.tokenize(list(texts[start : start + TOKENIZE_CHUNK]))
        lengths += [len(ids) for ids in part.input_ids]
        full_lengths += [int(n) for n in part.full_lengths]
        n_truncated += int(part.n_truncated)
    release_heap()  # the chunks' freed token ids: 0.09 GiB of heap at 100,000 kb-scale texts, else held into the pass
    n_tokens = sum(lengths)
    sample = sorted(seeded_sample(len(texts), calibration, seed), key=lambda row: -lengths[row])
    sample_ids = encoder.tokenize([texts[row] for row in sample]).input_ids
    batches = [sample_ids[part] for part in batch_slices([lengths[row] for row in sample], batch_size)]
    started = time.perf_counter()
    for batch in batches:
        encoder.hidden_states(batch, [encoder.num_layers])
    elapsed = time.perf_counter() - started
    scale = padded_tokens(lengths, batch_size) / max(padded_tokens([lengths[row] for row in sample], batch_size), 1)
    return EncodeEstimate(
        model=encoder.name, n_documents=len(texts), n_tokens=n_tokens, n_truncated=n_truncated,
        forward_passes=len(batch_slices(sorted(lengths, reverse=True), batch_size)),
        store_bytes=n_tokens * encoder.dim * BYTES_PER_VALUE[dtype],
        calibration_documents=len(sample), calibration_seconds=elapsed, seconds=elapsed * scale,
        full_lengths=tuple(full_lengths), lengths=tuple(lengths),
    )
