"""Pooling strategies: one vector per text from its token matrix, computed from the token store.

Every strategy is a small pure function of one text's token matrix X (n×d, float64), its token ids
and, for strategies that need them, corpus statistics fitted once on the corpus token store (and
reused unchanged for queries). The registry says what each strategy is: its output dimension as a
function of d, and the FAISS metric under which its vectors are comparable:

- ``cosine``: inner product on L2-normalised vectors (the index stores normalised vectors);
- ``l2``: squared Euclidean distance on the raw vectors;
- ``ip``: inner product on the raw vectors.

Strategies that compare token *distributions* (``mean+std``, ``sketch``) first divide a text's tokens
by ‖μ(X)‖, as science.md §1 prescribes before comparing two texts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from rag_diag.errors import RagDiagError
from rag_diag.progress import progress_bar
from rag_diag.tokens.store import TokenStore

EPS = 1e-12
SIF_A = 1e-3
SKETCH_SEED = 0
DEFAULT_STRATEGIES = ("mean", "cls", "max", "mean+std", "sketch", "power", "sif", "last")

Stats = dict[str, np.ndarray]
PoolFn = Callable[[np.ndarray, np.ndarray, Stats], np.ndarray]


@dataclass(frozen=True)
class PoolingStrategy:
    """What a pooling strategy is: its function, output dimension, metric, and corpus needs."""

    name: str
    pool: PoolFn
    dim_factor: int
    dim_formula: str
    metric: str
    description: str
    needs_corpus_stats: bool = False

    def dim(self, d: int) -> int:
        """Output dimension for token dimension ``d``."""
        return self.dim_factor * d


def _unit_mean_tokens(tokens: np.ndarray) -> np.ndarray:
    """X / ‖μ(X)‖ (eps 1e-12): the per-text normalisation of science.md §1."""
    return tokens / max(float(np.linalg.norm(tokens.mean(axis=0))), EPS)


def pool_mean(tokens: np.ndarray, token_ids: np.ndarray, stats: Stats) -> np.ndarray:
    """μ(X) = (1/n) Σ_j x_j."""
    return tokens.mean(axis=0)


def pool_cls(tokens: np.ndarray, token_ids: np.ndarray, stats: Stats) -> np.ndarray:
    """x_1, the first token ([CLS] for BERT-style encoders)."""
    return tokens[0]


def pool_last(tokens: np.ndarray, token_ids: np.ndarray, stats: Stats) -> np.ndarray:
    """x_n, the last non-padding token (the summary token of decoder models)."""
    return tokens[-1]


def pool_max(tokens: np.ndarray, token_ids: np.ndarray, stats: Stats) -> np.ndarray:
    """Element-wise max_j x_j."""
    return tokens.max(axis=0)


def pool_mean_std(tokens: np.ndarray, token_ids: np.ndarray, stats: Stats) -> np.ndarray:
    """[μ ; σ] of X/‖μ(X)‖ with σ = sqrt(diag Σ), Σ = (1/n) Σ_j (x_j − μ)(x_j − μ)ᵀ.

    ‖v1 − v2‖² = ‖μ1 − μ2‖² + ‖σ1 − σ2‖² is exactly W₂² between the diagonal-Gaussian fits.
    """
    unit = _unit_mean_tokens(tokens)
    return np.concatenate([unit.mean(axis=0), unit.std(axis=0)])


def sketch_projections(d: int, seed: int = SKETCH_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Two independent Rademacher matrices R, S (d×d), seeded, for the second-moment sketch."""
    rng = np.random.default_rng(seed)
    signs = rng.integers(0, 2, size=(2, d, d)).astype(np.float64) * 2.0 - 1.0
    return signs[0], signs[1]


def pool_sketch(tokens: np.ndarray, token_ids: np.ndarray, stats: Stats) -> np.ndarray:
    """[μ ; φ(X)] of X/‖μ(X)‖ with φ(X) = (1/n) Σ_j (R x_j) ∘ (S x_j) / √D (D = d).

    R, S have independent Rademacher entries, so E⟨φ(X), φ(Y)⟩ = (1/(n m)) Σ_{j,k} (x_j·y_k)² =
    ⟨M₂(X), M₂(Y)⟩_F with M₂ = (1/n) Σ x_j x_jᵀ: the inner product of two sketches is an unbiased
    estimate of the second-moment inner product, added to μ1·μ2.
    """
    unit = _unit_mean_tokens(tokens)
    projected_r = unit @ stats["sketch_r"].T
    projected_s = unit @ stats["sketch_s"].T
    features = (projected_r * projected_s).mean(axis=0) / np.sqrt(stats["sketch_r"].shape[0])
    return np.concatenate([unit.mean(axis=0), features])


def pool_power(tokens: np.ndarray, token_ids: np.ndarray, stats: Stats) -> np.ndarray:
    """Power means p = 1, +∞, −∞ concatenated: [μ ; max_j x_j ; min_j x_j] (Rücklé et al. 2018)."""
    return np.concatenate([tokens.mean(axis=0), tokens.max(axis=0), tokens.min(axis=0)])


def sif_weights(token_ids: np.ndarray, stats: Stats) -> np.ndarray:
    """a / (a + p(w)) per token, p(w) = frequency of token id w in the corpus store (0 when unseen)."""
    frequency = stats["sif_frequency"]
    ids = np.asarray(token_ids, dtype=np.int64)
    known = ids < len(frequency)
    probability = np.zeros(len(ids), dtype=np.float64)
    probability[known] = frequency[ids[known]]
    return SIF_A / (SIF_A + probability)


def pool_sif_raw(tokens: np.ndarray, token_ids: np.ndarray, stats: Stats) -> np.ndarray:
    """SIF-weighted mean before component removal: (1/n) Σ_j a/(a + p(w_j)) x_j."""
    return (sif_weights(token_ids, stats)[:, None] * tokens).mean(axis=0)


def pool_sif(tokens: np.ndarray, token_ids: np.ndarray, stats: Stats) -> np.ndarray:
    """SIF (Arora et al. 2017): v = (1/n) Σ_j a/(a + p(w_j)) x_j, then v − (u·v) u.

    u is the first (uncentred) principal direction of the corpus' SIF vectors, fitted on the corpus
    and stored, so queries get the same transform. science.md's table writes the sum Σ_j; the 1/n of Arora et al.
    is kept on purpose: u is fitted over the rows, and summed rows would weigh each text by its length.
    """
    vector = pool_sif_raw(tokens, token_ids, stats)
    component = stats["sif_component"]
    return vector - float(component @ vector) * component


REGISTRY: dict[str, PoolingStrategy] = {
    strategy.name: strategy
    for strategy in (
        PoolingStrategy("mean", pool_mean, 1, "d", "cosine", "mean of the token vectors μ(X)"),
        PoolingStrategy("cls", pool_cls, 1, "d", "cosine", "first token ([CLS])"),
        PoolingStrategy("max", pool_max, 1, "d", "cosine", "element-wise max over tokens"),
        PoolingStrategy(
            "mean+std", pool_mean_std, 2, "2d", "l2",
            "[μ ; σ] of ‖μ‖-normalised tokens; squared L2 = W₂² between diagonal Gaussians",
        ),
        PoolingStrategy(
            "sketch", pool_sketch, 2, "2d", "ip",
            "[μ ; seeded Rademacher product sketch of M₂]; inner product ≈ μ·μ' + ⟨M₂, M₂'⟩",
        ),
        PoolingStrategy("power", pool_power, 3, "3d", "cosine", "power means p = 1, +∞, −∞ concatenated"),
        PoolingStrategy(
            "sif", pool_sif, 1, "d", "cosine",
            "SIF-weighted mean a/(a+p(w)), first principal component removed", needs_corpus_stats=True,
        ),
        PoolingStrategy("last", pool_last, 1, "d", "cosine", "last token (decoder models)"),
    )
}


def get_strategy(name: str) -> PoolingStrategy:
    """The registered strategy ``name``; an unknown name is a one-line user error."""
    if name not in REGISTRY:
        raise RagDiagError(f"unknown pooling strategy '{name}' (known: {', '.join(REGISTRY)})")
    return REGISTRY[name]


def parse_strategies(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Comma-separated names (or ``all``) → validated, de-duplicated list in the given order."""
    names = list(DEFAULT_STRATEGIES) if spec == "all" else spec.split(",") if isinstance(spec, str) else spec
    cleaned = list(dict.fromkeys(name.strip() for name in names if name.strip()))
    if not cleaned:
        raise RagDiagError("no pooling strategy given")
    for name in cleaned:
        get_strategy(name)
    return cleaned


def list_strategies() -> list[dict[str, str | bool]]:
    """Registry rows: name, dim formula, metric, whether it needs corpus statistics, description."""
    return [
        {
            "name": s.name,
            "dim": s.dim_formula,
            "metric": s.metric,
            "corpus_stats": s.needs_corpus_stats,
            "description": s.description,
        }
        for s in REGISTRY.values()
    ]


def _text_tokens(store: TokenStore, index: int) -> tuple[np.ndarray, np.ndarray]:
    start, stop = int(store.offsets[index]), int(store.offsets[index + 1])
    return store.tokens(index).astype(np.float64), np.asarray(store.token_ids[start:stop])


def base_stats(d: int) -> Stats:
    """Statistics every strategy may use that do not depend on the corpus (the seeded sketch)."""
    sketch_r, sketch_s = sketch_projections(d)
    return {"sketch_r": sketch_r, "sketch_s": sketch_s}


def fit_stats(name: str, store: TokenStore) -> Stats:
    """Corpus statistics a strategy needs (empty for most): for ``sif``, p(w) and the first component.

    p(w) = count(w) / T over every token of the corpus store (special tokens included);
    the component is the top right-singular vector of the matrix of corpus SIF vectors.
    """
    if not get_strategy(name).needs_corpus_stats:
        return {}
    counts = np.bincount(np.asarray(store.token_ids, dtype=np.int64))
    stats: Stats = {"sif_frequency": counts / counts.sum()}
    raw = _pool_all(store, pool_sif_raw, {**base_stats(store.dim), **stats}, "fitting sif")
    _, _, right = np.linalg.svd(raw, full_matrices=False)
    stats["sif_component"] = right[0]
    return stats


RELEASE_TEXTS = 4096
"""Texts pooled between two drops of the token store's resident pages (RSS holds that many texts of it)."""


def _pool_all(store: TokenStore, pool: PoolFn, stats: Stats, label: str) -> np.ndarray:
    rows = []
    with progress_bar(label, len(store), enabled=len(store) > 2000) as advance:
        for index in range(len(store)):
            tokens, token_ids = _text_tokens(store, index)
            rows.append(pool(tokens, token_ids, stats))
            advance(1)
            if (index + 1) % RELEASE_TEXTS == 0:
                store.release_pages()
    store.release_pages()
    return np.asarray(rows, dtype=np.float64)


def pool_store(name: str, store: TokenStore, stats: Stats | None = None) -> np.ndarray:
    """Raw pooled vectors (N, dim) in float64 for every text of ``store``.

    Args:
        name: a registered strategy.
        store: the token store (corpus or queries).
        stats: corpus statistics from :func:`fit_stats` (required for strategies that need them).
    """
    strategy = get_strategy(name)
    stats = {**base_stats(store.dim), **(stats or {})}
    if strategy.needs_corpus_stats and "sif_component" not in stats:
        raise RagDiagError(f"pooling '{name}' needs corpus statistics (fit them on the corpus store first)")
    return _pool_all(store, strategy.pool, stats, f"pooling {name}")


def index_vectors(vectors: np.ndarray, metric: str) -> np.ndarray:
    """Vectors as the index stores them (float32): L2-normalised for ``cosine``, raw otherwise."""
    vectors = np.asarray(vectors, dtype=np.float64)
    if metric == "cosine":
        vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), EPS)
    return np.ascontiguousarray(vectors, dtype=np.float32)
