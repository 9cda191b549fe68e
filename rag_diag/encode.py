"""One-pass token extraction and the token store.

One forward pass per text yields its token embeddings (padding removed by the attention mask,
special tokens kept and flagged), its token ids and a special-token mask. Every pooling strategy and
every collapse statistic is computed from this store; nothing re-encodes.

On disk a store is a folder (``TokenStore.FILES``): a flat ``(L, T, d)`` matrix memory-mapped from
``embeddings.npy`` (L stored layers, T tokens in all, d hidden size), ``offsets.npy`` (N+1 row
offsets: text i owns rows ``offsets[i]:offsets[i+1]``), ``token_ids.npy``, ``special_mask.npy``,
``doc_ids.json`` and ``manifest.json``. The manifest carries the cache key, shapes, sizes and a
CRC-32 of every file; a store whose files disagree with it is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rag_diag import atomic
from rag_diag.corpora.io import Corpus, hash_texts
from rag_diag.errors import RagDiagError
from rag_diag.models import Encoder, cache_root, load_encoder

STORE_FORMAT = 1
MANIFEST = "manifest.json"


@dataclass
class TokenStore:
    """A ragged store of token embeddings, one block of rows per text."""

    path: Path
    doc_ids: list[str]
    offsets: np.ndarray
    embeddings: np.ndarray
    token_ids: np.ndarray
    special_mask: np.ndarray
    layers: list[int]
    manifest: dict[str, Any] = field(default_factory=dict)

    FILES = ("embeddings.npy", "offsets.npy", "token_ids.npy", "special_mask.npy", "doc_ids.json")

    def __len__(self) -> int:
        return len(self.doc_ids)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[-1])

    @property
    def lengths(self) -> np.ndarray:
        """Number of stored tokens per text (special tokens included)."""
        return np.diff(self.offsets)

    def layer_position(self, layer: int | None) -> int:
        """Index into the stored layers; ``None`` means the deepest stored one (the last hidden layer by default)."""
        if layer is None:
            return len(self.layers) - 1
        if layer not in self.layers:
            raise RagDiagError(f"layer {layer} is not in this token store (stored: {self.layers})")
        return self.layers.index(layer)

    def tokens(self, index: int, layer: int | None = None, drop_special: bool = False) -> np.ndarray:
        """Token matrix (n_i, d) of text ``index`` as float32."""
        start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
        rows = np.asarray(self.embeddings[self.layer_position(layer), start:stop], dtype=np.float32)
        if drop_special:
            keep = ~self.special_mask[start:stop]
            if keep.any():
                rows = rows[keep]
        return rows

    def means(self, layer: int | None = None, drop_special: bool = False) -> np.ndarray:
        """Mean-pooled vectors (N, d) in float32, accumulated in float64 (μ(X) = (1/n) Σ x_j)."""
        out = np.empty((len(self), self.dim), dtype=np.float32)
        for index in range(len(self)):
            out[index] = self.tokens(index, layer, drop_special).astype(np.float64).mean(axis=0)
        return out

    @classmethod
    def open(cls, path: str | Path, verify: bool = True) -> TokenStore:
        """Open a store folder; with ``verify`` every file is checked against the manifest (size, CRC-32)."""
        path = Path(path)
        manifest_path = path / MANIFEST
        if not manifest_path.is_file():
            raise RagDiagError(f"{path}: not a token store (no {MANIFEST})")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RagDiagError(f"{manifest_path}: corrupt manifest") from None
        if manifest.get("format") != STORE_FORMAT:
            raise RagDiagError(f"{path}: token store format {manifest.get('format')} is not {STORE_FORMAT}")
        if verify:
            problem = _verify_files(path, manifest)
            if problem:
                raise RagDiagError(f"{path}: corrupt token store ({problem})")
        try:
            doc_ids = json.loads((path / "doc_ids.json").read_text())
            store = cls(
                path=path,
                doc_ids=doc_ids,
                offsets=np.load(path / "offsets.npy"),
                embeddings=np.load(path / "embeddings.npy", mmap_mode="r"),
                token_ids=np.load(path / "token_ids.npy", mmap_mode="r"),
                special_mask=np.load(path / "special_mask.npy"),
                layers=list(manifest["layers"]),
                manifest=manifest,
            )
        except (OSError, ValueError, KeyError) as exc:
            raise RagDiagError(f"{path}: corrupt token store ({exc})") from None
        if store.embeddings.shape[1] != int(store.offsets[-1]) or len(store.offsets) != len(doc_ids) + 1:
            raise RagDiagError(f"{path}: corrupt token store (shapes disagree with offsets)")
        return store


def _crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            crc = zlib.crc32(chunk, crc)
    return crc


def _verify_files(path: Path, manifest: dict[str, Any]) -> str | None:
    """None when every file matches the manifest's size and CRC-32, else what is wrong."""
    for name, expected in manifest.get("files", {}).items():
        file = path / name
        if not file.is_file():
            return f"{name} missing"
        if file.stat().st_size != expected["size"]:
            return f"{name} has {file.stat().st_size} bytes, manifest says {expected['size']}"
        if _crc32(file) != expected["crc32"]:
            return f"{name} checksum mismatch"
    if set(manifest.get("files", {})) != set(TokenStore.FILES):
        return "manifest lists the wrong files"
    return None


@dataclass(frozen=True)
class EncodeReport:
    """What an encode call did: cache hit or not, truncation count, timings."""

    n_texts: int
    n_tokens: int
    n_truncated: int
    cache_hit: bool
    forward_passes: int
    path: Path


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


def cache_key(encoder: Encoder, layers: list[int], dtype: str, text_hash: str) -> str:
    """sha256 over everything that changes the stored numbers."""
    payload = {
        "format": STORE_FORMAT,
        "model": encoder.identity,
        "max_seq_length": encoder.max_seq_length,
        "layers": layers,
        "dtype": dtype,
        "texts": text_hash,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


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


def _tokenize(encoder: Encoder, texts: Sequence[str]) -> tuple[list[list[int]], list[list[int]], int]:
    """Token ids and special-token masks per text (truncated to the window), and how many were cut."""
    tokenizer = encoder.tokenizer
    limit = encoder.max_seq_length
    full = tokenizer(list(texts), add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
    n_truncated = sum(1 for ids in full if len(ids) > limit)
    encoded = tokenizer(
        list(texts),
        add_special_tokens=True,
        truncation=True,
        max_length=limit,
        return_special_tokens_mask=True,
        verbose=False,
    )
    return encoded["input_ids"], encoded["special_tokens_mask"], n_truncated


def _write_store(
    folder: Path,
    encoder: Encoder,
    ids: Sequence[str],
    texts: Sequence[str],
    layers: list[int],
    dtype: str,
    batch_size: int,
    progress: Callable[[int], None] | None,
) -> tuple[int, int, int]:
    """Encode ``texts`` into ``folder``; returns (n_tokens, n_truncated, forward passes)."""
    import torch

    input_ids, special, n_truncated = _tokenize(encoder, texts)
    lengths = np.array([len(row) for row in input_ids], dtype=np.int64)
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    np_dtype = np.float16 if dtype == "float16" else np.float32
    embeddings = np.lib.format.open_memmap(
        folder / "embeddings.npy", mode="w+", dtype=np_dtype, shape=(len(layers), total, encoder.dim)
    )
    token_ids = np.concatenate([np.asarray(row, dtype=np.int32) for row in input_ids])
    special_mask = np.concatenate([np.asarray(row, dtype=bool) for row in special])
    order = np.argsort(-lengths, kind="stable")
    pad_id = encoder.tokenizer.pad_token_id if encoder.tokenizer.pad_token_id is not None else 0
    want_hidden = layers != [encoder.num_layers]
    passes = 0
    device = encoder.device
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = int(lengths[batch].max())
            ids_tensor = torch.full((len(batch), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, index in enumerate(batch):
                n = int(lengths[index])
                ids_tensor[row, :n] = torch.as_tensor(input_ids[index])
                mask[row, :n] = 1
            inputs = {"input_ids": ids_tensor.to(device), "attention_mask": mask.to(device)}
            if "token_type_ids" in encoder.tokenizer.model_input_names:
                inputs["token_type_ids"] = torch.zeros_like(inputs["input_ids"])
            output = encoder.model(**inputs, output_hidden_states=want_hidden)
            passes += 1
            if want_hidden:
                stacked = torch.stack([output.hidden_states[layer] for layer in layers])
            else:
                stacked = output.last_hidden_state.unsqueeze(0)
            rows = stacked.to(torch.float16 if np_dtype == np.float16 else torch.float32).cpu().numpy()
            for row, index in enumerate(batch):
                n = int(lengths[index])
                embeddings[:, offsets[index] : offsets[index] + n] = rows[:, row, :n]
            if progress is not None:
                progress(len(batch))
    embeddings.flush()
    del embeddings
    np.save(folder / "offsets.npy", offsets)
    np.save(folder / "token_ids.npy", token_ids)
    np.save(folder / "special_mask.npy", special_mask)
    (folder / "doc_ids.json").write_text(json.dumps(list(ids)))
    return total, n_truncated, passes


def encode_texts(
    texts: Sequence[str],
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
) -> TokenStore:
    """Encode texts once and return their token store (from the cache when the inputs are unchanged).

    Args:
        texts: the texts, in order; none may be empty.
        model: a registry name, a local model folder, or a loaded :class:`Encoder`.
        ids: one id per text (default: "0", "1", …).
        layers: "last", "all", an int or a list of hidden-state indices (0 = embedding output).
        dtype: "float32" or "float16" storage.
        out: also publish the store at this folder (hard links to the cache entry when possible).
        cache: look up / fill the cache under ``cache_root()/tokens``; False encodes into ``out`` only.
    """
    store, _ = encode_with_report(
        texts, model, ids, layers, dtype, batch_size, device, max_seq_length, out, cache, show_progress
    )
    return store


def encode_corpus(corpus: Corpus, model: str | Encoder = "minilm", **kwargs: Any) -> TokenStore:
    """Encode a :class:`Corpus` (ids and title-joined texts)."""
    return encode_texts(corpus.texts, model=model, ids=corpus.ids, **kwargs)


def encode_with_report(
    texts: Sequence[str],
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
) -> tuple[TokenStore, EncodeReport]:
    """Like :func:`encode_texts`, and also say what happened (cache hit, truncations, forward passes)."""
    if dtype not in ("float32", "float16"):
        raise RagDiagError(f"dtype must be float32 or float16, got '{dtype}'")
    ids = [str(i) for i in range(len(texts))] if ids is None else [str(i) for i in ids]
    _validate_texts(ids, texts)
    encoder = model if isinstance(model, Encoder) else load_encoder(model, device, max_seq_length)
    resolved_layers = parse_layers(layers, encoder.num_layers)
    text_hash = hash_texts(list(ids), list(texts))
    key = cache_key(encoder, resolved_layers, dtype, text_hash)
    if not cache and out is None:
        raise RagDiagError("with cache disabled an output folder is needed")
    target = cache_root() / "tokens" / key if cache else Path(out)  # type: ignore[arg-type]

    store = _try_open(target, key)
    hit = store is not None
    passes = n_truncated = 0
    if store is None:
        with atomic.atomic_dir(target) as tmp:
            from rag_diag.progress import progress_bar

            with progress_bar(f"encoding with {encoder.name}", len(texts), enabled=show_progress) as advance:
                n_tokens, n_truncated, passes = _write_store(
                    tmp, encoder, ids, texts, resolved_layers, dtype, batch_size, advance
                )
            manifest = {
                "format": STORE_FORMAT,
                "key": key,
                "model": encoder.identity,
                "max_seq_length": encoder.max_seq_length,
                "layers": resolved_layers,
                "num_layers": encoder.num_layers,
                "dtype": dtype,
                "dim": encoder.dim,
                "n_texts": len(texts),
                "n_tokens": n_tokens,
                "n_truncated": n_truncated,
                "text_sha256": text_hash,
                "files": {
                    name: {"size": (tmp / name).stat().st_size, "crc32": _crc32(tmp / name)}
                    for name in TokenStore.FILES
                },
            }
            atomic.write_json(tmp / MANIFEST, manifest)
        store = TokenStore.open(target, verify=False)
    if cache and out is not None:
        _publish(target, Path(out))
        store = TokenStore.open(out, verify=False)
    report = EncodeReport(
        n_texts=len(texts),
        n_tokens=int(store.offsets[-1]),
        n_truncated=int(store.manifest.get("n_truncated", n_truncated)),
        cache_hit=hit,
        forward_passes=passes,
        path=store.path,
    )
    return store, report


def _try_open(path: Path, key: str) -> TokenStore | None:
    """Open a cached store if it is complete and matches ``key``; remove it if it is corrupt."""
    if not path.exists():
        return None
    try:
        store = TokenStore.open(path, verify=True)
    except RagDiagError:
        shutil.rmtree(path, ignore_errors=True)
        return None
    if store.manifest.get("key") != key:
        shutil.rmtree(path, ignore_errors=True)
        return None
    return store


def _publish(source: Path, target: Path) -> None:
    """Place a copy of the store folder at ``target`` (hard links when on the same filesystem)."""
    if target.resolve() == source.resolve():
        return
    with atomic.atomic_dir(target) as tmp:
        for name in (*TokenStore.FILES, MANIFEST):
            try:
                os.link(source / name, tmp / name)
            except OSError:
                shutil.copy2(source / name, tmp / name)
