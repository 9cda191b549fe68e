"""Atomic outputs: nothing half-written survives, and no output replaces an input or somebody else's files."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from rag_diag import atomic
from rag_diag.errors import RagDiagError


@pytest.fixture(autouse=True)
def _no_protected_inputs():
    """The input registry is process-wide: every test starts and ends with it empty."""
    atomic.clear_protected()
    yield
    atomic.clear_protected()


def _publish(path: Path, kind: str = atomic.DEFAULT_KIND, force: bool = False, content: str = "new") -> None:
    with atomic.atomic_dir(path, kind=kind, force=force) as tmp:
        (tmp / "v").write_text(content)


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` with its bytes (None for folders): equal snapshots mean nothing changed."""
    return {
        str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))
    }


def test_atomic_dir_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError), atomic.atomic_dir(target) as tmp:
        (tmp / "partial.txt").write_text("half")
        raise RuntimeError("interrupted")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_leaves_nothing_on_interrupt(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt), atomic.atomic_dir(target) as tmp:
        (tmp / "partial.txt").write_text("half")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_keeps_old_contents_until_success(tmp_path):
    target = tmp_path / "out"
    with atomic.atomic_dir(target) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(RuntimeError), atomic.atomic_dir(target) as tmp:
        (tmp / "v").write_text("2")
        raise RuntimeError
    assert (target / "v").read_text() == "1"
    with atomic.atomic_dir(target) as tmp:
        (tmp / "v").write_text("3")
    assert (target / "v").read_text() == "3"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_write_json_is_stable(tmp_path):
    atomic.write_json(tmp_path / "a.json", {"b": 1, "a": [1, 2]})
    atomic.write_json(tmp_path / "b.json", {"a": [1, 2], "b": 1})
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert json.loads((tmp_path / "a.json").read_text()) == {"a": [1, 2], "b": 1}


# ---------------------------------------------------------------------------------------------- markers


def test_published_folder_carries_its_kind(tmp_path):
    _publish(tmp_path / "out", kind="index")
    assert json.loads((tmp_path / "out" / atomic.MARKER).read_text()) == {"kind": "index"}
    assert atomic.artefact_kind(tmp_path / "out") == "index"
    assert atomic.artefact_kind(tmp_path) is None


def test_same_kind_is_replaced_other_kind_is_refused(tmp_path):
    target = tmp_path / "out"
    _publish(target, kind="index", content="1")
    _publish(target, kind="index", content="2")
    assert (target / "v").read_text() == "2"
    before = _snapshot(tmp_path)
    with pytest.raises(RagDiagError, match="'index' output, not 'collapse'"):
        _publish(target, kind="collapse", content="3")
    assert _snapshot(tmp_path) == before


def test_foreign_folder_is_refused_unless_forced(tmp_path):
    target = tmp_path / "mine"
    target.mkdir()
    (target / "thesis.tex").write_text("years of work")
    before = _snapshot(tmp_path)
    ran = []
    with pytest.raises(RagDiagError, match="not written by rag-diag") as error, atomic.atomic_dir(target) as tmp:
        ran.append(tmp)  # pragma: no cover - the check must come before the work
    assert "\n" not in str(error.value)
    assert ran == [] and _snapshot(tmp_path) == before
    _publish(target, force=True)
    assert sorted(p.name for p in target.iterdir()) == [atomic.MARKER, "v"]


def test_a_folder_with_another_tools_marker_named_json_is_still_foreign(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / atomic.MARKER).write_text('{"kind": 3}')
    (target / "data.bin").write_bytes(b"\x00")
    with pytest.raises(RagDiagError, match="not written by rag-diag"):
        _publish(target)


def test_empty_folder_is_replaced(tmp_path):
    (tmp_path / "out").mkdir()
    _publish(tmp_path / "out")
    assert (tmp_path / "out" / "v").read_text() == "new"


def test_regular_file_is_refused_even_when_forced(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("keep me")
    for force in (False, True):
        with pytest.raises(RagDiagError, match="is a file"):
            _publish(target, force=force)
    assert target.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_symlink_is_refused_unless_forced(tmp_path):
    real = tmp_path / "real"
    _publish(real, content="real")
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    with pytest.raises(RagDiagError, match="symbolic link"):
        _publish(link)
    _publish(link, force=True, content="replaced")
    assert not link.is_symlink() and (link / "v").read_text() == "replaced"
    assert (real / "v").read_text() == "real"


def test_filesystem_root_is_refused():
    with pytest.raises(RagDiagError, match="root"):
        atomic.check_output("/")


# ---------------------------------------------------------------------------------------------- protected inputs


@pytest.mark.parametrize(
    ("protected", "output", "problem"),
    [
        ("kb", "kb", "is an input"),
        ("kb/corpus.jsonl", "kb", "contains the input"),
        ("kb", ".", "contains the input"),
        ("kb", "kb/index", "lies inside the input"),
    ],
    ids=["equal", "contains-file", "contains-folder", "inside"],
)
def test_protected_inputs_are_never_outputs(tmp_path, protected, output, problem):
    kb = tmp_path / "kb"
    _publish(kb, kind="corpus")  # even a rag-diag artefact of the same kind is protected once it was read
    (kb / "corpus.jsonl").write_text('{"_id": "d1", "text": "a"}\n')
    atomic.protect_input(tmp_path / protected)
    before = _snapshot(tmp_path)
    with pytest.raises(RagDiagError, match=problem):
        _publish(tmp_path / output, kind="corpus", force=True)
    assert _snapshot(tmp_path) == before


def test_protection_follows_symbolic_links(tmp_path):
    kb = tmp_path / "kb"
    _publish(kb)
    atomic.protect_input(kb)
    (tmp_path / "alias").symlink_to(kb, target_is_directory=True)
    with pytest.raises(RagDiagError, match="input"):
        _publish(tmp_path / "alias" / "sub")
    assert not (kb / "sub").exists()


def test_unrelated_outputs_are_allowed_and_registry_clears(tmp_path):
    atomic.protect_input(tmp_path / "kb")
    _publish(tmp_path / "kb-index")  # a sibling whose name starts with the input's is not inside it
    assert (tmp_path / "kb-index" / "v").is_file()
    assert atomic.protected_inputs() == {(tmp_path / "kb").resolve()}
    atomic.clear_protected()
    _publish(tmp_path / "kb")
    assert (tmp_path / "kb" / "v").is_file()


def test_cache_root_is_exempt(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("RAG_DIAG_CACHE", str(cache))
    assert atomic.cache_root() == cache
    store = cache / "tokens" / "abc"
    store.mkdir(parents=True)
    (store / "old.npy").write_bytes(b"legacy")  # written before markers existed
    atomic.protect_input(store)
    assert atomic.protected_inputs() == frozenset()
    _publish(store)
    assert (store / "v").read_text() == "new" and not (store / "old.npy").exists()


def test_cache_root_defaults_to_home(monkeypatch, tmp_path):
    monkeypatch.delenv("RAG_DIAG_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert atomic.cache_root() == tmp_path / ".cache" / "rag-diag"


def test_output_is_checked_again_when_published(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RagDiagError, match="not written by rag-diag"), atomic.atomic_dir(target) as tmp:
        (tmp / "v").write_text("late")
        target.mkdir()  # somebody else's files appear while the work runs
        (target / "theirs.txt").write_text("theirs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert sorted(p.name for p in target.iterdir()) == ["theirs.txt"]


def test_check_output_writes_nothing(tmp_path):
    target = tmp_path / "a" / "b" / "out"
    assert atomic.check_output(target, kind="index") == target
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="kind"):
        atomic.check_output(target, kind="")


# ------------------------------------------------------------------------------ parent, stale temporaries


def test_parent_that_is_a_file_fails_before_the_work(tmp_path):
    (tmp_path / "file").write_text("x")
    ran = []
    with pytest.raises(RagDiagError, match="parent folder") as error, atomic.atomic_dir(tmp_path / "file" / "out"):
        ran.append(True)  # pragma: no cover
    assert ran == [] and "\n" not in str(error.value)
    assert (tmp_path / "file").read_text() == "x"


def test_unwritable_parent_fails_before_the_work(tmp_path, monkeypatch):
    parent = tmp_path / "ro"
    parent.mkdir()
    real_access = os.access
    monkeypatch.setattr(
        atomic.os, "access", lambda path, mode: False if Path(path) == parent else real_access(path, mode)
    )
    ran = []
    with pytest.raises(RagDiagError, match="no write permission"), atomic.atomic_dir(parent / "out"):
        ran.append(True)  # pragma: no cover
    assert ran == [] and list(parent.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only folders")
def test_read_only_parent_for_real(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        with pytest.raises(RagDiagError, match="no write permission"), atomic.atomic_dir(parent / "out"):
            pass  # pragma: no cover
    finally:
        parent.chmod(0o755)


def test_stale_temporaries_of_killed_runs_are_swept(tmp_path):
    long_ago = time.time() - 7 * 24 * 3600
    stale_dir = tmp_path / ".out.k1ll3d_x.tmp"
    stale_dir.mkdir()
    (stale_dir / "half.bin").write_bytes(b"half")
    stale_old = tmp_path / ".out.old-12345-0a1b2c3d.tmp"
    stale_old.mkdir()
    stale_file = tmp_path / ".out.abcdefgh.tmp"
    stale_file.write_text("half")
    for path in (stale_dir, stale_old, stale_file):
        os.utime(path, (long_ago, long_ago))
    live = tmp_path / ".out.l1ve0000.tmp"  # made after this process started: maybe another run's
    live.mkdir()
    other = tmp_path / ".other.abcdefgh.tmp"  # another output's temporary
    other.mkdir()
    os.utime(other, (long_ago, long_ago))
    unrelated = tmp_path / ".out.notes.tmp"  # not a name rag-diag makes
    unrelated.write_text("mine")
    os.utime(unrelated, (long_ago, long_ago))
    _publish(tmp_path / "out")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["out", live.name, other.name, unrelated.name])


def test_process_start_is_before_now():
    started = atomic._process_start_time()
    assert started <= time.time()
    assert time.time() - started < 24 * 3600  # a test run does not last a day: the value is this process's


@pytest.mark.skipif(not Path("/proc/uptime").is_file(), reason="Linux /proc only")
def test_process_start_is_exact_to_the_clock_tick():
    """A child's start time lies between the moments before and after it was spawned, to the resolution of
    /proc/uptime (0.01 s) plus one clock tick (0.01 s at USER_HZ 100): 0.03 s. The boot time in /proc/stat is whole
    seconds, so a start computed from it could be up to 1 s early, and a temporary made in that second looked live."""
    import subprocess
    import sys

    before = time.time()
    out = subprocess.run([sys.executable, "-c", "from rag_diag import atomic; print(atomic._process_start_time())"],
                         capture_output=True, text=True, check=True).stdout
    after = time.time()
    slack = 0.01 + 1.0 / os.sysconf("SC_CLK_TCK") + 0.01
    assert before - slack <= float(out) <= after


def test_an_output_moved_aside_by_a_killed_run_is_put_back(tmp_path):
    """Killed between _publish's two renames, a run leaves the old output as a ``.old`` sibling and nothing at the
    path: the next run restores it first, so even when that run fails too the good output stands."""
    _publish(tmp_path / "out", content="good")
    moved = tmp_path / ".out.old-12345-0a1b2c3d.tmp"
    os.replace(tmp_path / "out", moved)
    long_ago = time.time() - 3600
    os.utime(moved, (long_ago, long_ago))
    with pytest.raises(RuntimeError), atomic.atomic_dir(tmp_path / "out"):
        raise RuntimeError("this run fails too")
    assert (tmp_path / "out" / "v").read_text() == "good" and not moved.exists()
    _publish(tmp_path / "out", content="newer")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and (tmp_path / "out" / "v").read_text() == "newer"


def test_write_lines_streams_and_leaves_nothing_when_the_lines_fail(tmp_path):
    target = tmp_path / "corpus.jsonl"
    atomic.write_lines(target, (f"{i}\n" for i in range(3)))
    assert target.read_text() == "0\n1\n2\n"

    def failing():
        yield "new 0\n"
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError):
        atomic.write_lines(target, failing())
    assert target.read_text() == "0\n1\n2\n"  # the old file stands, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.jsonl"]  # no temporary sibling left
