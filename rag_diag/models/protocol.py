"""What the token extractor needs from an encoder: a tokenizer with a window, and hidden states.

Real models (:class:`rag_diag.models.loading.TransformerEncoder`) and the deterministic
:class:`rag_diag.models.mock.MockEncoder` used by fast unit tests both satisfy this Protocol, so
every stage after encoding runs the same code on either.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Tokenized:
    """Token ids and special-token flags per text, cut to the window, and how many texts were cut."""

    input_ids: list[list[int]]
    special_mask: list[list[int]]
    n_truncated: int
    full_lengths: list[int]


@runtime_checkable
class Encoder(Protocol):
    """A loaded encoder; ``identity`` holds everything that changes its output and keys the cache."""

    name: str
    kind: str
    dim: int
    num_layers: int
    max_seq_length: int
    identity: dict[str, Any]

    @property
    def device(self) -> str: ...

    def tokenize(self, texts: Sequence[str]) -> Tokenized:
        """Token ids of every text with special tokens, truncated to ``max_seq_length``."""
        ...

    def hidden_states(self, batch: Sequence[Sequence[int]], layers: Sequence[int]) -> np.ndarray:
        """Hidden states ``(len(layers), B, W, d)`` of right-padded token rows (W = longest row), float32."""
        ...
