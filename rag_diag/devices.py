"""The one device resolver: ``cpu``, ``cuda`` or ``auto`` for torch work and for FAISS.

Torch and FAISS see GPUs independently (a CUDA torch beside faiss-cpu is common), so each asks its
own library; both share the same spelling rules and error messages.
"""

from __future__ import annotations

from rag_diag.errors import RagDiagError


def _resolve(device: str, gpus: int, what: str) -> str:
    if device == "auto":
        return "cuda" if gpus > 0 else "cpu"
    if device.startswith("cuda"):
        if gpus == 0:
            raise RagDiagError(f"--device cuda was asked for but {what} sees no GPU")
        return device
    if device != "cpu":
        raise RagDiagError(f"unknown device '{device}' (use cpu, cuda or auto)")
    return "cpu"


def resolve_device(device: str = "auto") -> str:
    """Device for torch work: ``auto`` → cuda when torch sees a GPU, else cpu; ``cuda`` without one is an error."""
    import torch

    return _resolve(device, torch.cuda.device_count() if torch.cuda.is_available() else 0, "torch")


def resolve_faiss_device(device: str) -> str:
    """Device for FAISS indexes: ``cuda`` needs faiss-gpu and a GPU; returns ``cpu`` or ``cuda``."""
    import faiss

    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    return "cuda" if _resolve(device, gpus, "FAISS (needs faiss-gpu)").startswith("cuda") else "cpu"
