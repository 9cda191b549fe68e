"""The token store artefact: one ragged matrix of token embeddings per corpus, its owner and verifier.

On disk a store is a folder (``TokenStore.FILES``): a flat ``(L, T, d)`` matrix memory-mapped from
``embeddings.npy`` (L stored layers, T tokens in all, d hidden size), ``offsets.npy`` (N+1 row
offsets: text i owns rows ``offsets[i]:offsets[i+1]``), ``token_ids.npy``, ``special_mask.npy``,
``full_lengths.npy`` (each text's token count before it was cut to the model window, so truncation
stays visible), ``doc_ids.json`` and ``manifest.json``. The manifest carries the cache key, shapes, sizes and a
CRC-32 of every file; a store whose files disagree with it is rebuilt, never trusted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rag_diag import atomic
from rag_diag.errors import RagDiagError

STORE_FORMAT = 2
READ_RELEASE_BYTES = 16 << 20
"""Bytes of token rows :meth:`TokenStore.tokens` reads between two drops of the mapping's resident pages, so that
scattered readers (re-ranking, diagnosis) leave little mapped. A fault may map a whole large folio of a file just
written (≈ 6 × the rows read here), so a scan of a 384 MiB store in random order maps ≈ 105 MiB at most (386
without the drops)."""
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class EncodeReport:
    """What an encode call did: cache hit or not, truncation count, forward passes."""

    n_texts: int
    n_tokens: int
    n_truncated: int
    cache_hit: bool
    forward_passes: int
    path: Path


@dataclass
class TokenStore:
    """A ragged store of token embeddings, one block of rows per text."""

    path: Path
    doc_ids: list[str]
    offsets: np.ndarray
    embeddings: np.ndarray
    token_ids: np.ndarray
    special_mask: np.ndarray
    full_lengths: np.ndarray
    layers: list[int]
    manifest: dict[str, Any] = field(default_factory=dict)
    report: EncodeReport | None = None
    unreleased_bytes: int = field(default=0, repr=False)
    """Bytes :meth:`tokens` has read since the mapping's pages were last dropped."""

    FILES = (
        "embeddings.npy", "offsets.npy", "token_ids.npy", "special_mask.npy", "full_lengths.npy", "doc_ids.json",
    )

    def __len__(self) -> int:
        return len(self.doc_ids)

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[-1])

    @property
    def window(self) -> int:
        """The model window (tokens) the texts were cut to."""
        return int(self.manifest["max_seq_length"])

    @property
    def truncated(self) -> np.ndarray:
        """Per text: True when it was longer than the window (its tail is not in the store)."""
        return self.full_lengths > self.window

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
        self.unreleased_bytes += (stop - start) * self.dim * self.embeddings.itemsize
        if self.unreleased_bytes > READ_RELEASE_BYTES:  # scattered reads (re-ranking, diagnosis) map pages too
            self.release_pages()
        rows = np.asarray(self.embeddings[self.layer_position(layer), start:stop], dtype=np.float32)
        if drop_special:
            keep = ~self.special_mask[start:stop]
            if keep.any():
                rows = rows[keep]
        return rows

    def means(self, layer: int | None = None, drop_special: bool = False, chunk_rows: int = 1 << 14) -> np.ndarray:
        """Mean-pooled vectors (N, d) float32, μ(X) = (1/n) Σ x_j accumulated in float64.

        Streamed over the memory-mapped matrix in chunks of about ``chunk_rows`` token rows, so memory stays
        bounded: a chunk is cast to float64 once (50 MB at 2¹⁴ rows, d = 384; 2¹⁶-row chunks and a weighted copy
        took +0.8 GiB over windowed encoding's 12,790 chunk texts). Matches :meth:`tokens`: with
        ``drop_special`` a text made only of special tokens keeps them.
        """
        position = self.layer_position(layer)
        offsets, lengths = self.offsets, self.lengths
        out = np.empty((len(self), self.dim), dtype=np.float32)
        start_doc = 0
        while start_doc < len(self):
            stop_doc = int(np.searchsorted(offsets, offsets[start_doc] + chunk_rows, side="right")) - 1
            stop_doc = min(max(stop_doc, start_doc + 1), len(self))
            lo, hi = int(offsets[start_doc]), int(offsets[stop_doc])
            starts = offsets[start_doc:stop_doc] - lo
            if drop_special:
                weights = (~self.special_mask[lo:hi]).astype(np.float64)
                kept = np.add.reduceat(weights, starts)
                for doc in np.flatnonzero(kept == 0):
                    weights[starts[doc] : starts[doc] + lengths[start_doc + doc]] = 1.0
                rows = np.asarray(self.embeddings[position, lo:hi], dtype=np.float64) * weights[:, None]
                sums, counts = np.add.reduceat(rows, starts, axis=0), np.add.reduceat(weights, starts)
            else:
                sums = np.add.reduceat(self.embeddings[position, lo:hi], starts, axis=0, dtype=np.float64)
                counts = lengths[start_doc:stop_doc].astype(np.float64)
            out[start_doc:stop_doc] = sums / counts[:, None]
            start_doc = stop_doc
            self.release_pages()  # RSS holds one chunk of the store, not the store
        return out

    def release_pages(self) -> None:
        """Drop the memory-mapped token matrix's resident pages (read-only and file-backed, so nothing is lost:
        they are read again from disk when next touched), so a pass over the store leaves RSS where it was."""
        import mmap

        self.unreleased_bytes = 0
        mapped = getattr(self.embeddings, "_mmap", None)
        if isinstance(mapped, mmap.mmap) and hasattr(mapped, "madvise"):
            mapped.madvise(mmap.MADV_DONTNEED)

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
        if not isinstance(manifest, dict):
            raise RagDiagError(f"{manifest_path}: corrupt manifest (not a JSON object)")
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
                full_lengths=np.load(path / "full_lengths.npy"),
                layers=list(manifest["layers"]),
                manifest=manifest,
            )
        except (OSError, ValueError, KeyError) as exc:
            raise RagDiagError(f"{path}: corrupt token store ({exc})") from None
        if store.embeddings.shape[1] != int(store.offsets[-1]) or len(store.offsets) != len(doc_ids) + 1:
            raise RagDiagError(f"{path}: corrupt token store (shapes disagree with offsets)")
        return store


def _verify_files(path: Path, manifest: dict[str, Any]) -> str | None:
    """None when every file matches the manifest's size and CRC-32, else what is wrong."""
    for name, expected in manifest.get("files", {}).items():
        problem = atomic.file_problem(path / name, expected)
        if problem is not None:
            return problem
    if set(manifest.get("files", {})) != set(TokenStore.FILES):
        return "manifest lists the wrong files"
    return None




def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    """Write ``manifest.json`` with the size and CRC-32 of every store file, so :meth:`TokenStore.open` can verify."""
    files = {name: atomic.file_record(folder / name) for name in TokenStore.FILES}
    atomic.write_json(folder / MANIFEST, {"format": STORE_FORMAT, **manifest, "files": files})
