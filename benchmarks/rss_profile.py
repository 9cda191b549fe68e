"""Run a ``rag-diag`` command in this process and sample, every 0.2 s, its memory and where the main thread is.

Each row of OUT.tsv: seconds, VmRSS, RssAnon, VmHWM (GiB, ``/proc/self/status``), thread count, and the main
thread's innermost ``rag_diag`` frames (then the two innermost library frames), innermost first. A ``#`` row
names the threads each time their count changes. Where ``benchmarks/rss_watch.py`` says *when* the peak came,
this says *which step* it came from. Linux only.

``--pass-cache FILE`` (``audit`` only): the first run pickles the audit's corpus pass to FILE (the summaries-mode
kept store stays in the token cache, so use the same ``RAG_DIAG_CACHE``); later runs load it instead of
encoding, so the steps after the pass can be profiled in minutes rather than half an hour at 100,000.
The heap after a loaded pass is not the heap after a real one: confirm a finding on a real run.

    python benchmarks/rss_profile.py OUT.tsv [--pass-cache FILE] -- audit --store STORE --out DIR --force
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rss_watch import read_status  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
PERIOD = 0.2


def status() -> tuple[float, float, float, int]:
    """(VmRSS, RssAnon, VmHWM) in GiB and the thread count of this process."""
    fields = read_status("self")
    gib = [fields[name] / 2**20 for name in ("VmRSS", "RssAnon", "VmHWM")]
    return gib[0], gib[1], gib[2], fields["Threads"]


def where(thread_id: int) -> str:
    """The thread's innermost rag_diag frames (up to 5), then its two innermost library frames, innermost first."""
    frame = sys._current_frames().get(thread_id)
    frames = traceback.extract_stack(frame) if frame is not None else []
    ours = [f"{Path(f.filename).stem}:{f.name}:{f.lineno}" for f in frames if "/rag_diag/" in f.filename][-5:]
    theirs = [f"{Path(f.filename).parent.name}/{Path(f.filename).stem}:{f.name}" for f in frames
              if "site-packages" in f.filename and "/rag_diag/" not in f.filename][-2:]
    return " < ".join(reversed(ours + theirs))


def sample(out: Any, thread_id: int, started: float) -> None:
    threads = 0
    while True:
        rss, anon, hwm, count = status()
        if count != threads:
            threads = count
            names = sorted(Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task"))
            out.write(f"# threads {count}: {', '.join(names)}\n")
        out.write(f"{time.time() - started:.2f}\t{rss:.3f}\t{anon:.3f}\t{hwm:.3f}\t{count}\t{where(thread_id)}\n")
        time.sleep(PERIOD)


def reuse_pass(cache: Path) -> None:
    """Make the audit load its corpus pass from ``cache`` when it exists, and write it there when not."""
    import rag_diag.jobs.audit as audit
    from rag_diag.tokens.store import TokenStore

    real = audit.run_pass

    def cached(*args: Any, **kwargs: Any) -> Any:
        if cache.exists():
            corpus_pass, kept = pickle.loads(cache.read_bytes())
            corpus_pass.kept = None if kept is None else TokenStore.open(kept, verify=False)
            return corpus_pass
        corpus_pass = real(*args, **kwargs)
        kept, corpus_pass.kept = corpus_pass.kept, None
        cache.write_bytes(pickle.dumps((corpus_pass, None if kept is None else str(kept.path))))
        corpus_pass.kept = kept
        return corpus_pass

    audit.run_pass = cached  # type: ignore[assignment]


def main(argv: list[str]) -> int:
    if "--" not in argv or len(argv) < 3:
        raise SystemExit(__doc__)
    split = argv.index("--")
    options, command = argv[:split], argv[split + 1:]
    out_path = Path(options[0])
    if "--pass-cache" in options:
        reuse_pass(Path(options[options.index("--pass-cache") + 1]))
    started = time.time()
    with out_path.open("w", buffering=1) as out:
        out.write("# seconds\tVmRSS\tRssAnon\tVmHWM\tthreads\twhere (innermost first)\n")
        threading.Thread(target=sample, args=(out, threading.get_ident(), started), daemon=True).start()
        from rag_diag.cli import main as rag_diag

        code = rag_diag(command)
        rss, anon, hwm, count = status()
        out.write(f"# exit {code} after {time.time() - started:.1f} s; peak RSS {hwm:.3f} GiB\n")
    print(f"exit {code}; peak RSS {hwm:.3f} GiB; timeline {out_path}")
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
