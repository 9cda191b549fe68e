"""Atomic writes: a file or folder appears complete under its final name, or not at all.

Every artefact is written to a temporary sibling and renamed into place, so an interrupted run never
leaves a half-written output that a later run would trust.

:func:`atomic_dir` is also the single choke point that keeps outputs from destroying anything that is
not rag-diag's own output:

- every folder it publishes carries a marker file (:data:`MARKER`, ``{"kind": ...}``), so a later run
  can tell its own artefacts from anybody else's folder;
- it refuses to replace a regular file, a symbolic link, or a non-empty folder that is not a rag-diag
  artefact of the same kind (unless ``force``);
- it refuses an output that equals, contains or lies inside an input registered with
  :func:`protect_input` (the corpus readers register every file and folder they read);
- it checks that the parent is writable before the work starts, and sweeps temporary siblings left
  behind by runs that were killed.

This module imports nothing from rag_diag except the error type, so every layer can use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import tempfile
import time
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rag_diag.errors import RagDiagError

MARKER = ".rag-diag.json"
"""Name of the marker file that every folder published by :func:`atomic_dir` carries."""

DEFAULT_KIND = "artefact"
"""The kind recorded when a caller does not name one."""

_PROTECTED: set[Path] = set()
_IMPORT_TIME = time.time()


def _tmp_sibling(path: Path, suffix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    return Path(name)


def write_chunks(path: str | Path, chunks: Iterable[bytes]) -> Path:
    """Write the byte ``chunks`` to ``path`` atomically (temp file + fsync + rename), one chunk at a time: a
    generator's output is never held whole, and an error while it runs leaves no file."""
    path = Path(path)
    tmp = _tmp_sibling(path)
    try:
        os.chmod(tmp, 0o644)
        with open(tmp, "wb") as handle:
            for chunk in chunks:
                handle.write(chunk)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return write_chunks(path, [data])


def write_lines(path: str | Path, lines: Iterable[str]) -> Path:
    """Write UTF-8 ``lines`` (each with its own line end) to ``path`` atomically, streamed."""
    return write_chunks(path, (line.encode("utf-8") for line in lines))


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON atomically (byte-stable for equal inputs)."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False, default=str) + "\n")


def write_parquet(path: str | Path, frame: Any) -> Path:
    """Write a polars DataFrame to parquet atomically."""
    path = Path(path)
    tmp = _tmp_sibling(path, ".parquet")
    try:
        os.chmod(tmp, 0o644)
        frame.write_parquet(tmp, statistics=False)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


# ---------------------------------------------------------------------------------------------- inputs


def cache_root() -> Path:
    """rag-diag's cache folder (``RAG_DIAG_CACHE`` or ~/.cache/rag-diag): its own territory, never protected.

    Same rule as :func:`rag_diag.models.registry.cache_root`, repeated here so that this module depends
    on nothing else in the package.
    """
    return Path(os.environ.get("RAG_DIAG_CACHE") or Path.home() / ".cache" / "rag-diag")


def _in_cache(resolved: Path) -> bool:
    return resolved.is_relative_to(cache_root().resolve())


def protect_input(path: str | Path) -> None:
    """Record ``path`` as an input of this run, so that no :func:`atomic_dir` output may replace it.

    An output is refused when it equals the input, contains it, or lies inside it (paths resolved,
    symbolic links followed). Paths under :func:`cache_root` are not recorded: the cache is rag-diag's.
    """
    resolved = Path(path).resolve()
    if not _in_cache(resolved):
        _PROTECTED.add(resolved)


def protected_inputs() -> frozenset[Path]:
    """The resolved inputs recorded so far by :func:`protect_input`."""
    return frozenset(_PROTECTED)


def clear_protected() -> None:
    """Forget every recorded input (a new command starts with none)."""
    _PROTECTED.clear()


# ---------------------------------------------------------------------------------------------- file records


def file_record(path: str | Path) -> dict[str, int]:
    """Size and CRC-32 of a written file, for its manifest (:func:`file_problem` checks them on reading)."""
    crc = 0
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 22), b""):
            crc = zlib.crc32(chunk, crc)
    return {"size": Path(path).stat().st_size, "crc32": crc}


def file_problem(path: str | Path, record: dict[str, Any]) -> str | None:
    """None when the file at ``path`` has the size and CRC-32 of ``record``, else what is wrong (its name first)."""
    path = Path(path)
    if not path.is_file():
        return f"{path.name} missing"
    size = path.stat().st_size
    if size != record["size"]:
        return f"{path.name} has {size} bytes, manifest says {record['size']}"
    if file_record(path)["crc32"] != record["crc32"]:
        return f"{path.name} checksum mismatch"
    return None


# ---------------------------------------------------------------------------------------------- outputs


def artefact_kind(path: str | Path) -> str | None:
    """The kind recorded in ``path``'s marker file, or None when ``path`` is not a rag-diag artefact folder."""
    marker = Path(path) / MARKER
    if marker.is_symlink() or not marker.is_file():
        return None
    try:
        record = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    kind = record.get("kind") if isinstance(record, dict) else None
    return kind if isinstance(kind, str) and kind else None


def _absolute(path: str | Path) -> Path:
    """``path`` made absolute with ``..`` folded, without following symbolic links (the name is replaced)."""
    return Path(os.path.abspath(os.fspath(path)))


def _check_not_input(target: Path) -> None:
    """Refuse an output that equals, contains or lies inside a protected input."""
    resolved = target.resolve()
    if _in_cache(resolved):
        return
    for protected in sorted(_PROTECTED):
        if resolved == protected:
            raise RagDiagError(f"{target}: is an input of this command; refusing to write an output over it")
        if protected.is_relative_to(resolved):
            raise RagDiagError(f"{target}: contains the input {protected}; refusing to replace it")
        if resolved.is_relative_to(protected):
            raise RagDiagError(f"{target}: lies inside the input {protected}; write outputs somewhere else")


def _check_replaceable(target: Path, kind: str, force: bool) -> None:
    """Refuse to replace anything that is not a rag-diag artefact of ``kind`` (folders: unless ``force``)."""
    if target.is_symlink():
        if not force:
            raise RagDiagError(f"{target}: is a symbolic link; refusing to replace it")
        return
    if not target.exists():
        return
    if not target.is_dir():
        raise RagDiagError(f"{target}: is a file, not an output folder; refusing to replace it")
    if force or _in_cache(target.resolve()):
        return
    if not any(target.iterdir()):
        return
    found = artefact_kind(target)
    if found is None:
        raise RagDiagError(
            f"{target}: folder is not empty and was not written by rag-diag; refusing to replace it "
            "(choose another output folder)"
        )
    if found != kind:
        raise RagDiagError(f"{target}: holds a rag-diag '{found}' output, not '{kind}'; refusing to replace it")


def check_output(path: str | Path, kind: str = DEFAULT_KIND, force: bool = False) -> Path:
    """Check, without writing anything, that :func:`atomic_dir` may publish ``kind`` at ``path``.

    Callers may call it before expensive work so that a refused output fails fast; :func:`atomic_dir`
    repeats the checks itself. Returns the absolute path. Raises :class:`RagDiagError` (one line) when
    ``path`` is a protected input (or contains / lies inside one), a file, a symbolic link, or a non-empty
    folder that is not a rag-diag artefact of ``kind`` (the last two allowed with ``force``).
    """
    if not isinstance(kind, str) or not kind:
        raise ValueError("kind must be a non-empty string")
    target = _absolute(path)
    if target.parent == target:
        raise RagDiagError(f"{target}: refusing to use a filesystem root as an output folder")
    _check_not_input(target)
    _check_replaceable(target, kind, force)
    return target


def _process_start_time() -> float:
    """When this process started (Linux /proc; elsewhere when this module was imported): now minus the time since
    its start, from the uptime (centiseconds) and the start in clock ticks since boot. (The boot time ``btime`` is
    whole seconds: a start up to 1 s too early left the temporaries of a run killed just before ours unswept.)"""
    try:
        stat = Path("/proc/self/stat").read_text()
        ticks = int(stat[stat.rindex(")") + 2:].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        started = time.time() - (uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return _IMPORT_TIME
    # A clock or namespace mismatch must never make fresh temporaries look stale: fall back when implausible.
    return started if started <= _IMPORT_TIME else _IMPORT_TIME


def _stale_siblings(target: Path) -> list[Path]:
    """``.NAME.XXXXXXXX.tmp`` / ``.NAME.old-PID-HEX.tmp`` siblings of ``target`` older than this process."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(?:[a-z0-9_]{{8}}|old-\d+-[0-9a-f]{{8}})\.tmp")
    started = _process_start_time()
    stale = []
    with contextlib.suppress(OSError):
        for sibling in target.parent.iterdir():
            if pattern.fullmatch(sibling.name):
                with contextlib.suppress(OSError):
                    if sibling.lstat().st_mtime < started:
                        stale.append(sibling)
    return stale


def _restore_moved_aside(target: Path, kind: str, stale: list[Path]) -> list[Path]:
    """Put back the output a killed run had moved aside to publish its own (killed between :func:`_publish`'s two
    renames, it left neither at ``target``): the newest ``.old`` sibling holding a ``kind`` artefact. Returns the
    stale siblings left to remove."""
    moved = sorted((sibling for sibling in stale if ".old-" in sibling.name and artefact_kind(sibling) == kind),
                   key=lambda sibling: sibling.lstat().st_mtime)
    if moved:
        with contextlib.suppress(OSError):
            os.replace(moved[-1], target)
            return [sibling for sibling in stale if sibling != moved[-1]]
    return stale


def _remove(path: Path) -> None:
    """Remove a file, link or folder, ignoring errors (used on temporaries only)."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _prepare_parent(target: Path) -> None:
    """Create the parent folder and check it is writable, with a one-line error naming it."""
    parent = target.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RagDiagError(f"{parent}: cannot create the output's parent folder ({exc.strerror or exc})") from None
    if not parent.is_dir():
        raise RagDiagError(f"{parent}: is not a folder; cannot write {target.name} there")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RagDiagError(f"{parent}: no write permission; cannot write {target.name} there")


@contextlib.contextmanager
def atomic_dir(path: str | Path, kind: str = DEFAULT_KIND, force: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``path`` only when the block finishes without error.

    Before the block runs, the output is checked (:func:`check_output`), the parent is created and
    checked for write access, and stale temporaries of ``path`` from killed runs are removed. On error
    the temporary folder is removed and an existing ``path`` is left untouched. On success the folder
    gets the marker file (``{"kind": kind}``) and replaces ``path`` (checked again, as the work may have
    taken long).

    Args:
        path: the output folder.
        kind: what the artefact is (``"index"``, ``"collapse"`` …); an existing rag-diag folder of
            another kind is never replaced.
        force: replace a non-empty folder that is not a rag-diag artefact of ``kind`` (or a symbolic
            link). Files and protected inputs are refused even then.
    """
    target = check_output(path, kind, force)
    _prepare_parent(target)
    stale = _stale_siblings(target)
    if not target.exists() and not target.is_symlink():
        stale = _restore_moved_aside(target, kind, stale)
    for sibling in stale:
        _remove(sibling)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise RagDiagError(f"{target.parent}: cannot write there ({exc.strerror or exc})") from None
    os.chmod(tmp, 0o755)
    try:
        yield tmp
        check_output(target, kind, force)
        (tmp / MARKER).write_text(json.dumps({"kind": kind}, sort_keys=True) + "\n", encoding="utf-8")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish(tmp, target)


def _publish(tmp: Path, target: Path) -> None:
    """Rename ``tmp`` to ``target``; an existing ``target`` is moved aside first and restored if that fails."""
    old: Path | None = None
    try:
        if target.is_symlink() or target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}.tmp")
            os.replace(target, old)
        os.replace(tmp, target)
    except OSError as exc:
        if old is not None and not target.exists():
            with contextlib.suppress(OSError):
                os.replace(old, target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise RagDiagError(f"{target}: cannot publish the output ({exc.strerror or exc})") from None
    if old is not None:
        _remove(old)
