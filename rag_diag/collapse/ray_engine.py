"""Ray engine: the per-document rank-r summaries of kNN collapse, computed by Ray Data encoder actors.

Pipeline (``--engine ray [--ray-address ADDR]``):

1. ``ray.data.from_items`` over records (row, id, text), longest text first. The corpus is already a list
   in the driver (the readers produce one); ``from_items`` puts it into the object store, so remote nodes
   need no access to the driver's files, and the row index travels with every record so the original
   order can be restored however Ray reorders blocks. A Ray batch is padded to its longest text in each
   forward pass: fed in corpus order, a batch mixing Bible verses and licence texts would mostly compute
   padding.
2. ``map_batches`` with an actor pool of :class:`_SummaryActor`: each actor loads the encoder once
   (``load_encoder(model)`` for a registry name, or an unpickled :class:`Encoder` object), encodes
   its batch into a token store in a private temporary folder (``cache=False``: actors never touch
   the shared token cache, so they cannot race on it) and calls the local engine's
   :func:`~rag_diag.collapse.knn.covariance_summary` on that store. Per document it returns what the
   summary keeps, with A = (X − μ)/(‖μ‖·√n) (so Σ = AᵀA is the normalised covariance) and the
   eigendecomposition A Aᵀ = U Λ Uᵀ (λ_1 ≥ λ_2 ≥ …):

   - ``mean`` μ/‖μ‖ (d, float32), ``factor`` F = U_rᵀ A flattened (r·d, float32; FᵀF = Σ_r, the best
     rank-r part of Σ),
   - ``kept`` = Σ_{i≤r} λ_i, ``tail`` τ = tr Σ − kept,
   - raw statistics ``n_tokens`` n, ``trace`` S(X) = tr Σ(X), ``concentration`` S(X)/‖μ(X)‖².
3. Optionally the shards are written as parquet into ``shard_dir`` (``Dataset.write_parquet``) and read
   back; rows are sorted by row index into a :class:`~rag_diag.collapse.knn.CovarianceSummary`.
4. ``knn_collapse(None, k, summary=…)`` runs the local engine's kNN
   search and SOCM code on it.

Agreement with the local engine: every per-document quantity depends on that document's token matrix
only, computed by the same code. Batch composition changes only the zero padding of the encoder's
input (masked out of attention, so float32 rounding of the forward pass at most: ≤ 3e-7 relative
measured on MiniLM; none for the mock encoder) and the width of the zero-padded Gram matrix whose
eigendecomposition gives F (float64 rounding only; F is defined up to the sign of each row, FᵀF is not).

Ray is an optional extra (``pip install 'ray[data]==2.60.0'``), imported only here and only when used.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from rag_diag.collapse.knn import CovarianceSummary, covariance_summary
from rag_diag.collapse.socm import TextStats
from rag_diag.collapse.spill import release, zeros
from rag_diag.errors import RagDiagError
from rag_diag.models.protocol import Encoder
from rag_diag.tokens.ray_pass import RayOptions, actor_map, ray_pipeline

COLUMNS = ("row", "id", "mean", "factor", "kept", "tail", "n_tokens", "trace", "concentration")


class _SummaryActor:
    """Ray Data callable class: one encoder per actor, one rank-r summary per document of each batch."""

    def __init__(
        self,
        model: str | Encoder,
        rank: int,
        batch_size: int,
        max_seq_length: int | None,
        layer: int | None,
        drop_special: bool,
        device: str,
    ) -> None:
        if isinstance(model, str):
            from rag_diag.models.loading import load_encoder

            self.encoder: Encoder = load_encoder(model, device, max_seq_length)
        else:
            self.encoder = model
        self.rank, self.batch_size, self.layer, self.drop_special = rank, batch_size, layer, drop_special

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from rag_diag.tokens.extract import encode_texts

        ids = [str(i) for i in batch["id"]]
        with tempfile.TemporaryDirectory(prefix="rag-diag-ray-") as tmp:
            store = encode_texts(
                [str(t) for t in batch["text"]], model=self.encoder, ids=ids, cache=False, out=Path(tmp) / "store",
                layers="last" if self.layer is None else [self.layer], batch_size=self.batch_size,
            )
            summary = covariance_summary(store, self.rank, layer=self.layer, drop_special=self.drop_special)
            del store  # release the memory maps before the folder goes
        n = len(ids)
        return {
            "row": np.asarray(batch["row"], dtype=np.int64), "id": np.asarray(ids, dtype=object),
            "mean": summary.means, "factor": summary.factors.reshape(n, -1),
            "kept": summary.traces, "tail": summary.tail, "n_tokens": summary.text_stats.n_tokens,
            "trace": summary.text_stats.trace, "concentration": summary.text_stats.concentration,
        }


def _assemble(parts: Iterable[dict[str, np.ndarray]], ids: Sequence[str], rank: int) -> CovarianceSummary:
    """Gather shard batches as they come (each batch's factors written at its rows, to disk over ``SPILL_BYTES``)
    and sort the rest by row index; every row 0 … N−1 must come back once."""
    n = len(ids)
    factors: np.ndarray | None = None
    gathered: dict[str, list[np.ndarray]] = {name: [] for name in COLUMNS if name != "factor"}
    for part in parts:
        rows = np.asarray(part["row"], dtype=np.int64)
        dim = np.asarray(part["mean"]).shape[-1]
        if factors is None:
            factors = zeros((n, rank, dim))
        if len(rows) and (rows.min() < 0 or rows.max() >= n):
            raise RagDiagError(f"the Ray engine returned a row index outside 0 … {n - 1}")
        factors[rows] = np.asarray(part["factor"], dtype=np.float32).reshape(len(rows), rank, dim)
        release(factors)
        for name, values in gathered.items():
            values.append(np.asarray(part[name]))
    if factors is None:
        raise RagDiagError("the Ray engine returned no rows")
    columns = {name: np.concatenate(values) for name, values in gathered.items()}
    order = np.argsort(columns["row"], kind="stable")
    if not np.array_equal(columns["row"][order], np.arange(n)):
        raise RagDiagError(f"the Ray engine returned {len(order)} rows for {n} texts (lost or repeated rows)")
    if [str(i) for i in columns["id"][order]] != list(ids):
        raise RagDiagError("the Ray engine returned rows whose ids do not match their row index")
    stats = TextStats(
        n_tokens=columns["n_tokens"][order].astype(np.int64),
        trace=columns["trace"][order].astype(np.float64),
        concentration=columns["concentration"][order].astype(np.float64),
    )
    return CovarianceSummary(means=np.asarray(columns["mean"][order], dtype=np.float32), factors=factors,
                             traces=columns["kept"][order].astype(np.float64),
                             tail=columns["tail"][order].astype(np.float64), text_stats=stats)


def _read_shards(path: Path) -> Iterator[dict[str, np.ndarray]]:
    """The parquet shards as numpy batches, read one at a time in the driver with pyarrow.

    The driver gathers every row for the kNN step anyway; a distributed ``ray.data.read_parquet``
    would add a read stage (~9 s measured on 2 CPUs) for nothing. Tensor columns are Ray's Arrow
    extension type, registered by ``import ray.data``.
    """
    import pyarrow.parquet as pq

    for file in sorted(path.rglob("*.parquet")):
        for batch in pq.ParquetFile(file).iter_batches():
            yield {name: batch.column(name).to_numpy(zero_copy_only=False) for name in COLUMNS}


def ray_summaries(
    texts: Sequence[str],
    ids: Sequence[str],
    *,
    model: str | Encoder,
    rank: int,
    batch_size: int = 64,
    max_seq_length: int | None = None,
    layer: int | None = None,
    drop_special: bool = False,
    address: str | None = None,
    num_cpus: int | None = None,
    actors: int | None = None,
    cpus_per_actor: float = 1.0,
    num_gpus_per_actor: float = 0.0,
    shard_dir: str | Path | None = None,
    show_progress: bool = False,
) -> CovarianceSummary:
    """Rank-r covariance summaries of ``texts`` (in order) computed by Ray Data encoder actors.

    Equal, document by document, to ``covariance_summary(encode_texts(texts, model=model, ids=ids), rank,
    layer=layer, drop_special=drop_special)`` (see the module docstring).

    Args:
        model: a registry name or model folder (loaded once per actor) or an :class:`Encoder` (pickled).
        batch_size: texts per Ray batch (one forward pass each).
        layer: hidden layer (None: the last).
        address: an existing cluster (``host:port``, ``auto``, ``ray://…``); None starts a local instance
            with ``num_cpus`` CPUs. A Ray already initialised in this process is used as it is.
        actors: fixed actor-pool size (None: Ray scales the pool).
        cpus_per_actor, num_gpus_per_actor: resources per actor; with GPUs a registry model loads on CUDA.
        shard_dir: also write the per-document shards there as parquet (an empty or new folder, on
            storage every node sees) and read them back.
    """
    from rag_diag.tokens.extract import _validate_texts

    if rank < 1:
        raise RagDiagError(f"--rank must be at least 1, got {rank}")
    if batch_size < 1:
        raise RagDiagError(f"batch size must be at least 1, got {batch_size}")
    ids = [str(i) for i in ids]
    _validate_texts(ids, texts)
    shard_path = Path(shard_dir) if shard_dir is not None else None
    if shard_path is not None and shard_path.exists() and (not shard_path.is_dir() or any(shard_path.iterdir())):
        raise RagDiagError(f"{shard_path}: the shard folder must be new or empty")
    options = RayOptions(address=address, num_cpus=num_cpus, actors=actors, cpus_per_actor=cpus_per_actor,
                         num_gpus_per_actor=num_gpus_per_actor)
    device = "cuda" if num_gpus_per_actor > 0 else "cpu"
    constructor = {"model": model, "rank": rank, "batch_size": batch_size, "max_seq_length": max_seq_length,
                   "layer": layer, "drop_special": drop_special, "device": device}
    # longest first (characters stand in for tokens), so each Ray batch's texts have similar lengths and its
    # forward passes pad little; the row index restores the corpus order (:func:`_assemble`)
    order = np.argsort(-np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts)), kind="stable")
    records = [{"row": int(row), "id": ids[row], "text": texts[row]} for row in order]
    with ray_pipeline(options, show_progress) as ray:
        dataset = actor_map(ray, records, _SummaryActor, constructor, batch_size, options)
        if shard_path is not None:
            dataset.write_parquet(str(shard_path))
            return _assemble(_read_shards(shard_path), ids, rank)
        return _assemble(dataset.iter_batches(batch_size=None, batch_format="numpy"), ids, rank)
