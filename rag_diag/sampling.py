"""The one seeded sampler: which rows a sample takes is a function of (n, size, seed) alone."""

from __future__ import annotations

import numpy as np


def seeded_sample(n_rows: int, size: int | None, seed: int) -> np.ndarray:
    """Sorted indices of ``min(size, n_rows)`` rows drawn without replacement (all rows when ``size`` is None)."""
    if size is None or size >= n_rows:
        return np.arange(n_rows)
    return np.sort(np.random.default_rng(seed).choice(n_rows, size=size, replace=False))
