#!/usr/bin/env bash
# Run benchmarks/gpu_scale_check.py on a CUDA machine that cannot reach a package registry.
#
# faiss-gpu 1.15.1 links the CUDA 12 runtime and cuBLAS (libcudart.so.12, libcublas.so.12, libcublasLt.so.12)
# by versioned symbols and preloads them and libcurand.so.10 from the nvidia.* packages, so a CUDA 13 image
# needs them beside it. Pack them here (x86-64): unpack the wheels faiss-gpu==1.15.1, nvidia-cublas-cu12==12.6.4.1,
# nvidia-curand-cu12==10.3.7.77 and nvidia-cuda-runtime-cu12==12.6.77 in one folder, drop the lib/__init__.py
# files, write nvidia/__init__.py as ``__path__ = __import__("pkgutil").extend_path(__path__, __name__)`` (so the
# image's own nvidia packages stay importable), then
#   tar cf - faiss faiss_gpu.libs nvidia/__init__.py nvidia/*/lib | xz -9 -T2 > fg.tar.xz
# and split it into parts that fit one transfer each (split -n 6 -d fg.tar.xz part: 6 × 56 MB).
# Each device call carries one part folder (.fg1, .fg2, …) and copies it out of the working tree
# (``cp .fg*/part* /tmp/parts/``): a path carried by one call is gone from the tree at the next. The last call
# carries the folder ``gpu_scale_check.py prepare`` wrote (.gpu-scale) and runs
#   bash benchmarks/gpu_scale_check.sh OUT_DIR PARTS_DIR [N_DOCS]
# (N_DOCS: only the first N texts; see benchmarks/results/gpu_scale_check.md for what fits in one call).
set -euo pipefail
out=$1 parts=$2 n_docs=${3:-}
site=/tmp/faiss-gpu-site
rm -rf "$site" && mkdir -p "$site"
cat "$parts"/part* | xz -dc | tar xf - -C "$site"  # xz is on the H200 image (seen 2026-11-30)
export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c "import faiss; print('faiss', faiss.__version__, 'GPUs', faiss.get_num_gpus())"
    python3 benchmarks/gpu_scale_check.py check .gpu-scale cuda $n_docs 2>&1
} | grep --line-buffered -v -e '^Loading weights' | tee "$out/gpu_scale_check.log"
