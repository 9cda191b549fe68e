"""Layer profile: average SOCM and token concentration per stored hidden layer.

Run on a store encoded with ``layers="all"`` (0 = embedding output … L = last layer) to see where in
the network a model concentrates its tokens. Each layer is measured with the paper's protocol (all
pairs of the same seeded sample of texts), so the rows are comparable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from rag_diag.collapse.allpairs import all_pairs
from rag_diag.progress import progress_bar
from rag_diag.tokens.store import TokenStore


@dataclass(frozen=True)
class LayerRow:
    """One layer's averages over all pairs (SOCM, d_μ, d_Σ) and texts (concentration) of the sample."""

    layer: int
    avg_socm: float
    avg_d_mu: float
    avg_d_sigma: float
    avg_concentration: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def layer_profile(
    store: TokenStore,
    sample: int | None = None,
    seed: int = 0,
    *,
    drop_special: bool = False,
    device: str = "cpu",
    dtype: torch.dtype = torch.float64,
    show_progress: bool = False,
) -> list[LayerRow]:
    """Average SOCM and concentration for every layer stored in ``store`` (in stored order)."""
    rows: list[LayerRow] = []
    with progress_bar("collapse: layer profile", len(store.layers), enabled=show_progress) as advance:
        for layer in store.layers:
            result = all_pairs(store, sample, seed, layer=layer, drop_special=drop_special, device=device, dtype=dtype)
            rows.append(
                LayerRow(
                    layer=layer,
                    avg_socm=float(result.pairs.socm.mean()),
                    avg_d_mu=float(result.pairs.d_mu.mean()),
                    avg_d_sigma=float(result.pairs.d_sigma.mean()),
                    avg_concentration=float(result.text_stats.concentration.mean()),
                )
            )
            advance(1)
    return rows
