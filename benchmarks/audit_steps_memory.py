"""RSS step by step through a whole audit and its write, in one process, on a real ``kb-scale`` store.

The store is built as ``bench_scale.py`` builds it (sentence-transformers' normalised vectors in a bare FAISS
index; reused when the folder already holds it), then ``audit_store`` and ``write_audit`` run in this process with
their steps wrapped: each step prints the process RSS when it starts and ends, the change in anonymous and
file-backed RSS, and the step's own peak (the peak is reset through ``/proc/self/clear_refs`` as the step starts).
Steps nested in a wrapped step print first and reset its peak, so a step's peak covers only what ran after its
last nested step started. Linux only; the wrappers add nothing to the steps' memory.

    python benchmarks/audit_steps_memory.py 30000 FOLDER
"""

from __future__ import annotations

import functools
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rss_watch import status_gib

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

STARTED = time.time()


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def traced(label: str, step: Callable[..., Any]) -> Callable[..., Any]:
    """``step`` printing its RSS when it starts and ends and its peak."""
    @functools.wraps(step)
    def run(*args: Any, **kwargs: Any) -> Any:
        before = status_gib()
        reset_peak()
        result = step(*args, **kwargs)
        after = status_gib()
        print(f"{time.time() - STARTED:7.1f} s  {label:<28} RSS {before['VmRSS']:.3f} -> {after['VmRSS']:.3f} "
              f"(anon {after['RssAnon'] - before['RssAnon']:+.3f}, file {after['RssFile'] - before['RssFile']:+.3f})"
              f"  step peak {after['VmHWM']:.3f}", flush=True)
        return result
    return run


def main(n_docs: int, folder: Path) -> None:
    import bench_scale

    import rag_diag.jobs.audit as audit
    import rag_diag.report as report
    import rag_diag.report.audit as report_audit
    from rag_diag.collapse.table import CollapseTable
    from rag_diag.diagnosis.diagnose import Diagnosis
    from rag_diag.evaluation.result import EvalResult
    from rag_diag.stores.stored import open_store

    folder.mkdir(parents=True, exist_ok=True)
    store = folder / f"store-{n_docs}"
    if not store.exists():
        seconds, _ = bench_scale.encode_and_store(bench_scale.build_corpus(n_docs, folder), store)
        print(f"store built: sentence-transformers encode {seconds:.0f} s", flush=True)
    for owner, name in ((audit, "run_pass"), (audit, "documents_frame"), (audit, "clusters_frame"),
                        (audit, "ann_recall"), (audit, "evaluation_store"), (audit, "evaluate_bundle"),
                        (audit, "docs_frame"), (audit, "pairs_frame"), (audit, "diagnose"), (audit, "_summary"),
                        (report, "render_report"), (report_audit, "audit_report"), (EvalResult, "write"),
                        (Diagnosis, "write"), (CollapseTable, "write")):
        label = f"{getattr(owner, '__name__', '').rsplit('.', 1)[-1]}.{name}"
        setattr(owner, name, traced(label, getattr(owner, name)))
    build = CollapseTable.build.__func__  # type: ignore[attr-defined]
    CollapseTable.build = classmethod(traced("CollapseTable.build", build))  # type: ignore[method-assign,assignment]
    print(f"{n_docs:,} kb-scale documents; audit_store, then write_audit (GiB):", flush=True)
    result = audit.audit_store(open_store(str(store)))
    print(f"audit_store returned: RSS {status_gib()['VmRSS']:.3f}", flush=True)
    audit.write_audit(result, folder / f"audit-{n_docs}", force=True)
    print(f"write_audit returned: RSS {status_gib()['VmRSS']:.3f}\n\nmode {result.summary['memory']['mode']}; "
          f"command: python benchmarks/audit_steps_memory.py {n_docs} FOLDER")


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
