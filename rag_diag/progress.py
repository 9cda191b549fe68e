"""Progress bars (rich) for anything that can take more than a few seconds: done / total, elapsed, and the
time remaining (rich's estimate from the recent rate)."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def progress_bar(description: str, total: int, enabled: bool = True) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; draws a rich bar on stderr when enabled."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(file=sys.stderr)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield lambda n: progress.advance(task, n)


def release_heap() -> bool:
    """Give the C heap's free pages back to the system (glibc ``malloc_trim(0)``); True when some were. Also
    drop the resident pages of mapped FAISS indexes (:func:`rag_diag.mapped.release_mapped`): read back from
    their file when next searched.

    A pass that allocates and frees many differently sized buffers (forward-pass activations, shard banks)
    otherwise leaves them mapped, and RSS creeps up shard after shard. Elsewhere than glibc: nothing, False.
    """
    import ctypes

    from rag_diag.mapped import release_mapped

    release_mapped()
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # the libc already loaded: no library search per call
    return bool(trim(0)) if trim is not None else False


def peak_rss_gib() -> float:
    """This process's peak resident set size so far, in GiB (``ru_maxrss``, KiB on Linux)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
