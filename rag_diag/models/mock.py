"""A tiny deterministic encoder for fast unit tests (no weights, no torch forward pass).

Tokens are lower-cased word pieces split on non-alphanumerics; token id = a stable hash of the
piece. The hidden state of token j at layer ℓ is a fixed Gaussian vector of its id (seeded by the id)
plus ℓ·0.1 times a positional vector of j — so equal texts give equal token matrices, shared words
give shared directions, and layers differ. ``[CLS]`` (id 1) opens and ``[SEP]`` (id 2) closes
every text, as in BERT.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rag_diag.models.protocol import Tokenized

CLS_ID, SEP_ID, PAD_ID = 1, 2, 0
_PIECE = re.compile(r"[a-z0-9]+")


def _piece_id(piece: str) -> int:
    return 3 + zlib.crc32(piece.encode()) % 30_000


@dataclass
class MockEncoder:
    """Deterministic stand-in for a transformer: satisfies :class:`rag_diag.models.protocol.Encoder`."""

    dim: int = 16
    num_layers: int = 2
    max_seq_length: int = 32
    name: str = "mock"
    kind: str = "mock"
    identity: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.identity = {"name": self.name, "dim": self.dim, "num_layers": self.num_layers,
                         "max_seq_length": self.max_seq_length}

    @property
    def device(self) -> str:
        return "cpu"

    def tokenize(self, texts: Sequence[str]) -> Tokenized:
        """``[CLS] pieces… [SEP]``, cut to the window (the closing ``[SEP]`` is kept, as tokenizers do)."""
        rows, masks, full = [], [], []
        for text in texts:
            ids = [CLS_ID, *(_piece_id(p) for p in _PIECE.findall(text.lower())), SEP_ID]
            full.append(len(ids))
            if len(ids) > self.max_seq_length:
                ids = [*ids[: self.max_seq_length - 1], SEP_ID]
            rows.append(ids)
            masks.append([1 if i in (CLS_ID, SEP_ID) else 0 for i in ids])
        return Tokenized(rows, masks, sum(n > self.max_seq_length for n in full), full)

    def _token_vector(self, token_id: int) -> np.ndarray:
        return np.random.default_rng(token_id).standard_normal(self.dim).astype(np.float32)

    def hidden_states(self, batch: Sequence[Sequence[int]], layers: Sequence[int]) -> np.ndarray:
        """(L, B, W, d): token vector + 0.1·layer·position vector; padding rows are zeros."""
        width = max(len(row) for row in batch)
        out = np.zeros((len(layers), len(batch), width, self.dim), dtype=np.float32)
        for b, row in enumerate(batch):
            for j, token_id in enumerate(row):
                position = np.random.default_rng(100_000 + j).standard_normal(self.dim).astype(np.float32)
                for li, layer in enumerate(layers):
                    out[li, b, j] = self._token_vector(token_id) + 0.1 * layer * position
        return out
