"""Peak RSS of the whole ``audit`` at several sizes, in one invocation, on stores kept in a folder.

``bench_scale.py`` times sentence-transformers' encode of every size before auditing it, which on a slow 2-core
machine makes a 10,000 + 100,000 run take 95 minutes. The memory goal (RSS at 100,000 ≤ 1.25 × RSS at 10,000)
needs only the audits: this script builds each ``kb-scale`` store as ``bench_scale.py`` does (or reuses it from
FOLDER), runs ``bench_scale``'s warm-up audits, then audits each size in a fresh process with an empty cache,
exactly as ``bench_scale.py`` does, and prints its peak RSS (the largest child's ``ru_maxrss``), its ratio to the
first size's, the audit's wall time and its memory timings. Wall times are not compared with anything here.

    python benchmarks/audit_rss.py FOLDER 10000 100000
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import bench_scale


def main(folder: Path, sizes: list[int]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=bench_scale.ROOT, check=False).stdout.strip()
    print(f"audit peak RSS by size on {commit}; {os.cpu_count()} CPUs; stores in FOLDER (built when missing)")
    bench_scale.warm_up(folder)
    print("| documents | audit | peak RSS | RSS / RSS(first) | before pass / after pass / after evaluation | mode |")
    print("|---:|---:|---:|---:|---|---|")
    first = None
    for n_docs in sizes:
        store = folder / f"store-{n_docs}"
        if not store.exists():
            bench_scale.encode_and_store(bench_scale.build_corpus(n_docs, folder), store)
        cache, out = folder / f"cache-{n_docs}", folder / f"audit-{n_docs}"
        shutil.rmtree(cache, ignore_errors=True)
        env = {**os.environ, "RAG_DIAG_CACHE": str(cache)}
        seconds, rss = bench_scale.measure([bench_scale.RAG_DIAG, "audit", "--store", str(store), "--out", str(out),
                                            "--force"], env)
        summary = json.loads((out / "audit.json").read_text())
        timings, memory = summary["timings"], summary["memory"]
        first = first or rss
        steps = " / ".join(f"{timings[f'peak_rss_gib_{when}']:.3f}"
                           for when in ("before_pass", "after_pass", "after_evaluation"))
        mode = memory["mode"] + (f", rank {memory['rank']}" if memory["rank"] else "")
        print(f"| {n_docs:,} | {seconds:.0f} s | {rss / 2**30:.3f} GiB | {rss / first:.3f} | {steps} GiB | {mode} |",
              flush=True)
        shutil.rmtree(cache, ignore_errors=True)
    print(f"\ncommand: python benchmarks/audit_rss.py FOLDER {' '.join(map(str, sizes))}")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit("usage: audit_rss.py FOLDER N [N ...]")
    main(Path(sys.argv[1]), [int(n) for n in sys.argv[2:]])
