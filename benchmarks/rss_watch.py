"""Sample the resident memory of another process, found by its command line, into a table.

Waits for a process whose command line holds every given string (not a ``python -c`` wrapper such as
``bench_scale.py``'s, nor this script), then writes every 0.5 s, until it exits: seconds since found, VmRSS, RssAnon,
RssFile and VmHWM (GiB, from ``/proc/PID/status``) and its thread count. Linux only.

    python benchmarks/rss_watch.py OUT.tsv "rag-diag audit" "store-100000 --out" &
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

FIELDS = ("VmRSS", "RssAnon", "RssFile", "VmHWM")


def find(wanted: list[str]) -> str | None:
    """The pid of a process whose command line holds every string of ``wanted``."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            words = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        line = " ".join(words)
        if all(w in line for w in wanted) and "rss_watch" not in line and words[1:2] != ["-c"]:
            return pid
    return None


def read_status(pid: str) -> dict[str, int]:
    """The numeric fields of ``/proc/PID/status`` (kB for the memory ones; ``pid`` may be ``self``)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return {name: int(value) for name, value in re.findall(r"^(\w+):\s+(\d+)", status, re.MULTILINE)}


def status_gib(pid: str = "self") -> dict[str, float]:
    """The :data:`FIELDS` of ``/proc/PID/status``, in GiB."""
    numbers = read_status(pid)
    return {name: numbers[name] / 2**20 for name in FIELDS}


def main(out: Path, wanted: list[str]) -> None:
    pid = None
    while pid is None:
        pid = find(wanted)
        time.sleep(1)
    started = time.time()
    with out.open("w") as table:
        table.write(f"# pid {pid}, found {time.strftime('%H:%M:%S')}\n# seconds\t" + "\t".join(FIELDS) + "\tthreads\n")
        while True:
            try:
                numbers = read_status(pid)
            except OSError:
                break
            values = "\t".join(f"{numbers[name] / 2**20:.3f}" for name in FIELDS)
            table.write(f"{time.time() - started:.1f}\t{values}\t{numbers['Threads']}\n")
            table.flush()
            time.sleep(0.5)


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
