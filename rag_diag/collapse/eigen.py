"""Batched symmetric eigenvalues of the Gram route, solved where they are fast.

On the CPU one batched LAPACK call is fastest on few cores (``benchmarks/results/bench_eigh_threads.txt``: a pool
of one-thread solvers took 1.15× as long on 2 cores). On a CUDA device cuSOLVER's batched Jacobi solver takes
matrices up to ``CUDA_BATCHED_EIGH_MAX``; larger Grams go to the host, whose cores are idle while the GPU computes
the products. There one batched call runs its matrices one after another: on an H200's 16 cores, kNN collapse of
5,000 kb-scale texts spent 41 of its 51 s in such calls (``benchmarks/results/gpu_scale_check.md``). So the batch
is split over a pool of threads, one per torch thread, each running LAPACK on a single OpenMP thread.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import torch
from threadpoolctl import threadpool_limits

CUDA_BATCHED_EIGH_MAX = 32
"""Largest matrix size cuSOLVER's batched Jacobi eigensolver takes. Measured on an H100 (20,000 Gram
matrices, float64): 15 ms at 32×32, but minutes at 48×48, where it falls back to one matrix per call."""

HOST_MATRICES_PER_THREAD = 4
"""Fewest matrices a pool thread is given; smaller batches are solved in one call."""

_pools: dict[int, ThreadPoolExecutor] = {}
os.register_at_fork(after_in_child=_pools.clear)  # a forked child has none of the pools' threads: it starts its own


def _one_openmp_thread() -> None:
    """Pool-thread initialiser: this thread's OpenMP team is itself (else MKL starts one of every core in each)."""
    threadpool_limits(1, user_api="openmp")


def _pool(threads: int) -> ThreadPoolExecutor:
    """The process's pool of ``threads`` one-OpenMP-thread solvers, started on first use and kept."""
    if threads not in _pools:
        _pools[threads] = ThreadPoolExecutor(threads, "rag-diag-eigh", initializer=_one_openmp_thread)
    return _pools[threads]


def host_eigvalsh(gram: torch.Tensor, threads: int) -> torch.Tensor:
    """Eigenvalues (ascending) of a CPU batch (m, p, p), its consecutive parts solved by ``threads`` threads at once.

    Each part is a plain ``torch.linalg.eigvalsh``, so every matrix gets LAPACK's answer; parts are joined in
    order."""
    parts = min(threads, len(gram) // HOST_MATRICES_PER_THREAD)
    if parts < 2:
        return torch.linalg.eigvalsh(gram)
    return torch.cat(list(_pool(threads).map(torch.linalg.eigvalsh, gram.chunk(parts))))


def eigvalsh(gram: torch.Tensor) -> torch.Tensor:
    """Batched symmetric eigenvalues on the Gram's device, or on the host's cores for CUDA Grams over 32×32."""
    if gram.device.type == "cuda" and gram.shape[-1] > CUDA_BATCHED_EIGH_MAX:
        return host_eigvalsh(gram.cpu(), torch.get_num_threads()).to(gram.device)
    return torch.linalg.eigvalsh(gram)
