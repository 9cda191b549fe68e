"""One-pass token extraction: every text's token embeddings from one forward pass, into a token store.

Texts are tokenized once (special tokens kept and flagged, cut to the model window), sorted by
length so batches carry little padding, run through the encoder, and their rows written into a
memory-mapped ``(L, T, d)`` matrix with padding removed. Every pooling strategy and every collapse
statistic is computed from this store; nothing re-encodes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rag_diag import atomic
from rag_diag.corpora.io import Corpus, hash_texts
from rag_diag.errors import RagDiagError
from rag_diag.models.protocol import Encoder, Tokenized
from rag_diag.progress import progress_bar, release_heap
from rag_diag.tokens.cache import cache_key, entry_path, open_cached, publish
from rag_diag.tokens.estimate import batch_slices
from rag_diag.tokens.ray_pass import RayOptions, ray_hidden_batches
from rag_diag.tokens.store import EncodeReport, TokenStore, write_manifest

DTYPES = ("float32", "float16")


def parse_layers(layers: str | int | Sequence[int], num_layers: int) -> list[int]:
    """``"last"`` → [num_layers]; ``"all"`` → [0 … num_layers] (0 = embedding output); ints as given."""
    if isinstance(layers, str):
        if layers == "last":
            return [num_layers]
        if layers == "all":
            return list(range(num_layers + 1))
        try:
            values = [int(part) for part in layers.split(",")]
        except ValueError:
            raise RagDiagError(f"--layer must be 'last', 'all' or integers, got '{layers}'") from None
    elif isinstance(layers, int):
        values = [layers]
    else:
        values = [int(v) for v in layers]
    resolved = sorted({v if v >= 0 else num_layers + 1 + v for v in values})
    for value in resolved:
        if not 0 <= value <= num_layers:
            raise RagDiagError(f"layer {value} is outside 0..{num_layers}")
    return resolved


def _validate_texts(ids: Sequence[str], texts: Sequence[str]) -> None:
    if len(texts) == 0:
        raise RagDiagError("the corpus is empty: nothing to encode")
    if len(ids) != len(texts):
        raise RagDiagError(f"{len(ids)} ids for {len(texts)} texts")
    seen: set[str] = set()
    for doc_id, text in zip(ids, texts, strict=True):
        if doc_id in seen:
            raise RagDiagError(f"duplicate id '{doc_id}'")
        seen.add(doc_id)
        if not isinstance(text, str) or not text.strip():
            raise RagDiagError(f"text '{doc_id}' is empty: remove it or give it content")


RELEASE_BYTES = 16 << 20
"""Bytes of the token matrix written between two flushes, each followed by dropping its resident pages and
returning the freed heap, so writing a store of any size holds at most this much of it in memory
(``memory_budget / 4`` when given). Encoding 4,132 ``kb-scale`` texts in a summaries pass's shards peaked 0.34 GiB
above the start with 16 MiB, 0.52–0.58 with 64, in 96–105 s against 93–96 (``benchmarks/bench_shard_heap.py``)."""

HiddenBatches = Iterator[tuple[np.ndarray, list[np.ndarray], int]]
"""Per yielded batch: the row indices, each text's hidden states (layers, n_i, d), and the forward passes it took
(one locally; a Ray batch reports those its actor ran)."""


def release_written(embeddings: np.memmap) -> None:
    """Write the mapped pages to the file, then unmap them from this process (the file keeps them)."""
    import mmap

    embeddings.flush()
    mapped = getattr(embeddings, "_mmap", None)
    if isinstance(mapped, mmap.mmap) and hasattr(mapped, "madvise"):
        mapped.madvise(mmap.MADV_DONTNEED)


def local_batches(encoder: Encoder, input_ids: list[list[int]], order: np.ndarray, layers: list[int],
                   batch_size: int) -> HiddenBatches:
    """The encoder's forward passes in this process over ``order`` (longest first), batched by :func:`batch_slices`."""
    for part in batch_slices([len(input_ids[i]) for i in order], batch_size):
        batch = order[part]
        rows = encoder.hidden_states([input_ids[i] for i in batch], layers)
        yield batch, [rows[:, position, : len(input_ids[i])] for position, i in enumerate(batch)], 1


def store_bytes(n_tokens: int, n_layers: int, dim: int, dtype: str) -> int:
    """Size of a token store's embedding matrix: layers · tokens · d · (4 or 2) bytes."""
    return n_layers * n_tokens * dim * (2 if dtype == "float16" else 4)


def _human(n_bytes: int) -> str:
    """A byte count in the largest binary unit that keeps it at least 1."""
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n_bytes >= 1 << shift:
            return f"{n_bytes / (1 << shift):.2f} {unit}"
    return f"{n_bytes} B"


def check_max_store(size: int, max_store: int | None, dtype: str) -> None:
    """Refuse a token store of ``size`` bytes over ``max_store`` (one line, with the float16 size)."""
    if max_store is not None and size > max_store:
        smaller = "" if dtype == "float16" else f"; --dtype float16 would take {_human(size // 2)}"
        raise RagDiagError(f"the token store would take {_human(size)}, over --max-store {_human(max_store)}{smaller}")


def _write_store(
    folder: Path,
    encoder: Encoder,
    ids: Sequence[str],
    texts: Sequence[str],
    layers: list[int],
    dtype: str,
    batch_size: int,
    progress: Callable[[int], None],
    *,
    max_store: int | None = None,
    release_bytes: int = RELEASE_BYTES,
    ray: RayOptions | None = None,
    model: str | Encoder | None = None,
) -> dict[str, int]:
    """Encode ``texts`` into ``folder`` (store files, no manifest); returns token and pass counts (with Ray, the
    number of blocks it returned: it may merge batches).

    The forward passes run here, or on Ray actors (``ray``, loading ``model``); either way each text's
    states are written at its offset, and a store over ``max_store`` bytes is refused before any pass.
    """
    tokenized = encoder.tokenize(texts)
    lengths = np.array([len(row) for row in tokenized.input_ids], dtype=np.int64)
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    check_max_store(store_bytes(int(offsets[-1]), len(layers), encoder.dim, dtype), max_store, dtype)
    np_dtype = np.float16 if dtype == "float16" else np.float32
    embeddings = np.lib.format.open_memmap(
        folder / "embeddings.npy", mode="w+", dtype=np_dtype, shape=(len(layers), int(offsets[-1]), encoder.dim)
    )
    order = np.argsort(-lengths, kind="stable")
    if ray is None:
        batches = local_batches(encoder, tokenized.input_ids, order, layers, batch_size)
    else:
        batches = ray_hidden_batches(texts, order, model=model or encoder, layers=layers, dim=encoder.dim,
                                     batch_size=batch_size, max_seq_length=encoder.max_seq_length, options=ray)
    written = np.zeros(len(texts), dtype=bool)
    passes = unreleased = 0
    for batch, states, done in batches:
        passes += done
        for index, rows in zip(batch, states, strict=True):
            n = int(lengths[index])
            if written[index] or rows.shape[1] != n:
                raise RagDiagError(f"text {ids[index]!r}: the encoder pass returned it twice or with another length")
            embeddings[:, offsets[index] : offsets[index] + n] = rows
            written[index] = True
            unreleased += rows.size * embeddings.itemsize
        progress(len(batch))
        if unreleased >= release_bytes:
            release_written(embeddings)
            release_heap()  # the passes' freed activations: 3,814 texts in one call held +0.73 GiB of freed heap
            unreleased = 0
    if not written.all():
        raise RagDiagError(f"the encoder pass lost {int((~written).sum())} of {len(texts)} texts")
    embeddings.flush()
    del embeddings
    TokenArrays.of(tokenized).save(folder, ids)
    return {"n_tokens": int(offsets[-1]), "n_truncated": tokenized.n_truncated, "forward_passes": passes}


@dataclass(frozen=True)
class TokenArrays:
    """A tokenisation as a store holds it: row offsets, token ids, special-token mask, untruncated lengths."""

    offsets: np.ndarray
    token_ids: np.ndarray
    special_mask: np.ndarray
    full_lengths: np.ndarray
    n_truncated: int

    @classmethod
    def of(cls, tokenized: Tokenized) -> TokenArrays:
        offsets = np.zeros(len(tokenized.input_ids) + 1, dtype=np.int64)
        np.cumsum([len(row) for row in tokenized.input_ids], out=offsets[1:])
        return cls(offsets, np.concatenate([np.asarray(r, dtype=np.int32) for r in tokenized.input_ids]),
                   np.concatenate([np.asarray(r, dtype=bool) for r in tokenized.special_mask]),
                   np.asarray(tokenized.full_lengths, dtype=np.int64), int(tokenized.n_truncated))

    def save(self, folder: Path, ids: Sequence[str]) -> None:
        """A store's files besides its embeddings and manifest."""
        for name in ("offsets", "token_ids", "special_mask", "full_lengths"):
            np.save(folder / f"{name}.npy", getattr(self, name))
        atomic.write_json(folder / "doc_ids.json", list(ids))


def store_manifest(key: str, encoder: Encoder, layers: list[int], dtype: str, n_texts: int, counts: dict[str, int],
                   text_hash: str) -> dict[str, object]:
    """What a store's manifest records besides its files (:func:`rag_diag.tokens.store.write_manifest`)."""
    return {
        "key": key, "model": encoder.identity, "max_seq_length": encoder.max_seq_length, "layers": layers,
        "num_layers": encoder.num_layers, "dtype": dtype, "dim": encoder.dim, "n_texts": n_texts,
        "n_tokens": counts["n_tokens"], "n_truncated": counts["n_truncated"], "text_sha256": text_hash,
    }


def encode_texts(
    texts: Sequence[str],
    *,
    model: str | Encoder = "minilm",
    ids: Sequence[str] | None = None,
    layers: str | int | Sequence[int] = "last",
    dtype: str = "float32",
    batch_size: int = 32,
    device: str = "cpu",
    max_seq_length: int | None = None,
    out: str | Path | None = None,
    cache: bool = True,
    show_progress: bool = False,
    max_store: int | None = None,
    memory_budget: int | None = None,
    ray: RayOptions | None = None,
) -> TokenStore:
    """Encode texts once and return their token store (from the cache when the inputs are unchanged).

    Args:
        texts: the texts, in order; none may be empty.
        model: a registry name, a local model folder, or a loaded encoder (see ``rag_diag.models``).
        ids: one id per text (default: "0", "1", …).
        layers: "last", "all", an int or a list of hidden-state indices (0 = embedding output).
        dtype: "float32" or "float16" storage.
        out: also publish a verified copy of the store at this folder.
        cache: look up / fill the cache under ``cache_root()/tokens``; False encodes into ``out`` only.
        max_store: refuse (before any forward pass) a store larger than this many bytes.
        memory_budget: bytes of the store being written held in memory at most (a quarter of it is the write
            window; the rest is left to the encoder and the token ids).
        ray: run the forward passes on Ray Data actors (:mod:`rag_diag.tokens.ray_pass`); the store is the same.

    Returns:
        The store; ``store.report`` says whether it came from the cache, how many texts were cut to
        the window and how many forward passes ran.
    """
    if dtype not in DTYPES:
        raise RagDiagError(f"dtype must be float32 or float16, got '{dtype}'")
    if batch_size < 1:
        raise RagDiagError(f"batch size must be at least 1, got {batch_size}")
    if not cache and out is None:
        raise RagDiagError("with cache disabled an output folder is needed")
    ids = [str(i) for i in range(len(texts))] if ids is None else [str(i) for i in ids]
    _validate_texts(ids, texts)
    if isinstance(model, str):
        from rag_diag.models.loading import load_encoder

        encoder: Encoder = load_encoder(model, device, max_seq_length)
    else:
        encoder = model
    resolved_layers = parse_layers(layers, encoder.num_layers)
    text_hash = hash_texts(list(ids), list(texts))
    key = cache_key(encoder, resolved_layers, dtype, text_hash)
    target = entry_path(key) if cache else Path(out)  # type: ignore[arg-type]
    store = open_cached(target, key) if cache else None  # only the cache is reused (and pruned), never ``out``
    if store is not None:  # a cached store is published as a new one would be: within --max-store
        check_max_store(store_bytes(int(store.offsets[-1]), len(resolved_layers), encoder.dim, dtype), max_store, dtype)
    counts = {"forward_passes": 0}
    if store is None:
        with atomic.atomic_dir(target, kind="token-store") as tmp:
            with progress_bar(f"encoding with {encoder.name}", len(texts), enabled=show_progress) as advance:
                counts = _write_store(
                    tmp, encoder, ids, texts, resolved_layers, dtype, batch_size, advance, max_store=max_store,
                    release_bytes=RELEASE_BYTES if memory_budget is None else max(memory_budget // 4, 1), ray=ray,
                    model=model)
            write_manifest(tmp, store_manifest(key, encoder, resolved_layers, dtype, len(texts), counts, text_hash))
        store = TokenStore.open(target, verify=False)
    hit = counts["forward_passes"] == 0
    if cache and out is not None:
        store = publish(target, Path(out))
    store.report = EncodeReport(
        n_texts=len(texts), n_tokens=int(store.offsets[-1]), n_truncated=int(store.manifest["n_truncated"]),
        cache_hit=hit, forward_passes=counts["forward_passes"], path=store.path,
    )
    return store


def encode_corpus(corpus: Corpus, **options: object) -> TokenStore:
    """Encode a :class:`Corpus` (its ids and title-joined texts); ``options`` as for :func:`encode_texts`."""
    return encode_texts(corpus.texts, ids=corpus.ids, **options)  # type: ignore[arg-type]
