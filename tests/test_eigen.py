"""The host eigen-solve of CUDA Grams over 32×32: a pool of one-thread LAPACK calls, in order, against numpy."""

from __future__ import annotations

import numpy as np
import torch
from threadpoolctl import threadpool_info

from rag_diag.collapse import eigen
from rag_diag.collapse.socm import load_bank

EPS64 = float(np.finfo(np.float64).eps)


def assert_spectra_agree(gram: torch.Tensor, values: torch.Tensor) -> None:
    """Each of two backward-stable solvers moves an eigenvalue of a p×p symmetric G by ≤ p·eps·‖G‖₂ (Weyl), so
    the pool's eigenvalues and numpy's (float64, matrix by matrix) differ by at most twice that."""
    reference = np.linalg.eigvalsh(gram.numpy())
    norms = np.abs(reference).max(axis=1, keepdims=True)
    bound = 2 * gram.shape[-1] * EPS64 * norms
    assert values.shape == reference.shape
    assert (np.abs(values.numpy() - reference) <= bound).all()


def test_pool_solves_every_matrix_in_order_on_uneven_parts():
    generator = torch.Generator().manual_seed(0)
    factors = torch.randn(301, 40, 60, generator=generator, dtype=torch.float64)
    factors *= torch.linspace(0.1, 10.0, 301, dtype=torch.float64)[:, None, None]  # each matrix its own scale
    gram = factors @ factors.transpose(1, 2)
    values = eigen.host_eigvalsh(gram, threads=3)  # parts of 101, 100 and 100 matrices
    assert_spectra_agree(gram, values)


def test_pool_threads_run_one_openmp_thread_each():
    """Else MKL would start a team of every core in every pool thread (2.2× slower solves on 2 cores)."""
    def openmp_threads(info: list[dict]) -> list[int]:
        return [entry["num_threads"] for entry in info if entry["user_api"] == "openmp"]

    before = openmp_threads(threadpool_info())
    in_pool = openmp_threads(eigen._pool(2).submit(threadpool_info).result())
    assert in_pool and set(in_pool) == {1}
    assert openmp_threads(threadpool_info()) == before  # the calling thread keeps its team


def test_pool_on_real_minilm_grams(tiny_store, monkeypatch):
    """Grams (A_i A_jᵀ)(A_i A_jᵀ)ᵀ of every pair of real texts, zero-padded to the longest: rank-deficient, with
    exact zero eigenvalues, as the Gram route hands them over."""
    bank, _ = load_bank(tiny_store, np.arange(len(tiny_store)))
    width = int(bank.lengths.max())
    padded = bank.padded(np.arange(len(bank)), width)
    first, second = np.triu_indices(len(bank), 1)
    cross = padded[first] @ padded[second].transpose(1, 2)
    gram = cross @ cross.transpose(1, 2)
    monkeypatch.setattr(eigen, "HOST_MATRICES_PER_THREAD", 1)
    assert len(gram) >= 2
    assert_spectra_agree(gram, eigen.host_eigvalsh(gram, threads=2))


def _solve_in_child(queue) -> None:  # noqa: ANN001
    gram = torch.eye(3, dtype=torch.float64).expand(2 * eigen.HOST_MATRICES_PER_THREAD, 3, 3).clone()
    queue.put(eigen.host_eigvalsh(gram, threads=2).sum().item())


def test_a_forked_child_solves_on_pools_of_its_own():
    """The parent's pool threads do not exist in a fork: a child that reused the pool would wait forever."""
    import multiprocessing

    list(eigen._pool(2).map(abs, range(4)))  # the parent's pool has started its threads
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_solve_in_child, args=(queue,))
    child.start()
    child.join(timeout=60)
    hung = child.is_alive()
    if hung:
        child.kill()
    assert not hung and child.exitcode == 0
    assert queue.get(timeout=5) == 3.0 * 2 * eigen.HOST_MATRICES_PER_THREAD
