"""GPU paths on a CUDA machine, checked against CPU references computed beforehand with the same weights.

Prepare here (CPU): ``python benchmarks/gpu_check.py prepare .gpu`` writes ``.gpu/minilm`` (all-MiniLM-L6-v2
with float16-stored weights, to fit the device transfer limit; both sides compute in float32),
``.gpu/texts.json`` (1,000 real Wikipedia sentences) and ``.gpu/reference.npz`` (CPU means and SOCM).
Run there: ``python benchmarks/gpu_check.py check .gpu`` prints the agreement and the timings:
token extraction on CUDA, all 499,500 pairs on CUDA (float64 and float32), and the same pairs on the CPU.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

N_TEXTS = 1000
N_CHECK_PAIRS = 2000


def _encoder(folder: Path, device: str):  # type: ignore[no-untyped-def]
    from rag_diag.models.loading import load_encoder

    encoder = load_encoder(str(folder / "model"), device=device)
    encoder.model.float()
    return encoder


def _check_pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    a = rng.integers(0, n, N_CHECK_PAIRS)
    b = (a + rng.integers(1, n, N_CHECK_PAIRS)) % n
    return a, b


def copy_half_model(folder: Path) -> None:
    """A fresh ``folder/model``: all-MiniLM-L6-v2 with float16-stored weights (loaded back as float32)."""
    from safetensors.torch import load_file, save_file

    from rag_diag.models.registry import minilm_path

    model_dir = folder / "model"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(minilm_path(), model_dir)
    weights = load_file(str(model_dir / "model.safetensors"))
    half = {name: tensor.half() for name, tensor in weights.items()}
    save_file(half, str(model_dir / "model.safetensors"), metadata={"format": "pt"})


def prepare(folder: Path) -> None:
    """Model copy with float16 weights, texts and CPU references."""
    from rag_diag.collapse.allpairs import all_pairs
    from rag_diag.collapse.socm import pair_socm
    from rag_diag.corpora.wiki import wiki_sentences
    from rag_diag.tokens.extract import encode_texts

    copy_half_model(folder)
    texts = wiki_sentences(N_TEXTS, seed=0)
    (folder / "texts.json").write_text(json.dumps(texts))
    with tempfile.TemporaryDirectory() as tmp:
        store = encode_texts(texts, model=_encoder(folder, "cpu"), out=Path(tmp) / "s", cache=False)
        a, b = _check_pairs(len(texts))
        stats = pair_socm(store, a, b)
        result = all_pairs(store)
        np.savez(folder / "reference.npz", means=store.means(), a=a, b=b, socm=stats.socm,
                 d_sigma=stats.d_sigma, avg_socm=float(result.pairs.socm.mean()))
    print(f"prepared {folder}: {len(texts)} texts")


def check(folder: Path) -> None:
    """Encode and compute SOCM on CUDA; compare with the CPU references; time CUDA against CPU."""
    from rag_diag.collapse.allpairs import all_pairs
    from rag_diag.collapse.socm import pair_socm
    from rag_diag.tokens.extract import encode_texts

    assert torch.cuda.is_available(), "no CUDA device"
    print(f"device: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, {os.cpu_count()} CPU cores")
    texts = json.loads((folder / "texts.json").read_text())
    reference = np.load(folder / "reference.npz")
    encoder = _encoder(folder, "cuda")
    with tempfile.TemporaryDirectory() as tmp:
        encode_texts(texts[:64], model=encoder, out=Path(tmp) / "w", cache=False)  # warm-up
        torch.cuda.synchronize()
        start = time.perf_counter()
        store = encode_texts(texts, model=encoder, out=Path(tmp) / "s", cache=False, batch_size=128)
        seconds = time.perf_counter() - start
        print(f"encode on CUDA: {len(texts)} texts in {seconds:.2f} s; max |mean - CPU mean| "
              f"{np.abs(store.means() - reference['means']).max():.2e}")
        stats = pair_socm(store, reference["a"], reference["b"], device="cuda")
        print(f"pair_socm on CUDA vs CPU (float64): max |ΔSOCM| {np.abs(stats.socm - reference['socm']).max():.2e}")
        for device, dtype in (("cuda", torch.float64), ("cuda", torch.float32), ("cpu", torch.float64),
                              ("cpu", torch.float32)):
            all_pairs(store, sample=50, device=device, dtype=dtype)  # warm-up
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            result = all_pairs(store, device=device, dtype=dtype)
            if device == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - start
            avg = float(result.pairs.socm.mean())
            print(f"all {len(result.pairs.socm):,} pairs on {device} {str(dtype)[6:]}: {seconds:.2f} s, avg SOCM "
                  f"{avg:.6f} (CPU reference {float(reference['avg_socm']):.6f})")


if __name__ == "__main__":
    {"prepare": prepare, "check": check}[sys.argv[1]](Path(sys.argv[2]))
